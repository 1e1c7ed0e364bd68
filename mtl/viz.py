"""Debug images written by the training loop every epoch, and metric curves for ``mtl viz RUN``.

Torch-free at import (numpy + PIL; matplotlib is imported lazily and used through the object API with the
Agg canvas, never pyplot). Tensors are accepted anywhere an array is: ``_np`` converts them.

BEV display convention (used by every BEV image here, see ``bev_display``): the grid's row index follows x
(forward) and its column index follows y (left, column 0 = most negative y = rightmost), see
``mtl.geometry``. Images are shown like a driver's view from above: x forward points UP, y left points
LEFT, the ego car sits at the bottom centre. Heatmap panels and the metric BEV box plot use the same
orientation, so a peak and its box appear at the same place.
"""
from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import ClassesConfig, Config, GridConfig, a2d2_classes
from .errors import DataError
from .geometry import box_corners_bev, decode_detections, sigmoid
from .io import encode_png, write_bytes_atomic

GT_COLOUR = "#00c000"
PRED_COLOUR = "#ff0000"
_BG = (255, 255, 255)
_FG = (0, 0, 0)


# ------------------------------------------------------------------------------------------ helpers


def _np(x: Any) -> np.ndarray:
    """numpy view of an array-like; torch tensors are detached and moved to CPU (torch is not imported)."""
    if hasattr(x, "detach"):
        t = x.detach().cpu()
        if str(getattr(t, "dtype", "")) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    return np.asarray(x)


def bev_display(array: np.ndarray) -> np.ndarray:
    """Turn a BEV grid array (H, W) or (H, W, C) (row = x forward, column = y left, column 0 rightmost)
    into display orientation: x forward UP (flip rows), y left LEFT (flip columns); ego at bottom centre.

    Use this for every BEV image so heatmaps, rasters and box plots line up.
    """
    a = np.asarray(array)
    return a[::-1, ::-1]


