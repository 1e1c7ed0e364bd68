"""Scores of runtime results against their frames' ground truth, torch-free: what ``mtl infer --eval`` reports.

``score_results`` feeds the shared ``mtl.metrics.MetricsAccumulator`` (the one behind ``mtl eval``, the
export gate and ``mtl bench``) frame by frame, each frame on the labels it carries:

- semantics when the frame has a camera image and a semantic label (``gt_semantic``);
- detection when it has LiDAR points and 3D labels (``gt_boxes``) — the same rule as ``mtl eval`` on
  ``--partial`` chunks (``mtl.dataset.scored_tasks``).

Boxes are re-decoded from the raw heatmap at ``decode.eval_score_threshold`` when the result kept its outputs
(``run_frame(keep_outputs=True)``), exactly as ``mtl eval`` decodes; otherwise the result's own boxes (cut at
the runtime's ``decode.score_threshold``) are scored and ``boxes_scored`` says so.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ..config import Config
from ..errors import DataError
from ..geometry import sigmoid
from ..metrics import MetricsAccumulator, confusion_matrix, metric_detections
from .frames import RuntimeFrame
from .postprocess import Result


def frame_tasks(frame: RuntimeFrame) -> tuple[bool, bool]:
    """(semantic, detection): what ``frame`` can be scored on (module docstring)."""
    points = frame.points if frame.points is not None else np.zeros((0, 4))
    return (frame.gt_semantic is not None and frame.has_image,
            frame.gt_boxes is not None and len(points) > 0)


def metric_boxes(result: Result, cfg: Config, heatmap_activation: str = "sigmoid") -> tuple[dict[str, Any], str]:
    """(``boxes``/``scores``/``labels`` for ``MetricsAccumulator.add_frame``, where they came from)."""
    out = result.outputs
    if "bbox_heatmap" in out and "bbox_reg" in out:
        heat = np.asarray(out["bbox_heatmap"][0], np.float32)
        if heatmap_activation == "none":          # a graph that returns logits
            heat = sigmoid(heat)
        return (metric_detections(heat, np.asarray(out["bbox_reg"][0], np.float32), cfg),
                f"heatmap decoded at the evaluation cut (score > {cfg.decode.eval_score_threshold:g})")
    return ({"boxes": result.boxes, "scores": result.scores, "labels": result.labels},
            f"runtime boxes (score > {cfg.decode.score_threshold:g})")


def score_results(pairs: Iterable[tuple[Result, RuntimeFrame]], cfg: Config,
                  heatmap_activation: str = "sigmoid") -> dict[str, Any]:
    """mIoU, pixel accuracy and mAP of runtime results against the ground truth of their frames.

    Args:
        pairs: ``(result, frame)`` per processed frame; ``frame`` from ``iter_frames(..., with_gt=True)`` (its
            ``gt_semantic`` at the model image size, like ``result.semantic``).
        cfg: the model's config (``pipe.cfg``): classes, score cut, top-K.
        heatmap_activation: ``pipe.spec.heatmap_activation`` ("none": the heatmap output is logits).

    Returns:
        ``MetricsAccumulator.compute()`` (``miou``, ``pixel_acc``, ``mean_acc``, ``per_class_iou``, ``map``,
        ``ap``, ``ap_by_threshold``, ``n_gt``, ``frames``) plus ``semantic_frames`` / ``detection_frames`` (frames
        scored per task; a metric over 0 frames is meaningless, show it as missing), ``unscored_frames`` (ids of
        frames with no label to score), ``boxes_scored`` (how the scored boxes were decoded) and ``per_frame``
        {id: {``pixel_acc`` (None without a semantic label), ``gt_boxes`` (None without 3D labels)}}.

    Raises:
        DataError: a semantic label whose size differs from the result's (named by frame).
    """
    acc = MetricsAccumulator.from_config(cfg)
    per_frame: dict[str, dict[str, Any]] = {}
    unscored: list[str] = []
    sources: set[str] = set()
    for res, frame in pairs:
        with_sem, with_det = frame_tasks(frame)
        if not (with_sem or with_det):
            unscored.append(res.frame_id)
            continue
        kw: dict[str, Any] = {}
        if with_sem:
            if np.shape(frame.gt_semantic) != np.shape(res.semantic):
                raise DataError(frame.source or frame.frame_id,
                                f"frame {frame.frame_id}: semantic label {np.shape(frame.gt_semantic)} and "
                                f"prediction {np.shape(res.semantic)} differ in size")
            kw.update(semantic_pred=res.semantic, semantic_gt=frame.gt_semantic)
        if with_det:
            det, source = metric_boxes(res, cfg, heatmap_activation)
            sources.add(source)
            kw.update(det, gt_boxes=frame.gt_boxes, gt_labels=frame.gt_labels)
        acc.add_frame(res.frame_id, **kw)
        per_frame[res.frame_id] = {"pixel_acc": _pixel_acc(res.semantic, frame.gt_semantic, cfg) if with_sem else None,
                                   "gt_boxes": int(len(frame.gt_boxes)) if with_det else None}
    return {**acc.compute(), "semantic_frames": acc.n_semantic_frames, "detection_frames": acc.n_detection_frames,
            "unscored_frames": unscored, "boxes_scored": sorted(sources), "per_frame": per_frame}


def _pixel_acc(pred: np.ndarray, gt: np.ndarray, cfg: Config) -> float | None:
    """One frame's pixel accuracy with the accumulator's rules (ignore pixels and unknown ids left out)."""
    m = confusion_matrix(gt, pred, cfg.classes.n_sem, cfg.classes.ignore_index)
    total = int(m.sum())
    return float(np.trace(m) / total) if total else None


__all__ = ["frame_tasks", "metric_boxes", "score_results"]
