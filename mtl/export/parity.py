"""Parity of an exported model against torch, and the metric gate of reduced-precision variants.

- ``parity_report``: torch (the export wrapper, i.e. sigmoid heatmap + optional decode) vs onnxruntime
  (CPUExecutionProvider) on REAL dataset frames: per output max abs / max rel diff, decoded detections
  (``geometry.decode_detections`` on both heatmaps: same count, labels, boxes within tolerance), the
  fraction of equal semantic argmax pixels, and with ``decode`` the in-graph ``det_*`` outputs (threshold
  applied here) against the numpy decode of the same session's heatmap.
  ``max_rel`` is ``max |a - b| / max(|ref|, 1e-3)`` elementwise (the floor keeps near-zero values from
  dominating).
- ``evaluate_sessions``: mIoU / mAP of several onnxruntime sessions in ONE pass over the frames
  (``mtl.metrics.MetricsAccumulator`` + ``metric_detections``: the same score cut and top-K as ``mtl eval``
  and ``mtl bench``), numpy only.
- ``metric_gate``: drop of mIoU and mAP of a variant against the fp32 ONNX model, against allowed drops.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config
from ..geometry import decode_detections

REL_FLOOR = 1e-3


# ------------------------------------------------------------------------------------------- frames


class FrameSource:
    """Evenly spaced frames of a chunk directory as numpy samples (image, bev, semantic, boxes, box_class,
    frame_id), loaded lazily through ``mtl.dataset.ChunkDataset`` (no augmentation)."""

    def __init__(self, data_dir: str | Path, cfg: Config, max_frames: int = 0,
                 select: Callable[[list[str], int], list[int]] | None = None):
        from ..dataset import ChunkDataset

        self.data_dir = str(data_dir)
        self.ds = ChunkDataset(data_dir, cfg, augment=False)
        n = len(self.ds)
        k = n if max_frames <= 0 else min(max_frames, n)
        if select is not None:        # e.g. calibration.sample_across_scenes(frame ids, k)
            self.indices = select(self.frame_ids(), k)
        else:
            self.indices = sorted({round(float(i)) for i in np.linspace(0, n - 1, k)}) if k else []

    def frame_ids(self) -> list[str]:
        """Every frame id of the dataset in dataset order (reads only each chunk's small id array)."""
        per_file: dict[int, np.ndarray] = {}
        ids = []
        for ci, fi in self.ds.index:
            if ci not in per_file:
                with np.load(self.ds.files[ci], allow_pickle=False) as z:
                    per_file[ci] = z["frame_id"]
            ids.append(str(per_file[ci][fi]))
        return ids

    @property
    def selected_ids(self) -> list[str]:
        """The ids of the frames this source yields."""
        ids = self.frame_ids()
        return [ids[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in self.indices:
            s = self.ds[i]
            yield {"image": s["image"].numpy(), "bev": s["bev"].numpy(), "semantic": s["semantic"].numpy(),
                   "boxes": np.asarray(s["boxes"], np.float32).reshape(-1, 7),
                   "box_class": np.asarray(s["box_class"], np.int64).reshape(-1), "frame_id": s["frame_id"]}


def batched(samples: Iterable[dict], batch: int) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """(feeds, n_real) for static batch ``batch``: the last batch is padded by repeating its last frame."""
    buf: list[dict] = []
    for s in samples:
        buf.append(s)
        if len(buf) == batch:
            yield _feeds(buf, batch), batch
            buf = []
    if buf:
        yield _feeds(buf, batch), len(buf)


def _feeds(buf: list[dict], batch: int) -> dict[str, np.ndarray]:
    pad = buf + [buf[-1]] * (batch - len(buf))
    return {"image": np.stack([s["image"] for s in pad]).astype(np.float32),
            "bev": np.stack([s["bev"] for s in pad]).astype(np.float32)}


# -------------------------------------------------------------------------------------- comparisons


def diff_stats(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    ref = np.asarray(ref, np.float64)
    got = np.asarray(got, np.float64)
    if ref.shape != got.shape:
        return {"max_abs": math.inf, "max_rel": math.inf, "shape_mismatch": [list(ref.shape), list(got.shape)]}
    if ref.size == 0:
        return {"max_abs": 0.0, "max_rel": 0.0}
    d = np.abs(ref - got)
    if not np.isfinite(got).all():
        return {"max_abs": math.inf, "max_rel": math.inf, "non_finite": True}
    return {"max_abs": float(d.max()), "max_rel": float((d / np.maximum(np.abs(ref), REL_FLOOR)).max())}


def _box_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise |a - b| for (.., 7) boxes with the yaw difference wrapped to [-pi, pi]."""
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    dy = np.abs((np.asarray(a, np.float64)[..., 6] - np.asarray(b, np.float64)[..., 6] + np.pi) % (2 * np.pi) - np.pi)
    d[..., 6] = dy
    return d


def near_peak(heat: np.ndarray, label: int, row: int, col: int, margin: float, kernel: int = 3) -> bool:
    """Whether heat[label, row, col] is within ``margin`` of its k x k neighbourhood max: a cell that a
    ``margin``-sized perturbation could turn into a peak (plateaus of an untrained net are full of them)."""
    r = kernel // 2
    win = heat[label, max(0, row - r): row + r + 1, max(0, col - r): col + r + 1]
    return bool(heat[label, row, col] >= win.max() - margin)


def compare_detections(ref: dict, got: dict, atol: float, threshold: float, margin: float = 1e-4,
                       ref_heat: np.ndarray | None = None, got_heat: np.ndarray | None = None) -> dict[str, Any]:
    """Match ``got`` detections to ``ref`` (same label, every box value within ``atol``).

    Unmatched detections are ``borderline`` (a 1e-7 change may legitimately flip them) when their score
    lies within ``margin`` of the threshold or of the lowest kept score (the top-K boundary), or -- given
    the dense heatmaps -- when the cell is a near-peak (``near_peak``) in the other heatmap too, i.e. the
    two maps agree there and only the exact-equality peak test tipped. Any other unmatched detection fails
    the comparison."""
    rb, rl, rs = ref["boxes"], ref["labels"], ref["scores"]
    gb, gl, gs = got["boxes"], got["labels"], got["scores"]
    used = np.zeros(len(gb), bool)
    unmatched_ref: list[float] = []
    ambiguous = 0
    max_box = 0.0
    max_score = 0.0
    for i in range(len(rb)):
        cand = np.flatnonzero((gl == rl[i]) & ~used)
        if len(cand):
            d = _box_diff(gb[cand], rb[i][None]).max(1)
            j = int(np.argmin(d))
            if d[j] <= atol:
                used[cand[j]] = True
                max_box = max(max_box, float(d[j]))
                max_score = max(max_score, abs(float(gs[cand[j]]) - float(rs[i])))
                continue
        if got_heat is not None and "rows" in ref and near_peak(got_heat, int(rl[i]), int(ref["rows"][i]),
                                                                int(ref["cols"][i]), margin):
            ambiguous += 1
            continue
        unmatched_ref.append(float(rs[i]))
    unmatched_got = []
    for j in np.flatnonzero(~used):
        if ref_heat is not None and "rows" in got and near_peak(ref_heat, int(gl[j]), int(got["rows"][j]),
                                                                int(got["cols"][j]), margin):
            ambiguous += 1
            continue
        unmatched_got.append(float(gs[j]))
    low = min([float(np.min(rs)) if len(rs) else threshold, float(np.min(gs)) if len(gs) else threshold])

    def borderline(s: float) -> bool:
        return abs(s - threshold) <= margin or abs(s - low) <= margin

    hard = [s for s in unmatched_ref + unmatched_got if not borderline(s)]
    return {"n_ref": len(rb), "n_got": len(gb), "matched": int(used.sum()), "unmatched": len(hard),
            "unmatched_borderline": len(unmatched_ref) + len(unmatched_got) - len(hard) + ambiguous,
            "same_count": bool(len(rb) == len(gb)), "max_box_diff": max_box, "max_score_diff": max_score,
            "passed": not hard}


def _merge_det(acc: dict | None, c: dict) -> dict:
    if acc is None:
        return dict(c, frames_failed=int(not c["passed"]))
    out = {k: acc[k] + c[k] for k in ("n_ref", "n_got", "matched", "unmatched", "unmatched_borderline")}
    out.update(same_count=acc["same_count"] and c["same_count"],
               max_box_diff=max(acc["max_box_diff"], c["max_box_diff"]),
               max_score_diff=max(acc["max_score_diff"], c["max_score_diff"]), passed=acc["passed"] and c["passed"],
               frames_failed=acc["frames_failed"] + int(not c["passed"]))
    return out


def graph_decode(out: dict, i: int, threshold: float) -> dict:
    """The in-graph ``det_*`` outputs of frame ``i`` with the runtime's score threshold applied."""
    keep = out["det_scores"][i] > threshold
    return {"boxes": out["det_boxes"][i][keep].astype(np.float32), "scores": out["det_scores"][i][keep],
            "labels": out["det_labels"][i][keep].astype(np.int64)}


def numpy_decode(out: dict, i: int, cfg: Config, threshold: float) -> dict:
    return decode_detections(out["bbox_heatmap"][i], out["bbox_reg"][i], cfg.grid, k=cfg.decode.max_detections,
                             score_threshold=threshold, kernel=cfg.decode.nms_kernel)


# --------------------------------------------------------------------------------------------- parity


def torch_reference(model, cfg: Config, decode: bool, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    from .onnx_export import ExportWrapper

    wrapper = ExportWrapper(model.eval(), cfg, decode=decode).eval()
    with torch.no_grad():
        outs = wrapper(torch.from_numpy(feeds["image"]), torch.from_numpy(feeds["bev"]))
    return {n: o.numpy() for n, o in zip(wrapper.output_names, outs)}


def parity_report(model, cfg: Config, session, samples: list[dict], *, decode: bool, batch: int,
                  atol: float, gate: bool = True) -> dict[str, Any]:
    """torch vs onnxruntime on ``samples``. ``gate``: fail when an output's max abs diff exceeds ``atol``
    or decoded detections differ (else the numbers are informational, e.g. fp16 / int8 vs torch)."""
    thr = cfg.decode.score_threshold
    # gated (fp32): boxes must agree to 1e-4 m; informational (fp16 / int8): count boxes within 10 cm
    box_atol = max(atol, 1e-4) if gate else 0.1
    names = [o.name for o in session.get_outputs()]
    dense = [n for n in names if not n.startswith("det_")]
    stats: dict[str, dict] = {}
    det_cmp = None
    graph_cmp = None
    sem_equal = 0
    sem_total = 0
    for feeds, n_real in batched(samples, batch):
        ref = torch_reference(model, cfg, decode, feeds)
        got = dict(zip(names, session.run(names, feeds)))
        for n in dense:
            s = diff_stats(ref[n][:n_real], got[n][:n_real])
            prev = stats.get(n)
            stats[n] = s if prev is None else {k: max(prev[k], s[k]) for k in ("max_abs", "max_rel")}
        a = ref["sem_logits"][:n_real].argmax(1)
        b = got["sem_logits"][:n_real].argmax(1)
        sem_equal += int((a == b).sum())
        sem_total += int(a.size)
        for i in range(n_real):
            heat_ref, heat_got = ref["bbox_heatmap"][i], got["bbox_heatmap"][i]
            got_det = numpy_decode(got, i, cfg, thr)          # compared with torch and with the in-graph decode
            det_cmp = _merge_det(det_cmp, compare_detections(numpy_decode(ref, i, cfg, thr), got_det, box_atol,
                                                             thr, margin=max(atol, 1e-4), ref_heat=heat_ref,
                                                             got_heat=heat_got))
            if decode:
                graph_cmp = _merge_det(graph_cmp, compare_detections(got_det, graph_decode(got, i, thr), 1e-4, thr))
    failures = []
    if gate:
        for n, s in stats.items():
            if not s["max_abs"] <= atol:
                failures.append(f"{n}: max abs diff {s['max_abs']:.3g} > atol {atol:g}")
        if det_cmp is not None and not det_cmp["passed"]:
            failures.append(f"decoded detections differ ({det_cmp['unmatched']} unmatched)")
    if graph_cmp is not None and not graph_cmp["passed"]:
        failures.append(f"in-graph decode differs from geometry.decode_detections ({graph_cmp['unmatched']} unmatched)")
    return {
        "frames": len(samples), "frame_ids": [s["frame_id"] for s in samples], "atol": atol, "gated": gate,
        "outputs": stats, "decoded": det_cmp, "box_atol_m": box_atol, "in_graph_decode": graph_cmp,
        "semantic_argmax_agreement": sem_equal / max(sem_total, 1),
        "score_threshold": thr, "failures": failures, "passed": not failures,
    }


# ------------------------------------------------------------------------------------------ metrics


def evaluate_sessions(sessions: dict[str, Any], frames: Iterable[dict], cfg: Config, batch: int,
                      progress: bool = False) -> dict[str, dict[str, Any]]:
    """mIoU / mAP / pixel accuracy of every session over ``frames`` (one pass, frames loaded once)."""
    from ..metrics import MetricsAccumulator, metric_detections

    accs = {k: MetricsAccumulator.from_config(cfg) for k in sessions}
    buf: list[dict] = []

    def flush():
        if not buf:
            return
        for feeds, n_real in batched(buf, batch):
            for key, sess in sessions.items():
                names = [o.name for o in sess.get_outputs() if o.name in ("bbox_heatmap", "bbox_reg", "sem_logits")]
                out = dict(zip(names, sess.run(names, feeds)))
                pred = out["sem_logits"][:n_real].argmax(1)
                for i in range(n_real):
                    f = buf[i]
                    accs[key].add_frame(f["frame_id"], semantic_pred=pred[i], semantic_gt=f["semantic"],
                                        **metric_detections(out["bbox_heatmap"][i], out["bbox_reg"][i], cfg),
                                        gt_boxes=f["boxes"], gt_labels=f["box_class"])
        buf.clear()

    it = frames
    if progress:
        from tqdm import tqdm

        it = tqdm(frames, desc="metric gate", leave=False, dynamic_ncols=True)
    for s in it:
        buf.append(s)
        if len(buf) == batch:
            flush()
    flush()
    out: dict[str, dict] = {}
    for key, acc in accs.items():
        m = acc.compute()
        out[key] = {"miou": _f(m["miou"]), "pixel_acc": _f(m["pixel_acc"]), "map": _f(m["map"]),
                    "ap": {k: _f(v) for k, v in m["ap"].items()}, "frames": m["frames"]}
    return out


def _f(v):
    return None if v is None else float(v)


def metric_gate(ref: dict, got: dict, max_drop_miou: float, max_drop_map: float) -> dict[str, Any]:
    """Drop = fp32 metric - variant metric; passes when both drops are within the allowed drops."""
    drop_miou = (ref["miou"] or 0.0) - (got["miou"] or 0.0)
    drop_map = (ref["map"] or 0.0) - (got["map"] or 0.0)
    failures = []
    if drop_miou > max_drop_miou:
        failures.append(f"mIoU drop {drop_miou:.4f} > allowed {max_drop_miou:g}")
    if drop_map > max_drop_map:
        failures.append(f"mAP drop {drop_map:.4f} > allowed {max_drop_map:g}")
    return {"fp32": {"miou": ref["miou"], "map": ref["map"]}, "variant": {"miou": got["miou"], "map": got["map"]},
            "drop_miou": drop_miou, "drop_map": drop_map, "max_drop_miou": max_drop_miou,
            "max_drop_map": max_drop_map, "frames": got.get("frames"), "failures": failures, "passed": not failures}
