"""mtl.viz / mtl.draw: debug-image orientation (x forward UP, y left LEFT), palette, overlays with titles and
legends, BEV views, heatmap panels per class, curves with integer epoch ticks, `mtl viz RUN` and `mtl viz --data`."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mtl import draw
from mtl import geometry as G
from mtl.config import Config
from mtl.draw import FRAME_LEFT, FRAME_RIGHT, FRAME_TOP, bev_view, title_bar
from mtl.viz import (
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
    img = heatmap_panels(t["heatmap"], t["heatmap"], grid, ("car", "truck", "pedestrian", "cyclist"), scale=2)
    h, w = grid.head_shape[0] * 2, grid.head_shape[1] * 2
    gt_panel = img[FRAME_TOP: FRAME_TOP + h, FRAME_LEFT: FRAME_LEFT + w]     # row 0 = class 0 (car)
    r, c = _brightest(gt_panel)
    er, ec = bev_display_pixel(x, y, grid, (h, w))
    assert abs(r - er) <= 3 and abs(c - ec) <= 3, ((r, c), (er, ec))
    assert c < w / 2 and r < h - 20                       # left of centre, above the ego
    if x > grid.x_max / 2:
        assert r < h / 2                                  # upper-left quadrant
    # the pred panel (same map) has its peak at the same place
    pred_left = FRAME_LEFT + w + FRAME_RIGHT + 10 + FRAME_LEFT        # panel width + hstack gap + margin
    r2, c2 = _brightest(img[FRAME_TOP: FRAME_TOP + h, pred_left: pred_left + w])
    assert (r2, c2) == (r, c)
    # one row per class: the truck row (class 1, no object) is dark everywhere
    row_h = FRAME_TOP + h + draw.FRAME_BOTTOM + 8
    truck = img[row_h + FRAME_TOP: row_h + FRAME_TOP + h, FRAME_LEFT: FRAME_LEFT + w]
    assert truck.astype(int).sum(-1).max() < 30 and gt_panel.astype(int).sum(-1).max() > 600


def _colour_mask(rgb, colour, tol=40):
    return (np.abs(rgb.astype(np.int32) - np.array(colour)).max(-1) < tol)


def test_bev_view_boxes_orientation_and_scale():
    grid = Config().grid
    gt = np.array([[40.0, 10.0, 0, 4.5, 2.0, 1.6, 0.0]], np.float32)          # car, upper left
    pred = np.array([[20.0, 5.0, 0, 4.5, 2.0, 1.6, 0.0]], np.float32)         # truck, lower, left
    rgb = bev_view(grid, gt_boxes=gt, gt_labels=[0], boxes=pred, labels=[1], scores=[0.8],
                   det_names=("car", "truck"), size=512)
    m = rgb[FRAME_TOP: FRAME_TOP + 512, FRAME_LEFT: FRAME_LEFT + 512]        # 10 px per metre
    car = np.argwhere(_colour_mask(m, draw.det_colour(0)))
    truck = np.argwhere(_colour_mask(m, draw.det_colour(1)))
    assert len(car) > 20 and len(truck) > 20
    er, ec = bev_display_pixel(40.0, 10.0, grid, (512, 512))
    assert np.abs(car.mean(0) - (er, ec)).max() < 6 and ec < 256 and er < 256
    tr, tc = bev_display_pixel(20.0, 5.0, grid, (512, 512))
    rows, cols = truck[:, 0], truck[:, 1]
    assert abs(np.median(cols) - tc) < 15 and tr - 40 < np.median(rows) < tr + 15    # label sits above the box
    assert rows.max() <= tr + 24                                              # the 4.5 m box: +-22.5 px
    # the ego triangle at the bottom centre
    ego = np.argwhere(_colour_mask(m, draw.EGO_COLOUR))
    assert len(ego) > 10 and abs(ego[:, 1].mean() - 256) < 3 and ego[:, 0].min() > 512 - 20


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
    # overlay: the 80 px camera image upscaled 7x (>= 512 px wide) under a title, with a legend below
    ov = _read(tmp_path / "epoch_007" / "item0_overlay.png")
    title = title_bar("scene/000000001 \u00b7 epoch 7 \u00b7 predicted boxes score > 0.1", 560)
    assert ov.shape[1] == 560 and ov.shape[0] > title.shape[0] + 48 * 7
    assert (ov[: title.shape[0]] == title).all()                             # the title names frame and epoch
    # GT heatmap panel of the written PNG (below the title): brightest pixel at the box, upper-left quadrant
    hm = _read(tmp_path / "epoch_007" / "item0_heatmap.png")
    th = title_bar("scene/000000001 \u00b7 epoch 7 \u00b7 BEV centre heatmaps per class", hm.shape[1]).shape[0]
    gt_panel = hm[th + FRAME_TOP: th + FRAME_TOP + 256, FRAME_LEFT: FRAME_LEFT + 256]
    r, c = _brightest(gt_panel)
    er, ec = bev_display_pixel(40.0, 10.0, small_cfg.grid, (256, 256))
    assert abs(r - er) <= 3 and abs(c - ec) <= 3 and r < 128 and c < 128
    # BEV view: the GT box (shaded) and the decoded prediction (outlined), both class 0, in the upper-left
    bev = _read(tmp_path / "epoch_007" / "item0_bev.png")[FRAME_TOP: FRAME_TOP + 512, FRAME_LEFT: FRAME_LEFT + 512]
    car = np.argwhere(_colour_mask(bev, draw.det_colour(0)))
    assert len(car) > 20
    er, ec = bev_display_pixel(40.0, 10.0, small_cfg.grid, (512, 512))
    assert abs(np.median(car[:, 1]) - ec) < 8 and er - 40 < np.median(car[:, 0]) < er + 10


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


# ------------------------------------------------------------------------------ readable drawings


def test_fonts_are_scalable_and_readable():
    from PIL import ImageFont

    assert isinstance(draw.font(draw.LABEL_PT), ImageFont.FreeTypeFont)
    small, big = draw.text_size("Ag", 14)[1], draw.text_size("Ag", 28)[1]
    assert small >= 12 and big > 1.6 * small                  # the bitmap default is ~11 px whatever is asked


def test_camera_overlay_draws_labelled_class_coloured_boxes_title_and_legend():
    from mtl.viz import model_cam_matrix

    cfg = Config()
    h, w = cfg.camera.image_hw
    k = model_cam_matrix(cfg)
    box = np.array([[20.0, 0.0, -0.8, 0.8, 0.8, 1.8, 0.0]], np.float32)      # a pedestrian 20 m ahead
    img = np.full((h, w, 3), 90, np.uint8)
    title = "scene/000000007 \u00b7 model.onnx \u00b7 score > 0.1"
    out = draw.camera_overlay(img, k, boxes=box, labels=[2], scores=[0.77], det_names=cfg.classes.det_classes,
                              title=title)
    th = title_bar(title, w).shape[0]
    assert out.shape[1] == w and out.shape[0] > th + h                       # title above, legend below
    assert (out[:th] == title_bar(title, w)).all()
    body = out[th: th + h]
    ped = np.argwhere(_colour_mask(body, draw.det_colour(2)))
    u, _, _ = G.project_points(np.array([[20.0, 0.0, -0.8]]), k)
    assert len(ped) > 50 and abs(np.median(ped[:, 1]) - u[0]) < 12           # the box, centred on its projection
    legend = out[th + h:]
    assert _colour_mask(legend, draw.det_colour(2)).sum() > 20                 # its class in the legend
    assert not _colour_mask(out, draw.det_colour(0)).any()                    # no car drawn or listed


def test_curves_have_integer_epoch_ticks():
    from mtl.viz import curves_figure

    rows = [{"epoch": 1, "train/total": 4.0, "val/miou": 0.1}, {"epoch": 2, "train/total": 2.0, "val/miou": 0.3}]
    fig = curves_figure(rows)
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo - 1e-9 <= t <= hi + 1e-9]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_runtime_overlay_uses_neither_matplotlib_nor_torch():
    code = """
