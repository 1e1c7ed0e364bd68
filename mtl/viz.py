"""Debug images written by the training loop every epoch, ``mtl viz --data`` frame sheets, and metric curves
for ``mtl viz RUN`` and ``mtl report``.

Torch-free at import. Every picture is drawn by ``mtl.draw`` (numpy + PIL; the same module draws ``mtl infer
--overlay`` and the report); only the curves use matplotlib, imported lazily and used through the object API
with the Agg canvas, never pyplot. Tensors are accepted anywhere an array is: ``_np`` converts them.

BEV images follow ``mtl.draw.bev_display``: x forward UP, y left LEFT, the ego car at the bottom centre.
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

from .config import Config
from .draw import (
    bev_display,
    bev_display_pixel,
    bev_view,
    camera_overlay,
    colorize_semantic,
    heatmap_panels,
    hstack,
    legend,
    overlay_semantic,
    placeholder,
    save,
    semantic_legend_entries,
    semantic_palette,
    semantic_panels,
    vstack,
    with_title,
)
from .errors import DataError
from .geometry import cam_matrix, decode_detections, scale_cam_matrix, sigmoid
from .io import write_bytes_atomic

# ------------------------------------------------------------------------------------------ helpers


def _np(x: Any) -> np.ndarray:
    """numpy view of an array-like; torch tensors are detached and moved to CPU (torch is not imported)."""
    if hasattr(x, "detach"):
        t = x.detach().cpu()
        if str(getattr(t, "dtype", "")) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    return np.asarray(x)


def denormalise_image(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(3, H, W) normalised float -> (H, W, 3) uint8 (inverse of ``geometry.normalise_image``)."""
    img = _np(image).astype(np.float32).transpose(1, 2, 0)
    img = img * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def model_cam_matrix(cfg: Config, hw: tuple[int, int] | None = None) -> np.ndarray:
    """Intrinsics of the undistorted camera image at ``hw`` (default: the model's ``camera.image_hw``)."""
    hw = tuple(hw or cfg.camera.image_hw)
    return scale_cam_matrix(cam_matrix(cfg.camera), tuple(cfg.camera.resolution_wh), hw)


def _save_fig(path: Path, fig) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    write_bytes_atomic(path, buf.getvalue())
    return path


# ------------------------------------------------------------------------------------- debug images


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s))[:80]


def write_debug_images(out_dir: str | Path, epoch: int, batch: dict, outputs: dict, cfg: Config,
                       max_items: int = 2) -> list[Path]:
    """Write debug PNGs for the first ``max_items`` samples of a batch under ``out_dir/epoch_{epoch:03d}/``:

    - ``item{i}_heatmap.png``: per detection class, BEV heatmap GT | predicted (sigmoid) | predicted - GT
    - ``item{i}_semantic.png``: semantic GT | prediction (A2D2 palette), pixel accuracy, class legend
    - ``item{i}_overlay.png``: the camera image with the semantic prediction and the decoded boxes (score >
      ``decode.score_threshold``) projected, labelled ``class score``, a title and a legend
    - ``item{i}_bev.png``: LiDAR (``batch['points']`` if present, else the occupancy channel of ``bev``),
      GT boxes (shaded) and decoded predicted boxes (outlined, labelled), range rings, axes in metres

    Every image is titled with the frame id and the epoch. Accepts numpy arrays or torch tensors. Returns the
    written paths.
    """
    out = Path(out_dir) / f"epoch_{int(epoch):03d}"
    palette = semantic_palette(cfg.classes)
    images = _np(batch["image"])
    n = min(int(max_items), images.shape[0])
    hm_logits, reg, sem_logits = (_np(outputs[k]) for k in ("bbox_heatmap", "bbox_reg", "sem_logits"))
    written: list[Path] = []
    for i in range(n):
        fid = batch["frame_id"][i] if "frame_id" in batch else f"item {i}"
        prob = sigmoid(hm_logits[i].astype(np.float32))
        det = decode_detections(prob, reg[i].astype(np.float32), cfg.grid, k=cfg.decode.max_detections,
                                score_threshold=cfg.decode.score_threshold, kernel=cfg.decode.nms_kernel)
        item = _DebugItem(cfg, palette, f"{fid} \u00b7 epoch {epoch}", det)
        if "heatmap" in batch:
            written.append(save(out / f"item{i}_heatmap.png", item.heatmaps(_np(batch["heatmap"][i]), prob)))
        pred_ids = np.argmax(sem_logits[i], axis=0).astype(np.uint8)
        if "semantic" in batch:
            written.append(save(out / f"item{i}_semantic.png",
                                semantic_panels(_np(batch["semantic"][i]), pred_ids, palette,
                                                cfg.classes.sem_classes, title=item.title)))
        img = denormalise_image(images[i], cfg.camera.mean, cfg.camera.std)
        written.append(save(out / f"item{i}_overlay.png", item.overlay(img, pred_ids)))
        gt_boxes = _np(batch["boxes"][i]) if "boxes" in batch else None
        gt_cls = _np(batch["box_class"][i]) if "box_class" in batch else None
        pts = _np(batch["points"][i]) if batch.get("points") is not None else None
        occ = _np(batch["bev"][i][0]) if "bev" in batch else None
        written.append(save(out / f"item{i}_bev.png", item.bev(pts, occ, gt_boxes, gt_cls)))
    return written


