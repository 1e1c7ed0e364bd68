"""``mtl bench``'s two renderings of a report: the wide markdown table (every column, written beside the JSON)
and the compact terminal summary (at most ``WIDTH`` = 120 columns)."""
from __future__ import annotations

import textwrap
from typing import Any

from .bench_system import summary_lines
from .runtime.preprocess import STAGES

WIDTH = 120


def _num(v: Any, fmt: str = "{:.2e}") -> str:
    return "-" if v is None else fmt.format(v)


def _ms(d: dict | None, key: str = "mean") -> str:
    return f"{d[key]:.2f}" if d and d.get(key) is not None else "-"


def _boxes(p: dict) -> str:
    return p.get("boxes_identical", "-") + (f" ({p['boxes_equivalent']} up to tied peaks)"
                                            if "boxes_equivalent" in p else "")


def _scenario_cells(report: dict, r: dict) -> tuple[list[str], list[str]]:
    """The scenario's own columns: (headers, cells of row ``r``)."""
    sc = report["scenario"]
    if sc == "constant-stream":
        c, m = r.get("constant_stream", {}), r.get("max_rate") or {}
        over, late = c.get("over_deadline", {}), c.get("late_frames", {})
        return (["rate Hz", f"over {report['deadline_ms']:g} ms", "late frames", "achieved Hz", "max rate Hz"],
                [_num(c.get("rate_hz"), "{:g}"), f"{over.get('count', '-')} ({_num(over.get('share'), '{:.2%}')})",
                 str(late.get("count", "-")), _num(c.get("achieved_rate_hz"), "{:.2f}"),
                 _num(m.get("max_rate_hz"), "{:.2f}") if m else "-"])
    if sc == "offline":
        o = r.get("offline", {})
        busy = o.get("busy_cores", {})
        return (["offline frames/s", "single-stream frames/s", "offline / single", "sessions",
                 "busy cores offline", "busy cores single-stream"],
                [_num(o.get("stream_fps"), "{:.2f}"), _num(o.get("single_stream_fps"), "{:.2f}"),
                 _num(o.get("ratio"), "{:.3f}"), str(o.get("sessions", "-")), _num(busy.get("stream"), "{:.2f}"),
                 _num(busy.get("single"), "{:.2f}")])
    return [], []


