"""Automatic mixed precision of the INT8 variants: keep the most sensitive units in float until the gate passes.

``tune_int8`` runs for a calibrated variant that failed its metric gate (and for any with ``--sensitivity``):

1. the sensitivity tables (``mtl.export.sensitivity``): the proxy ranking of every unit and, with
   ``--sensitivity``, the measured drop of the ``--sensitivity-top`` most sensitive ones;
2. ``search``: units are kept in float in ``search_order`` (most sensitive first). The number kept grows
   1, 2, 4, ... until the gate passes, is then bisected down to the smallest passing prefix, and finally each
   unit of that prefix is tried back in INT8 (least sensitive first) and left there when the gate still
   passes. Every candidate is a full build scored by the gate itself (``parity.evaluate_sessions`` +
   ``parity.metric_gate`` on the gate frames), so the chosen mix is one that was measured to pass; when even
   everything-float fails (for TensorRT that is the fp16 model), there is no mix and the variant is rejected.
   Cost: about 2 log2(units) + kept gate evaluations instead of one per unit.
3. for the onnxruntime CPU recipe, ``latency``: fp32, full INT8 and the mix timed interleaved on the same
   frames (median ms of one inference), since a float island costs the CPU recipe dequantize / quantize pairs.

Float units are fp16 in the TensorRT recipe (its remainder is fp16 anyway) and fp32 in the CPU recipe.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..config import Config
from . import parity as par
from . import sensitivity as sens
from .onnx_io import ort_session
from .quantize import Int8Plan, build_int8, int8_mac_share

Gate = dict[str, Any]


def search(order: list[str], evaluate: Callable[[tuple[str, ...]], Gate], full_gate: Gate) -> dict[str, Any]:
    """Smallest passing float prefix of ``order`` (doubling, then bisection), then pruned unit by unit.
    ``evaluate(keep_float) -> gate``; ``full_gate``: the gate of the full INT8 model (nothing kept)."""
    gates: dict[frozenset, Gate] = {frozenset(): full_gate}
    trace: list[dict[str, Any]] = []

    def passes(keep: tuple[str, ...], step: str, unit: str) -> bool:
        """``unit``: the last unit added to the float set (grow / bisect) or put back into INT8 (prune)."""
        key = frozenset(keep)
        if key not in gates:
            gates[key] = evaluate(keep)
            g = gates[key]
            trace.append({"step": step, "kept_float": len(keep), "unit": unit, "keep_float": list(keep),
                          "drop_miou": g["drop_miou"], "drop_map": g["drop_map"], "passed": g["passed"]})
        return gates[key]["passed"]

    n = len(order)
    if full_gate["passed"]:
        return _result([], full_gate, trace)
    lo, hi, k = 0, None, 1
    while hi is None and lo < n:
        k = min(k, n)
        if passes(tuple(order[:k]), "grow", order[k - 1]):
            hi = k
        else:
            lo, k = k, k * 2
    if hi is None:
        return _result(None, gates[frozenset(order)], trace)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if passes(tuple(order[:mid]), "bisect", order[mid - 1]):
            hi = mid
        else:
            lo = mid
    keep = list(order[:hi])
    for u in reversed(order[:hi]):          # least sensitive of the kept ones first
        trial = tuple(x for x in keep if x != u)
        if trial and passes(trial, "prune", u):   # (an empty trial is the full INT8 model, known to fail)
            keep = list(trial)
    return _result(keep, gates[frozenset(keep)], trace)


def _result(keep: list[str] | None, gate: Gate, trace: list[dict]) -> dict[str, Any]:
    return {"passed": keep is not None, "keep_float": keep, "gate": gate, "evaluations": len(trace),
            "trace": trace}


def latency(sessions: dict[str, Any], feeds: list[dict[str, np.ndarray]], rounds: int = 20,
            warmup: int = 3) -> dict[str, dict[str, float]]:
    """Median / mean ms of one inference per session, the sessions interleaved round by round (machine drift
    hits every one alike), after ``warmup`` untimed runs each."""
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for r in range(warmup + rounds):
        for k, s in sessions.items():
            f = feeds[r % len(feeds)]
            t0 = time.perf_counter()
            s.run(None, f)
            if r >= warmup:
                times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: {"median_ms": round(float(np.median(v)), 3), "mean_ms": round(float(np.mean(v)), 3)}
            for k, v in times.items()}


def tune_int8(plan: Int8Plan, *, fp32_session: Any, int8_session: Any, probe: list[dict], gate_frames: Any,
              cfg: Config, batch: int, fp32_metrics: dict, full_gate: Gate, max_drop_miou: float,
              max_drop_map: float, sensitivity: bool, mixed: bool, top: int,
              echo: Callable[[str], None] = print, name: str = "int8") -> tuple[dict[str, Any], Any, dict]:
    """Sensitivity tables + (when the full INT8 gate failed and ``mixed``) the mixed precision search.
    Returns ``(report section, proto of the chosen mix or None, its build info or {})``."""
    feeds = [f for f, _ in par.batched(probe, batch)]
    refs = sens.reference_outputs(fp32_session, feeds)
    echo(f"sensitivity {name}: {len(plan.units)} units, each alone in INT8 on {len(probe)} frame(s) ...")
    proxy = sens.proxy_table(plan, feeds, refs, cfg, len(probe))
    out: dict[str, Any] = {"units": len(plan.units), "proxy": proxy}
    measured = None
    if sensitivity and top > 0:
        cand = [r["node"] for r in proxy["rows"][:top]]
        echo(f"sensitivity {name}: top {len(cand)} kept in float one at a time, on {len(gate_frames)} gate frame(s)")
        measured = sens.keep_float_table(plan, cand, gate_frames, cfg, batch, fp32_metrics, max_drop_miou,
                                         max_drop_map)
        out["keep_float"] = measured
    if full_gate["passed"] or not mixed:
        return out, None, {}

    def evaluate(keep: tuple[str, ...]) -> Gate:
        sess = ort_session(build_int8(plan, keep)[0])
        m = par.evaluate_sessions({"mix": sess}, gate_frames, cfg, batch)["mix"]
        return {**par.metric_gate(fp32_metrics, m, max_drop_miou, max_drop_map), "metrics": m}

    t0 = time.perf_counter()
    res = search(sens.search_order(proxy, measured), evaluate, full_gate)
    res["seconds"] = round(time.perf_counter() - t0, 3)
    res["full_int8_gate"] = full_gate
    res["int8_mac_share_full"] = round(int8_mac_share(plan, ()), 6)
    out["mixed_precision"] = res
    if not res["passed"]:
        echo(f"mixed precision {name}: no mix passes the gate, even with all {len(plan.units)} units in float "
             f"({res['evaluations']} evaluation(s), {res['seconds']:.1f} s)")
        return out, None, {}
    proto, info = build_int8(plan, res["keep_float"])
    res["int8_mac_share"] = info["int8_mac_share"]
    layers = sens.unit_layers(plan)
    res["keep_float_layers"] = [layers[u][1] for u in res["keep_float"]]
    if plan.target == "cpu":
        sessions = {"fp32": fp32_session, "int8_full": int8_session, "int8_mixed": ort_session(proto)}
        res["latency"] = latency(sessions, feeds)
    echo(f"mixed precision {name}: {len(res['keep_float'])} unit(s) kept in float ({', '.join(res['keep_float'])}), "
         f"{100 * res['int8_mac_share']:.1f}% of MACs in INT8 ({res['evaluations']} evaluation(s), "
         f"{res['seconds']:.1f} s)")
    return out, proto, info
