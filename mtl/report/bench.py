"""The report section of ``mtl bench`` results: the tables, a latency distribution per backend, the system
description. ``read_bench`` is the one place that knows where bench results live (a ``bench_*.json`` file, a
folder of them, or a result folder with a system description JSON beside the result)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DataError
from . import charts
from .html import Section, esc, figure, fmt, note, table

SAMPLE_KEYS = ("latencies_ms", "latency_ms", "samples_ms", "per_frame_ms", "total_ms", "samples")


def _load(p: Path) -> Any:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise DataError(p, f"not readable JSON ({type(e).__name__}: {e})") from None


def _is_result(doc: Any) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get("rows"), list) and ("mtl_bench" in doc or "compare" in doc)


def read_bench(path: Path) -> list[dict[str, Any]]:
    """Bench results under ``path``: ``[{"name", "path", "report", "system"}]``. ``path`` is one result JSON,
    or a folder holding result JSONs (also one level down: ``mtl bench`` writes one folder per run,
    ``runs/bench/<date-time>_<scenario>/bench_<backends>.json`` beside ``system.json``, so its parent works too).
    A JSON whose name contains ``system`` in the result's folder is the system description, else the result's
    own ``system`` / ``device`` entry (older flat ``bench_<stamp>_<backends>.json`` files). A result is named by
    its run folder when it has one, else by its file. Raises ``DataError`` when there is no result."""
    files = [path] if path.is_file() else sorted([*path.glob("*.json"), *path.glob("*/*.json")])
    found = []
    for p in files:
        if "system" in p.name and p != path:
            continue
        try:
            doc = _load(p)
        except DataError:
            if p == path:
                raise                                   # the file asked for; in a folder, other JSON may lie
            continue
        if not _is_result(doc):
            continue
        sys_files = sorted(q for q in p.parent.glob("*.json") if "system" in q.name)
        system = _load(sys_files[0]) if sys_files else doc.get("system") or doc.get("device")
        found.append({"name": p.parent.name if sys_files else p.stem, "path": p, "report": doc,
                      "system": system if isinstance(system, dict) else None})
    if not found:
        raise DataError(path, "not an mtl bench result (a JSON with 'rows')" if path.is_file() else
                        "no mtl bench result (a JSON with 'rows') here")
    return found


def is_bench(path: Path) -> bool:
    try:
        read_bench(path)
    except DataError:
        return False
    return True


def bench_section(path: Path, anchor: str) -> Section:
    sec = Section(anchor, f"Benchmark: {path}", "bench", str(path))
    parts = []
    for i, res in enumerate(read_bench(path)):
        parts.append(_result(res, f"{anchor}-{i}", sec))
    sec.body = "\n".join(parts)
    return sec


def _result(res: dict, key: str, sec: Section) -> str:
    rep = res["report"]
    ok = [r for r in rep["rows"] if r.get("status") == "ok"]
    scenario = rep.get("scenario") or "single-stream"
    body = [_header(res["name"], rep, scenario), _table(rep), _scenario_table(rep, scenario, ok), _cold_start(ok),
            _stages(ok)]
    chart, how = _latency(ok, f"{res['name']}: {scenario}, input {rep.get('input', 'png')}")
    if chart:
        name = f"img/{sec.anchor}/{key}_latency.png"
        sec.files[name] = chart
        body.append(figure(name, f"Latency distribution per backend, {scenario} ({how})."))
    body.append(_system(res.get("system")))
    for r in ok:
        m = r.get("metrics") or {}
        if m.get("miou") is not None or m.get("map") is not None:
            sec.key_metrics.append({"source": res["name"], "what": f"bench {scenario}, {r['backend']}",
                                    "frames": rep.get("frames"), "miou": m.get("miou"), "pixel_acc": None,
                                    "map": m.get("map")})
    return "\n".join(b for b in body if b)


def _header(name: str, rep: dict, scenario: str) -> str:
    """What ran: scenario, input, model, data, query counts, and the scenario's settings."""
    queries = rep.get("queries", rep.get("iters"))
    how = {"constant-stream": f" at {fmt(rep.get('rate_hz'))} Hz on a fixed schedule, deadline "
                              f"{fmt(rep.get('deadline_ms'))} ms, {fmt(rep.get('sessions'))} session(s)",
           "offline": f", all frames available, {fmt(rep.get('sessions'))} session(s)"}.get(scenario, "")
    head = (f"<h3>{esc(name)}</h3><p>scenario <b>{esc(scenario)}</b>{esc(how)} &middot; input "
            f"{esc(rep.get('input', 'png'))} &middot; model <code>{esc(rep.get('model', '-'))}</code> &middot; data "
            f"<code>{esc(rep.get('data', '-'))}</code> &middot; {fmt(rep.get('frames'))} frames cycled, "
            f"{fmt(queries)} timed queries per backend after {fmt(rep.get('warmup'))} warm-up, "
            f"{fmt(rep.get('rounds'))} rounds, threads {fmt(rep.get('threads'))}</p>")
    if rep.get("remap_table_build_ms") is not None:
        head += (f"<p class=\"muted\">the camera's fused remap table was built once before the backends opened: "
                 f"{fmt(rep['remap_table_build_ms'], 1)} ms</p>")
    harness = rep.get("harness") or {}
    if harness.get("latency"):
        head += f'<p class="muted">latency: {esc(harness["latency"])}; percentiles by nearest rank</p>'
    if rep.get("parity_note"):
        head += note(f"parity: {rep['parity_note']}")
    return head


