"""The report section of an ``mtl infer`` output directory: a contact sheet (camera overlay and BEV view side
by side per frame), a per-frame detections table, and the metrics when the frames had ground truth.

``read_infer`` is the one place that knows infer's output layout (``mtl.runtime.results``): per frame
``frames/<id>.json`` (boxes, ``modality``, ``decode``), ``frames/<id>_sem.png`` (class ids),
``frames/<id>_sem_color.png`` (colours) and optional ``frames/<id>_overlay.png``, then ``summary.json``
(``files`` names the frames in order; ``modalities``, ``decode``, and with ``mtl infer --eval`` the metrics
under ``metrics`` in the shape of ``mtl.runtime.scoring.score_results``). Outputs of older versions, with the
per-frame files beside ``summary.json``, are read too."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config
from ..errors import DataError, MtlError
from .html import Section, esc, fmt, note, table

MAX_SHEET = 24          # frames on the contact sheet (the table lists them all)
MAX_TABLE = 1000


def _json(p: Path) -> Any:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise DataError(p, f"not readable JSON ({type(e).__name__}: {e})") from None


def _local(path: Path, name: Any) -> Path | None:
    """``path/name`` when ``name`` is a plain file name of an existing file (never a path that leaves it)."""
    if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
        return None
    p = path / name
    return p if p.is_file() else None


def read_infer(path: Path) -> dict[str, Any]:
    """``{"path", "summary", "frames": [{"name", "doc", "modality", "semantic_png", "semantic_color_png",
    "overlay_png"}], "metrics"}`` of an infer output folder (layout in the module docstring). Raises
    ``DataError`` when it holds no frame, or when ``summary.json`` lists a frame whose JSON is missing."""
    summary = _json(path / "summary.json") if (path / "summary.json").is_file() else {}
    base = path / "frames" if (path / "frames").is_dir() else path          # the flat layout of older versions
    listed = summary.get("files") if isinstance(summary.get("files"), list) else None
    names = listed if listed is not None else sorted(
        p.stem for p in base.glob("*.json") if base != path or p.name not in ("summary.json", "manifest.json"))
    frames = []
    for name in names:
        p = _local(base, f"{name}.json")
        if p is None and listed is not None:
            raise DataError(path / "summary.json", f"lists frame {name!r} but {name}.json is not there")
        doc = _json(p) if p else None
        if not isinstance(doc, dict) or not isinstance(doc.get("detections"), list):
            continue
        frames.append({"name": name, "doc": doc, "modality": doc.get("modality"),
                       "semantic_png": _local(base, doc.get("semantic_png", f"{name}_sem.png")),
                       "semantic_color_png": _local(base, doc.get("semantic_color_png")),
                       "overlay_png": _local(base, doc.get("overlay_png"))})
    if not frames:
        raise DataError(path, "no mtl infer frames here (frames/<id>.json with 'detections')")
    metrics = summary.get("metrics")
    return {"path": path, "summary": summary, "frames": frames,
            "metrics": metrics if isinstance(metrics, dict) else None}


def is_infer(path: Path) -> bool:
    """A folder whose summary.json is infer's (its frames are read, and their errors reported, later)."""
    if not (path / "summary.json").is_file():
        return False
    try:
        summary = json.loads((path / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and ("frames_written" in summary or "files" in summary)


# ------------------------------------------------------------------------------------------ section


def infer_section(path: Path, anchor: str) -> Section:
    run = read_infer(path)
    s = run["summary"]
    sec = Section(anchor, f"Inference: {path}", "infer", str(path))
    cfg, cfg_note = _model_config(s)
    shown = run["frames"][:MAX_SHEET]
    data, data_note = _data_frames(s, [f["doc"].get("frame_id") for f in shown], cfg)
    parts = [_header(s, len(run["frames"])), note(cfg_note) if cfg_note else "", note(data_note) if data_note else ""]
    m = run["metrics"]
    if m:
        parts.append(_metrics(m))
        sec.key_metrics.append({"source": str(path), "what": f"inference on labelled frames of {s.get('data', '-')}",
                                "frames": m.get("frames"), "miou": m.get("miou") if m.get("semantic_frames") else None,
                                "pixel_acc": m.get("pixel_acc") if m.get("semantic_frames") else None,
                                "map": m.get("map") if m.get("detection_frames") else None})
    parts.append(f"<h3>Contact sheet ({len(shown)} of {len(run['frames'])} frames)</h3><div class=\"sheet\">")
    for i, fr in enumerate(shown):
        parts.append(_card(fr, data.get(fr["doc"].get("frame_id")), cfg, s, f"img/{anchor}/{i:03d}", sec.files))
    parts.append("</div>")
    parts.append(_frames_table(run["frames"], m))
    sec.body = "\n".join(p for p in parts if p)
    return sec


def _header(s: dict, n_frames: int) -> str:
    skipped = ", ".join(f"{v} {k}" for k, v in (s.get("frames_skipped") or {}).items()) or "none"
    kinds = ", ".join(f"{v} {k}" for k, v in (s.get("modalities") or {}).items() if v)
    d = s.get("decode") or {}
    cut = (f" (score &gt; {fmt(d.get('score_threshold'), 3)}, at most {fmt(d.get('max_detections'))} per frame"
           f"{', set for this run' if d.get('overrides') else ''})" if d else "")
    t = s.get("mean_timing_ms") or {}
    timing = table(["stage"] + list(t), [["mean ms"] + list(t.values())]) if t else ""
    stand_in = ((s.get("modalities") or {}).get("lidar-only") or 0) > 0
    return (f"<p>{n_frames} frames{f' ({esc(kinds)})' if kinds else ''} &middot; model "
            f"<code>{esc(s.get('model', '-'))}</code> ({esc(s.get('precision', '-'))}) &middot; backend "
            f"{esc(s.get('backend', '-'))} ({esc(', '.join(s.get('providers') or []))}) &middot; "
            f"data <code>{esc(s.get('data', '-'))}</code> ({esc(s.get('source', '-'))}) &middot; skipped: "
            f"{esc(skipped)} &middot; {fmt(s.get('detections'))} detections{cut}</p>" +
            ('<p class="muted">LiDAR-only frames ran with a mean-colour stand-in camera image (as mtl eval feeds '
             "them): their boxes are predictions, their semantic map is empty.</p>" if stand_in else "") + timing)


def _model_config(s: dict) -> tuple[Config, str]:
    """The model's config from its ONNX metadata (class names, grid, calibration), else the default one."""
    model = s.get("model")
    try:
        from ..contract import read_onnx_metadata
        from ..runtime.preprocess import ModelSpec

        if not model or not str(model).endswith(".onnx"):
            raise DataError(model, "not an ONNX model")
        return ModelSpec.from_metadata(read_onnx_metadata(model), model).cfg, ""
    except (MtlError, ImportError) as e:
        return Config(), f"model metadata not readable ({e}): class names, grid and calibration of the default config"


def _data_frames(s: dict, wanted: list[Any], cfg: Config) -> tuple[dict[str, Any], str]:
    """The input frames (LiDAR points, camera, ground truth) of the shown frames, when the data is readable."""
    data = s.get("data")
    if not data or not Path(data).exists():
        return {}, f"input data {data!r} not found: BEV views show the detections without LiDAR points"
    from ..runtime.frames import iter_frames

    want, found = {w for w in wanted if w}, {}
    try:
        for f in iter_frames(data, cfg, with_gt=True):
            if f.frame_id in want:
                found[f.frame_id] = f
                if len(found) == len(want):
                    break
    except MtlError as e:
        return found, f"input data not fully readable ({e})"
    return found, ""


def _detections(doc: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dets = doc.get("detections") or []
    boxes = np.array([[d.get(k, 0.0) for k in ("x", "y", "z", "l", "w", "h", "yaw")] for d in dets],
                     np.float64).reshape(-1, 7)
    return boxes, np.array([int(d.get("label", -1)) for d in dets], np.int64), \
        np.array([float(d.get("score", 0.0)) for d in dets])


def _card(fr: dict, frame: Any, cfg: Config, s: dict, base: str, files: dict[str, bytes]) -> str:
    from .. import draw

    doc = fr["doc"]
    fid = doc.get("frame_id", fr["name"])
    boxes, labels, scores = _detections(doc)
    if fr["modality"] == "lidar-only":
        files[f"{base}_camera.png"] = draw.encode(draw.with_title(draw.placeholder(
            "no camera image: a LiDAR-only frame (run with a stand-in image; no semantic prediction)", (320, 512)),
            f"{fid} \u00b7 LiDAR only"))
    elif fr["overlay_png"] is not None:
        files[f"{base}_camera.png"] = fr["overlay_png"].read_bytes()
    else:
        files[f"{base}_camera.png"] = draw.encode(_camera(fr, frame, cfg, s, (boxes, labels, scores)))
    gt = (frame.gt_boxes, frame.gt_labels) if frame is not None and frame.gt_boxes is not None else (None, None)
    pts = frame.points if frame is not None and len(frame.points) else None
    n_gt = "" if gt[0] is None else f", {len(gt[0])} ground truth"
    n_gt += ", no LiDAR points in this frame" if frame is not None and pts is None else ""
    files[f"{base}_bev.png"] = draw.encode(draw.bev_view(
        cfg.grid, points=pts, boxes=boxes, labels=labels, scores=scores, gt_boxes=gt[0], gt_labels=gt[1],
        det_names=cfg.classes.det_classes, title=f"{fid}: {len(boxes)} predicted{n_gt}"))
    kind = f" &middot; {esc(fr['modality'])}" if fr["modality"] else ""
    return (f'<div class="card"><h4>{esc(fid)} &middot; {len(boxes)} detections{kind}</h4><div class="pair">'
            f'<a href="{base}_camera.png"><img src="{base}_camera.png" alt="camera overlay of {esc(fid)}"></a>'
            f'<a href="{base}_bev.png"><img src="{base}_bev.png" alt="bird\'s-eye view of {esc(fid)}"></a></div></div>')


def _camera(fr: dict, frame: Any, cfg: Config, s: dict, det: tuple) -> np.ndarray:
    """The camera overlay drawn here when infer wrote none: the input image when readable, else the coloured
    semantic prediction alone."""
    from .. import draw
    from ..io import decode_png

    c = cfg.classes
    sem = decode_png(fr["semantic_png"].read_bytes(), fr["semantic_png"], "L") if fr["semantic_png"] else None
    palette = draw.semantic_palette(c)
    title = (f"{fr['doc'].get('frame_id', fr['name'])} \u00b7 {Path(str(s.get('model', '-'))).name} \u00b7 "
             f"{len(det[0])} boxes, score > {cfg.decode.score_threshold:g}")
    if frame is not None and frame.has_image:
        from ..viz import frame_camera

        img, k = frame_camera(frame, cfg)
        return draw.camera_overlay(img, k, semantic=sem, palette=palette, sem_names=c.sem_classes, boxes=det[0],
                                   labels=det[1], scores=det[2], det_names=c.det_classes, title=title,
                                   ignore_index=c.ignore_index)
    if sem is not None:
        colour = draw.colorize_semantic(sem, palette)
        entries = draw.semantic_legend_entries(sem, c.sem_classes, palette)
        return draw.with_title(draw.vstack([colour, draw.legend(entries, colour.shape[1])], gap=0),
                               title + " \u00b7 semantic prediction (camera image not available)")
    return draw.with_title(draw.placeholder("no camera image and no semantic map", (320, 512)), title)


def _metrics(m: dict) -> str:
    n_sem, n_det = m.get("semantic_frames", 0), m.get("detection_frames", 0)
    rows = [["mIoU", m.get("miou") if n_sem else None, n_sem], ["pixel accuracy", m.get("pixel_acc") if n_sem else None,
                                                                n_sem], ["mAP", m.get("map") if n_det else None, n_det]]
    out = ["<h3>Metrics against the frames' ground truth</h3>",
           table(["metric", "value", "frames scored"], rows)]
    if m.get("boxes_scored"):
        out.append(f'<p class="muted">boxes scored: {esc("; ".join(m["boxes_scored"]))}</p>')
    iou = {k: v for k, v in (m.get("per_class_iou") or {}).items() if v is not None}
    ap = {k: v for k, v in (m.get("ap") or {}).items() if v is not None}
    if iou:
        out.append(table(["class", "IoU"], list(iou.items())))
    if ap:
        out.append(table(["class", "AP", "GT boxes"], [[k, v, (m.get("n_gt") or {}).get(k)] for k, v in ap.items()]))
    return "\n".join(out)


def _frames_table(frames: list[dict], m: dict | None) -> str:
    per = (m or {}).get("per_frame") or {}
    rows = []
    for fr in frames[:MAX_TABLE]:
        doc = fr["doc"]
        fid = doc.get("frame_id", fr["name"])
        dets = doc.get("detections") or []
        counts: dict[str, int] = {}
        for d in dets:
            counts[str(d.get("class"))] = counts.get(str(d.get("class")), 0) + 1
        top = max((float(d.get("score", 0)) for d in dets), default=None)
        row = [fid, fr.get("modality") or "-", len(dets), ", ".join(f"{k} {v}" for k, v in counts.items()) or "-",
               top, (doc.get("timing_ms") or {}).get("total"), doc.get("points")]
        if per:
            row += [(per.get(fid) or {}).get("pixel_acc"), (per.get(fid) or {}).get("gt_boxes")]
        rows.append(row)
    head = ["frame", "modality", "detections", "per class", "top score", "total ms", "LiDAR points"]
    head += ["pixel acc", "GT boxes"] if per else []
    more = f'<p class="muted">first {MAX_TABLE} of {len(frames)} frames</p>' if len(frames) > MAX_TABLE else ""
    return "<h3>Detections per frame</h3>" + table(head, rows) + more
