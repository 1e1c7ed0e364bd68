"""Model outputs -> detections in metres with class names, and a semantic class-id map. Torch-free.

Uses the shared decoder (``mtl.geometry.decode_detections``) with the model's ``cfg.decode`` settings, so
runtime boxes equal the ones training/eval decode from the same tensors. A model exported with the decode
head (metadata ``decode: true``) already returns ``det_scores`` / ``det_labels`` / ``det_boxes``; those
are used as they are (filtered by ``cfg.decode.score_threshold``).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import Config
from ..geometry import decode_detections, sigmoid
from . import kernels
from .split import RowSplit, finished_at


@dataclass
class Result:
    """One frame's predictions (``Pipeline.run_frame`` / ``Pipeline.run``)."""

    frame_id: str
    boxes: np.ndarray                       # (n, 7) float32 x, y, z, l, w, h (metres), yaw (rad), score-sorted
    scores: np.ndarray                      # (n,) float32, descending, > cfg.decode.score_threshold
    labels: np.ndarray                      # (n,) int64 ids into cfg.classes.det_classes
    label_names: list[str]                  # (n,) the class names of ``labels``
    semantic: np.ndarray                    # (H, W) uint8 ids into cfg.classes.sem_classes, model image size
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # raw outputs (batch 1; keep_outputs=True)
    timings_ms: dict[str, float] = field(default_factory=dict)    # stage -> ms (preprocess.STAGES)
    info: dict[str, Any] = field(default_factory=dict)            # points, points_dropped_nonfinite
    image: np.ndarray | None = None         # model-size uint8 RGB (keep_image=True)

    def __repr__(self) -> str:
        from .frames import clip, describe_array

        shown = [f"{n} {s:.2f}" for n, s in zip(self.label_names[:3], self.scores[:3])]
        if len(self.label_names) > 3:
            shown.append(f"+{len(self.label_names) - 3} more")
        parts = [f"id={clip(self.frame_id)!r}", f"detections={len(self.boxes)} [{', '.join(shown)}]",
                 f"semantic={describe_array(self.semantic)}"]
        if "points" in self.info:
            dropped = self.info.get("points_dropped_nonfinite", 0)
            parts.append(f"points={self.info['points']}" + (f" ({dropped} non-finite dropped)" if dropped else ""))
        if self.outputs:
            parts.append(f"outputs=[{', '.join(clip(k, 24) for k in list(self.outputs)[:8])}]")
        if self.image is not None:
            parts.append(f"image={describe_array(self.image)}")
        if "total" in self.timings_ms:
            parts.append(f"total={self.timings_ms['total']:.1f} ms")
        return f"Result({', '.join(parts)})"

    def to_json(self, sem_classes: tuple[str, ...] = ()) -> dict:
        """JSON-ready dict (what ``mtl infer`` writes): ``frame_id``, ``detections`` (one dict per box: ``class``,
        ``label``, ``score``, ``x y z l w h`` in metres, ``yaw`` in rad), ``n_detections``, ``semantic`` (shape,
        ``sem_classes`` and the pixel count per class present), ``timing_ms`` and ``info``'s keys."""
        dets = [{"class": n, "label": int(lab), "score": round(float(s), 6),
                 **{k: round(float(v), 6) for k, v in zip(("x", "y", "z", "l", "w", "h", "yaw"), b)}}
                for b, s, lab, n in zip(self.boxes, self.scores, self.labels, self.label_names)]
        out = {"frame_id": self.frame_id, "detections": dets, "n_detections": len(dets),
               "semantic": {"shape": list(self.semantic.shape), "classes": list(sem_classes),
                            "pixels_per_class": _class_counts(self.semantic, sem_classes)},
               "timing_ms": {k: round(v, 4) for k, v in self.timings_ms.items()}, **self.info}
        return out


def _class_counts(ids: np.ndarray, names: tuple[str, ...]) -> dict[str, int]:
    counts = np.bincount(ids.ravel(), minlength=256)
    return {n: int(counts[i]) for i, n in enumerate(names) if counts[i]}


