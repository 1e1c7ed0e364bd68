"""INT8 calibration: which frames, which activation ranges, and the cache that makes a re-export skip both.

- Frames (``sample_across_scenes``): chunk frame ids are ``<scene>/<id>``; the calibration frames are spread
  evenly over the scenes (drives) first and evenly over each scene's frames second, so 32 frames of an
  8-scene set come from all 8 scenes rather than from the first file.
- Statistics (``collect_stats``): one onnxruntime run of the model per calibration batch with every
  activation that a recipe may quantize added as a graph output: per tensor min, max and (for the histogram
  methods) a histogram of ``|x|`` over ``[0, amax]`` in ``BINS`` bins (a second pass, once amax is known).
- Ranges (``tensor_ranges``): per tensor the symmetric INT8 threshold ``sym`` (TensorRT recipe: scale =
  sym / 127) and the asymmetric range ``lo, hi`` (onnxruntime CPU recipe: UINT8), chosen by the method:

  ``minmax``      the observed extremes (what the exporter did before).
  ``percentile``  the ``p``-th percentile of ``|x|`` (``--calib-percentile``, default 99.99): clips outliers.
  ``entropy``     the threshold whose quantized histogram is closest in KL divergence to the observed one
                  (TensorRT's entropy calibrator algorithm, on ``levels + 1`` quantization bins).
  ``mse``         the threshold minimising the expected squared quantization error (rounding + clipping)
                  of the observed histogram, evaluated on the bin centres.

- Cache (``calibration_cache.json`` beside the model): the ranges, keyed on the fp32 model's sha256, the
  calibration frame ids, the method (and percentile) and this module's format; a second export with the same
  key reuses them without running the model, any change recomputes and replaces the file.

numpy + onnx + onnxruntime only (no torch).
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .options import CALIB_METHODS

CACHE_FILE = "calibration_cache.json"
CACHE_FORMAT = 2           # 2: entropy ignores the zero spike
BINS = 2048
MAX_CANDIDATES = 512          # thresholds tried by entropy / mse (evenly spaced over the bins)
# ops whose float inputs / outputs one of the recipes quantizes (mtl.export.quantize: INT8_CPU_OP_TYPES)
CALIBRATED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Concat", "Resize")


# ------------------------------------------------------------------------------------------- frames


def scene_of(frame_id: str) -> str:
    """The scene (drive) part of a chunk frame id ``<scene>/<id>``; ids without a slash are their own scene."""
    return frame_id.rsplit("/", 1)[0] if "/" in frame_id else frame_id


def sample_across_scenes(frame_ids: list[str], n: int) -> list[int]:
    """Indices of ``n`` frames spread over the scenes: each scene gets ``n // S`` frames (the remainder goes
    to the scenes with the most frames; a scene with fewer frames gives its share to the others), taken
    evenly spaced within the scene. All frames when ``n >= len(frame_ids)``. Sorted, deterministic."""
    if n >= len(frame_ids):
        return list(range(len(frame_ids)))
    scenes: dict[str, list[int]] = {}
    for i, fid in enumerate(frame_ids):
        scenes.setdefault(scene_of(fid), []).append(i)
    quota = {s: 0 for s in scenes}
    left = n
    while left:
        open_ = [s for s in scenes if quota[s] < len(scenes[s])]
        # largest scenes first for the remainder; ties in first-seen order
        open_.sort(key=lambda s: (-(len(scenes[s]) - quota[s]), list(scenes).index(s)))
        share = max(1, left // len(open_))
        for s in open_:
            take = min(share, len(scenes[s]) - quota[s], left)
            quota[s] += take
            left -= take
            if not left:
                break
    picked = []
    for s, idx in scenes.items():
        k = quota[s]
        if k:
            picked += [idx[j] for j in sorted({int(round(x)) for x in np.linspace(0, len(idx) - 1, k)})]
    return sorted(picked)


# --------------------------------------------------------------------------------------- statistics


@dataclass
class TensorStats:
    """Running statistics of one activation tensor over the calibration frames."""

    min: float = float("inf")
    max: float = float("-inf")
    hist: np.ndarray | None = None      # (BINS,) counts of |x| over [0, amax]

    @property
    def amax(self) -> float:
        return max(abs(self.min), abs(self.max))


def calibrated_tensors(model: Any) -> list[str]:
    """Float activations a recipe may quantize: the non-initializer inputs and the outputs of
    ``CALIBRATED_OPS`` nodes, minus the in-graph decode (everything after the heatmap Sigmoid)."""
    from .quantize import downstream_nodes, float_tensors

    tail = set(downstream_nodes(model, "Sigmoid"))
    inits = {i.name for i in model.graph.initializer}
    floats = float_tensors(model)
    names: dict[str, None] = {}
    for n in model.graph.node:
        if n.op_type not in CALIBRATED_OPS or n.name in tail:
            continue
        for t in list(n.input) + list(n.output):
            if t and t not in inits and t in floats:
                names[t] = None
    return list(names)


def _augmented_session(model: Any, names: list[str]):
    import copy

    import onnx

    from .onnx_io import ort_session

    m = copy.deepcopy(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                          for t in names if t not in have)
    return ort_session(m)


def collect_stats(model: Any, feeds: list[dict[str, np.ndarray]], names: list[str],
                  histogram: bool) -> dict[str, TensorStats]:
    """Min / max (and with ``histogram`` the ``|x|`` histogram) of every tensor in ``names`` over ``feeds``."""
    sess = _augmented_session(model, names)
    stats = {t: TensorStats() for t in names}
    for f in feeds:
        for t, x in zip(names, sess.run(names, f)):
            if x.size:
                s = stats[t]
                s.min, s.max = min(s.min, float(x.min())), max(s.max, float(x.max()))
    if histogram:
        for s in stats.values():
            s.hist = np.zeros(BINS, np.int64)
        for f in feeds:
            for t, x in zip(names, sess.run(names, f)):
                _add_histogram(stats[t], x)
    for s in stats.values():      # a tensor never seen (empty) quantizes as [0, 0]
        if s.min > s.max:
            s.min = s.max = 0.0
    return stats


def _add_histogram(s: TensorStats, x: np.ndarray) -> None:
    amax = s.amax
    if not x.size or amax <= 0:
        return
    idx = np.minimum((np.abs(x.ravel()) * (BINS / amax)).astype(np.int64), BINS - 1)
    s.hist += np.bincount(idx, minlength=BINS)


# ------------------------------------------------------------------------------------------ methods


def percentile_threshold(hist: np.ndarray, amax: float, percentile: float) -> float:
    """Upper edge of the first bin where the cumulative share of ``|x|`` reaches ``percentile`` %."""
    total = hist.sum()
    if total == 0 or amax <= 0:
        return amax
    k = int(np.searchsorted(np.cumsum(hist), percentile / 100.0 * total))
    return min(amax, (k + 1) * amax / len(hist))


def _candidates(n_bins: int, first: int) -> np.ndarray:
    """Bin counts (thresholds at the upper edge of bin i - 1) tried by entropy / mse, at most MAX_CANDIDATES."""
    step = max(1, (n_bins - first) // MAX_CANDIDATES)
    c = np.arange(first, n_bins + 1, step)
    return c if c[-1] == n_bins else np.append(c, n_bins)


def mse_threshold(hist: np.ndarray, amax: float, levels: int) -> float:
    """Threshold t minimising sum_i hist[i] * (c_i - q_t(c_i))^2 over the bin centres c_i, where q_t rounds to
    the grid of step t / levels and clips at t (rounding error below t, clipping error above)."""
    if hist.sum() == 0 or amax <= 0:
        return amax
    n = len(hist)
    w = amax / n
    centres = (np.arange(n) + 0.5) * w
    nz = hist > 0
    c, h = centres[nz], hist[nz].astype(np.float64)
    best_t, best_e = amax, np.inf
    for k in _candidates(n, max(1, n // 128)):
        t = k * w
        step = t / levels
        q = np.minimum(np.round(c / step), levels) * step
        e = float(np.dot(h, (c - q) ** 2))
        if e < best_e:
            best_t, best_e = t, e
    return float(best_t)


def entropy_threshold(hist: np.ndarray, amax: float, levels: int) -> float:
    """TensorRT's entropy calibration: for each candidate threshold (a bin count i >= levels + 1) the
    reference distribution P is hist[:i] with the clipped tail added to its last bin, Q is hist[:i] merged
    into ``levels + 1`` quantization bins and spread back uniformly over P's non-zero bins; the threshold with
    the smallest KL(P || Q) wins. Bin 0 (the exact zeros of ReLU outputs) is set to bin 1's count first."""
    if hist.sum() == 0 or amax <= 0:
        return amax
    n = len(hist)
    nq = levels + 1
    if n <= nq:
        return amax
    hist = hist.astype(np.float64)
    # the exact zeros of a ReLU output pile up in bin 0; left there, that spike dominates P and the divergence
    # favours tiny thresholds that clip every large (rare, e.g. object-peak) activation. Like NVIDIA's
    # pytorch-quantization, the zero bin counts as much as its neighbour.
    hist[0] = hist[1]
    best_i, best_kl = n, np.inf
    for i in _candidates(n, nq):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()                      # the clipped tail lands in the last kept bin
        nonzero = p > 0
        group = np.searchsorted(np.linspace(0, i, nq + 1)[1:-1], np.arange(i), side="right")   # (i,) in [0, nq)
        sums = np.bincount(group, weights=hist[:i], minlength=nq)
        counts = np.bincount(group, weights=nonzero, minlength=nq)
        q = np.where(nonzero, sums[group] / np.maximum(counts[group], 1), 0.0)
        kl = _kl(p, q, nonzero)
        if kl < best_kl:
            best_i, best_kl = int(i), kl
    return float(best_i * amax / n)