class _DebugItem:
    """The four debug drawings of one sample (shared title, decoded detections)."""

    def __init__(self, cfg: Config, palette: np.ndarray, title: str, det: dict[str, np.ndarray]):
        self.cfg, self.palette, self.title, self.det = cfg, palette, title, det
        self.cut = f"score > {cfg.decode.score_threshold:g}"

    def heatmaps(self, gt: np.ndarray, prob: np.ndarray) -> np.ndarray:
        panels = heatmap_panels(gt, prob, self.cfg.grid, self.cfg.classes.det_classes)
        return with_title(panels, f"{self.title} \u00b7 BEV centre heatmaps per class")

    def overlay(self, image: np.ndarray, pred_ids: np.ndarray) -> np.ndarray:
        c = self.cfg.classes
        return camera_overlay(image, model_cam_matrix(self.cfg, image.shape[:2]), semantic=pred_ids,
                              palette=self.palette, sem_names=c.sem_classes, boxes=self.det["boxes"],
                              labels=self.det["labels"], scores=self.det["scores"], det_names=c.det_classes,
                              title=f"{self.title} \u00b7 predicted boxes {self.cut}",
                              ignore_index=c.ignore_index)

    def bev(self, points, occupancy, gt_boxes, gt_classes) -> np.ndarray:
        n_gt = 0 if gt_boxes is None else len(gt_boxes)
        return bev_view(self.cfg.grid, points=points, occupancy=occupancy, boxes=self.det["boxes"],
                        labels=self.det["labels"], scores=self.det["scores"], gt_boxes=gt_boxes,
                        gt_labels=gt_classes, det_names=self.cfg.classes.det_classes,
                        title=f"{self.title} \u00b7 GT {n_gt}, predicted {len(self.det['boxes'])} ({self.cut})")


# ------------------------------------------------------------------------------------- data frames


def find_frame(data: str | Path, cfg: Config, frame_id: str | None = None):
    """The ``RuntimeFrame`` (with its ground truth) of ``data`` (NPZ chunks or a raw A2D2 tree) whose id is
    ``frame_id`` (its file-name form ``scene__id`` is accepted too); the first frame when None. A frame id
    that is not there is a ``DataError`` listing a few that are."""
    from .runtime.frames import iter_frames, sanitise_frame_id

    seen = []
    for frame in iter_frames(data, cfg, with_gt=True):
        if frame_id is None or frame_id in (frame.frame_id, sanitise_frame_id(frame.frame_id)):
            return frame
        seen.append(frame.frame_id)
    if not seen:
        raise DataError(data, "no frames")
    shown = ", ".join(seen[:5]) + (f" (+{len(seen) - 5} more)" if len(seen) > 5 else "")
    raise DataError(data, f"no frame {frame_id!r}; frames here: {shown}")


