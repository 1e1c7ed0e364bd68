"""mtl.metrics: segmentation (mmsegmentation semantics), nuScenes AP (devkit formula), the dataset-level
MetricsAccumulator (score cut, top-K, ignored boxes, tasks per frame, merging shards) and class weights."""
from __future__ import annotations

import numpy as np
import pytest

from mtl.metrics import (
    DetectionAccumulator,
    MetricsAccumulator,
    clip_weights,
    confusion_matrix,
    enet_weights,
    mean_ap,
    median_freq_weights,
    metric_detections,
    nuscenes_ap,
    segmentation_metrics,
)

# ------------------------------------------------------------------------------------------- segmentation


def test_confusion_matrix_case1_drops_ignored_pixels():
    cm = confusion_matrix(np.array([0, 0, 1, 1, 2, 255]), np.array([0, 1, 1, 1, 0, 2]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]       # the "2" on the ignored pixel is gone
    assert cm.dtype == np.int64


def test_confusion_matrix_rows_are_ground_truth_and_any_shape():
    target = np.array([[0, 0], [1, 1]], np.uint8)
    pred = np.array([[1, 1], [1, 1]], np.int64)
    assert confusion_matrix(target, pred, 2).tolist() == [[0, 2], [0, 2]]


def test_confusion_matrix_ignores_out_of_range_predictions_and_custom_ignore():
    cm = confusion_matrix(np.array([0, 1, 1, 9]), np.array([0, -1, 5, 1]), 2, ignore_index=9)
    assert cm.tolist() == [[1, 0], [0, 0]]


def test_segmentation_case1():
    cm = confusion_matrix(np.array([0, 0, 1, 1, 2, 255]), np.array([0, 1, 1, 1, 0, 2]), 3)
    m = segmentation_metrics(cm, ["a", "b", "c"])
    assert [m["per_class_iou"][k] for k in "abc"] == pytest.approx([1 / 3, 2 / 3, 0.0], abs=1e-6)
    assert m["miou"] == pytest.approx(0.333333, abs=1e-6)
    assert m["pixel_acc"] == pytest.approx(0.6, abs=1e-12)
    assert m["mean_acc"] == pytest.approx(0.5, abs=1e-12)


def test_segmentation_case2_absent_class_is_excluded_not_zero():
    cm = confusion_matrix(np.array([0, 0, 1, 1, 2, 255]), np.array([0, 1, 1, 1, 0, 2]), 4)
    m = segmentation_metrics(cm, ["a", "b", "c", "d"])
    assert m["per_class_iou"]["d"] is None
    assert m["miou"] == pytest.approx(0.333333, abs=1e-6)         # a naive mean would give 0.25
    assert m["mean_acc"] == pytest.approx(0.5, abs=1e-12)


def test_segmentation_case3_class_only_in_predictions_counts_as_zero():
    cm = confusion_matrix(np.array([0, 0, 1, 1]), np.array([0, 3, 1, 1]), 4)
    m = segmentation_metrics(cm, ["a", "b", "c", "d"])
    assert m["per_class_iou"] == {"a": pytest.approx(0.5), "b": pytest.approx(1.0), "c": None, "d": 0.0}
    assert m["miou"] == pytest.approx(0.5, abs=1e-12)
    assert m["pixel_acc"] == pytest.approx(0.75, abs=1e-12)
    assert m["mean_acc"] == pytest.approx(0.75, abs=1e-12)       # class d is not in the GT: no accuracy


def test_segmentation_dataset_level_accumulation_differs_from_per_image_mean():
    # image 1: 1 px of class 0, predicted right; image 2: 9 px of class 0, 1 px of class 1 predicted as 0
    cm1 = confusion_matrix(np.array([0]), np.array([0]), 2)
    cm2 = confusion_matrix(np.array([0] * 9 + [1]), np.array([0] * 10), 2)
    total = segmentation_metrics(cm1 + cm2, ["a", "b"])
    # summed: IoU_a = 10/11, IoU_b = 0 -> 5/11; per image: image 1 mIoU 1.0, image 2 (0.9 + 0)/2
    assert total["miou"] == pytest.approx(5 / 11, abs=1e-12)
    per_image = np.mean([segmentation_metrics(c, ["a", "b"])["miou"] for c in (cm1, cm2)])
    assert per_image == pytest.approx(0.725, abs=1e-12)
    assert total["pixel_acc"] == pytest.approx(10 / 11, abs=1e-12)


def test_segmentation_empty_matrix_is_all_zero_and_none():
    m = segmentation_metrics(np.zeros((2, 2), np.int64), ["a", "b"])
    assert m == {"miou": 0.0, "pixel_acc": 0.0, "mean_acc": 0.0, "per_class_iou": {"a": None, "b": None}}


# ------------------------------------------------------------------------------------------- nuScenes AP


@pytest.mark.parametrize("flags, n_gt, expected", [
    ([1], 1, 1.0),
    ([1], 2, 0.4 / 0.9),
    ([0, 1], 1, 0.2),
    ([1, 0], 1, 0.993827),                 # recall 1.0 reached twice: np.interp takes the last precision
    ([1, 0, 1, 1, 0], 4, 0.497119),
    ([1, 0, 1], 2, 0.737654),
])
def test_nuscenes_ap_references_table(flags, n_gt, expected):
    assert nuscenes_ap(np.array(flags, bool), n_gt) == pytest.approx(expected, abs=1e-6)


def test_nuscenes_ap_0993827_is_the_devkit_formula():
    assert nuscenes_ap(np.array([1, 0], bool), 1) == pytest.approx((89 * 0.9 + 0.4) / 90 / 0.9, abs=1e-12)


def test_nuscenes_ap_without_tp_or_gt_is_zero():
    assert nuscenes_ap(np.array([0, 0], bool), 3) == 0.0
    assert nuscenes_ap(np.zeros(0, bool), 3) == 0.0
    assert nuscenes_ap(np.array([1], bool), 0) == 0.0


def test_mean_ap_references_arithmetic():
    th = ("0.5", "1.0", "2.0", "4.0")
    m, ap = mean_ap({"car": dict(zip(th, [0.6, 0.7, 0.8, 0.9])), "pedestrian": dict(zip(th, [0.2, 0.4, 0.5, 0.5])),
                     "truck": dict.fromkeys(th)})
    assert ap == {"car": pytest.approx(0.75), "pedestrian": pytest.approx(0.4), "truck": None}
    assert m == pytest.approx(0.575, abs=1e-12)


def _box(x: float, y: float) -> list[float]:
    return [x, y, 0.0, 4.0, 2.0, 1.5, 0.0]


def _frame(acc: DetectionAccumulator, preds: list[tuple[float, float, float, int]],
           gts: list[tuple[float, float, int]]) -> None:
    """preds: (x, y, score, label); gts: (x, y, label)."""
    acc.add(np.array([_box(x, y) for x, y, _, _ in preds]).reshape(-1, 7), np.array([s for *_, s, _ in preds]),
            np.array([lab for *_, lab in preds]), np.array([_box(x, y) for x, y, _ in gts]).reshape(-1, 7),
            np.array([lab for *_, lab in gts]))


def test_accumulator_far_fp_first_then_tp_per_threshold():
    # 1 GT; FP at 2.83 m (score 1.0) then TP at 0.3 m (0.7): 0.2 at d <= 2, but at d = 4 the first
    # prediction takes the GT and the second becomes the FP -> 0.993827
    acc = DetectionAccumulator(["car"])
    _frame(acc, [(2.0, 2.0, 1.0, 0), (0.3, 0.0, 0.7, 0)], [(0.0, 0.0, 0)])
    res = acc.compute()
    assert res["ap_by_threshold"]["car"] == {"0.5": pytest.approx(0.2), "1.0": pytest.approx(0.2),
                                             "2.0": pytest.approx(0.2), "4.0": pytest.approx(0.993827, abs=1e-6)}
    assert res["ap"]["car"] == pytest.approx((0.6 + 0.993827) / 4, abs=1e-6)
    assert res["map"] == pytest.approx(res["ap"]["car"]) and res["n_gt"] == {"car": 1}


def test_accumulator_distance_exactly_at_threshold_is_a_false_positive():
    acc = DetectionAccumulator(["car"], thresholds=(2.0, 4.0))
    _frame(acc, [(2.0, 0.0, 0.9, 0)], [(0.0, 0.0, 0)])
    assert acc.compute()["ap_by_threshold"]["car"] == {"2.0": 0.0, "4.0": pytest.approx(1.0)}


def test_accumulator_pools_frames_in_global_score_order():
    # GT: 2 in frame A, 2 in frame B (4 in all). Scores interleave frames: TP .9 (A), FP .8 (B, far),
    # TP .7 (B), TP .6 (A), FP .5 (A, far) -> references row "4 GT: TP FP TP TP FP" = 0.497119
    acc = DetectionAccumulator(["car"], thresholds=(1.0,))
    _frame(acc, [(0.1, 0.0, 0.9, 0), (10.2, 0.0, 0.6, 0), (30.0, 0.0, 0.5, 0)], [(0.0, 0.0, 0), (10.0, 0.0, 0)])
    _frame(acc, [(50.0, 5.0, 0.8, 0), (20.0, 0.3, 0.7, 0)], [(20.0, 0.0, 0), (40.0, 0.0, 0)])
    assert acc.compute()["ap"]["car"] == pytest.approx(0.497119, abs=1e-6)


def test_accumulator_gt_in_another_frame_does_not_match():
    acc = DetectionAccumulator(["car"], thresholds=(1.0,))
    _frame(acc, [(0.0, 0.0, 0.9, 0)], [])
    _frame(acc, [], [(0.0, 0.0, 0)])
    assert acc.compute()["ap"]["car"] == 0.0


def test_accumulator_greedy_high_score_takes_nearest_unmatched_gt():
    # GT at x=0 and x=1. Pred .9 at x=0.55 is nearest to GT x=1 (0.45 < 0.55) and takes it; pred .8 at
    # x=0.9 then must use GT x=0 at 0.9 m: TP at d=1, FP at d=0.5 (it was 0.1 m from the taken GT).
    acc = DetectionAccumulator(["car"], thresholds=(0.5, 1.0))
    _frame(acc, [(0.55, 0.0, 0.9, 0), (0.9, 0.0, 0.8, 0)], [(0.0, 0.0, 0), (1.0, 0.0, 0)])
    by_th = acc.compute()["ap_by_threshold"]["car"]
    assert by_th["1.0"] == pytest.approx(1.0)
    # TP, FP with 2 GT: precision 1 up to recall 0.5 except the last bin at 0.5 -> (39*0.9 + 0.4) / 90 / 0.9
    assert by_th["0.5"] == pytest.approx(35.5 / 81, abs=1e-12)


def test_accumulator_equal_scores_process_later_prediction_first_like_devkit():
    # devkit sorts (score, index) ascending and reverses: with a tie the later prediction goes first
    acc = DetectionAccumulator(["car"], thresholds=(1.0,))
    _frame(acc, [(3.0, 0.0, 0.5, 0), (0.2, 0.0, 0.5, 0)], [(0.0, 0.0, 0)])
    assert acc.compute()["ap"]["car"] == pytest.approx(0.993827, abs=1e-6)     # TP then FP, not 0.2


def test_accumulator_classes_are_matched_separately_and_empty_classes_excluded():
    acc = DetectionAccumulator(["car", "truck", "pedestrian"], thresholds=(1.0,))
    # truck prediction on the car GT does not match; pedestrian has no GT anywhere -> excluded from mAP
    _frame(acc, [(0.0, 0.0, 0.9, 1), (5.0, 5.0, 0.8, 2)], [(0.0, 0.0, 0), (8.0, 0.0, 1)])
    res = acc.compute()
    assert res["n_gt"] == {"car": 1, "truck": 1, "pedestrian": 0}
    assert res["ap"] == {"car": 0.0, "truck": 0.0, "pedestrian": None}
    assert res["ap_by_threshold"]["pedestrian"] == {"1.0": None}
    assert res["map"] == 0.0


def test_accumulator_ignored_gt_labels_and_max_range():
    acc = DetectionAccumulator(["car"], thresholds=(1.0,), max_range=50.0)
    # the -1 GT is not counted; the GT at 60 m and the prediction at 60 m are dropped by range
    _frame(acc, [(10.0, 0.0, 0.9, 0), (60.0, 0.0, 0.95, 0)], [(10.0, 0.0, 0), (20.0, 0.0, -1), (60.0, 0.0, 0)])
    res = acc.compute()
    assert res["n_gt"] == {"car": 1} and res["ap"]["car"] == pytest.approx(1.0)
    unranged = DetectionAccumulator(["car"], thresholds=(1.0,))
    _frame(unranged, [(10.0, 0.0, 0.9, 0)], [(10.0, 0.0, 0), (20.0, 0.0, -1)])
    assert unranged.compute()["ap"]["car"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ class weights


# ------------------------------------------------------------------------------- MetricsAccumulator


def _acc(score_threshold: float = 0.3, max_detections: int = 10) -> MetricsAccumulator:
    return MetricsAccumulator(["a", "b", "c"], ["car", "ped"], score_threshold=score_threshold,
                              max_detections=max_detections, thresholds=(0.5, 1.0, 2.0, 4.0))


def _dets(preds: list[tuple[float, float, float, int]]) -> dict:
    """(x, y, score, label) -> the prediction keyword arguments of add_frame."""
    return {"boxes": np.array([_box(x, y) for x, y, _, _ in preds]).reshape(-1, 7),
            "scores": np.array([s for *_, s, _ in preds], float), "labels": np.array([lab for *_, lab in preds], int)}


def _gt(gts: list[tuple[float, float, int]]) -> dict:
    return {"gt_boxes": np.array([_box(x, y) for x, y, _ in gts]).reshape(-1, 7),
            "gt_labels": np.array([lab for *_, lab in gts], int)}


def test_metrics_accumulator_frames_with_one_task_or_both():
    acc = _acc()
    # "both": gt [[a, a], [b, ignore]] vs pred [[a, b], [b, c]] -> (a,a) (a,b) (b,b); the ignored pixel drops out
    acc.add_frame("both", semantic_gt=np.array([[0, 0], [1, 255]]), semantic_pred=np.array([[0, 1], [1, 2]]),
                  **_dets([(10.2, 0.0, 0.9, 0)]), **_gt([(10.0, 0.0, 0)]))
    # semantics only: gt [c, c] vs pred [c, a]; its predictions of boxes (no box GT) are not scored
    acc.add_frame("sem_only", semantic_gt=np.array([[2, 2]]), semantic_pred=np.array([[2, 0]]),
                  **_dets([(30.0, 0.0, 0.95, 0)]))
    # boxes only: one pedestrian found 1.5 m off -> TP at 2 and 4 m, FP at 0.5 and 1 m
    acc.add_frame("boxes_only", **_dets([(5.0, 6.5, 0.7, 1)]), **_gt([(5.0, 5.0, 1)]))
    m = acc.compute()
    # confusion rows (gt) a: [1, 1, 0], b: [0, 1, 0], c: [1, 0, 1]; columns (pred) sum to 2, 2, 1
    assert m["per_class_iou"] == {"a": pytest.approx(1 / 3), "b": pytest.approx(1 / 2), "c": pytest.approx(1 / 2)}
    assert m["miou"] == pytest.approx(4 / 9, abs=1e-12)
    assert m["pixel_acc"] == pytest.approx(3 / 5, abs=1e-12) and m["mean_acc"] == pytest.approx(2 / 3, abs=1e-12)
    # car: one TP (0.2 m) for its one GT -> 1 at every threshold; ped: [0, 0, 1, 1] -> 0.5
    assert m["ap_by_threshold"]["car"] == {k: pytest.approx(1.0) for k in ("0.5", "1.0", "2.0", "4.0")}
    assert m["ap_by_threshold"]["ped"] == {"0.5": 0.0, "1.0": 0.0, "2.0": pytest.approx(1.0), "4.0": pytest.approx(1.0)}
    assert m["ap"] == {"car": pytest.approx(1.0), "ped": pytest.approx(0.5)} and m["map"] == pytest.approx(0.75)
    assert m["n_gt"] == {"car": 1, "ped": 1}
    assert m["frames"] == 3 and acc.n_semantic_frames == 2 and acc.n_detection_frames == 2
    assert set(m) == {"miou", "pixel_acc", "mean_acc", "per_class_iou", "map", "ap", "ap_by_threshold", "n_gt",
                      "frames"}


def test_metrics_accumulator_ignored_boxes_are_neither_matched_nor_counted():
    # GT: a car at 10 m and an ignored box (-1) at 30 m; predictions: a car on the ignored box (0.9), then
    # one on the real car (0.8) -> sorted [FP, TP] with 1 GT: precision 0.5 r, AP = 0.2 at every threshold
    preds = _dets([(30.2, 0.0, 0.9, 0), (10.3, 0.0, 0.8, 0)])
    acc = _acc()
    acc.add_frame("f", **preds, **_gt([(10.0, 0.0, 0), (30.0, 0.0, -1)]))
    m = acc.compute()
    assert m["n_gt"]["car"] == 1 and m["ap"]["car"] == pytest.approx(0.2, abs=1e-12)
    assert m["ap"]["ped"] is None and m["map"] == pytest.approx(0.2, abs=1e-12)     # no ped GT: not in the mean
    counted = _acc()               # the same box labelled car instead: both predictions are TPs, AP 1
    counted.add_frame("f", **preds, **_gt([(10.0, 0.0, 0), (30.0, 0.0, 0)]))
    assert counted.compute()["ap"]["car"] == pytest.approx(1.0) and counted.compute()["n_gt"]["car"] == 2


def test_metrics_accumulator_score_threshold_is_strict_and_changes_ap():
    # one pedestrian GT with a perfect prediction of score 0.25 and a far FP of score 0.5
    frame = {**_dets([(5.0, 5.0, 0.25, 1), (40.0, 0.0, 0.5, 1)]), **_gt([(5.0, 5.0, 1)])}
    cut = _acc(score_threshold=0.3)                  # only the FP survives: AP 0
    cut.add_frame("f", **frame)
    low = _acc(score_threshold=0.2)                  # [FP 0.5, TP 0.25] with 1 GT: 0.2
    low.add_frame("f", **frame)
    at = _acc(score_threshold=0.25)                  # score == threshold is cut, like decode_detections
    at.add_frame("f", **frame)
    assert cut.compute()["map"] == 0.0 and at.compute()["map"] == 0.0
    assert low.compute()["map"] == pytest.approx(0.2, abs=1e-12)


def test_metrics_accumulator_keeps_the_top_k_scores_per_frame():
    # car GT found by a 0.5 prediction; two pedestrian FPs score higher. Top-2 keeps only the FPs.
    frame = {**_dets([(10.0, 0.0, 0.5, 0), (3.0, 3.0, 0.9, 1), (4.0, 4.0, 0.8, 1)]), **_gt([(10.0, 0.0, 0)])}
    top2, top3 = _acc(max_detections=2), _acc(max_detections=3)
    top2.add_frame("f", **frame)
    top3.add_frame("f", **frame)
    assert top2.compute()["ap"]["car"] == 0.0 and top3.compute()["ap"]["car"] == pytest.approx(1.0)
    assert top2.compute()["ap"]["ped"] is None                  # FPs of a class without GT change nothing
    # the K is per frame: the same frame again under another id keeps its own top 2
    top2.add_frame("g", **frame)
    assert top2.detections[1][1].tolist() == [0.9, 0.8]


def test_metrics_accumulator_every_frame_once_and_merged_shards_equal_one_pass():
    frames = [("f0", _dets([(10.2, 0.0, 0.9, 0)]), _gt([(10.0, 0.0, 0)]), np.array([[0, 1]])),
              ("f1", _dets([(12.0, 0.0, 0.6, 0), (5.0, 5.5, 0.8, 1)]), _gt([(5.0, 5.0, 1)]), np.array([[1, 1]])),
              ("f2", _dets([(20.0, 1.0, 0.7, 0)]), _gt([(20.0, 0.0, 0), (8.0, 0.0, -1)]), np.array([[2, 0]]))]
    whole, shard0, shard1 = _acc(), _acc(), _acc()
    for i, (fid, det, gt, sem) in enumerate(frames):
        kw = dict(semantic_gt=np.array([[0, 1]]), semantic_pred=sem, **det, **gt)
        whole.add_frame(fid, **kw)
        (shard0 if i < 2 else shard1).add_frame(fid, **kw)
    shard0.merge(shard1)
    assert shard0.compute() == whole.compute() and shard0.frame_ids == ["f0", "f1", "f2"]
    with pytest.raises(ValueError, match="'f1' was added twice"):
        whole.add_frame("f1", semantic_gt=np.array([[0]]), semantic_pred=np.array([[0]]))
    padded = _acc()                                    # DistributedSampler-style padding repeats f0
    padded.add_frame("f0", semantic_gt=np.array([[0]]), semantic_pred=np.array([[0]]))
    with pytest.raises(ValueError, match="scored on two ranks"):
        whole.merge(padded)
    with pytest.raises(ValueError, match="go together"):
        _acc().add_frame("x", semantic_pred=np.array([[0]]))


def test_metric_detections_decodes_at_the_eval_threshold_not_the_runtime_one():
    from mtl.config import Config

    cfg = Config().override(**{"decode.score_threshold": 0.5, "decode.eval_score_threshold": 0.05,
                               "decode.max_detections": 2})
    hh, hw = cfg.grid.head_shape
    heat = np.zeros((cfg.classes.n_det, hh, hw), np.float32)
    heat[0, 10, 10], heat[1, 40, 40], heat[0, 80, 80], heat[2, 90, 20] = 0.07, 0.6, 0.04, 0.3
    det = metric_detections(heat, np.zeros((8, hh, hw), np.float32), cfg)
    assert set(det) == {"boxes", "scores", "labels"}
    assert det["scores"].tolist() == pytest.approx([0.6, 0.3]) and det["labels"].tolist() == [1, 2]   # top 2
    det = metric_detections(heat, np.zeros((8, hh, hw), np.float32), cfg.override(**{"decode.max_detections": 9}))
    assert det["scores"].tolist() == pytest.approx([0.6, 0.3, 0.07])          # 0.04 < 0.05 is cut


def test_enet_weights_references():
    assert enet_weights(np.array([700, 250, 50])) == pytest.approx([1.843915, 4.183805, 14.780076], abs=1e-6)


def test_enet_weights_bounds():
    w = enet_weights(np.array([1000, 0]))
    assert w == pytest.approx([1 / np.log(2.02), 1 / np.log(1.02)], abs=1e-9)
    assert w[1] == pytest.approx(50.498, abs=1e-3)


def test_median_freq_weights_references():
    counts = np.array([[400, 100, 0], [300, 150, 50]])
    assert median_freq_weights(counts) == pytest.approx([0.357143, 1.0, 2.5], abs=1e-6)


def test_median_freq_weights_never_present_class_gets_zero():
    counts = np.array([[400, 100, 0, 0], [300, 150, 50, 0]])
    w = median_freq_weights(counts)
    assert w == pytest.approx([0.357143, 1.0, 2.5, 0.0], abs=1e-6)
    assert np.isfinite(w).all()


def test_clip_weights():
    assert clip_weights(np.array([0.5, 50.0, np.nan, -1.0]), 10.0).tolist() == [0.5, 10.0, 0.0, 0.0]
