"""``mtl report PATH... --out DIR``: one self-contained static site (``index.html`` + images, relative links
only, no JavaScript, no server, no network) from any mix of training runs, export folders, infer outputs and
bench results.

The site is written into a staging folder beside DIR and moved in as one commit (``mtl.io.commit_files``), so
DIR holds either the previous report or the complete new one. ``DIR/mtl_report.json`` lists the site's files:
a DIR holding one is a previous report and is replaced (its files that the new site does not have are
removed); any other non-empty DIR is refused unless ``overwrite``, and even then only files of the new site
are written into it (nothing else is deleted)."""
from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import DataError, OutputError
from ..io import JOURNAL, OutputLock, commit_files, recover_commit, write_bytes_atomic, write_json_atomic
from .bench import bench_section, is_bench, read_bench
from .export import export_section, is_export
from .html import Section, esc, page, table
from .infer import infer_section, is_infer
from .training import is_run, run_section

MANIFEST = "mtl_report.json"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$")

KINDS: list[tuple[str, Callable[[Path], bool], Callable[[Path, str], Section]]] = [
    ("run", is_run, run_section),
    ("export", is_export, export_section),
    ("infer", is_infer, infer_section),
    ("bench", is_bench, bench_section),
]


def detect_kind(path: Path) -> tuple[str, Path]:
    """(kind, folder or file to read) of a report input; ``DataError`` for anything else."""
    if path.is_file():
        if path.name == "metrics.jsonl":
            return "run", path.parent
        if path.name == "export_report.json":
            return "export", path.parent
        if path.suffix == ".json" and path.name != "summary.json":
            read_bench(path)                              # its own error when it is not one
            return "bench", path
    elif path.is_dir():
        for kind, test, _ in KINDS:
            if test(path):
                return kind, path
    else:
        raise DataError(path, "not found")
    raise DataError(path, "not a training run (metrics.jsonl), an export folder (export_report.json), an infer "
                          "output (summary.json + <id>.json) or a bench result (JSON with 'rows')")


def build_report(paths: Sequence[str | Path], out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Build the site from ``paths`` into ``out``; returns the manifest (``inputs``, ``files``)."""
    out = Path(out)
    inputs = [detect_kind(Path(p)) for p in paths]
    for _, p in inputs:
        if out.resolve() == p.resolve():
            raise OutputError(out, "is one of the report's inputs; choose another --out")
    if out.is_dir():
        check_out(out, overwrite)                         # fail before drawing anything (again under the lock)
    builders = {k: build for k, _, build in KINDS}
    sections = [builders[kind](p, f"{kind}-{i + 1}") for i, (kind, p) in enumerate(inputs)]
    subtitle = (f"{len(sections)} input{'s' if len(sections) != 1 else ''} \u00b7 generated "
                f"{time.strftime('%Y-%m-%d %H:%M')} by mtl {__version__}")
    files: dict[str, bytes] = {"index.html": page("mtl report", subtitle, sections, overview(sections)).encode()}
    for s in sections:
        files.update(s.files)
    manifest = {"mtl_report": 1, "mtl_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "inputs": [{"kind": s.kind, "path": s.path, "section": s.anchor} for s in sections],
                "files": [{"name": n, "size": len(b)} for n, b in sorted(files.items())]}
    write_site(out, files, manifest, overwrite)
    return manifest


def overview(sections: Sequence[Section]) -> str:
    """Inputs with links to their sections, then every headline metric side by side: the same numbers from
    validation, the export gate, bench and inference on other data, so a gap shows at a glance."""
    rows = [[esc(s.kind), f'<a href="#{esc(s.anchor)}">{esc(s.path)}</a>'] for s in sections]
    out = table(["kind", "input"], rows, raw=True)
    metrics = [m for s in sections for m in s.key_metrics]
    if not metrics:
        return out + '<p class="muted">No metrics in these inputs.</p>'
    out += "<h3>Metrics side by side</h3>" + table(
        ["source", "what", "frames", "mIoU", "pixel accuracy", "mAP"],
        [[m["source"], m["what"], m.get("frames"), m.get("miou"), m.get("pixel_acc"), m.get("map")] for m in metrics])
    accs = [(m["pixel_acc"], m["what"]) for m in metrics if isinstance(m.get("pixel_acc"), (int, float))]
    if len(accs) >= 2:
        (lo, lo_what), (hi, hi_what) = min(accs), max(accs)
        out += (f"<p>Pixel accuracy ranges from <b>{lo:.3f}</b> ({esc(lo_what)}) to <b>{hi:.3f}</b> "
                f"({esc(hi_what)}): a gap of {hi - lo:.3f}.</p>")
    return out


# ------------------------------------------------------------------------------------------ writing


def _previous(out: Path) -> list[str] | None:
    """The file names of a previous report in ``out`` (None: not a report)."""
    import json

    try:
        doc = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("mtl_report") != 1:
        return None
    return [f["name"] for f in doc.get("files", []) if isinstance(f, dict) and _safe(f.get("name"))]


def _safe(name: Any) -> bool:
    """A relative path inside the site (no '..', no absolute path, no hidden parts)."""
    return isinstance(name, str) and bool(_SAFE_NAME.match(name)) and ".." not in name.split("/")


def check_out(out: Path, overwrite: bool) -> list[str] | None:
    """The previous report's files in ``out`` (None: empty or not a report); ``OutputError`` for a non-empty
    folder that is not a report, unless ``overwrite``."""
    old = _previous(out)
    present = [p.name for p in out.iterdir() if p.name not in (OutputLock.NAME, JOURNAL)]
    if present and old is None and not overwrite:
        raise OutputError(out, f"not empty ({len(present)} entries) and not an earlier mtl report; choose an "
                               "empty or new --out, or pass --overwrite to write the report's files into it")
    return old


def write_site(out: Path, files: dict[str, bytes], manifest: dict, overwrite: bool) -> None:
    """All of ``files`` + the manifest into ``out`` as one commit (module docstring for the refusals)."""
    with OutputLock(out, "mtl report"):
        recover_commit(out)
        old = check_out(out, overwrite)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
        try:
            for name, data in files.items():
                write_bytes_atomic(staging / name, data)
                (out / name).parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(staging / MANIFEST, manifest)
            names = sorted(files) + [MANIFEST]            # the manifest last: it marks the set complete
            commit_files(staging, out, names, remove=[n for n in old or [] if n not in set(names)])
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        for d in sorted((p for p in out.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            if not any(d.iterdir()):
                d.rmdir()                                 # folders of a previous report left empty