def frame_camera(frame, cfg: Config, width: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """(image, intrinsics) of a frame's camera, undistorted: chunk frames as stored, raw frames undistorted
    and resized (``data.a2d2.prepare_image``) to the model's aspect ratio, ``width`` pixels wide (default: the
    model size). None without a camera image."""
    from .io import decode_png

    if not frame.has_image:
        return None
    img = frame.image if frame.image is not None else decode_png(frame.image_png, frame.source, "RGB")
    if frame.kind == "raw":
        from .data.a2d2 import prepare_image

        h, w = cfg.camera.image_hw
        hw = (round(h * (width or w) / w), width or w)
        camera = frame.camera or cfg.camera
        img = prepare_image(img, camera, hw, frame.source)
        return img, scale_cam_matrix(cam_matrix(camera), tuple(camera.resolution_wh), hw)
    return img, np.asarray(frame.cam_matrix, np.float64)


def frame_sheet(frame, cfg: Config) -> np.ndarray:
    """One data frame for a person (``mtl viz --data``): the camera with the ground-truth 3D boxes projected,
    the semantic ground truth in colour with a legend, and the LiDAR BEV with the 3D boxes; a modality the
    frame does not have is a grey panel saying so. Returns (H, W, 3) uint8."""
    c = cfg.classes
    palette = semantic_palette(c)
    cam = frame_camera(frame, cfg, width=1024)                 # sharper than the model size, a screen wide
    has_boxes = frame.gt_boxes is not None
    if cam is not None:
        camera = camera_overlay(cam[0], cam[1], gt_boxes=frame.gt_boxes if has_boxes else None,
                                gt_labels=frame.gt_labels, det_names=c.det_classes, min_width=640,
                                title="camera (undistorted)" + (" + ground-truth 3D boxes" if has_boxes else ""))
    else:
        camera = with_title(placeholder("no camera image in this frame", (400, 640)), "camera")
    if frame.gt_semantic is not None:
        sem = colorize_semantic(frame.gt_semantic, palette)
        f = max(1, math.ceil(640 / sem.shape[1]))
        sem = np.repeat(np.repeat(sem, f, 0), f, 1)
        ids = frame.gt_semantic[frame.gt_semantic != c.ignore_index]
        semantic = with_title(vstack([sem, legend(semantic_legend_entries(ids, c.sem_classes, palette, top=20),
                                                  sem.shape[1])], gap=0), "semantic ground truth (black = ignored)")
    else:
        semantic = with_title(placeholder("no semantic label in this frame", (400, 640)), "semantic ground truth")
    n_pts = len(frame.points)
    lidar = f"LiDAR {n_pts} points" if n_pts else "no LiDAR"
    boxes = f"{len(frame.gt_boxes)} ground-truth 3D boxes" if has_boxes else "no 3D boxes"
    if n_pts or has_boxes:
        bev = bev_view(cfg.grid, points=frame.points if n_pts else None, gt_boxes=frame.gt_boxes,
                       gt_labels=frame.gt_labels, det_names=c.det_classes, size=640,
                       title=f"bird's-eye view: {lidar}, {boxes}")
    else:
        bev = with_title(placeholder("no LiDAR and no 3D boxes in this frame", (640, 640)), "bird's-eye view")
    has = [n for n, ok in (("camera", cam is not None), ("semantic label", frame.gt_semantic is not None),
                           ("LiDAR", n_pts > 0), ("3D boxes", has_boxes)) if ok]
    sheet = hstack([vstack([camera, semantic], gap=12), bev], gap=16)
    return with_title(sheet, f"{frame.frame_id} \u00b7 {frame.kind} frame \u00b7 has: {', '.join(has) or 'nothing'}"
                             f" \u00b7 {frame.source}")


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


def integer_ticks(ax) -> None:
    """Whole-number ticks on the x axis (epochs and steps: never 1.2, 1.4 for a 2-epoch run)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def metric_keys(rows: list[dict]) -> list[str]:
    """Numeric keys of metrics.jsonl rows in first-seen order, minus the x keys and, with more than one row,
    counts that never change (val/frames, val/n_gt/<cls>, ...; the losses and the lr always stay)."""
    keys: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k not in keys and k not in _X_KEYS and _is_num(v):
                keys.append(k)
    if len(rows) > 1:
        def constant(k: str) -> bool:
            vals = {r.get(k) for r in rows if _is_num(r.get(k))}
            return len(vals) <= 1 and _panel_for(k) not in ("losses", "learning rate")
        keys = [k for k in keys if not constant(k)] or keys
    return keys


def x_values(rows: list[dict]) -> tuple[str | None, np.ndarray]:
    """(x key, values): the epoch (else the step) of every row, else 1..n."""
    xkey = next((k for k in _X_KEYS if any(_is_num(r.get(k)) for r in rows)), None)
    if xkey is None:
        return None, np.arange(1, len(rows) + 1, dtype=np.float64)
    return xkey, np.array([float(r[xkey]) if _is_num(r.get(xkey)) else np.nan for r in rows])


def curves_figure(rows: list[dict], title: str = ""):
    """matplotlib Figure (Agg, no pyplot) of every numeric metric against the epoch, grouped into panels
    (losses, segmentation, detection, throughput, learning rate, other), integer epoch ticks."""
    from matplotlib.figure import Figure

    xkey, xs = x_values(rows)
    keys = metric_keys(rows)
    if not keys:
        raise DataError(title or None, "no numeric metrics to plot")
    order = ["losses", "segmentation", "detection", "throughput", "learning rate", "other"]
    groups = {g: [k for k in keys if _panel_for(k) == g] for g in order}
    groups = {g: ks for g, ks in groups.items() if ks}
    ncols = min(2, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig = Figure(figsize=(7.0 * ncols, 4.4 * nrows), dpi=100)
    for j, (g, ks) in enumerate(groups.items()):
        _curves_panel(fig.add_subplot(nrows, ncols, j + 1), g, ks, rows, xs)
        fig.axes[-1].set_xlabel(xkey or "record")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _curves_panel(ax, group: str, ks: list[str], rows: list[dict], xs: np.ndarray) -> None:
    positive = True
    per_class = [k for k in ks if len(k.split("/")) >= 3]          # e.g. val/ap/car, val/iou/road
    # throughput: durations (s) and rates differ by orders of magnitude -> durations on a twin axis
    timed = [k for k in ks if k.lower().split("/")[-1].endswith("time")] if group == "throughput" else []
    ax2 = ax.twinx() if timed and len(timed) < len(ks) else None
    if ax2 is not None:
        ax2.set_ylabel("seconds", fontsize=9)
    for k in ks:
        target = ax2 if ax2 is not None and k in timed else ax
        ys = np.array([float(r[k]) if _is_num(r.get(k)) else np.nan for r in rows])
        ok = np.isfinite(ys)
        if not ok.any():
            continue
        positive &= bool((ys[ok] > 0).all())
        thin = k in per_class
        target.plot(xs[ok], ys[ok], "--" if k.startswith("val") else "-", lw=0.9 if thin else 1.8,
                    alpha=0.7 if thin else 1.0, marker="" if ok.sum() > 30 else ".",
                    label=k + (" (right)" if target is not ax else ""), color=f"C{ks.index(k) % 10}")
    if group in ("losses", "learning rate") and positive:
        ax.set_yscale("log")
    ax.set_title(group)
    integer_ticks(ax)
    ax.grid(True, lw=0.3, alpha=0.6)
    handles, labels = ax.get_legend_handles_labels()
    if ax2 is not None:
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8, ncol=2 if len(ks) > 8 else 1, loc="best")


def plot_curves(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Plot every numeric key of ``RUN/metrics.jsonl`` against epoch (``curves_figure``) and write
    ``RUN/curves.png`` (or ``out``) atomically. ``run_dir`` may also be the metrics.jsonl file itself.
    Returns the PNG path."""
    run_dir = Path(run_dir)
    metrics_path = run_dir if run_dir.suffix == ".jsonl" else run_dir / "metrics.jsonl"
    rows = read_metrics(metrics_path)
    if not metric_keys(rows):
        raise DataError(metrics_path, "no numeric metrics to plot")
    fig = curves_figure(rows, f"{metrics_path}  ({len(rows)} records)")
    out_path = Path(out) if out is not None else metrics_path.parent / "curves.png"
    return _save_fig(out_path, fig)


__all__ = [
    "bev_display",
    "bev_display_pixel",
    "colorize_semantic",
    "curves_figure",
    "denormalise_image",
    "find_frame",
    "frame_camera",
    "frame_sheet",
    "heatmap_panels",
    "integer_ticks",
    "model_cam_matrix",
    "overlay_semantic",
    "plot_curves",
    "read_metrics",
    "semantic_palette",
    "semantic_panels",
    "write_debug_images",
]
