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


def frame_record(result: Result, frame: RuntimeFrame, cfg: Config, heatmap_activation: str = "sigmoid"
                 ) -> dict[str, Any]:
    """What one frame adds to the metrics, small and JSON-ready (``mtl infer --eval`` stores it in the frame's
    JSON, so a resumed run still counts finished frames without keeping or re-running anything):

    - ``"semantic": {"confusion": [[gt, pred, pixels], ...]}`` (the frame's non-zero confusion-matrix cells)
      when the frame has a camera image and a semantic label;
    - ``"detection": {"boxes": [[x, y, z, l, w, h, yaw], ...], "scores", "labels", "gt_boxes", "gt_labels",
      "source"}`` when it has LiDAR points and 3D labels (``metric_boxes``: at most ``decode.max_detections``
      predictions);

    ``{}`` when it carries nothing to score. Floats are kept exactly (no rounding): a stored record scores
    like the frame itself. Raises ``DataError`` for a semantic label of another size than the prediction."""
    with_sem, with_det = frame_tasks(frame)
    rec: dict[str, Any] = {}
    if with_sem:
        if np.shape(frame.gt_semantic) != np.shape(result.semantic):
            raise DataError(frame.source or frame.frame_id,
                            f"frame {frame.frame_id}: semantic label {np.shape(frame.gt_semantic)} and "
                            f"prediction {np.shape(result.semantic)} differ in size")
        m = confusion_matrix(frame.gt_semantic, result.semantic, cfg.classes.n_sem, cfg.classes.ignore_index)
        gt, pred = np.nonzero(m)
        rec["semantic"] = {"confusion": [[int(g), int(p), int(m[g, p])] for g, p in zip(gt, pred)]}
    if with_det:
        det, source = metric_boxes(result, cfg, heatmap_activation)
        rec["detection"] = {"boxes": _floats(det["boxes"], 7), "scores": _floats(det["scores"]),
                            "labels": [int(v) for v in np.asarray(det["labels"]).reshape(-1)],
                            "gt_boxes": _floats(frame.gt_boxes, 7),
                            "gt_labels": [int(v) for v in np.asarray(frame.gt_labels).reshape(-1)], "source": source}
    return rec


def _floats(a: Any, width: int | None = None) -> list:
    """Exact Python floats (JSON round-trips them bit for bit), rows of ``width`` when given."""
    v = np.asarray(a, np.float64)
    return v.reshape(-1, width).tolist() if width else v.reshape(-1).tolist()


class Scorer:
    """Metrics over frames fed one ``frame_record`` at a time (streaming: it keeps the summed confusion
    matrix and the frames' detections, never an image); ``compute`` gives ``score_results``'s dict."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.acc = MetricsAccumulator.from_config(cfg)
        self.per_frame: dict[str, dict[str, Any]] = {}
        self.unscored: list[str] = []
        self.sources: set[str] = set()

    def add(self, frame_id: str, record: dict[str, Any], key: str | None = None) -> None:
        """One frame's record (``frame_record``; ``{}``: unscored). ``key`` names it in the accumulator when
        frame ids may repeat (``mtl infer`` passes the frame's unique file name). ``ValueError`` for a record
        that is not one (``check_record`` first for records read back from files)."""
        sem, det = record.get("semantic"), record.get("detection")
        if not sem and not det:
            self.unscored.append(frame_id)
            return
        kw: dict[str, Any] = {}
        entry: dict[str, Any] = {"pixel_acc": None, "gt_boxes": None}
        if sem:
            n = self.cfg.classes.n_sem
            m = np.zeros((n, n), np.int64)
            for g, p, c in sem["confusion"]:
                m[g, p] += c
            kw["semantic_confmat"] = m
            total = int(m.sum())
            entry["pixel_acc"] = float(np.trace(m) / total) if total else None
        if det:
            kw.update(boxes=np.asarray(det["boxes"], np.float64).reshape(-1, 7),
                      scores=np.asarray(det["scores"], np.float64), labels=np.asarray(det["labels"], np.int64),
                      gt_boxes=np.asarray(det["gt_boxes"], np.float64).reshape(-1, 7),
                      gt_labels=np.asarray(det["gt_labels"], np.int64))
            self.sources.add(str(det["source"]))
            entry["gt_boxes"] = len(det["gt_boxes"])
        self.acc.add_frame(key or frame_id, **kw)
        self.per_frame[frame_id] = entry

    def merge(self, other: Scorer) -> None:
        """Add another scorer's frames after this one's (e.g. another worker's shard)."""
        self.acc.merge(other.acc)
        self.per_frame.update(other.per_frame)
        self.unscored += other.unscored
        self.sources |= other.sources

    def compute(self) -> dict[str, Any]:
        return {**self.acc.compute(), "semantic_frames": self.acc.n_semantic_frames,
                "detection_frames": self.acc.n_detection_frames, "unscored_frames": list(self.unscored),
                "boxes_scored": sorted(self.sources), "per_frame": dict(self.per_frame)}


def check_record(record: Any, cfg: Config) -> bool:
    """Whether ``record`` (read back from a file) is a well-formed ``frame_record`` for ``cfg``'s classes."""
    if not isinstance(record, dict):
        return False
    n_sem, n_det = cfg.classes.n_sem, cfg.classes.n_det
    try:
        sem, det = record.get("semantic"), record.get("detection")
        if sem is not None:
            cells = np.asarray(sem["confusion"], np.int64).reshape(-1, 3)
            if len(sem["confusion"]) != len(cells) or not ((cells[:, :2] >= 0) & (cells[:, :2] < n_sem)).all() \
                    or (cells[:, 2] < 0).any():
                return False
        if det is not None:
            b, s, lab = (np.asarray(det[k], np.float64) for k in ("boxes", "scores", "labels"))
            gb, gl = np.asarray(det["gt_boxes"], np.float64), np.asarray(det["gt_labels"], np.float64)
            shapes = b.reshape(-1, 7).shape[0] == len(s) == len(lab) and gb.reshape(-1, 7).shape[0] == len(gl)
            finite = all(np.isfinite(x).all() for x in (b, s, gb))
            ranges = ((lab >= 0) & (lab < n_det)).all() and ((gl >= -1) & (gl < n_det)).all()
            if not (shapes and finite and ranges and isinstance(det["source"], str)):
                return False
    except (KeyError, TypeError, ValueError):
        return False
    return True


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
    scorer = Scorer(cfg)
    for res, frame in pairs:
        scorer.add(res.frame_id, frame_record(res, frame, cfg, heatmap_activation))
    return scorer.compute()


__all__ = ["Scorer", "check_record", "frame_record", "frame_tasks", "metric_boxes", "score_results"]