def bev_display_pixel(x: np.ndarray | float, y: np.ndarray | float, grid: GridConfig,
                      shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Float (row, col) in a ``bev_display``-ed image of ``shape`` (H, W) covering ``grid``, of metric (x, y)."""
    h, w = shape
    row = (grid.x_max - np.asarray(x, np.float64)) / (grid.x_max - grid.x_min) * h
    col = (grid.y_max - np.asarray(y, np.float64)) / (grid.y_max - grid.y_min) * w
    return row, col


def _lut(name: str) -> np.ndarray:
    """(256, 3) uint8 lookup table of a matplotlib colormap."""
    import matplotlib

    cmap = matplotlib.colormaps[name]
    return (cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255 + 0.5).astype(np.uint8)


def _apply_cmap(values: np.ndarray, name: str, vmin: float, vmax: float) -> np.ndarray:
    v = np.nan_to_num(np.asarray(values, np.float32), nan=vmin)
    idx = np.clip((v - vmin) / (vmax - vmin) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return _lut(name)[idx]


def _font():
    from PIL import ImageFont

    return ImageFont.load_default()


def _text_size(draw, text: str) -> tuple[int, int]:
    l, t, r, b = draw.textbbox((0, 0), text, font=_font())
    return r - l, b - t


def _save_png(path: Path, rgb: np.ndarray) -> Path:
    write_bytes_atomic(path, encode_png(np.ascontiguousarray(rgb, dtype=np.uint8)))
    return path


def _save_fig(path: Path, fig) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    write_bytes_atomic(path, buf.getvalue())
    return path


# ------------------------------------------------------------------------------------------ semantic


def semantic_palette(classes_cfg: ClassesConfig) -> np.ndarray:
    """(256, 3) uint8 colour per training class id: the A2D2 colour of the first member of the class's
    ``sem_groups`` entry (e.g. car -> 'Car 1' -> #ff0000). Ids without a class (incl. 255) are black.
    Groups whose first member is not an A2D2 name get a tab20 colour."""
    name_to_hex: dict[str, str] = {}
    for hx, name in a2d2_classes()["a2d2_colours"].items():
        name_to_hex.setdefault(name, hx)
    pal = np.zeros((256, 3), np.uint8)
    fallback = None
    for i, (_, members) in enumerate(classes_cfg.sem_groups[:255]):
        hx = name_to_hex.get(members[0]) if members else None
        if hx is not None:
            pal[i] = [int(hx[k: k + 2], 16) for k in (1, 3, 5)]
        else:
            fallback = _lut("tab20") if fallback is None else fallback
            pal[i] = fallback[(i * 13) % 256]
    pal[classes_cfg.ignore_index % 256] = 0
    return pal


def colorize_semantic(ids: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours (ids outside 0..255 -> black)."""
    ids = _np(ids)
    idx = np.where((ids >= 0) & (ids <= 255), ids, 255).astype(np.int64)
    out = np.asarray(palette, np.uint8)[idx]
    if not ((ids >= 0) & (ids <= 255)).all():
        out[(ids < 0) | (ids > 255)] = 0
    return out


def denormalise_image(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(3, H, W) normalised float -> (H, W, 3) uint8 (inverse of ``geometry.normalise_image``)."""
    img = _np(image).astype(np.float32).transpose(1, 2, 0)
    img = img * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def overlay_semantic(image_rgb: np.ndarray, ids: np.ndarray, palette: np.ndarray, alpha: float = 0.5,
                     ignore_index: int = 255) -> np.ndarray:
    """Alpha-blend the colourised ``ids`` on an (H, W, 3) uint8 image; ignore pixels stay unblended.
    ``ids`` of another size is resized (nearest) to the image. Returns (H, W, 3) uint8."""
    img = np.asarray(image_rgb, np.uint8)
    ids = _resize_nearest(_np(ids), img.shape[:2])
    col = colorize_semantic(ids, palette).astype(np.float32)
    out = img.astype(np.float32) * (1.0 - alpha) + col * alpha
    out = np.where((ids == ignore_index)[..., None], img, out)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _resize_nearest(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if a.shape[:2] == tuple(hw):
        return a
    r = (np.arange(hw[0]) * a.shape[0] // hw[0]).astype(np.int64)
    c = (np.arange(hw[1]) * a.shape[1] // hw[1]).astype(np.int64)
    return a[r[:, None], c[None, :]]


# ------------------------------------------------------------------------------------ image layout


def _titled(rgb: np.ndarray, title: str, pad: int = 4) -> np.ndarray:
    """Put a one-line title above an (H, W, 3) panel."""
    from PIL import Image, ImageDraw

    h, w = rgb.shape[:2]
    th = 16
    canvas = Image.new("RGB", (w + 2 * pad, h + th + pad), _BG)
    canvas.paste(Image.fromarray(np.ascontiguousarray(rgb)), (pad, th))
    ImageDraw.Draw(canvas).text((pad, 2), title, fill=_FG, font=_font())
    return np.asarray(canvas)


def _hstack(panels: list[np.ndarray], gap: int = 6) -> np.ndarray:
    h = max(p.shape[0] for p in panels)
    out = []
    for i, p in enumerate(panels):
        if p.shape[0] < h:
            p = np.concatenate([p, np.full((h - p.shape[0], p.shape[1], 3), 255, np.uint8)], 0)
        out.append(p)
        if i + 1 < len(panels):
            out.append(np.full((h, gap, 3), 255, np.uint8))
    return np.concatenate(out, 1)


def _vstack(panels: list[np.ndarray]) -> np.ndarray:
    w = max(p.shape[1] for p in panels)
    return np.concatenate([np.pad(p, ((0, 0), (0, w - p.shape[1]), (0, 0)), constant_values=255)
                           for p in panels], 0)


def _bev_panel(disp_rgb: np.ndarray, grid: GridConfig, title: str, tick_m: float = 10.0) -> np.ndarray:
    """Frame a display-oriented BEV image (from ``bev_display``) with a title, metre ticks (x on the left,
    y at the bottom, y increasing to the LEFT) and an ego marker at x = y = 0."""
    from PIL import Image, ImageDraw

    h, w = disp_rgb.shape[:2]
    left, top, right, bottom = 30, 18, 8, 28
    canvas = Image.new("RGB", (left + w + right, top + h + bottom), _BG)
    canvas.paste(Image.fromarray(np.ascontiguousarray(disp_rgb)), (left, top))
    d = ImageDraw.Draw(canvas)
    d.text((left, 2), title, fill=_FG, font=_font())
    d.rectangle([left - 1, top - 1, left + w, top + h], outline=(90, 90, 90))
    for xv in np.arange(math.ceil(grid.x_min / tick_m) * tick_m, grid.x_max + 1e-6, tick_m):
        r, _ = bev_display_pixel(xv, 0.0, grid, (h, w))
        r = top + round(float(r))
        d.line([left - 4, r, left - 1, r], fill=_FG)
        s = f"{xv:g}"
        tw, th = _text_size(d, s)
        d.text((left - 6 - tw, max(r - th // 2 - 1, 0)), s, fill=_FG, font=_font())
    for yv in np.arange(math.ceil(grid.y_min / tick_m) * tick_m, grid.y_max + 1e-6, tick_m):
        _, c = bev_display_pixel(grid.x_min, yv, grid, (h, w))
        c = left + round(float(c))
        d.line([c, top + h, c, top + h + 3], fill=_FG)
        s = f"{yv:g}"
        tw, _ = _text_size(d, s)
        d.text((c - tw // 2, top + h + 3), s, fill=_FG, font=_font())
    d.text((left + w // 2 - 60, top + h + 15), "y [m] (left <-)   x [m] (fwd ^)", fill=_FG, font=_font())
    # ego marker (cyan triangle pointing forward) if the ego position is on the map
    er, ec = bev_display_pixel(0.0, 0.0, grid, (h, w))
    er, ec = top + min(float(er), h - 1), left + float(ec)
    if left <= ec <= left + w:
        d.polygon([(ec, er - 7), (ec - 4, er), (ec + 4, er)], fill=(0, 200, 255), outline=(0, 0, 0))
    return np.asarray(canvas)


def heatmap_panels(gt: np.ndarray, pred_prob: np.ndarray, grid: GridConfig, scale: int = 2,
                   title_prefix: str = "") -> np.ndarray:
    """GT | pred | pred - GT side by side (each (n_det, Hh, Ww) -> max over classes), in display
    orientation (``bev_display``), upscaled by ``scale`` (nearest). Returns (H, W, 3) uint8."""
    g = np.max(_np(gt).astype(np.float32), axis=0)
    p = np.max(_np(pred_prob).astype(np.float32), axis=0)
    diff = p - g

    def up(a):
        return np.repeat(np.repeat(bev_display(a), scale, 0), scale, 1)

    panels = [
        _bev_panel(up(_apply_cmap(g, "inferno", 0.0, 1.0)), grid, f"{title_prefix}GT heatmap (max {g.max():.2f})"),
        _bev_panel(up(_apply_cmap(p, "inferno", 0.0, 1.0)), grid, f"pred sigmoid (max {p.max():.2f})"),
        _bev_panel(up(_apply_cmap(diff, "RdBu_r", -1.0, 1.0)), grid,
                   f"pred-GT (red over, blue miss) |d|max {np.abs(diff).max():.2f}"),
    ]
    return _hstack(panels)


def _class_legend(names: Sequence[str], palette: np.ndarray, width: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    items, x, y, rows = [], 4, 4, 1
    for i, n in enumerate(names):
        tw, _ = _text_size(probe, n)
        if x + 14 + tw > width - 4 and x > 4:
            x, y, rows = 4, y + 14, rows + 1
        items.append((x, y, i, n))
        x += 14 + tw + 10
    img = Image.new("RGB", (width, y + 16), _BG)
    d = ImageDraw.Draw(img)
    for x, y, i, n in items:
        d.rectangle([x, y + 1, x + 10, y + 11], fill=tuple(int(v) for v in palette[i]), outline=(0, 0, 0))
        d.text((x + 14, y), n, fill=_FG, font=font)
    return np.asarray(img)


def semantic_panels(gt_ids: np.ndarray, pred_ids: np.ndarray, palette: np.ndarray,
                    class_names: Sequence[str] = ()) -> np.ndarray:
    """GT | pred colourised side by side with a class colour legend. Returns (H, W, 3) uint8."""
    gt_ids = _np(gt_ids)
    pred_ids = _resize_nearest(_np(pred_ids), gt_ids.shape)
    valid = gt_ids != 255
    acc = float((pred_ids[valid] == gt_ids[valid]).mean()) if valid.any() else float("nan")
    top = _hstack([_titled(colorize_semantic(gt_ids, palette), "semantic GT (black = ignore)"),
                   _titled(colorize_semantic(pred_ids, palette), f"semantic pred (pixel acc {acc:.3f})")])
    if class_names:
        top = _vstack([top, _class_legend(class_names, palette, top.shape[1])])
    return top


# ----------------------------------------------------------------------------------------- BEV plot


def bev_box_figure(grid: GridConfig, occupancy: np.ndarray | None = None, points: np.ndarray | None = None,
                   gt_boxes: np.ndarray | None = None, gt_classes: np.ndarray | None = None,
                   pred_boxes: np.ndarray | None = None, title: str = ""):
    """matplotlib Figure (Agg, no pyplot): LiDAR (``points`` (N, >=2) if given, else the BEV occupancy
    raster (H, W)) with GT boxes (green; ignored class -1 dashed) and predicted boxes (red), axes in
    metres, x forward UP, y left LEFT (ego at the bottom centre, blue triangle)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 6.4), dpi=100)
    ax = fig.add_axes([0.11, 0.09, 0.85, 0.83])
    extent = (grid.y_max, grid.y_min, grid.x_min, grid.x_max)  # left, right, bottom, top
    if points is not None and len(points):
        p = _np(points)
        ax.scatter(p[:, 1], p[:, 0], s=0.2, c="0.35", marker=".", linewidths=0, rasterized=True)
    elif occupancy is not None:
        occ = (_np(occupancy) > 0).astype(np.float32)
        ax.imshow(bev_display(occ), cmap="Greys", vmin=0.0, vmax=1.6, extent=extent, origin="upper",
                  interpolation="nearest")

    def draw(boxes, colour, classes=None, lw=1.2):
        if boxes is None or len(boxes) == 0:
            return
        b = _np(boxes).reshape(-1, 7)
        corners = box_corners_bev(b)
        for i, c in enumerate(corners):
            ls = "--" if classes is not None and i < len(classes) and int(classes[i]) < 0 else "-"
            ring = np.vstack([c, c[:1]])
            ax.plot(ring[:, 1], ring[:, 0], color=colour, lw=lw, ls=ls)
            front = (c[0] + c[1]) / 2
            ax.plot([b[i, 1], front[1]], [b[i, 0], front[0]], color=colour, lw=lw, ls=ls)

    draw(gt_boxes, GT_COLOUR, None if gt_classes is None else _np(gt_classes).reshape(-1), lw=2.6)
    draw(pred_boxes, PRED_COLOUR, lw=1.0)
    ax.plot([0.0], [0.0], marker="^", color="#0080ff", markersize=9, markeredgecolor="k", clip_on=False,
            zorder=5)
    ax.set_xlim(grid.y_max, grid.y_min)   # y left -> LEFT
    ax.set_ylim(grid.x_min, grid.x_max)   # x forward -> UP
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("y [m]  (left \u2190)")
    ax.set_ylabel("x [m]  (forward \u2191)")
    ax.grid(True, lw=0.3, alpha=0.5)
    ax.set_title(title, fontsize=9)
    return fig


# ------------------------------------------------------------------------------------- debug images


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s))[:80]