def _latency_stats(r: dict) -> dict:
    """The row's end-to-end latency statistics (``latency``; older results: the ``total`` stage)."""
    return r.get("latency") or (r.get("stages") or {}).get("total") or {}


def _stat(r: dict, stage: str, key: str) -> float | None:
    return ((r.get("stages") or {}).get(stage) or {}).get(key)


def _table(rep: dict) -> str:
    head = ["backend", "status", "mean ms", "p50", "p90", "p99", "p99.9", "p99.9 95% upper", "max", "frames/s",
            "× torch", "peak RSS MB", "boxes identical", "ΔmIoU", "ΔmAP"]
    rows = []
    for r in rep["rows"]:
        p, lat = r.get("parity") or {}, _latency_stats(r)
        rows.append([r.get("backend"), r.get("status")] +
                    [lat.get(k) for k in ("mean", "p50", "p90", "p99", "p99.9", "p99.9_upper95", "max")] +
                    [r.get("throughput_fps"), r.get("speedup_vs_torch"), r.get("peak_rss_mb"),
                     p.get("boxes_identical"), p.get("miou_delta"), p.get("map_delta")])
    return "<p>End-to-end latency per query (ms):</p>" + table(head, rows)


def _scenario_table(rep: dict, scenario: str, ok: list[dict]) -> str:
    """constant-stream: frames over the deadline, late frames, the rate reached and the max rate found;
    offline: frames/s overlapped vs back to back and their ratio."""
    if scenario == "constant-stream":
        rows = []
        for r in ok:
            c, m = r.get("constant_stream") or {}, r.get("max_rate") or {}
            over, late = c.get("over_deadline") or {}, c.get("late_frames") or {}
            share = over.get("share")
            rows.append([r["backend"], c.get("rate_hz"), over.get("count"),
                         None if share is None else f"{100 * share:.2f}%", late.get("count"),
                         late.get("max_start_delay_ms"), c.get("achieved_rate_hz"), m.get("max_rate_hz"),
                         m.get("criterion")])
        period = fmt(1000 / rep["rate_hz"], 1) if rep.get("rate_hz") else "-"
        return (f"<p>Constant stream: a frame arrives every {period} ms whether or not the runtime is done; "
                "<i>late</i> = started more than 1 ms after arriving.</p>" +
                table(["backend", "rate Hz", f"over {fmt(rep.get('deadline_ms'), 0)} ms", "share", "late frames",
                       "max start delay ms", "achieved Hz", "max rate Hz", "max rate criterion"], rows))
    if scenario == "offline":
        rows = []
        for r in ok:
            o = r.get("offline") or {}
            busy = o.get("busy_cores") or {}
            rows.append([r["backend"], o.get("stream_fps"), o.get("single_stream_fps"), o.get("ratio"),
                         o.get("sessions"), busy.get("stream"), busy.get("single")])
        return ("<p>Offline: all frames available, run_stream (overlapped) against run_frame back to back.</p>" +
                table(["backend", "offline frames/s", "single-stream frames/s", "offline / single", "sessions",
                       "busy cores offline", "busy cores single-stream"], rows))
    return ""