def _kl(p: np.ndarray, q: np.ndarray, mask: np.ndarray) -> float:
    """KL(P || Q) over ``mask``; a zero of Q where P is not (a bin holding only clipped outliers) is smoothed
    to a tiny count instead of making the divergence infinite."""
    p = p[mask] / p[mask].sum()
    qm = np.maximum(q[mask], 1e-9 * max(q.max(), 1.0))
    qm = qm / qm.sum()
    return float(np.sum(p * np.log(p / qm)))


def threshold(s: TensorStats, method: str, levels: int, percentile: float) -> float:
    """The clipping threshold of ``|x|`` for ``method`` with ``levels`` quantization steps in [0, t]."""
    if method == "minmax" or s.hist is None:
        return s.amax
    if method == "percentile":
        return percentile_threshold(s.hist, s.amax, percentile)
    if method == "entropy":
        return entropy_threshold(s.hist, s.amax, levels)
    if method == "mse":
        return mse_threshold(s.hist, s.amax, levels)
    raise ValueError(f"unknown calibration method {method!r} (choose from {', '.join(CALIB_METHODS)})")


def tensor_ranges(stats: dict[str, TensorStats], method: str, percentile: float = 99.99) -> dict[str, dict]:
    """Per tensor: ``min``/``max`` observed, ``sym`` (symmetric INT8 threshold: 127 steps over [0, sym]) and
    ``lo``/``hi`` (UINT8 range: 255 steps over [0, hi] for a non-negative tensor, else [-t, t] clipped to
    the observed range with 127 steps a side; always holding 0)."""
    out = {}
    for name, s in stats.items():
        sym = threshold(s, method, 127, percentile)
        if s.min >= 0:
            lo, hi = 0.0, min(s.max, threshold(s, method, 255, percentile))
        else:       # a quantized range always holds 0 (an exact zero point), also for an all-negative tensor
            lo, hi = min(0.0, max(s.min, -sym)), max(0.0, min(s.max, sym))
        out[name] = {"min": s.min, "max": s.max, "sym": float(sym), "lo": float(lo), "hi": float(hi)}
    return out


