"""How ``mtl export`` reports: the one-line parity / gate / summary messages it prints and
export_report.md rendered from export_report.json (pure functions of the report dict, no I/O)."""
from __future__ import annotations

from typing import Any


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def parity_line(name: str, rep: dict[str, Any]) -> str:
    """``parity <name> vs torch (...)``: max abs per output, decoded boxes, semantic argmax, in-graph decode."""
    outs = ", ".join(f"{k} {v['max_abs']:.2e}" for k, v in rep["outputs"].items())
    det = rep["decoded"] or {}
    s = (f"parity {name} vs torch ({rep['frames']} frames): max abs {outs}; decoded boxes "
         f"{det.get('matched', 0)}/{det.get('n_ref', 0)} matched within {rep.get('box_atol_m', 1e-4):g} m "
         f"(max box diff {det.get('max_box_diff', 0):.2e}); "
         f"semantic argmax agreement {rep['semantic_argmax_agreement']:.5f}")
    if rep.get("in_graph_decode"):
        g = rep["in_graph_decode"]
        s += f"; in-graph decode {g['matched']}/{g['n_ref']} = numpy decode"
    if rep["gated"]:
        s += f" -> {'PASS' if rep['passed'] else 'FAIL'} (atol {rep['atol']:g})"
    return s


def gate_line(name: str, gate: dict[str, Any]) -> str:
    """``gate <name>: mIoU a -> b (drop, max), mAP a -> b (drop, max): PASS|FAIL``."""
    return (f"gate {name}: mIoU {fmt(gate['fp32']['miou'])} -> {fmt(gate['variant']['miou'])} "
            f"(drop {gate['drop_miou']:+.4f}, max {gate['max_drop_miou']:g}), mAP {fmt(gate['fp32']['map'])} -> "
            f"{fmt(gate['variant']['map'])} (drop {gate['drop_map']:+.4f}, max {gate['max_drop_map']:g}): "
            f"{'PASS' if gate['passed'] else 'FAIL'}")


def wrote_line(report: dict[str, Any]) -> str:
    """The last line of a successful export: every file written and the total time."""
    engines = report["engines"]
    return (f"wrote {', '.join(v['path'] for v in report['variants'].values())}"
            f"{', ' + ', '.join(e['path'] for e in engines.values()) if engines else ''}"
            f", export_report.json/.md to {report['out_dir']} ({report['timings_s']['total']:.1f} s)")


def render_markdown(report: dict[str, Any]) -> str:
    """export_report.md: header, failures, the variants table, INT8 calibration / sensitivity / mixed precision,
    parity, TensorRT check, engines, timings."""
    lines = _header(report) + _variants_table(report) + _calibration_section(report)
    lines += _precision_sections(report) + _parity_sections(report) + _trt_sections(report)
    lines += _engines_table(report)
    lines += ["## Timings (s)", ""] + [f"- {k}: {v}" for k, v in report["timings_s"].items()] + [""]
    return "\n".join(lines)


def _header(report: dict[str, Any]) -> list[str]:
    o = report["options"]
    env = report["environment"]
    lines = ["# mtl export report", "",
             f"- checkpoint: `{report['checkpoint']}` (sha256 `{report['checkpoint_sha256'][:16]}…`)",
             (f"- opset {report.get('opset', o['opset'])}, decode={o['decode']}, batch={o['batch']}, "
              f"slim={o['slim']}, mtl {report['mtl_version']}, torch {env['torch']}, "
              f"onnxruntime {env['onnxruntime']}"),
             (f"- parity data: `{report.get('parity_data', '-')}`; atol {o['atol']:g}; allowed drops mIoU "
              f"{o['max_drop_miou']:g}, mAP {o['max_drop_map']:g}"),
             f"- result: **{'PASS' if report['passed'] else 'FAIL'}**", ""]
    if report.get("error"):
        lines += [f"**error:** {report['error']}", ""]
    if report["failures"]:
        lines += ["## Failures", ""] + [f"- {f}" for f in report["failures"]] + [""]
    return lines


