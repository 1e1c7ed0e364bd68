"""mtl.metrics against hand-worked numbers: nuScenes AP, segmentation IoU, ENet / median-frequency class weights."""
from __future__ import annotations

import numpy as np
import pytest

from mtl.metrics import (
    DetectionAccumulator,
    clip_weights,
    confusion_matrix,
    enet_weights,
    mean_ap,
    median_freq_weights,
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