def write_debug_images(out_dir: str | Path, epoch: int, batch: dict, outputs: dict, cfg: Config,
                       max_items: int = 2) -> list[Path]:
    """Write debug PNGs for the first ``max_items`` samples of a batch under ``out_dir/epoch_{epoch:03d}/``:

    - ``item{i}_heatmap.png``: BEV heatmap GT | pred (sigmoid, max over classes) | pred - GT (diverging)
    - ``item{i}_semantic.png``: semantic GT | pred (A2D2 palette) + class legend
    - ``item{i}_overlay.png``: semantic prediction alpha-blended on the de-normalised camera image
    - ``item{i}_bev.png``: LiDAR (``batch['points']`` if present, else the occupancy channel of ``bev``)
      with GT boxes (green) and decoded predicted boxes (red), axes in metres

    All BEV images: x forward UP, y left LEFT, ego at the bottom centre (``bev_display``). Accepts numpy
    arrays or torch tensors. Returns the written paths.
    """
    out = Path(out_dir) / f"epoch_{int(epoch):03d}"
    grid = cfg.grid
    palette = semantic_palette(cfg.classes)
    images = _np(batch["image"])
    n = min(int(max_items), images.shape[0])
    hm_logits = _np(outputs["bbox_heatmap"])
    reg = _np(outputs["bbox_reg"])
    sem_logits = _np(outputs["sem_logits"])
    written: list[Path] = []
    for i in range(n):
        fid = batch.get("frame_id", [None] * (i + 1))[i] if "frame_id" in batch else None
        label = f"{fid} " if fid else ""
        prob = sigmoid(hm_logits[i].astype(np.float32))
        # (a) heatmaps
        if "heatmap" in batch:
            written.append(_save_png(out / f"item{i}_heatmap.png",
                                     heatmap_panels(_np(batch["heatmap"][i]), prob, grid,
                                                    title_prefix=f"ep{epoch} ")))
        # (b) semantic GT vs pred, (c) overlay
        pred_ids = np.argmax(sem_logits[i], axis=0).astype(np.uint8)
        img = denormalise_image(images[i], cfg.camera.mean, cfg.camera.std)
        if "semantic" in batch:
            written.append(_save_png(out / f"item{i}_semantic.png",
                                     semantic_panels(_np(batch["semantic"][i]), pred_ids, palette,
                                                     cfg.classes.sem_classes)))
        written.append(_save_png(out / f"item{i}_overlay.png", overlay_semantic(img, pred_ids, palette)))
        # (d) BEV points + boxes
        det = decode_detections(prob, reg[i].astype(np.float32), grid, k=cfg.decode.max_detections,
                                score_threshold=cfg.decode.score_threshold, kernel=cfg.decode.nms_kernel)
        gt_boxes = _np(batch["boxes"][i]) if "boxes" in batch else None
        gt_cls = _np(batch["box_class"][i]) if "box_class" in batch else None
        pts = _np(batch["points"][i]) if "points" in batch and batch["points"] is not None else None
        occ = _np(batch["bev"][i][0]) if "bev" in batch else None
        n_gt = 0 if gt_boxes is None else len(gt_boxes)
        title = (f"{label}epoch {epoch}: GT {n_gt} (green), pred {len(det['boxes'])} (red, score > "
                 f"{cfg.decode.score_threshold:g})")
        fig = bev_box_figure(grid, occupancy=occ, points=pts, gt_boxes=gt_boxes, gt_classes=gt_cls,
                             pred_boxes=det["boxes"], title=title)
        written.append(_save_fig(out / f"item{i}_bev.png", fig))
    return written