def _cold_start(ok: list[dict]) -> str:
    """Import, open (by step) and first frame per backend."""
    steps: list[str] = []
    for r in ok:
        steps += [k for k in (r.get("cold_start") or {}) if k not in steps]
    if not steps:
        return ""
    rows = [[r["backend"]] + [(r.get("cold_start") or {}).get(k) for k in steps] + [r.get("compile_s")] for r in ok]
    return ("<p>Cold start (ms; import only for the first backend of a library; compile s: torch.compile's first "
            "call):</p>" + table(["backend"] + steps + ["compile s"], rows))


def _stages(ok: list[dict]) -> str:
    stages = []
    for r in ok:
        stages += [s for s in (r.get("stages") or {}) if s not in stages and s != "total"]
    if not stages:
        return ""
    rows = [[r["backend"]] + [_stat(r, s, "mean") for s in stages] + [_stat(r, "total", "mean")] for r in ok]
    return "<p>Mean ms per stage:</p>" + table(["backend"] + stages + ["total"], rows)


def _latency(ok: list[dict], title: str) -> tuple[bytes | None, str]:
    """The CDF chart from per-frame latencies when the JSON has them, else from its percentiles."""
    series: dict[str, tuple[str, Any]] = {}
    for r in ok:
        total = (r.get("stages") or {}).get("total") or {}
        samples = next((v for k in SAMPLE_KEYS for v in (r.get(k), total.get(k)) if isinstance(v, list) and v), None)
        if samples is not None:
            series[r["backend"]] = ("samples", samples)
        elif len(charts.percentile_points(total)) >= 2:
            series[r["backend"]] = ("percentiles", charts.percentile_points(total))
    if not series:
        return None, ""
    kinds = {k for k, _ in series.values()}
    how = ("from the per-frame latencies" if kinds == {"samples"} else
           "from the reported percentiles: the result has no per-frame latencies" if kinds == {"percentiles"} else
           "per-frame latencies where the result has them, else its percentiles")
    return charts.latency_cdf(series, f"{title}\nend-to-end latency, {how}"), how


def _system(system: dict | None) -> str:
    """The machine in two lines (a ``system.json`` of ``mtl bench``), then every field of the description."""
    if not system:
        return note("No system description in this result.")
    from ..bench_system import summary_lines

    try:
        lines = "".join(f"<p>{esc(line)}</p>" for line in summary_lines(system))
    except (KeyError, TypeError, AttributeError):
        lines = ""                                     # an older result's device record: the table says it all
    rows = []
    for k, v in system.items():
        if isinstance(v, dict):
            rows += [[f"{k}.{k2}", json.dumps(v2) if isinstance(v2, (dict, list)) else v2] for k2, v2 in v.items()]
        else:
            rows.append([k, json.dumps(v) if isinstance(v, list) else v])
    return (f"<h4>System</h4>{lines}<details{' open' if not lines else ''}><summary>System description (every "
            "field)</summary>" + table(["what", "value"], rows) + "</details>")
