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
    or a folder holding result JSONs (also one level down, e.g. ``runs/bench/<stamp>_<scenario>/``); a JSON
    whose name contains ``system`` in the same folder is the system description, else the result's own
    ``system`` / ``device`` entry. Raises ``DataError`` when there is no result."""
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
        found.append({"name": p.stem if p.name != "result.json" else p.parent.name, "path": p, "report": doc,
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
    head = (f"<h3>{esc(res['name'])}</h3><p>scenario <b>{esc(scenario)}</b> &middot; model "
            f"<code>{esc(rep.get('model', '-'))}</code> &middot; data <code>{esc(rep.get('data', '-'))}</code> "
            f"&middot; {fmt(rep.get('frames'))} frames, {fmt(rep.get('iters'))} timed iterations after "
            f"{fmt(rep.get('warmup'))} warm-up, threads {fmt(rep.get('threads'))}</p>")
    if rep.get("parity_note"):
        head += note(f"parity: {rep['parity_note']}")
    body = [head, _table(rep), _stages(ok)]
    chart, how = _latency(ok, f"{res['name']}: {scenario}")
    if chart:
        name = f"img/{sec.anchor}/{key}_latency.png"
        sec.files[name] = chart
        body.append(figure(name, f"Latency distribution per backend ({how})."))
    body.append(_system(res.get("system")))
    for r in ok:
        m = r.get("metrics") or {}
        if m.get("miou") is not None or m.get("map") is not None:
            sec.key_metrics.append({"source": res["name"], "what": f"bench {scenario}, {r['backend']}",
                                    "frames": rep.get("frames"), "miou": m.get("miou"), "pixel_acc": None,
                                    "map": m.get("map")})
    return "\n".join(body)


def _stat(r: dict, stage: str, key: str) -> float | None:
    return ((r.get("stages") or {}).get(stage) or {}).get(key)


def _table(rep: dict) -> str:
    head = ["backend", "status", "total mean ms", "p50", "p90", "p99", "frames/s", "× torch", "peak RSS MB",
            "boxes identical", "ΔmIoU", "ΔmAP"]
    rows = []
    for r in rep["rows"]:
        p = r.get("parity") or {}
        rows.append([r.get("backend"), r.get("status"), _stat(r, "total", "mean"), _stat(r, "total", "p50"),
                     _stat(r, "total", "p90"), _stat(r, "total", "p99"), r.get("throughput_fps"),
                     r.get("speedup_vs_torch"), r.get("peak_rss_mb"), p.get("boxes_identical"),
                     p.get("miou_delta"), p.get("map_delta")])
    return table(head, rows)


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
    if not system:
        return note("No system description in this result.")
    rows = []
    for k, v in system.items():
        if isinstance(v, dict):
            rows += [[f"{k}.{k2}", json.dumps(v2) if isinstance(v2, (dict, list)) else v2] for k2, v2 in v.items()]
        else:
            rows.append([k, json.dumps(v) if isinstance(v, list) else v])
    return "<details open><summary>System description</summary>" + table(["what", "value"], rows) + "</details>"
