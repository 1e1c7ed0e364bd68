"""Per-layer INT8 sensitivity of a recipe (``mtl export --int8 / --int8-cpu --sensitivity``).

A "unit" is one quantizable node of the recipe (``mtl.export.quantize.Int8Plan.units``: the convs for
TensorRT, the convs, adds, concats and resizes for the onnxruntime CPU recipe). Two measurements, cheap
first, so the ~30 units of the default model stay tractable on two CPU cores:

1. ``proxy_table`` - for EVERY unit, the model with ONLY that unit in INT8 (everything else float) runs on a
   few validation frames, and its outputs are compared with the fp32 model's: the noise-to-signal ratio
   ``sum (y - y32)^2 / sum y32^2`` of the heatmap probabilities, of the box regression at the cells where
   fp32 sees an object (heatmap > the evaluation score cut; all cells if there is none) and of the semantic
   logits, their mean (``score``, the ranking key) and the share of pixels whose semantic class flips.
   Cost: one model build + session + ``frames`` inferences per unit.
2. ``keep_float_table`` - for the ``top`` units of that ranking, the full INT8 model with ONLY that unit kept
   in float, scored on the gate frames with the metric gate's own implementation (``parity.evaluate_sessions``:
   mIoU, mAP) - the drop against fp32 that keeping this one unit in float leaves. All candidates run in one
   pass over the frames.

``search_order`` turns both into the order the mixed precision search (``mtl.export.mixed``) keeps units in
float: the measured units by the drop they leave (smallest first), then the others by proxy score.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..config import Config
from . import parity as par
from .onnx_io import ort_session
from .quantize import Int8Plan, build_int8

DENSE = ("bbox_heatmap", "bbox_reg", "sem_logits")


def reference_outputs(session: Any, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The dense outputs of ``session`` (the fp32 model) on each feed."""
    return [dict(zip(DENSE, session.run(list(DENSE), f))) for f in feeds]


def output_errors(refs: list[dict], gots: list[dict], cfg: Config) -> dict[str, float]:
    """Noise-to-signal ratios of the dense outputs (see the module docstring) and the semantic flip share."""
    num = dict.fromkeys(("hm", "reg", "sem"), 0.0)
    den = dict.fromkeys(("hm", "reg", "sem"), 0.0)
    flips = pixels = 0
    for r, g in zip(refs, gots):
        obj = r["bbox_heatmap"].max(axis=1, keepdims=True) > cfg.decode.eval_score_threshold   # (B, 1, Hh, Wh)
        mask = obj if obj.any() else np.ones_like(obj)
        for key, a, b, m in (("hm", r["bbox_heatmap"], g["bbox_heatmap"], None),
                             ("reg", r["bbox_reg"], g["bbox_reg"], mask),
                             ("sem", r["sem_logits"], g["sem_logits"], None)):
            d = (b.astype(np.float64) - a) ** 2
            s = a.astype(np.float64) ** 2
            if m is not None:
                d, s = d * m, s * m
            num[key] += float(d.sum())
            den[key] += float(s.sum())
        ra, ga = r["sem_logits"].argmax(1), g["sem_logits"].argmax(1)
        flips += int((ra != ga).sum())
        pixels += int(ra.size)
    out = {k: num[k] / max(den[k], 1e-30) for k in num}
    out["score"] = float(np.mean([out["hm"], out["reg"], out["sem"]]))
    out["sem_flip"] = flips / max(pixels, 1)
    return out


def unit_layers(plan: Int8Plan) -> dict[str, tuple[str, str]]:
    """node name -> (op type, the torch layer it came from: its weight's name without ``.weight``, or "-")."""
    inits = {i.name for i in plan.model.graph.initializer}
    out = {}
    for n in plan.model.graph.node:
        w = n.input[1] if len(n.input) > 1 and n.input[1] in inits and n.op_type in ("Conv", "ConvTranspose") else ""
        out[n.name] = (n.op_type, w.removesuffix(".weight") or "-")
    return out


def proxy_table(plan: Int8Plan, feeds: list[dict[str, np.ndarray]], refs: list[dict], cfg: Config, n_frames: int,
                units: Iterable[str] | None = None) -> dict[str, Any]:
    """Step 1: every unit quantized alone, ranked by output error (largest first). Also the two end points:
    nothing in INT8 (the float remainder alone: fp16 for TensorRT) and everything in INT8."""
    t0 = time.perf_counter()
    layers = unit_layers(plan)
    total = sum(plan.macs.values()) or 1

    def run(keep_float: list[str]) -> dict[str, float]:
        sess = ort_session(build_int8(plan, keep_float)[0])
        return output_errors(refs, [dict(zip(DENSE, sess.run(list(DENSE), f))) for f in feeds], cfg)

    rows = []
    for u in (plan.units if units is None else units):
        err = run([x for x in plan.units if x != u])
        op, layer = layers.get(u, ("?", "-"))
        rows.append({"node": u, "op": op, "layer": layer, "mac_share": plan.macs.get(u, 0) / total, **_round(err)})
    rows.sort(key=lambda r: -r["score"])
    for i, r in enumerate(rows):
        r["rank"] = i + 1
    ends = {"none_int8": _round(run(list(plan.units))), "all_int8": _round(run([]))}
    return {"frames": n_frames, "rows": rows, **ends,
            "seconds": round(time.perf_counter() - t0, 3),
            "note": "only this unit in INT8, everything else float; error = noise-to-signal vs fp32"}


def keep_float_table(plan: Int8Plan, candidates: list[str], frames: Any, cfg: Config, batch: int,
                     fp32_metrics: dict, max_drop_miou: float, max_drop_map: float) -> dict[str, Any]:
    """Step 2: the full INT8 model with only each candidate kept in float, on the gate frames (one pass)."""
    t0 = time.perf_counter()
    sessions = {u: ort_session(build_int8(plan, [u])[0]) for u in candidates}
    metrics = par.evaluate_sessions(sessions, frames, cfg, batch) if sessions else {}
    rows = []
    for u in candidates:
        g = par.metric_gate(fp32_metrics, metrics[u], max_drop_miou, max_drop_map)
        rows.append({"node": u, "miou": metrics[u]["miou"], "map": metrics[u]["map"], "drop_miou": g["drop_miou"],
                     "drop_map": g["drop_map"], "passes_gate": g["passed"]})
    return {"frames": len(frames), "rows": rows, "seconds": round(time.perf_counter() - t0, 3),
            "note": "everything INT8 except this unit; drops vs fp32 on the gate frames"}


def search_order(proxy: dict[str, Any], measured: dict[str, Any] | None) -> list[str]:
    """Units in the order to keep them in float: measured ones by the drop they leave (mIoU + mAP, smallest
    first), then the rest by proxy score (largest first)."""
    first = [r["node"] for r in sorted((measured or {}).get("rows", []), key=lambda r: r["drop_miou"] + r["drop_map"])]
    return first + [r["node"] for r in proxy["rows"] if r["node"] not in first]


def _round(d: dict[str, float]) -> dict[str, float]:
    return {k: float(f"{v:.4g}") for k, v in d.items()}