# -------------------------------------------------------------------------------------------- cache


@dataclass
class Calibration:
    """What the INT8 builders read: the (pre-processed) fp32 model the ranges belong to, the ranges, and the
    record of how they were obtained (export_report.json "calibration")."""

    model: Any                                  # onnx.ModelProto, the quantizer's input
    ranges: dict[str, dict]
    info: dict[str, Any] = field(default_factory=dict)


def cache_key(fp32_sha256: str, frame_ids: list[str], method: str, percentile: float) -> dict[str, Any]:
    key = {"format": CACHE_FORMAT, "fp32_sha256": fp32_sha256, "method": method, "bins": BINS,
           "frames": list(frame_ids)}
    if method == "percentile":
        key["percentile"] = percentile
    return key


def _key_sha(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def read_cache(path: Path, key: dict[str, Any], needed: Iterable[str]) -> tuple[dict | None, str]:
    """(ranges, "hit") when ``path`` holds ranges for ``key`` covering ``needed``, else (None, why not)."""
    if not path.is_file():
        return None, "miss (no cache)"
    try:
        doc = json.loads(path.read_text())
        old, ranges = doc["key"], doc["tensors"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, "miss (unreadable cache, replaced)"
    if old == key and doc.get("key_sha256") == _key_sha(key):
        missing = [t for t in needed if t not in ranges]
        return (ranges, "hit") if not missing else (None, f"miss ({len(missing)} tensor(s) not in the cache)")
    changed = [k for k in ("fp32_sha256", "frames", "method", "percentile", "bins", "format")
               if old.get(k) != key.get(k)] if isinstance(old, dict) else ["key"]
    if "method" in changed and "percentile" in changed:      # only the percentile method has one
        changed.remove("percentile")
    return None, f"miss ({', '.join(c.replace('fp32_sha256', 'fp32 model') for c in changed)} changed)"


def write_cache(path: Path, key: dict[str, Any], ranges: dict[str, dict], info: dict[str, Any]) -> None:
    from ..io import write_json_atomic

    write_json_atomic(path, {"key": key, "key_sha256": _key_sha(key), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                             "collect_s": info.get("collect_s"), "tensors": ranges})


def calibrate(model: Any, feeds: Callable[[], list[dict[str, np.ndarray]]], frame_ids: list[str], fp32_sha256: str,
              method: str, percentile: float, cache_in: Path | None, cache_out: Path | None) -> Calibration:
    """Ranges of ``model``'s calibrated tensors over ``feeds()`` (the batched ``frame_ids``; only loaded on a
    cache miss), from the cache at ``cache_in`` when its key matches; the ranges are written to ``cache_out``
    (unless it is ``cache_in`` and the cache hit)."""
    names = calibrated_tensors(model)
    key = cache_key(fp32_sha256, frame_ids, method, percentile)
    info: dict[str, Any] = {"method": method, "frames": len(frame_ids),
                            "scenes": len({scene_of(f) for f in frame_ids}), "tensors": len(names),
                            "bins": BINS}
    if method == "percentile":
        info["percentile"] = percentile
    ranges, status = read_cache(cache_in, key, names) if cache_in else (None, "miss (no cache)")
    if ranges is None:
        t0 = time.perf_counter()
        stats = collect_stats(model, feeds(), names, histogram=method != "minmax")
        ranges = tensor_ranges(stats, method, percentile)
        info["collect_s"] = round(time.perf_counter() - t0, 3)
    if cache_out and status != "hit":
        write_cache(cache_out, key, ranges, info)
    elif cache_out and cache_out != cache_in:
        # a hit moves with the set unchanged (an export writes its new set into a staging folder)
        from ..io import write_bytes_atomic

        write_bytes_atomic(cache_out, cache_in.read_bytes())
    info["cache"] = status
    if cache_out:
        info["cache_file"] = cache_out.name
    return Calibration(model, {t: ranges[t] for t in names}, info)