def _variants_table(report: dict[str, Any]) -> list[str]:
    lines = ["## Variants", "", "| variant | file | status | nodes | size | TensorRT check | mIoU | mAP | gate |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, v in report["variants"].items():
        n_err = sum(f["level"] == "error" for f in v["trt_check"])
        n_warn = sum(f["level"] == "warning" for f in v["trt_check"])
        m = v.get("metrics") or {}
        g = v.get("gate")
        gate = "-" if g is None else (("pass" if g["passed"] else "FAIL") +
                                      f" (drop mIoU {g['drop_miou']:+.4f}, mAP {g['drop_map']:+.4f})")
        lines.append(f"| {name} | `{v['path']}` | {v['status']} | {v['nodes']} | {v['size_bytes'] / 1e6:.2f} MB | "
                     f"{'FAIL' if n_err else 'ok'} ({n_err} err, {n_warn} warn) | {fmt(m.get('miou'))} | "
                     f"{fmt(m.get('map'))} | {gate} |")
    return lines


def _calibration_section(report: dict[str, Any]) -> list[str]:
    c = report.get("calibration")
    if not c:
        return []
    method = c["method"] + (f" (percentile {c['percentile']:g})" if c["method"] == "percentile" else "")
    return ["", "## INT8 calibration", "",
            f"- {method} over {c['frames']} frame(s) from {c['scenes']} scene(s) of `{c['data']}` (sampled evenly "
            f"across scenes), {c['tensors']} activation tensors; {c.get('pre_process', '')}",
            f"- cache `{c.get('cache_file', '-')}`: {c['cache']}"
            + (f"; statistics collected in {c['collect_s']} s" if c.get("collect_s") is not None else ""), ""]


def _precision_sections(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for name, v in report["variants"].items():
        if v.get("sensitivity"):
            lines += _sensitivity_table(name, v["sensitivity"])
        if v.get("mixed_precision"):
            lines += _mixed_section(name, v["mixed_precision"])
    return lines


def _sensitivity_table(name: str, s: dict[str, Any]) -> list[str]:
    p = s["proxy"]
    kf = s.get("keep_float") or {}
    measured = {r["node"]: r for r in kf.get("rows", [])}
    lines = ["", f"## INT8 sensitivity ({name})", "",
             f"{s['units']} quantizable units. Output error with ONLY that unit in INT8 (noise-to-signal vs fp32 "
             f"on {p['frames']} frame(s): heatmap, box regression at object cells, semantic logits; score = their "
             f"mean; {p['seconds']} s). Reference: nothing in INT8 scores {p['none_int8']['score']:.3g}, "
             f"everything in INT8 {p['all_int8']['score']:.3g}."]
    if kf:
        lines.append(f"Last column: the full INT8 model with only that unit kept in float, on {kf['frames']} gate "
                     f"frame(s) ({kf['seconds']} s).")
    lines += ["", "| rank | unit | op | layer | MACs | score | heatmap | regression | sem logits | sem flips | "
                  "only this float: drop mIoU / mAP |", "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in p["rows"]:
        m = measured.get(r["node"])
        meas = "-" if m is None else (f"{m['drop_miou']:+.4f} / {m['drop_map']:+.4f}"
                                      f"{' (passes)' if m['passes_gate'] else ''}")
        lines.append(f"| {r['rank']} | `{r['node']}` | {r['op']} | {r.get('layer', '-')} | "
                     f"{100 * r['mac_share']:.1f}% | {r['score']:.3g} | {r['hm']:.3g} | {r['reg']:.3g} | "
                     f"{r['sem']:.3g} | {100 * r['sem_flip']:.2f}% | {meas} |")
    return lines


def _mixed_section(name: str, mp: dict[str, Any]) -> list[str]:
    full, g = mp["full_int8_gate"], mp["gate"]
    lines = ["", f"## Mixed precision ({name})", "",
             f"- full INT8 ({100 * mp['int8_mac_share_full']:.1f}% of MACs): drop mIoU {full['drop_miou']:+.4f}, "
             f"mAP {full['drop_map']:+.4f} -> FAIL"]
    if mp["passed"]:
        layers = mp.get("keep_float_layers") or ["-"] * len(mp["keep_float"])
        lines += [f"- kept in float: {', '.join(f'`{u}` ({x})' for u, x in zip(mp['keep_float'], layers))}",
                  f"- {100 * mp['int8_mac_share']:.1f}% of MACs still INT8; drop mIoU {g['drop_miou']:+.4f}, mAP "
                  f"{g['drop_map']:+.4f} -> PASS"]
    else:
        lines.append(f"- no mix passes: with every unit in float, drop mIoU {g['drop_miou']:+.4f}, mAP "
                     f"{g['drop_map']:+.4f} -> the variant is rejected")
    lines += [f"- search: {mp['evaluations']} gate evaluation(s), {mp['seconds']} s", "",
              "| step | units in float | unit added (grow, bisect) / put back in INT8 (prune) | drop mIoU | drop mAP | "
              "gate |", "|---|---:|---|---:|---:|---|"]
    lines += [f"| {t['step']} | {t['kept_float']} | `{t['unit']}` | "
              f"{t['drop_miou']:+.4f} | {t['drop_map']:+.4f} | {'pass' if t['passed'] else 'FAIL'} |"
              for t in mp["trace"]]
    lat = mp.get("latency")
    if lat:
        ref = lat["fp32"]["median_ms"]
        lines += ["", "| model (onnxruntime CPU, interleaved) | median ms | speed-up vs fp32 |", "|---|---:|---:|"]
        lines += [f"| {k} | {t['median_ms']:.2f} | {ref / t['median_ms']:.2f}x |" for k, t in lat.items()]
    return lines


def _parity_sections(report: dict[str, Any]) -> list[str]:
    lines = ["", "## Parity against torch", ""]
    for name, v in report["variants"].items():
        rep = v.get("parity")
        if not rep:
            continue
        lines += [f"### {name} ({rep['frames']} frames{', gated' if rep['gated'] else ', informational'})", "",
                  "| output | max abs diff | max rel diff |", "|---|---|---|"]
        lines += [f"| {k} | {s['max_abs']:.3e} | {s['max_rel']:.3e} |" for k, s in rep["outputs"].items()]
        d = rep["decoded"] or {}
        lines += ["", (f"- decoded detections (threshold {rep['score_threshold']}): {d.get('matched', 0)} matched "
                       f"within {rep.get('box_atol_m', 1e-4):g} m of {d.get('n_ref', 0)} torch / {d.get('n_got', 0)} "
                       f"onnx, {d.get('unmatched', 0)} unmatched, {d.get('unmatched_borderline', 0)} borderline, "
                       f"max box diff {d.get('max_box_diff', 0):.2e}"),
                  f"- semantic argmax agreement: {rep['semantic_argmax_agreement']:.6f}"]
        if rep.get("in_graph_decode"):
            g = rep["in_graph_decode"]
            lines.append(f"- in-graph decode vs numpy decode: {g['matched']}/{g['n_ref']} matched, "
                         f"max box diff {g['max_box_diff']:.2e}")
        lines.append("")
    return lines


def _trt_sections(report: dict[str, Any]) -> list[str]:
    lines = ["## TensorRT compatibility (static check)", ""]
    for name, v in report["variants"].items():
        lines.append(f"**{name}**")
        lines += [f"- {f['level']}: {f['code']}: {f['message']}" + (f" [{f['node']}]" if f.get("node") else "")
                  for f in v["trt_check"]]
        lines.append("")
    return lines


def _engines_table(report: dict[str, Any]) -> list[str]:
    if not report["engines"]:
        return []
    lines = ["## TensorRT engines", "", "| variant | engine | TensorRT | GPU | recipe | build s |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {k} | `{e['path']}` | {e['tensorrt_version']} | {e['gpu_name']} ({e['compute_capability']}) | "
              f"{e['precision_recipe']} | {e['build_time_s']} |" for k, e in report["engines"].items()]
    return lines + [""]
