"""Evaluation metrics and class weights (numpy only, torch-free: used by training, ``mtl eval`` and the runtime).

- Semantic: confusion matrix (rows = ground truth) -> per-class IoU, mIoU, pixel accuracy, mean class
  accuracy with mmsegmentation ``IoUMetric`` semantics: areas are summed over the whole dataset before
  dividing, and classes whose union is zero are left out of the means (their IoU is ``None``).
- Detection: nuScenes centre-distance AP reproduced from the devkit (``nuscenes/eval/detection/algo.py``,
  ``accumulate`` + ``calc_ap``), including its quirks (``nuscenes_ap``: no monotone precision envelope,
  recall <= 0.1 dropped, precision shifted by 0.1 and rescaled).
- ``MetricsAccumulator``: both of the above over a dataset, fed one frame at a time, with the one score
  cut and top-K of every mAP in mtl (``mtl eval``, validation, the export metric gate, ``mtl bench``).
- Class weights for the semantic loss: ENet log weighting ``1 / ln(1.02 + p_c)`` (PyTorch-ENet
  ``enet_weighing``) and median-frequency balancing ``median(freq) / freq_c`` (Eigen & Fergus).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .geometry import decode_detections

if TYPE_CHECKING:
    from .config import Config

# --------------------------------------------------------------------------------------------- semantic


def confusion_matrix(target: np.ndarray, pred: np.ndarray, n_classes: int, ignore_index: int = 255) -> np.ndarray:
    """(C, C) int64 confusion matrix, ``M[gt, pred]`` pixel counts, for arrays of any (equal) shape.

    Pixels whose target is ``ignore_index`` or outside [0, C), or whose prediction is outside [0, C), are
    dropped entirely (a prediction on an ignored pixel is not a false positive).
    """
    t = np.asarray(target).reshape(-1).astype(np.int64, copy=False)
    p = np.asarray(pred).reshape(-1).astype(np.int64, copy=False)
    if t.shape != p.shape:
        raise ValueError(f"target has {t.size} pixels but pred has {p.size}")
    keep = (t != ignore_index) & (t >= 0) & (t < n_classes) & (p >= 0) & (p < n_classes)
    flat = np.bincount(t[keep] * n_classes + p[keep], minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN where den == 0 (and no warning)."""
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def segmentation_metrics(confmat: np.ndarray, class_names: Sequence[str]) -> dict:
    """Metrics of a dataset-level confusion matrix (sum the per-image matrices first).

    Returns ``{"miou", "pixel_acc", "mean_acc", "per_class_iou": {name: iou or None}}``. IoU_c =
    M_cc / (row_c + col_c - M_cc); classes with zero union get ``None`` and are excluded from ``miou``;
    ``mean_acc`` averages M_cc / row_c over classes present in the ground truth. Summary values are 0.0
    when nothing is defined (empty matrix) so callers can always format them.
    """
    m = np.asarray(confmat, np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(class_names):
        raise ValueError(f"confmat {m.shape} does not match {len(class_names)} class names")
    inter = np.diag(m)
    label_area, pred_area = m.sum(1), m.sum(0)
    iou = _ratio(inter, label_area + pred_area - inter)                         # (C,) NaN: zero union
    acc = _ratio(inter, label_area)                                             # (C,) NaN: absent in GT
    total = m.sum()
    return {
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0,
        "pixel_acc": float(inter.sum() / total) if total > 0 else 0.0,
        "mean_acc": float(np.nanmean(acc)) if np.isfinite(acc).any() else 0.0,
        "per_class_iou": {name: (None if np.isnan(v) else float(v)) for name, v in zip(class_names, iou)},
    }


# -------------------------------------------------------------------------------------------- detection

NUSCENES_THRESHOLDS = (0.5, 1.0, 2.0, 4.0)


def nuscenes_ap(tp: np.ndarray, n_gt: int, min_recall: float = 0.1, min_precision: float = 0.1) -> float:
    """nuScenes AP of score-sorted match flags (devkit ``accumulate`` + ``calc_ap``).

    tp: (n,) bool, True = true positive, in descending score order over all frames. Precision is sampled
    at 101 recall points with ``np.interp(..., right=0)`` on the raw, non-deduplicated curve (no monotone
    envelope, so when recall reaches its maximum twice the *last* precision wins), bins with recall <=
    min_recall are dropped, and precision is shifted by min_precision and rescaled.
    """
    tp = np.asarray(tp, bool)
    if n_gt <= 0 or not tp.any():
        return 0.0                                              # devkit: "no predictions" -> all-zero curve
    tp_cum = np.cumsum(tp).astype(float)
    fp_cum = np.cumsum(~tp).astype(float)
    prec = tp_cum / (tp_cum + fp_cum)
    rec = tp_cum / float(n_gt)
    prec_at = np.interp(np.linspace(0, 1, 101), rec, prec, right=0)            # (101,)
    kept = prec_at[round(100 * min_recall) + 1:] - min_precision
    kept[kept < 0] = 0
    return float(np.mean(kept)) / (1.0 - min_precision)


def _frame_matches(dist: np.ndarray, order: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy devkit matching inside one frame for one class.

    dist: (n_pred, n_gt) centre distances; order: prediction indices in global score order. Each
    prediction takes the nearest still-unmatched GT (first one on distance ties); it is a TP if that
    distance is strictly below ``threshold``. Returns (n_pred,) bool.
    """
    tp = np.zeros(dist.shape[0], bool)
    taken = np.zeros(dist.shape[1], bool)
    if dist.shape[1] == 0:
        return tp
    for i in order:
        d = np.where(taken, np.inf, dist[i])
        j = int(np.argmin(d))
        if d[j] < threshold:
            tp[i] = taken[j] = True
    return tp


def mean_ap(ap_by_threshold: Mapping[str, Mapping[str, float | None]]) -> tuple[float, dict[str, float | None]]:
    """Per-class AP = mean over thresholds; mAP = mean over classes whose AP is defined (not None).

    Returns (map, {class: ap or None}); map is 0.0 when no class is defined."""
    ap: dict[str, float | None] = {}
    for cls, by_th in ap_by_threshold.items():
        vals = list(by_th.values())
        ap[cls] = None if not vals or any(v is None for v in vals) else float(np.mean(vals))
    defined = [v for v in ap.values() if v is not None]
    return (float(np.mean(defined)) if defined else 0.0), ap


class DetectionAccumulator:
    """nuScenes-style BEV detection AP over a dataset, fed one frame at a time.

    Matching (per class and distance threshold): predictions of the class from *all* frames are sorted by
    score, descending (equal scores: the later-added prediction first, exactly like the devkit's
    ``sorted(...)[::-1]``), and each takes the nearest unmatched same-class GT of its own frame by x, y
    centre distance, a TP when the distance is strictly < threshold. AP per threshold is
    ``nuscenes_ap``; the class AP is its mean over thresholds.

    Deviation from the devkit (on purpose): a class with no ground truth in the whole dataset gets AP
    ``None`` and is left out of the mAP mean (the devkit scores it 0, which would make mAP on a small
    validation split depend on which classes happen to be absent). ``n_gt`` shows which classes count.

    ``max_range``: optional xy range from the origin (metres, one float or a {class: range} mapping); GT
    and predictions at range >= max_range are dropped before matching, like the devkit's class ranges.
    """

    def __init__(self, class_names: Sequence[str], thresholds: Sequence[float] = NUSCENES_THRESHOLDS,
                 max_range: float | Mapping[str, float] | None = None):
        self.class_names = list(class_names)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.max_range = max_range
        # per class: list of frames, each (pred xy (n,2), pred scores (n,), global add-order (n,), gt xy (m,2))
        self._frames: list[list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]] = [
            [] for _ in self.class_names]
        self._n_added = 0

    def _range_of(self, cls: int) -> float:
        if self.max_range is None:
            return np.inf
        if isinstance(self.max_range, Mapping):
            return float(self.max_range.get(self.class_names[cls], np.inf))
        return float(self.max_range)

    def add(self, pred_boxes: np.ndarray, pred_scores: np.ndarray, pred_labels: np.ndarray,
            gt_boxes: np.ndarray, gt_labels: np.ndarray) -> None:
        """One frame: predictions (n, 7) boxes, (n,) scores, (n,) class ids; GT (m, 7) boxes, (m,) class ids.
        GT labelled -1 (ignore) and predictions with an unknown class id are not used."""
        pb = np.asarray(pred_boxes, np.float64).reshape(-1, 7)
        ps = np.asarray(pred_scores, np.float64).reshape(-1)
        pl = np.asarray(pred_labels, np.int64).reshape(-1)
        gb = np.asarray(gt_boxes, np.float64).reshape(-1, 7)
        gl = np.asarray(gt_labels, np.int64).reshape(-1)
        if not (len(pb) == len(ps) == len(pl)) or len(gb) != len(gl):
            raise ValueError(f"inconsistent lengths: {len(pb)} pred boxes, {len(ps)} scores, {len(pl)} labels; "
                             f"{len(gb)} gt boxes, {len(gl)} gt labels")
        order = np.arange(self._n_added, self._n_added + len(pb))
        self._n_added += len(pb)
        pred_range = np.hypot(pb[:, 0], pb[:, 1])
        gt_range = np.hypot(gb[:, 0], gb[:, 1])
        for c in range(len(self.class_names)):
            rng = self._range_of(c)
            p = (pl == c) & (pred_range < rng)
            g = (gl == c) & (gt_range < rng)
            if p.any() or g.any():
                self._frames[c].append((pb[p, :2], ps[p], order[p], gb[g, :2]))

    def _class_ap(self, frames: list[tuple[np.ndarray, ...]], n_gt: int) -> dict[str, float | None]:
        if n_gt == 0:
            return {str(t): None for t in self.thresholds}
        scores = np.concatenate([f[1] for f in frames])
        add_order = np.concatenate([f[2] for f in frames])
        # global rank: descending (score, add order), the devkit's sorted((v, i))[::-1]
        rank = np.empty(len(scores), np.int64)
        rank[np.lexsort((add_order, scores))[::-1]] = np.arange(len(scores))
        dists, local_orders, start = [], [], 0
        for pxy, _, _, gxy in frames:
            n = len(pxy)
            dists.append(np.linalg.norm(pxy[:, None, :] - gxy[None, :, :], axis=2))      # (n, m)
            local_orders.append(np.argsort(rank[start: start + n]))
            start += n
        out: dict[str, float | None] = {}
        for t in self.thresholds:
            tp = np.zeros(len(scores), bool)
            start = 0
            for d, lo in zip(dists, local_orders):
                tp[start: start + len(d)] = _frame_matches(d, lo, t)
                start += len(d)
            sorted_tp = np.empty_like(tp)
            sorted_tp[rank] = tp
            out[str(t)] = nuscenes_ap(sorted_tp, n_gt)
        return out

    def compute(self) -> dict:
        """``{"map", "ap": {cls: mean over thresholds or None}, "ap_by_threshold": {cls: {str(th): ap}},
        "n_gt": {cls: int}}``."""
        ap_by_threshold, n_gt = {}, {}
        for c, name in enumerate(self.class_names):
            frames = self._frames[c]
            n_gt[name] = int(sum(len(f[3]) for f in frames))
            ap_by_threshold[name] = self._class_ap(frames, n_gt[name])
        m, ap = mean_ap(ap_by_threshold)
        return {"map": m, "ap": ap, "ap_by_threshold": ap_by_threshold, "n_gt": n_gt}


# ------------------------------------------------------------------------------------- both tasks


class MetricsAccumulator:
    """mIoU and mAP of a dataset, fed one frame at a time: the one implementation behind ``mtl eval``, the
    validation pass of ``mtl train``, the export metric gate and ``mtl bench``.

    Detection predictions are cut here, in one place: only those scoring > ``score_threshold`` count, at
    most ``max_detections`` per frame (the highest scores). Give it a decode at that threshold or a lower
    one (``metric_detections`` decodes at exactly the config's). Ground-truth boxes labelled -1 (classes
    mapped to "ignore") are dropped before matching: neither matched nor counted.

    A frame may carry either task or both; ``frames`` counts all of them, ``n_semantic_frames`` and
    ``n_detection_frames`` those that were scored for each task. A frame id added twice is an error: every
    frame is scored exactly once (also when per-rank accumulators are merged, see ``merge``).
    """

    def __init__(self, sem_classes: Sequence[str], det_classes: Sequence[str], *, score_threshold: float,
                 max_detections: int, ignore_index: int = 255,
                 thresholds: Sequence[float] = NUSCENES_THRESHOLDS):
        self.sem_classes, self.det_classes = list(sem_classes), list(det_classes)
        self.score_threshold, self.max_detections = float(score_threshold), int(max_detections)
        self.ignore_index, self.thresholds = ignore_index, tuple(thresholds)
        self.confmat = np.zeros((len(self.sem_classes),) * 2, np.int64)
        # per frame with box GT, in add order: pred boxes (n,7), scores (n,), labels (n,), gt boxes, gt labels
        self.detections: list[tuple[np.ndarray, ...]] = []
        self.frame_ids: list[str] = []
        self._seen: set[str] = set()
        self.n_semantic_frames = 0

    @classmethod
    def from_config(cls, cfg: Config) -> MetricsAccumulator:
        """Classes, ignore index, ``decode.eval_score_threshold`` and ``decode.max_detections`` of ``cfg``."""
        return cls(cfg.classes.sem_classes, cfg.classes.det_classes, score_threshold=cfg.decode.eval_score_threshold,
                   max_detections=cfg.decode.max_detections, ignore_index=cfg.classes.ignore_index)

    @property
    def frames(self) -> int:
        return len(self.frame_ids)

    @property
    def n_detection_frames(self) -> int:
        return len(self.detections)

    def add_frame(self, frame_id: str, *, semantic_pred: np.ndarray | None = None,
                  semantic_gt: np.ndarray | None = None, boxes: np.ndarray | None = None,
                  scores: np.ndarray | None = None, labels: np.ndarray | None = None,
                  gt_boxes: np.ndarray | None = None, gt_labels: np.ndarray | None = None,
                  semantic_confmat: np.ndarray | None = None) -> None:
        """One frame. Semantics: (H, W) predicted and ground-truth class ids (both or neither), or the frame's
        (n_sem, n_sem) ``semantic_confmat`` (rows ground truth, as ``confusion_matrix`` makes it: what a stored
        frame contributes, e.g. ``mtl infer --eval --resume``). Detection: predictions (n, 7) boxes in metres,
        (n,) scores, (n,) class ids (None: no predictions) scored against (m, 7) / (m,) ground truth; a frame
        without ``gt_boxes`` is not scored for detection."""
        if frame_id in self._seen:
            raise ValueError(f"frame {frame_id!r} was added twice: every frame is scored once")
        if (semantic_pred is None) != (semantic_gt is None):
            raise ValueError(f"frame {frame_id!r}: semantic_pred and semantic_gt go together")
        if semantic_confmat is not None and semantic_gt is not None:
            raise ValueError(f"frame {frame_id!r}: give semantic_pred / semantic_gt or semantic_confmat, not both")
        if (gt_boxes is None) != (gt_labels is None):
            raise ValueError(f"frame {frame_id!r}: gt_boxes and gt_labels go together")
        if semantic_gt is not None:
            semantic_confmat = confusion_matrix(semantic_gt, semantic_pred, len(self.sem_classes), self.ignore_index)
        if semantic_confmat is not None:
            m = np.asarray(semantic_confmat)
            if m.shape != self.confmat.shape or m.dtype.kind not in "iu" or (m < 0).any():
                raise ValueError(f"frame {frame_id!r}: semantic_confmat must be non-negative integers of shape "
                                 f"{self.confmat.shape}, got {m.dtype} {m.shape}")
            self.confmat += m
            self.n_semantic_frames += 1
        if gt_boxes is not None:
            self.detections.append(self._cut(frame_id, boxes, scores, labels) + _known_gt(gt_boxes, gt_labels))
        self._seen.add(frame_id)
        self.frame_ids.append(frame_id)

    def _cut(self, frame_id: str, boxes, scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predictions scoring > score_threshold, the max_detections best of them, in their given order."""
        b = np.zeros((0, 7)) if boxes is None else np.asarray(boxes, np.float64).reshape(-1, 7)
        s = np.zeros(0) if scores is None else np.asarray(scores, np.float64).reshape(-1)
        lab = np.zeros(0, np.int64) if labels is None else np.asarray(labels, np.int64).reshape(-1)
        if not len(b) == len(s) == len(lab):
            raise ValueError(f"frame {frame_id!r}: {len(b)} boxes, {len(s)} scores, {len(lab)} labels")
        above = np.flatnonzero(s > self.score_threshold)
        best = above[np.argsort(-s[above], kind="stable")[: self.max_detections]]
        keep = np.sort(best)
        return b[keep], s[keep], lab[keep]

    def merge(self, other: MetricsAccumulator) -> None:
        """Add the frames of ``other`` (another rank's shard) after this one's; a frame in both is an error."""
        twice = self._seen & other._seen
        if twice:
            raise ValueError(f"{len(twice)} frame(s) scored on two ranks, e.g. {min(twice)!r}")
        self.confmat += other.confmat
        self.n_semantic_frames += other.n_semantic_frames
        self.detections += other.detections
        self.frame_ids += other.frame_ids
        self._seen |= other._seen

    def compute(self) -> dict[str, Any]:
        """``{"miou", "pixel_acc", "mean_acc", "per_class_iou", "map", "ap", "ap_by_threshold", "n_gt",
        "frames"}`` (``segmentation_metrics`` + ``DetectionAccumulator.compute`` + the frame count)."""
        det = DetectionAccumulator(self.det_classes, self.thresholds)
        for frame in self.detections:
            det.add(*frame)
        return {**segmentation_metrics(self.confmat, self.sem_classes), **det.compute(), "frames": self.frames}


def _known_gt(gt_boxes: np.ndarray, gt_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth without the boxes labelled -1 (ignored classes)."""
    gb = np.asarray(gt_boxes, np.float64).reshape(-1, 7)
    gl = np.asarray(gt_labels, np.int64).reshape(-1)
    if len(gb) != len(gl):
        raise ValueError(f"{len(gb)} gt boxes but {len(gl)} gt labels")
    keep = gl >= 0
    return gb[keep], gl[keep]


def metric_detections(heat_prob: np.ndarray, reg: np.ndarray, cfg: Config) -> dict[str, np.ndarray]:
    """Decode one frame's sigmoid heatmap (C, Hh, Wh) + regression (8, Hh, Wh) for ``MetricsAccumulator``:
    ``geometry.decode_detections`` at ``decode.eval_score_threshold`` with ``decode.max_detections`` peaks.
    Returns ``{"boxes", "scores", "labels"}`` (the keyword arguments of ``add_frame``)."""
    d = cfg.decode
    det = decode_detections(heat_prob, reg, cfg.grid, k=d.max_detections, score_threshold=d.eval_score_threshold,
                            kernel=d.nms_kernel)
    return {"boxes": det["boxes"], "scores": det["scores"], "labels": det["labels"]}


# ---------------------------------------------------------------------------------------- class weights


def enet_weights(counts: np.ndarray, k: float = 1.02) -> np.ndarray:
    """ENet log weighting w_c = 1 / ln(k + p_c), p_c = counts_c / sum(counts).

    counts: (C,) pixel counts of the training classes only; ignore/unlabelled pixels must not be listed
    (the reference code counts them; mtl does not). Bounded in [1/ln(k+1), 1/ln k]; all-zero counts give
    every class the upper bound.
    """
    c = np.asarray(counts, np.float64)
    total = c.sum()
    p = c / total if total > 0 else np.zeros_like(c)
    return 1.0 / np.log(k + p)


def median_freq_weights(counts_per_image: np.ndarray) -> np.ndarray:
    """Median-frequency balancing (Eigen & Fergus): w_c = median(freq) / freq_c.

    counts_per_image: (n_images, C) pixel counts per class (ignore pixels not listed). freq_c = pixels of c
    / labelled pixels of the images in which c appears; the median is over classes that appear. A class
    that never appears gets weight 0 (it is never a target, so its weight is irrelevant; 0 keeps it finite).
    """
    counts = np.asarray(counts_per_image, np.float64)
    if counts.ndim != 2:
        raise ValueError(f"counts_per_image must be (n_images, C), got shape {counts.shape}")
    present = counts > 0                                                      # (n_images, C)
    image_pixels = counts.sum(1, keepdims=True)                               # (n_images, 1)
    denom = (present * image_pixels).sum(0)                                   # (C,)
    freq = _ratio(counts.sum(0), denom)
    seen = freq > 0                                                           # NaN compares False
    if not seen.any():
        return np.zeros(counts.shape[1])
    w = np.zeros(counts.shape[1])
    w[seen] = np.median(freq[seen]) / freq[seen]
    return w


def clip_weights(weights: np.ndarray, max_weight: float = 10.0, min_weight: float = 0.0) -> np.ndarray:
    """Clip class weights to [min_weight, max_weight] (very rare classes otherwise dominate the loss);
    non-finite weights become 0."""
    w = np.asarray(weights, np.float64)
    return np.clip(np.where(np.isfinite(w), w, 0.0), min_weight, max_weight)


__all__ = [
    "NUSCENES_THRESHOLDS",
    "DetectionAccumulator",
    "MetricsAccumulator",
    "clip_weights",
    "confusion_matrix",
    "enet_weights",
    "mean_ap",
    "median_freq_weights",
    "metric_detections",
    "nuscenes_ap",
    "segmentation_metrics",
]