def to_markdown(report: dict) -> str:
    """Every column: stage means, the latency distribution, the scenario's columns, cold start, memory, parity."""
    stage_cols = [s for s in STAGES if s != "total"]
    sc_head = _scenario_cells(report, {})[0]
    head = (["backend", "status"] + [f"{s} ms" for s in stage_cols] +
            ["latency mean", "p50", "p90", "p99", "p99.9", "p99.9 95% upper", "max", "std", "e2e / inference",
             "frames/s", "x torch"] + sc_head +
            ["open ms", "first frame ms", "peak RSS MB", "maxdiff heatmap", "maxdiff reg", "maxdiff sem", "boxes =",
             "dmIoU", "dmAP"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        if r["status"] != "ok":
            cells = [r["backend"], r["status"]] + ["-"] * (len(head) - 2)
        else:
            lat, p = r.get("latency", {}), r.get("parity", {})
            d, cold = p.get("max_abs_diff", {}), r.get("cold_start", {})
            cells = ([r["backend"], "ok"] + [_ms(r.get("stages", {}).get(s)) for s in stage_cols] +
                     [_ms(lat, k) for k in ("mean", "p50", "p90", "p99", "p99.9", "p99.9_upper95", "max", "std")] +
                     [_num(r.get("e2e_over_inference"), "{:.3f}"), _num(r.get("throughput_fps"), "{:.1f}"),
                      _num(r.get("speedup_vs_torch"), "{:.2f}")] + _scenario_cells(report, r)[1] +
                     [_num(cold.get("open_ms"), "{:.0f}"), _num(cold.get("first_frame_ms"), "{:.0f}"),
                      _num(r.get("peak_rss_mb"), "{:.0f}"), _num(d.get("bbox_heatmap")), _num(d.get("bbox_reg")),
                      _num(d.get("sem_logits")), _boxes(p) if p else "-", _num(p.get("miou_delta"), "{:+.4f}"),
                      _num(p.get("map_delta"), "{:+.4f}")])
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    notes = [_run_line(report)] + summary_lines(report["system"])
    notes += [f"{r['backend']}: compile {r['compile_s']:.1f} s (first call, not timed)"
              for r in report["rows"] if r.get("compile_s") is not None]
    if report.get("stages"):
        notes.append("runtime per-frame stages (remap, raster, argmax, peaks): " + (
            f"compiled numba kernels, loaded once before the backends opened in {report['stages_load_ms']:.0f} ms "
            "(numba's cache; the first compile on a machine takes about 2 s)" if report["stages"] == "numba" else
            "numpy (numba not installed or disabled)"))
    if report.get("remap_table_build_ms") is not None:
        notes.append(f"the camera's fused remap table was built once before the backends opened: "
                     f"{report['remap_table_build_ms']:.0f} ms (cold start of the raw / sensor path)")
    for r in report["rows"]:
        q = r.get("int8")
        if q:
            kept = q["float_nodes"]
            notes.append(f"{r['backend']}: calibration {q['calibration']}, {100 * q['mac_share']:.1f}% of the MACs in "
                         f"INT8, {len(kept)} unit(s) kept in float" + (f" ({', '.join(kept)})" if kept else ""))
    if report.get("parity_note"):
        notes.append(f"parity: {report['parity_note']}")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def _run_line(report: dict) -> str:
    cfgd = report["model_config"]
    sc = report["scenario"]
    how = {"single-stream": f"{report['queries']} queries back to back (interleaved in {report['rounds']} rounds)",
           "constant-stream": f"{report['queries']} queries at {report['rate_hz']:g} Hz on a fixed schedule, "
                              f"deadline {report['deadline_ms']:g} ms, served by "
                              + ("run_frame, one frame at a time" if report.get("serve") == "frame" else
                                 f"run_stream, {report['sessions']} session(s)"),
           "offline": f"{report['queries']} frames all available, run_stream vs run_frame interleaved in "
                      f"{report['rounds']} rounds, {report['sessions']} session(s)"}[sc]
    return (f"{sc}, input {report['input']}: model `{report['model']}` (image {cfgd['image_hw'][0]}x"
            f"{cfgd['image_hw'][1]}, BEV {cfgd['bev_channels']}x{cfgd['grid'][0]}x{cfgd['grid'][1]}), data "
            f"`{report['data']}` ({report['frames']} frames cycled); {how}; {report['warmup']} warm-up frames, "
            f"batch 1, threads {report['threads']}; percentiles nearest rank, latency in ms")


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def terminal_summary(report: dict, width: int = WIDTH) -> str:
    """A compact table: one line per backend, every line at most ``width`` characters."""
    sc = report["scenario"]
    extra = {"single-stream": ("e2e/inf", lambda r: _num(r.get("e2e_over_inference"), "{:.2f}")),
             "constant-stream": ("over dl", lambda r: str(r.get("constant_stream", {}).get("over_deadline", {})
                                                         .get("count", "-"))),
             "offline": ("off/ss", lambda r: _num(r.get("offline", {}).get("ratio"), "{:.2f}"))}[sc]
    cols = [("backend", 20), ("mean", 8), ("p50", 8), ("p99", 8), ("p99.9", 8), ("max", 8), (extra[0], 8),
            ("fps", 7), ("x torch", 7), ("open s", 7), ("vs torch: hm, boxes", 21)]
    lines = [_fit(f"mtl bench {sc}, input {report['input']}, {report['queries']} queries, threads "
                  f"{report['threads']} (latency ms, nearest-rank percentiles)", width),
             _fit(" ".join(f"{n:<{w}}" for n, w in cols).rstrip(), width)]
    for r in report["rows"]:
        if r["status"] != "ok":
            lines.append(_fit(f"{r['backend']:<20} {r['status']}", width))
            continue
        lat, p = r.get("latency", {}), r.get("parity") or {}
        par = (f"{p['max_abs_diff']['bbox_heatmap']:.1e}, {p.get('boxes_identical', '-')}" if p else
               "reference" if r["backend"] == "torch" and not report.get("parity_note") else "-")
        open_s = r.get("cold_start", {}).get("open_ms")
        vals = [r["backend"], _ms(lat), _ms(lat, "p50"), _ms(lat, "p99"), _ms(lat, "p99.9"), _ms(lat, "max"),
                extra[1](r), _num(r.get("throughput_fps"), "{:.1f}"), _num(r.get("speedup_vs_torch"), "{:.2f}"),
                _num(None if open_s is None else open_s / 1e3, "{:.2f}"), par]
        lines.append(_fit(" ".join(f"{v:<{w}}" for v, (_, w) in zip(vals, cols)).rstrip(), width))
    if sc == "constant-stream":
        for r in report["rows"]:
            m = r.get("max_rate")
            if m:
                lines.append(_fit(f"{r['backend']}: max rate with p99.9 < {report['deadline_ms']:g} ms: "
                                  f"{_num(m.get('max_rate_hz'), '{:.2f}')} Hz ({len(m['probes'])} probes)", width))
    for line in summary_lines(report["system"]):
        lines += textwrap.wrap(line, width, subsequent_indent="  ")
    return "\n".join(lines)


__all__ = ["WIDTH", "terminal_summary", "to_markdown"]