import json, sys
import numpy as np
from mtl.config import Config
from mtl.runtime import Result, overlay
cfg = Config()
h, w = cfg.camera.image_hw
res = Result(frame_id="s/1", boxes=np.array([[15, 2, -1, 4, 2, 1.5, 0]], np.float32),
             scores=np.array([0.8], np.float32), labels=np.array([0]), label_names=["car"],
             semantic=np.zeros((h, w), np.uint8), image=np.zeros((h, w, 3), np.uint8))
out = overlay(res, cfg, model="model.onnx")
print(json.dumps({"shape": list(out.shape), "mods": sorted(m for m in sys.modules
                  if m.split(".")[0] in ("matplotlib", "torch"))}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["mods"] == [] and res["shape"][1] == 512 and res["shape"][0] > 320


def test_frame_sheet_and_mtl_viz_data_on_tiny_chunks(tmp_path):
    from click.testing import CliRunner
    from conftest import tiny_cfg, write_tiny_chunks

    from mtl.cli import main

    cfg = tiny_cfg()
    chunks = write_tiny_chunks(tmp_path / "c", cfg, n_frames=2)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    runner = CliRunner()
    out = tmp_path / "f.png"
    r = runner.invoke(main, ["viz", "--data", str(chunks), "--frame", "tiny__0_001", "--config",
                             str(tmp_path / "cfg.json"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert r.output.strip() == str(out)
    sheet = _read(out)
    assert sheet.shape[1] > 1000 and _colour_mask(sheet, draw.det_colour(0), tol=20).sum() + \
        sum(_colour_mask(sheet, draw.det_colour(c), tol=20).sum() for c in (1, 2, 3)) > 50    # the 3D boxes
    r = runner.invoke(main, ["viz", "--data", str(chunks), "--frame", "nope", "--config", str(tmp_path / "cfg.json")])
    assert r.exit_code == 4 and "no frame 'nope'; frames here: tiny/0_000, tiny/0_001" in r.output
    for args in (["viz"], ["viz", str(tmp_path), "--data", str(chunks)], ["viz", str(tmp_path), "--frame", "x"]):
        r = runner.invoke(main, args)
        assert r.exit_code == 2 and r.output.startswith("error: ") and r.output.count("\n") == 1, args


def test_mtl_viz_data_draws_the_real_a2d2_frames(a2d2_sample, tmp_path):
    """The real sample: a camera + semantic frame, and the frame with LiDAR + 3D boxes only (no camera)."""
    from click.testing import CliRunner

    from mtl.cli import main
    from mtl.viz import find_frame, frame_sheet

    cfg = Config()
    lidar = find_frame(a2d2_sample, cfg, "20180810_142822/000015196")
    assert not lidar.has_image and len(lidar.points) > 1000 and len(lidar.gt_boxes) == 4
    sheet = frame_sheet(lidar, cfg)
    for c in (0, 3):                                               # its car and its two cyclists, shaded in the BEV
        assert _colour_mask(sheet, draw.det_colour(c), tol=10).sum() > 30
    out = tmp_path / "lidar.png"
    r = CliRunner().invoke(main, ["viz", "--data", str(a2d2_sample), "--frame", "20180810_142822/000015196",
                                  "--out", str(out)])
    assert r.exit_code == 0 and (_read(out) == sheet).all()
    cam = frame_sheet(find_frame(a2d2_sample, cfg, "20180807_145028/000006882"), cfg)
    road = draw.semantic_palette(cfg.classes)[cfg.classes.sem_classes.index("road")]
    assert _colour_mask(cam, road, tol=3).sum() > 10000                        # the semantic ground truth


def test_only_the_best_scores_get_a_text_label():
    assert draw.labelled(np.array([0.2, 0.9, 0.5, 0.7]), 4, limit=2) == {1, 3}
    assert draw.labelled(np.array([0.2, 0.9]), 2, limit=12) == {0, 1}
    assert draw.labelled(None, 20, limit=12) == set(range(12))