# ------------------------------------------------------------------------------------------- curves

_SEG = ("miou", "pixel_acc", "iou")
_DET = ("map", "ap")
_THROUGHPUT = ("time", "samples_per_s", "epoch_time", "s_per_step", "throughput", "data_time")
_LOSS_LEAVES = ("hm", "reg", "sem", "total", "loss")
_X_KEYS = ("epoch", "step")


def _panel_for(key: str) -> str:
    parts = key.lower().split("/")
    leaf = parts[-1]
    if any(p in _SEG for p in parts) or "iou" in leaf or "pixel_acc" in leaf:
        return "segmentation"
    if any(p in _DET for p in parts) or leaf.startswith("ap") or leaf.endswith("map"):
        return "detection"
    if leaf in _THROUGHPUT or "per_s" in leaf or leaf.endswith(("time", "_s")):
        return "throughput"
    if leaf in _LOSS_LEAVES or "loss" in key.lower():
        return "losses"
    if leaf == "lr":
        return "learning rate"
    return "other"


def read_metrics(path: str | Path) -> list[dict]:
    """Parse a metrics.jsonl file (one JSON object per line; blank lines skipped). Raises ``DataError``
    naming the file when it is missing, empty or has a line that is not a JSON object; a torn last line (no
    newline after it: a writer killed while appending) is skipped with a warning on stderr."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(path, "metrics file not found (has the run finished an epoch?)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"cannot read metrics file ({type(e).__name__}: {e})") from None
    rows = []
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines) and not text.endswith("\n"):
                import sys

                print(f"warning: {path}: skipped a torn last line (a writer killed while appending it)",
                      file=sys.stderr)
                continue
            raise DataError(path, f"line {n} is not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(path, f"line {n} is not a JSON object")
        rows.append(obj)
    if not rows:
        raise DataError(path, "metrics file is empty (no epochs recorded)")
    return rows


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def plot_curves(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Plot every numeric key of ``RUN/metrics.jsonl`` against epoch, grouped into panels (losses,
    segmentation, detection, throughput, other), and write ``RUN/curves.png`` (or ``out``) atomically.
    ``run_dir`` may also be the metrics.jsonl file itself. Returns the PNG path."""
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    metrics_path = run_dir if run_dir.suffix == ".jsonl" else run_dir / "metrics.jsonl"
    rows = read_metrics(metrics_path)
    xkey = next((k for k in _X_KEYS if any(_is_num(r.get(k)) for r in rows)), None)
    xs = np.array([float(r[xkey]) if _is_num(r.get(xkey)) else np.nan for r in rows]) if xkey else \
        np.arange(1, len(rows) + 1, dtype=np.float64)
    keys: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k not in keys and k not in _X_KEYS and _is_num(v):
                keys.append(k)
    if not keys:
        raise DataError(metrics_path, "no numeric metrics to plot")
    if len(rows) > 1:
        # counts that never change (val/frames, val/n_gt/<cls>, ...) carry no curve; the lr always plots
        def constant(k: str) -> bool:
            vals = {r.get(k) for r in rows if _is_num(r.get(k))}
            return len(vals) <= 1 and _panel_for(k) not in ("losses", "learning rate")
        keys = [k for k in keys if not constant(k)] or keys
    order = ["losses", "segmentation", "detection", "throughput", "learning rate", "other"]
    groups = {g: [k for k in keys if _panel_for(k) == g] for g in order}
    groups = {g: ks for g, ks in groups.items() if ks}

    ncols = min(2, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig = Figure(figsize=(7.0 * ncols, 4.2 * nrows), dpi=100)
    for j, (g, ks) in enumerate(groups.items()):
        ax = fig.add_subplot(nrows, ncols, j + 1)
        positive = True
        per_class = [k for k in ks if len(k.split("/")) >= 3]          # e.g. val/ap/car, val/iou/road
        # throughput: durations (s) and rates differ by orders of magnitude -> durations on a twin axis
        timed = [k for k in ks if k.lower().split("/")[-1].endswith("time")] if g == "throughput" else []
        ax2 = ax.twinx() if timed and len(timed) < len(ks) else None
        if ax2 is not None:
            ax2.set_ylabel("seconds", fontsize=8)
        for k in ks:
            target = ax2 if ax2 is not None and k in timed else ax
            ys = np.array([float(r[k]) if _is_num(r.get(k)) else np.nan for r in rows])
            ok = np.isfinite(ys)
            if not ok.any():
                continue
            positive &= bool((ys[ok] > 0).all())
            style = "--" if k.startswith("val") else "-"
            thin = k in per_class
            target.plot(xs[ok], ys[ok], style, lw=0.8 if thin else 1.8, alpha=0.6 if thin else 1.0,
                        marker="" if ok.sum() > 30 else ".", label=k + (" (right)" if target is not ax else ""),
                        color=f"C{ks.index(k) % 10}")
        if g in ("losses", "learning rate") and positive:
            ax.set_yscale("log")
        ax.set_title(g)
        ax.set_xlabel(xkey or "record")
        ax.grid(True, lw=0.3, alpha=0.6)
        handles, labels = ax.get_legend_handles_labels()
        if ax2 is not None:
            h2, l2 = ax2.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        ax.legend(handles, labels, fontsize=6, ncol=2 if len(ks) > 8 else 1, loc="best")
    fig.suptitle(f"{metrics_path}  ({len(rows)} records)", fontsize=9)
    fig.tight_layout()
    out_path = Path(out) if out is not None else metrics_path.parent / "curves.png"
    return _save_fig(out_path, fig)


__all__ = [
    "bev_box_figure",
    "bev_display",
    "bev_display_pixel",
    "colorize_semantic",
    "denormalise_image",
    "heatmap_panels",
    "overlay_semantic",
    "plot_curves",
    "read_metrics",
    "semantic_palette",
    "semantic_panels",
    "write_debug_images",
]
