"""The report section of an export directory (``export_report.json``): parity and metric gates per variant,
the TensorRT check summarised (a count and the first few findings), engines, timings."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DataError
from .html import Section, esc, fmt, note, status, table

FIRST_FINDINGS = 3


def is_export(path: Path) -> bool:
    return (path / "export_report.json").is_file()


def read_export(path: Path) -> dict[str, Any]:
    p = path / "export_report.json"
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise DataError(p, f"not a readable export report ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("variants"), dict):
        raise DataError(p, "not an mtl export report (no 'variants')")
    return doc


def export_section(path: Path, anchor: str) -> Section:
    rep = read_export(path)
    sec = Section(anchor, f"Export: {path}", "export", str(path))
    for name in ("export_report.json", "export_report.md"):       # the full reports, next to the page
        if (path / name).is_file():
            sec.files[f"files/{anchor}/{name}"] = (path / name).read_bytes()
    sec.body = "\n".join([_header(rep, anchor, sec.files), _variants(rep), _parity(rep), _trt(rep),
                          _engines(rep), _timings(rep)])
    for name, v in rep["variants"].items():
        m = v.get("metrics") or {}
        if m.get("miou") is not None or m.get("map") is not None:
            sec.key_metrics.append({"source": str(path), "what": f"export metric gate, {name}",
                                    "frames": m.get("frames"), "miou": m.get("miou"),
                                    "pixel_acc": m.get("pixel_acc"), "map": m.get("map")})
    return sec


def _header(rep: dict, anchor: str, files: dict) -> str:
    links = " ".join(f'<a href="{esc(n)}">{esc(n.rsplit("/", 1)[-1])}</a>' for n in files)
    failures = "".join(f"<li>{esc(f)}</li>" for f in rep.get("failures", []))
    sha = str(rep.get("checkpoint_sha256", ""))[:16]
    return (f"<p>Result: {status(rep.get('passed'))} &middot; checkpoint <code>{esc(rep.get('checkpoint', '-'))}</code>"
            f"{f' (sha256 {esc(sha)}…)' if sha else ''} &middot; opset {esc(rep.get('opset', '-'))} &middot; "
            f"parity data <code>{esc(rep.get('parity_data', '-'))}</code> &middot; full report: {links}</p>"
            + (f'<p class="fail">error: {esc(rep["error"])}</p>' if rep.get("error") else "")
            + (f"<p>Failures:</p><ul>{failures}</ul>" if failures else ""))


def _variants(rep: dict) -> str:
    head = ["variant", "file", "status", "size MB", "nodes", "parity vs torch", "gate: mIoU fp32 → variant",
            "gate: mAP fp32 → variant", "gate"]
    rows = []
    for name, v in rep["variants"].items():
        p, g = v.get("parity") or {}, v.get("gate")
        parity = "-" if not p else _parity_cell(p)
        gate_m = "-" if not g else f"{fmt(g['fp32']['miou'])} → {fmt(g['variant']['miou'])} ({g['drop_miou']:+.4f})"
        gate_a = "-" if not g else f"{fmt(g['fp32']['map'])} → {fmt(g['variant']['map'])} ({g['drop_map']:+.4f})"
        rows.append([esc(name), f"<code>{esc(v.get('path', '-'))}</code>", esc(v.get("status", "-")),
                     fmt((v.get("size_bytes") or 0) / 1e6, 2), fmt(v.get("nodes")),
                     esc(parity) + (" " + status(p.get("passed")) if p.get("gated") else ""),
                     esc(gate_m), esc(gate_a), status(None if not g else g.get("passed"))])
    return "<h3>Variants</h3>" + table(head, rows, raw=True)


def _parity_cell(p: dict) -> str:
    diffs = ", ".join(f"{k} {o.get('max_abs', 0):.1e}" for k, o in p.get("outputs", {}).items())
    d = p.get("decoded") or {}
    return (f"{'gated' if p.get('gated') else 'informational'}: max abs {diffs}; boxes "
            f"{d.get('matched', 0)}/{d.get('n_ref', 0)}")


def _parity(rep: dict) -> str:
    rows = []
    for name, v in rep["variants"].items():
        p = v.get("parity")
        if not p:
            continue
        for out, s in p.get("outputs", {}).items():
            rows.append([name, out, s.get("max_abs"), s.get("max_rel"), p.get("frames"),
                         p.get("semantic_argmax_agreement")])
    if not rows:
        return note("No parity report (exported with --no-parity or without frames).")
    return "<h3>Parity against torch</h3>" + table(["variant", "output", "max abs diff", "max rel diff", "frames",
                                                    "semantic argmax agreement"], rows)


def _trt(rep: dict) -> str:
    """Per variant: how many errors and warnings the static TensorRT check found, and the first few."""
    rows = []
    for name, v in rep["variants"].items():
        findings = v.get("trt_check") or []
        errors = sum(f.get("level") == "error" for f in findings)
        warnings = sum(f.get("level") == "warning" for f in findings)
        first = "".join(f"<li>{esc(f.get('level'))}: {esc(f.get('code'))}: {esc(f.get('message'))}"
                        f"{' [' + esc(f['node']) + ']' if f.get('node') else ''}</li>"
                        for f in findings[:FIRST_FINDINGS])
        more = len(findings) - FIRST_FINDINGS
        rows.append([esc(name), status(errors == 0, f"{errors} errors"), esc(f"{warnings} warnings"),
                     (f"<ul>{first}</ul>" if first else "none")
                     + (f'<span class="muted">+{more} more in export_report.md</span>' if more > 0 else "")])
    return ("<h3>TensorRT compatibility (static check)</h3>"
            + table(["variant", "errors", "warnings", f"first {FIRST_FINDINGS} findings"], rows, raw=True))


def _engines(rep: dict) -> str:
    engines = rep.get("engines") or {}
    if not engines:
        return '<p class="muted">No TensorRT engines built (export without --trt, or no GPU).</p>'
    rows = [[k, e.get("path"), e.get("tensorrt_version"), f"{e.get('gpu_name')} ({e.get('compute_capability')})",
             e.get("precision_recipe"), e.get("build_time_s")] for k, e in engines.items()]
    return "<h3>TensorRT engines</h3>" + table(["variant", "engine", "TensorRT", "GPU", "recipe", "build s"], rows)


def _timings(rep: dict) -> str:
    t = rep.get("timings_s") or {}
    return ("<details><summary>Timings (s)</summary>" + table(["step", "s"], [[k, v] for k, v in t.items()])
            + "</details>") if t else ""