def decode_outputs(outputs: dict[str, np.ndarray], cfg: Config, heatmap_activation: str = "sigmoid",
                   decoded_in_graph: bool = False, submit: Callable[..., Future] | None = None,
                   split: RowSplit | None = None) -> dict[str, np.ndarray]:
    """Batch-1 outputs -> ``boxes``, ``scores``, ``labels`` and ``semantic`` (uint8 argmax).

    ``submit(fn, *args) -> Future`` (``Pipeline``'s helper thread) runs the semantic argmax of the upper rows
    while the boxes decode and the other rows' argmax run here: half of the rows, or as many as ``split``
    has learned make both threads finish together. The result is the same either way (the argmax is per
    pixel)."""
    logits = np.asarray(outputs["sem_logits"][0])                      # (n_sem, H, W)
    semantic = np.empty(logits.shape[1:], np.uint8)
    h = logits.shape[1]
    rows = (split.rows(h) if split is not None else h // 2) if submit is not None else 0
    sem_job = submit(finished_at, argmax_rows, logits, semantic, 0, rows) if rows else None
    try:
        det = _boxes(outputs, cfg, heatmap_activation, decoded_in_graph)
        t0 = time.perf_counter()
        argmax_rows(logits, semantic, rows, h)
        t1 = time.perf_counter()
    except BaseException:
        if sem_job is not None:
            wait([sem_job])                  # never leave the helper writing into a dropped frame's map
        raise
    if sem_job is not None:
        helper_end = sem_job.result()
        if split is not None:
            split.observe(h, h - rows, (t1 - t0) * 1e3, (t1 - helper_end) * 1e3)
    det["semantic"] = semantic
    return det


def _boxes(outputs: dict[str, np.ndarray], cfg: Config, heatmap_activation: str, decoded_in_graph: bool
           ) -> dict[str, np.ndarray]:
    """``boxes`` / ``scores`` / ``labels`` above ``cfg.decode.score_threshold``: the in-graph decode's outputs
    when the model has them, else ``geometry.decode_detections`` on the heatmap."""
    d = cfg.decode
    if decoded_in_graph and {"det_scores", "det_labels", "det_boxes"} <= set(outputs):
        scores = np.asarray(outputs["det_scores"], np.float32).reshape(-1)
        labels = np.asarray(outputs["det_labels"]).reshape(-1).astype(np.int64)
        boxes = np.asarray(outputs["det_boxes"], np.float32).reshape(-1, 7)
        keep = scores > d.score_threshold
        order = np.argsort(-scores[keep], kind="stable")[: d.max_detections]   # fewer than K: Pipeline.set_decode
        return {"boxes": boxes[keep][order], "scores": scores[keep][order], "labels": labels[keep][order]}
    heat = np.asarray(outputs["bbox_heatmap"][0], np.float32)
    if heatmap_activation == "none":
        heat = sigmoid(heat)
    return decode_detections(heat, np.asarray(outputs["bbox_reg"][0], np.float32), cfg.grid,
                             k=d.max_detections, score_threshold=d.score_threshold, kernel=d.nms_kernel,
                             candidates=kernels.peak_candidates if kernels.available() else None)


def argmax_rows(logits: np.ndarray, out: np.ndarray, r0: int, r1: int) -> None:
    """``argmax_channels`` of rows r0..r1 of (C, H, W) ``logits`` into the same rows of (H, W) uint8 ``out``."""
    if r1 <= r0:
        return
    if (kernels.available() and 0 < logits.shape[0] <= 256 and logits.dtype == np.float32
            and logits.flags.c_contiguous and out.flags.c_contiguous):
        kernels.kernel("argmax_channels")(logits, out, r0, r1)    # same rules in one pass (runtime.kernels)
    else:
        argmax_channels(logits[:, r0:r1], out[r0:r1])


def argmax_channels(logits: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(C, H, W) -> (H, W) uint8 ``argmax`` over C (first max wins, NaN like np.argmax), one pass per channel
    into ``out`` (allocated when None): ~10x faster than ``np.argmax(axis=0)`` on (18, 320, 512) because it
    streams contiguous planes. A NaN anywhere propagates through ``np.maximum`` into ``best``, so one check
    at the end decides whether np.argmax's NaN rule (the first NaN wins) has to be applied. The numpy
    reference of ``runtime.kernels``' compiled argmax (``argmax_rows`` picks)."""
    if out is None:
        out = np.empty(logits.shape[1:], np.uint8)
    if logits.shape[0] > 255:
        out[...] = np.argmax(logits, axis=0)
        return out
    best = logits[0].copy()
    mask = np.empty(logits.shape[1:], np.bool_)
    out.fill(0)
    for c in range(1, logits.shape[0]):
        np.greater(logits[c], best, out=mask)
        out[mask] = c
        np.maximum(best, logits[c], out=best)
    if np.isnan(best).any():
        out[...] = np.argmax(logits, axis=0)
    return out


def box_outline_segments(boxes: np.ndarray, k: np.ndarray, image_hw: tuple[int, int]) -> list[list[tuple]]:
    """Image-plane line segments of each box's 12 edges (both ends in front of the camera)."""
    from ..draw import box_edges_image

    return box_edges_image(boxes, k)


def overlay(result: Result, cfg: Config, alpha: float = 0.45, *, model: str | None = None) -> np.ndarray:
    """What ``mtl infer --overlay`` writes: the model-size camera image with the semantic colours blended in,
    the predicted 3D boxes projected and labelled ``class score`` in their class colour, a title (frame id,
    ``model`` when given, the score threshold) and a legend (``mtl.draw.camera_overlay``; numpy + PIL only).
    Returns (H', W', 3) uint8, H' > H (title and legend rows)."""
    from ..draw import camera_overlay, semantic_palette
    from ..geometry import cam_matrix, scale_cam_matrix

    if result.image is None:
        raise ValueError("overlay needs the prepared image (run the pipeline with keep_image=True)")
    c = cfg.classes
    k = scale_cam_matrix(cam_matrix(cfg.camera), tuple(cfg.camera.resolution_wh), tuple(result.image.shape[:2]))
    title = " \u00b7 ".join([result.frame_id] + ([model] if model else []) +
                            [f"{len(result.boxes)} boxes, score > {cfg.decode.score_threshold:g}"])
    return camera_overlay(result.image, k, semantic=result.semantic, palette=semantic_palette(c),
                          sem_names=c.sem_classes, boxes=result.boxes, labels=result.labels, scores=result.scores,
                          det_names=c.det_classes, title=title, alpha=alpha, ignore_index=c.ignore_index)


__all__ = ["Result", "box_outline_segments", "decode_outputs", "overlay"]
