"""mtl.viz: debug-image orientation (x forward UP, y left LEFT), palette, overlay, curves, `mtl viz`."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mtl import geometry as G
from mtl.config import Config
from mtl.viz import (
    bev_box_figure,
    bev_display,
    bev_display_pixel,
    colorize_semantic,
    heatmap_panels,
    overlay_semantic,
    plot_curves,
    semantic_palette,
    write_debug_images,
)


@pytest.fixture(scope="module")
def small_cfg():
    return Config().override(**{"camera.image_hw": (48, 80)})


def _scene(cfg, boxes, classes):
    """A hand-made batch/outputs pair: GT heatmap for ``boxes``; predictions = the GT (logits of it)."""
    t = G.heatmap_targets(boxes, classes, cfg.grid, cfg.classes.n_det)
    pts = np.concatenate([np.c_[np.full((50, 2), b[:2]) + np.random.default_rng(0).normal(0, 0.5, (50, 2)),
                                np.full(50, -1.0), np.full(50, 0.5)] for b in boxes]).astype(np.float32)
    h, w = cfg.camera.image_hw
    img = np.full((h, w, 3), 128, np.uint8)
    sem = np.zeros((h, w), np.int64)
    sem[: h // 2] = 7
    sem[0] = 255
    logits = np.zeros((cfg.classes.n_sem, h, w), np.float32)
    np.put_along_axis(logits, np.where(sem == 255, 12, sem)[None], 3.0, 0)
    p = np.clip(t["heatmap"], 1e-4, 1 - 1e-4)
    batch = {"image": G.normalise_image(img, cfg.camera.mean, cfg.camera.std)[None],
             "bev": G.bev_raster(pts, cfg.grid)[None], "heatmap": t["heatmap"][None], "semantic": sem[None],
             "boxes": [boxes], "box_class": [classes], "frame_id": ["scene/000000001"]}
    outputs = {"bbox_heatmap": np.log(p / (1 - p))[None], "bbox_reg": t["reg"][None], "sem_logits": logits[None]}
    return batch, outputs


def _read(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_import_is_torch_free():
    code = "import sys, mtl.viz, mtl.cli.train; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bev_display_orientation():
    grid = Config().grid
    a = np.zeros(grid.shape)
    r, c = int((20 - grid.x_min) / grid.cell), int((5 - grid.y_min) / grid.cell)   # x = 20 m, y = +5 m (left)
    a[r, c] = 1
    dr, dc = np.argwhere(bev_display(a) == 1)[0]
    h, w = grid.shape
    assert dr < h - 1 - 50 and dc < w // 2          # above the ego (bottom row) and LEFT of centre
    er, ec = bev_display_pixel(20.0, 5.0, grid, grid.shape)
    assert abs(dr - er) <= 1 and abs(dc - ec) <= 1
    # ego (x=0, y=0) is at the bottom centre
    er, ec = bev_display_pixel(0.0, 0.0, grid, grid.shape)
    assert er == h and ec == w / 2
    assert bev_display(np.zeros((4, 6, 3))).shape == (4, 6, 3)


def _brightest(panel):
    return np.unravel_index(np.argmax(panel.astype(np.int32).sum(-1)), panel.shape[:2])


@pytest.mark.parametrize("x,y", [(20.0, 5.0), (40.0, 10.0)])
def test_heatmap_panel_peak_where_box_is(x, y):
    grid = Config().grid
    t = G.heatmap_targets(np.array([[x, y, 0, 4, 2, 1.5, 0]], np.float32), np.array([0]), grid, 4)
    img = heatmap_panels(t["heatmap"], t["heatmap"], grid, scale=2)
    h, w = grid.head_shape[0] * 2, grid.head_shape[1] * 2
    top, left = 18, 30                                   # _bev_panel margins (title, x tick labels)
    gt_panel = img[top: top + h, left: left + w]
    r, c = _brightest(gt_panel)
    er, ec = bev_display_pixel(x, y, grid, (h, w))
    assert abs(r - er) <= 3 and abs(c - ec) <= 3, ((r, c), (er, ec))
    assert c < w / 2 and r < h - 20                       # left of centre, above the ego
    if x > grid.x_max / 2:
        assert r < h / 2                                  # upper-left quadrant
    # the pred panel (same map) has its peak at the same place
    pred_left = left + w + 8 + 6 + left                   # panel width (30 + w + 8) + gap 6 + margin
    r2, c2 = _brightest(img[top: top + h, pred_left: pred_left + w])
    assert (r2, c2) == (r, c)


def _colour_mask(rgb, colour, tol=60):
    return (np.abs(rgb.astype(np.int32) - np.array(colour)).max(-1) < tol)


def test_bev_plot_boxes_orientation():
    grid = Config().grid
    box = np.array([[40.0, 10.0, 0, 4.5, 2.0, 1.6, 0.0]], np.float32)
    near = np.array([[20.0, 5.0, 0, 4.5, 2.0, 1.6, 0.0]], np.float32)
    fig = bev_box_figure(grid, occupancy=np.zeros(grid.shape), gt_boxes=box, pred_boxes=near)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    rgb = np.asarray(Image.open(buf).convert("RGB"))
    bb = fig.axes[0].get_window_extent()                  # display coords, origin bottom-left
    H = rgb.shape[0]
    top, bottom, left, right = H - bb.y1, H - bb.y0, bb.x0, bb.x1
    green = np.argwhere(_colour_mask(rgb, (0, 192, 0)))
    red = np.argwhere(_colour_mask(rgb, (255, 0, 0)))
    assert len(green) > 20 and len(red) > 20
    gr, gc = green.mean(0)
    assert top < gr < (top + bottom) / 2 and left < gc < (left + right) / 2      # x=40, y=+10: upper-left
    rr, rc = red.mean(0)
    assert gr < rr < bottom - 10 and rc < (left + right) / 2 and rc > gc         # x=20, y=+5: lower, left
    # metric scale: the red box centre lies 20 m above the axes bottom
    assert abs((bottom - rr) / (bottom - top) * (grid.x_max - grid.x_min) - 20.0) < 1.0


def test_palette_and_colorize(cfg):
    pal = semantic_palette(cfg.classes)
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    car = cfg.classes.sem_classes.index("car")
    assert tuple(pal[car]) == (255, 0, 0)                              # A2D2 'Car 1' #ff0000
    assert tuple(pal[255]) == (0, 0, 0) and tuple(pal[cfg.classes.n_sem]) == (0, 0, 0)
    ids = np.array([[car, 255], [0, car]])
    out = colorize_semantic(ids, pal)
    assert out.shape == (2, 2, 3) and tuple(out[0, 0]) == (255, 0, 0) and tuple(out[0, 1]) == (0, 0, 0)


def test_overlay_shape_and_blend(cfg):
    pal = semantic_palette(cfg.classes)
    img = np.full((10, 16, 3), 100, np.uint8)
    ids = np.full((5, 8), cfg.classes.sem_classes.index("car"))        # half resolution -> resized
    out = overlay_semantic(img, ids, pal, alpha=0.5)
    assert out.shape == (10, 16, 3) and out.dtype == np.uint8
    assert tuple(out[3, 3]) == (178, 50, 50)
    assert (overlay_semantic(img, ids, pal, alpha=0.0) == img).all()


def test_write_debug_images(tmp_path, small_cfg):
    boxes = np.array([[40.0, 10.0, -1, 4.5, 2.0, 1.6, 0.2]], np.float32)
    batch, outputs = _scene(small_cfg, boxes, np.array([0]))
    paths = write_debug_images(tmp_path, 7, batch, outputs, small_cfg, max_items=2)
    names = sorted(p.name for p in paths)
    assert names == ["item0_bev.png", "item0_heatmap.png", "item0_overlay.png", "item0_semantic.png"]
    assert all(p.parent == tmp_path / "epoch_007" and p.is_file() for p in paths)
    assert not [p for p in (tmp_path / "epoch_007").iterdir() if p.name.startswith(".")]   # no temp files
    assert _read(tmp_path / "epoch_007" / "item0_overlay.png").shape == (48, 80, 3)
    # GT heatmap panel of the written PNG: brightest pixel at the box, upper-left quadrant
    hm = _read(tmp_path / "epoch_007" / "item0_heatmap.png")
    gt_panel = hm[18: 18 + 256, 30: 30 + 256]
    r, c = _brightest(gt_panel)
    er, ec = bev_display_pixel(40.0, 10.0, small_cfg.grid, (256, 256))
    assert abs(r - er) <= 3 and abs(c - ec) <= 3 and r < 128 and c < 128
    # BEV plot: the GT (green) and decoded prediction (red) box overlap in the upper-left
    bev = _read(tmp_path / "epoch_007" / "item0_bev.png")
    green, red = np.argwhere(_colour_mask(bev, (0, 192, 0))), np.argwhere(_colour_mask(bev, (255, 0, 0)))
    assert len(green) > 20 and len(red) > 20
    assert np.abs(green.mean(0) - red.mean(0)).max() < 6
    assert green.mean(0)[0] < bev.shape[0] / 2 and green.mean(0)[1] < bev.shape[1] / 2


def test_write_debug_images_accepts_tensors(tmp_path, small_cfg):
    torch = pytest.importorskip("torch")
    batch, outputs = _scene(small_cfg, np.array([[20.0, 5.0, -1, 4.5, 2.0, 1.6, 0.0]], np.float32),
                            np.array([0]))
    tb = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}
    to = {k: torch.from_numpy(v) for k, v in outputs.items()}
    paths = write_debug_images(tmp_path, 0, tb, to, small_cfg, max_items=1)
    assert len(paths) == 4 and (tmp_path / "epoch_000" / "item0_bev.png").is_file()


def _write_metrics(path, n=4):
    with open(path, "w") as f:
        for e in range(1, n + 1):
            row = {"epoch": e, "train/hm": 2.0 / e, "train/total": 4.0 / e, "val/miou": 0.1 * e,
                   "val/pixel_acc": 0.5 + 0.1 * e, "val/ap/car": 0.05 * e, "time": 10.0, "samples_per_s": 3.0,
                   "note": "text is ignored", "flag": True}
            if e == 2:
                row["val/map"] = None                                    # missing/None values are gaps
            f.write(json.dumps(row) + "\n")
        f.write("\n")


def test_plot_curves(tmp_path):
    _write_metrics(tmp_path / "metrics.jsonl")
    out = plot_curves(tmp_path)
    assert out == tmp_path / "curves.png"
    rgb = _read(out)
    assert rgb.shape[0] > 300 and rgb.shape[1] > 600 and rgb.std() > 5


def test_cli_viz(tmp_path):
    from click.testing import CliRunner

    from mtl.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["viz", str(tmp_path)])
    assert res.exit_code == 4
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "metrics.jsonl" in lines[0]

    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "train/hm": 1.0}\n{"epoch": 2, "train/h\n')
    res = runner.invoke(main, ["viz", str(tmp_path)])
    assert res.exit_code == 4 and "line 2" in res.output and "metrics.jsonl" in res.output

    (tmp_path / "metrics.jsonl").write_text("")
    res = runner.invoke(main, ["viz", str(tmp_path)])
    assert res.exit_code == 4 and "empty" in res.output

    _write_metrics(tmp_path / "metrics.jsonl", n=2)
    res = runner.invoke(main, ["viz", str(tmp_path), "--out", str(tmp_path / "c.png")])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == str(tmp_path / "c.png") and (tmp_path / "c.png").is_file()
