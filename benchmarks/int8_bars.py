#!/usr/bin/env python
"""The INT8 bars (README "INT8 that keeps its accuracy") from a trained checkpoint, in one run.

    python benchmarks/int8_bars.py --checkpoint runs/run/best.pt --calib-data runs/train --val-data runs/val \\
        --out runs/int8_bars [--methods] [--mixed-demo entropy] [--iters 100] [--rounds 10] [--threads 2]

1. ``mtl export CKPT --int8 --int8-cpu --sensitivity`` with the default gate (0.005 mIoU / mAP) and the
   default calibration into OUT/export: the mIoU / mAP drop of both INT8 variants against fp32 on the
   validation frames (bar: <= 0.005 each, i.e. 0.5 points), the units kept in float, the share of MACs in
   INT8, and what each export step cost (export_report.json "timings_s").
2. The full-INT8 CPU model with the same calibration (``--no-mixed-precision``, gate opened so it is kept)
   into OUT/export_full, when step 1 kept units of int8_cpu in float (else the shipped model IS full INT8).
3. ``--mixed-demo METHOD``: the same export with ``--calib-method METHOD`` into OUT/export_METHOD (entropy,
   whose full INT8 loses most boxes on the default model, makes mixed precision do real work): its drops,
   units kept in float and INT8 MAC share.
4. One interleaved timing (``mtl.bench.time_backends``: every model in turn, ``--rounds`` rounds, the same
   frames, the runtime pipeline of ``mtl bench``) of fp32, the full-INT8 CPU model, the shipped one and the
   demo's mix: inference ms, the fp32 -> INT8 network speed-ups and the share of the full-INT8 speed-up each
   mix keeps (bar: >= 80%), both as a ratio of speed-ups and as a ratio of the time saved. The full INT8
   speed does not depend on the calibration method (same graph, other scales).
5. ``--methods``: the full-INT8 drops of both recipes for each calibration method (one calibration + one pass
   over the validation frames per method, no search), then minmax on the first 32 files (the frame choice
   before this change) and the previous TensorRT recipe (fp32 model, Q/DQ on conv outputs too).

Writes OUT/int8_bars.json / .md and runs/benchmarks/int8_bars_<date>.json / .md. Latency ratios are only
meaningful when measured side by side: on a shared machine check the load average recorded in the JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import RESULTS

ALLOWED_DROP = 0.005
KEEP_SPEEDUP = 0.80


def export(ckpt: str, out: Path, a, **kw) -> dict:
    """``mtl export`` in-process; a rejected variant (exit 8) still leaves its report."""
    from mtl.errors import ParityError
    from mtl.export.options import ExportOptions
    from mtl.export.run import export_checkpoint

    opts = ExportOptions(checkpoint=ckpt, out_dir=out, calib_data=a.calib_data, val_data=a.val_data,
                         calib_method=a.calib_method, **kw)
    try:
        export_checkpoint(opts)
    except ParityError as e:
        print(f"(export reported: {e})")
    return json.loads((out / "export_report.json").read_text())


def drops(report: dict) -> dict:
    out = {}
    for name in ("int8", "int8_cpu"):
        v = report["variants"].get(name)
        if not v or not v.get("gate"):
            continue
        mp = v.get("mixed_precision") or {}
        out[name] = {"status": v["status"], "drop_miou": v["gate"]["drop_miou"], "drop_map": v["gate"]["drop_map"],
                     "miou": v["metrics"]["miou"], "map": v["metrics"]["map"],
                     "fp32": v["gate"]["fp32"], "frames": v["gate"]["frames"],
                     "float_units": v["info"].get("float_nodes", []), "int8_mac_share": v["info"]["int8_mac_share"],
                     "full_int8": ({k: mp["full_int8_gate"][k] for k in ("drop_miou", "drop_map")}
                                   if mp.get("full_int8_gate") else None),
                     "bar_met": v["status"] == "ok" and v["gate"]["drop_miou"] <= ALLOWED_DROP
                     and v["gate"]["drop_map"] <= ALLOWED_DROP}
    return out


def timing(models: dict[str, Path], a) -> dict:
    from mtl.bench import device_state, load_frames, time_backends, warm_up
    from mtl.runtime import Pipeline

    pipes = {k: Pipeline.open(p, "onnxruntime", a.threads) for k, p in models.items()}
    try:
        frames, _ = load_frames(a.val_data, next(iter(pipes.values())).cfg, a.frames)
        for p in pipes.values():
            warm_up(p, frames, a.warmup)
        timed = time_backends(pipes, frames, a.iters, a.rounds)
    finally:
        for p in pipes.values():
            p.close()
    inf = {k: t["stages"]["inference"]["mean"] for k, t in timed.items()}
    tot = {k: t["stages"]["total"]["mean"] for k, t in timed.items()}
    res = {"inference_ms": inf, "total_ms": tot, "iters": a.iters, "rounds": a.rounds, "frames": len(frames),
           "device": device_state(a.threads), "kept": {}}
    full = inf.get("int8_cpu_full", inf["int8_cpu"])       # the shipped model when nothing was kept in float
    f32 = inf["fp32"]
    res["speedup_full"] = round(f32 / full, 3)
    for k in [k for k in inf if k.startswith("int8_cpu") and k != "int8_cpu_full"]:
        res["kept"][k] = {"speedup": round(f32 / inf[k], 3), "kept_speedup_ratio": round(full / inf[k], 3),
                          "kept_time_saved": round((f32 - inf[k]) / (f32 - full), 3) if f32 > full else None}
    return res


def previous_trt_recipe(model, feeds: list[dict]):
    """The TensorRT recipe before this change, for comparison: onnxruntime's ``quantize_static`` on the fp32
    model (Q/DQ on conv inputs AND outputs, fp32 everywhere else), symmetric INT8, MinMax, heads excluded."""
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from mtl.export.quantize import INT8_OP_TYPES, downstream_nodes, final_convs

    class Reader:
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    exclude = final_convs(model)
    tail = [n for n in downstream_nodes(model, "Sigmoid") if n not in exclude]
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(model, f"{tmp}/in.onnx")
        quantize_static(f"{tmp}/in.onnx", f"{tmp}/out.onnx", Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(INT8_OP_TYPES), per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=exclude + tail,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
        return onnx.load(f"{tmp}/out.onnx")


def method_table(export_dir: Path, a) -> list[dict]:
    """Full-INT8 drops per calibration method (same frames, same fp32 model), both recipes; then minmax on the
    first 32 files (the previous frame choice) and the previous TensorRT recipe, for comparison."""
    import onnx

    from mtl.config import sha256_file
    from mtl.contract import read_onnx_metadata
    from mtl.export import parity as par
    from mtl.export.calibration import calibrate, sample_across_scenes
    from mtl.export.onnx_io import ort_session
    from mtl.export.options import CALIB_METHODS
    from mtl.export.quantize import build_int8, plan_int8, pre_process
    from mtl.runtime import ModelSpec

    fp32 = export_dir / "model.onnx"
    cfg = ModelSpec.from_metadata(read_onnx_metadata(fp32), fp32).cfg
    model, _ = pre_process(onnx.load(str(fp32)))
    frames = par.FrameSource(a.calib_data, cfg, max_frames=32, select=sample_across_scenes)
    val = par.FrameSource(a.val_data, cfg, max_frames=128)
    first = par.FrameSource(a.calib_data, cfg, max_frames=32, select=lambda ids, n: list(range(min(n, len(ids)))))
    rows = []
    for method, src in [(m, frames) for m in CALIB_METHODS] + [("minmax, first 32 files", first),
                                                                 ("previous TensorRT recipe", first)]:
        t0 = time.perf_counter()
        feeds = [f for f, _ in par.batched(src, 1)]
        sessions = {"fp32": ort_session(fp32)}
        if method == "previous TensorRT recipe":
            sessions["int8"] = ort_session(previous_trt_recipe(model, feeds))
        else:
            c = calibrate(model, lambda f=feeds: f, src.selected_ids, sha256_file(fp32), method.split(",")[0], 99.99,
                          None, None)
            for target, name in (("tensorrt", "int8"), ("cpu", "int8_cpu")):
                sessions[name] = ort_session(build_int8(plan_int8(c, target))[0])
        m = par.evaluate_sessions(sessions, val, cfg, 1)
        row = {"method": method, "seconds": round(time.perf_counter() - t0, 1),
               "calibration_scenes": len({i.split("/")[0] for i in src.selected_ids})}
        for name in ("int8", "int8_cpu"):
            if name in m:
                g = par.metric_gate(m["fp32"], m[name], ALLOWED_DROP, ALLOWED_DROP)
                row[name] = {"drop_miou": round(g["drop_miou"], 4), "drop_map": round(g["drop_map"], 4)}
        rows.append(row)
        print(f"method {method}: {row}")
    return rows


def to_markdown(r: dict) -> str:
    lines = [f"# INT8 bars ({r['created']})", "", f"checkpoint `{r['checkpoint']}`, validation `{r['val_data']}`, "
             f"calibration `{r['calib_data']}` ({r['calib_method']})", "",
             "| variant | status | mIoU fp32 -> int8 (drop) | mAP fp32 -> int8 (drop) | full INT8 drop mIoU / mAP | "
             "units in float | MACs in INT8 | bar (<= 0.005 each) |", "|---|---|---|---|---|---|---:|---|"]
    for name, d in r["drops"].items():
        full = "-" if not d["full_int8"] else f"{d['full_int8']['drop_miou']:+.4f} / {d['full_int8']['drop_map']:+.4f}"
        lines.append(f"| {name} | {d['status']} | {d['fp32']['miou']:.4f} -> {d['miou']:.4f} ({d['drop_miou']:+.4f}) | "
                     f"{d['fp32']['map']:.4f} -> {d['map']:.4f} ({d['drop_map']:+.4f}) | {full} | "
                     f"{len(d['float_units'])} | {100 * d['int8_mac_share']:.1f}% | "
                     f"{'met' if d['bar_met'] else 'NOT met'} |")
    t = r["timing"]
    lines += ["", f"Inference ms (mean, {t['iters']} iterations interleaved in {t['rounds']} rounds, "
                  f"{t['frames']} frames, load average {t['device']['load_avg']}):", "",
              "| model | inference ms | total ms |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.2f} | {t['total_ms'][k]:.2f} |" for k, v in t["inference_ms"].items()]
    lines += ["", f"- fp32 -> full INT8-CPU network speed-up: {t['speedup_full']:.2f}x"
                  + ("" if "int8_cpu_full" in t["inference_ms"] else " (the shipped model is the full INT8 model: no "
                                                                      "unit was kept in float)")]
    for k, kept in t["kept"].items():
        saved = kept["kept_time_saved"]
        met = saved is not None and min(kept["kept_speedup_ratio"], saved) >= KEEP_SPEEDUP
        lines.append(f"- {k}: {kept['speedup']:.2f}x, keeps {100 * kept['kept_speedup_ratio']:.0f}% of the full INT8 "
                     f"speed-up ({'n/a' if saved is None else f'{100 * saved:.0f}%'} of the time saved); bar >= 80%: "
                     f"{'met' if met else 'NOT met'}")
    if r.get("methods"):
        def cell(d):
            return "-" if d is None else f"{d['drop_miou']:+.4f} / {d['drop_map']:+.4f}"

        lines += ["", "Full-INT8 drops per calibration method (no mixed precision; 32 calibration frames):", "",
                  "| calibration | scenes | TensorRT recipe drop mIoU / mAP | CPU recipe drop mIoU / mAP | s |",
                  "|---|---:|---|---|---:|"]
        lines += [f"| {m['method']} | {m['calibration_scenes']} | {cell(m.get('int8'))} | {cell(m.get('int8_cpu'))} | "
                  f"{m['seconds']} |" for m in r["methods"]]
    lines += ["", "Export step costs (s): " + ", ".join(f"{k} {v}" for k, v in r["export_timings_s"].items())]
    demo = r.get("mixed_demo")
    if demo:
        lines += ["", f"Mixed precision with --calib-method {demo['method']}:", "",
                  "| variant | status | full INT8 drop mIoU / mAP | shipped drop mIoU / mAP | units in float | "
                  "MACs in INT8 |", "|---|---|---|---|---|---:|"]
        for name, d in demo["drops"].items():
            f = d["full_int8"]
            full = "-" if not f else f"{f['drop_miou']:+.4f} / {f['drop_map']:+.4f}"
            lines.append(f"| {name} | {d['status']} | {full} | {d['drop_miou']:+.4f} / {d['drop_map']:+.4f} | "
                         f"{', '.join(d['float_units']) or '-'} | {100 * d['int8_mac_share']:.1f}% |")
        if demo.get("latency"):
            lines += ["", "its CPU latency (median ms, timed inside the export): " + ", ".join(
                f"{k} {v['median_ms']:.2f}" for k, v in demo["latency"].items())]
        lines += ["", "Its export step costs (s): " + ", ".join(f"{k} {v}" for k, v in demo["timings_s"].items())]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--calib-data", required=True)
    ap.add_argument("--val-data", required=True)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--calib-method", default=None, help="default: mtl export's default")
    ap.add_argument("--methods", action="store_true", help="also the full-INT8 drops per calibration method")
    ap.add_argument("--mixed-demo", default=None, metavar="METHOD",
                    help="also export with --calib-method METHOD into OUT/export_METHOD (e.g. entropy, whose full "
                         "INT8 fails the gate here) and report the mix that mixed precision finds")
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-export", action="store_true", help="reuse OUT/export and OUT/export_full")
    a = ap.parse_args(argv)
    from mtl.bench import write_results
    from mtl.export.options import ExportOptions
    from mtl.io import write_bytes_atomic, write_json_atomic

    a.calib_method = a.calib_method or ExportOptions.calib_method
    ship, full = a.out / "export", a.out / "export_full"
    t0 = time.perf_counter()
    rep = (json.loads((ship / "export_report.json").read_text()) if a.skip_export else
           export(a.checkpoint, ship, a, variants=("int8", "int8_cpu"), sensitivity=True))
    d = drops(rep)
    models = {"fp32": ship / "model.onnx", "int8_cpu": ship / "model_int8_cpu.onnx"}
    if d.get("int8_cpu", {}).get("float_units"):
        if not a.skip_export:
            export(a.checkpoint, full, a, variants=("int8_cpu",), mixed_precision=False, max_drop_miou=1.0,
                   max_drop_map=1.0)
        models["int8_cpu_full"] = full / "model_int8_cpu.onnx"
    result = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "checkpoint": a.checkpoint,
              "calib_data": a.calib_data, "val_data": a.val_data, "calib_method": a.calib_method, "drops": d,
              "export_timings_s": rep["timings_s"], "calibration": rep.get("calibration")}
    if a.mixed_demo:        # the full INT8 speed does not depend on the calibration: same graph, other scales
        demo = a.out / f"export_{a.mixed_demo}"
        a.calib_method = a.mixed_demo
        drep = (json.loads((demo / "export_report.json").read_text()) if a.skip_export else
                export(a.checkpoint, demo, a, variants=("int8", "int8_cpu"), sensitivity=True))
        result["mixed_demo"] = {"method": a.mixed_demo, "drops": drops(drep), "timings_s": drep["timings_s"],
                                "latency": (drep["variants"]["int8_cpu"].get("mixed_precision") or {}).get("latency")}
        if result["mixed_demo"]["drops"].get("int8_cpu", {}).get("float_units"):
            models[f"int8_cpu_{a.mixed_demo}_mixed"] = demo / "model_int8_cpu.onnx"
    result["timing"] = timing({k: p for k, p in models.items() if p.is_file()}, a)
    if a.methods:
        result["methods"] = method_table(ship, a)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    md = to_markdown(result)
    write_json_atomic(a.out / "int8_bars.json", result)
    write_bytes_atomic(a.out / "int8_bars.md", md.encode())
    written = write_results(RESULTS, "int8_bars", result, md)
    print(md)
    print(f"written: {a.out / 'int8_bars.md'}, {written['markdown']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
