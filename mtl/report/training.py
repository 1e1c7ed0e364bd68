"""The report section of a training run directory: ``metrics.jsonl`` curves, per-class IoU and AP per epoch,
the debug images by epoch, and the configuration."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from . import charts
from .html import Section, esc, figure, fmt, note, table

DEBUG_ORDER = ("overlay", "bev", "semantic", "heatmap")      # what a person looks at first
MAX_DEBUG_EPOCHS = 6
MAX_TABLE_EPOCHS = 12


def is_run(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file()


def run_section(path: Path, anchor: str) -> Section:
    from ..viz import read_metrics

    rows = read_metrics(path / "metrics.jsonl")
    sec = Section(anchor, f"Training run: {path}", "run", str(path))
    epochs = np.array([float(r.get("epoch", i + 1)) for i, r in enumerate(rows)])
    parts = [_summary(path, rows)]
    sec.files[f"img/{anchor}/curves.png"] = charts.curves(rows, f"{path}/metrics.jsonl ({len(rows)} epochs)")
    parts.append(figure(f"img/{anchor}/curves.png", "Losses and validation metrics per epoch (dashed: validation)."))
    for prefix, what, label in (("val/iou/", "iou", "IoU"), ("val/ap/", "ap", "AP")):
        series = {k[len(prefix):]: np.array([_num(r.get(k)) for r in rows]) for k in _keys(rows, prefix)}
        if not series:
            continue
        name = f"img/{anchor}/per_class_{what}.png"
        sec.files[name] = charts.per_class(epochs, series, f"validation {label} per class", label)
        parts.append(f"<h3>Validation {label} per class and epoch</h3>")
        parts.append(figure(name, f"Validation {label} of every class per epoch."))
        parts.append(_per_class_table(epochs, series, label))
    parts.append(_debug_images(path, anchor, sec.files))
    parts.append(_config(path))
    sec.body = "\n".join(p for p in parts if p)
    best = _best_row(rows)
    if best is not None:
        sec.key_metrics.append({"source": str(path), "what": f"validation, best epoch {best.get('epoch')}",
                                "frames": best.get("val/frames"), "miou": best.get("val/miou"),
                                "pixel_acc": best.get("val/pixel_acc"), "map": best.get("val/map")})
    return sec


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else np.nan


def _keys(rows: list[dict], prefix: str) -> list[str]:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k.startswith(prefix) and k.count("/") == 2 and k not in keys]
    return keys


def _best_row(rows: list[dict]) -> dict | None:
    """The epoch ``mtl train`` keeps as best.pt: highest val mIoU + mAP."""
    scored = [r for r in rows if isinstance(r.get("val/miou"), (int, float))]
    return max(scored, key=lambda r: _num(r.get("val/miou")) + np.nan_to_num(_num(r.get("val/map")))) \
        if scored else None


def _summary(path: Path, rows: list[dict]) -> str:
    last, best = rows[-1], _best_row(rows)
    head = ["", "epoch", "train loss", "val mIoU", "val pixel acc", "val mAP", "epoch time s"]
    picked = [("last" + (" = best (best.pt)" if best is last else ""), last)] + \
        ([("best (best.pt)", best)] if best is not None and best is not last else [])
    body = [[name, r.get("epoch"), r.get("train/total"), r.get("val/miou"), r.get("val/pixel_acc"), r.get("val/map"),
             r.get("epoch_time")] for name, r in picked]
    files = ", ".join(f"<code>{esc(p.name)}</code>" for p in sorted(path.glob("*.pt")))
    return (f"<p>{len(rows)} epochs recorded in <code>{esc(path / 'metrics.jsonl')}</code>"
            f"{'; checkpoints ' + files if files else ''}.</p>" + table(head, body))


def _per_class_table(epochs: np.ndarray, series: dict[str, np.ndarray], label: str) -> str:
    """Classes x epochs (at most ``MAX_TABLE_EPOCHS`` columns, evenly spaced, always the last)."""
    n = len(epochs)
    cols = sorted(set(np.linspace(0, n - 1, min(n, MAX_TABLE_EPOCHS)).round().astype(int).tolist()))
    head = [f"{label} \\ epoch"] + [fmt(int(epochs[i]) if np.isfinite(epochs[i]) else i + 1) for i in cols]
    rows = [[name] + [None if not np.isfinite(ys[i]) else round(float(ys[i]), 4) for i in cols]
            for name, ys in series.items()]
    shown = "" if len(cols) == n else f'<p class="muted">{len(cols)} of {n} epochs shown.</p>'
    return table(head, rows) + shown


def _debug_images(path: Path, anchor: str, files: dict[str, bytes]) -> str:
    """Debug PNGs of up to ``MAX_DEBUG_EPOCHS`` epochs (first, last, evenly between), newest first."""
    epochs = sorted((p for p in (path / "debug").glob("epoch_*") if p.is_dir() and re.fullmatch(r"epoch_\d+", p.name)),
                    key=lambda p: int(p.name[6:]))
    if not epochs:
        return "<h3>Debug images</h3>" + note("No debug images in this run (train.viz_every = 0?).")
    keep = sorted(set(np.linspace(0, len(epochs) - 1, min(len(epochs), MAX_DEBUG_EPOCHS)).round().astype(int)))
    out = ["<h3>Debug images by epoch</h3>",
           f'<p class="muted">{len(keep)} of {len(epochs)} epochs with debug images; click an image for full '
           "size.</p>"]
    for j, i in enumerate(reversed(keep)):
        d = epochs[i]
        pngs = sorted(d.glob("*.png"), key=lambda p: (_order(p.name), p.name))
        figs = []
        for p in pngs:
            name = f"img/{anchor}/debug/{d.name}/{p.name}"
            files[name] = p.read_bytes()
            figs.append(figure(name, f"{d.name}/{p.name}"))
        out.append(f"<details{' open' if j == 0 else ''}><summary>epoch {int(d.name[6:])} ({len(pngs)} images)"
                   f'</summary><div class="thumbs">{"".join(figs)}</div></details>')
    return "\n".join(out)


def _order(name: str) -> int:
    return next((i for i, k in enumerate(DEBUG_ORDER) if k in name), len(DEBUG_ORDER))


def _config(path: Path) -> str:
    p = path / "config.json"
    if not p.is_file():
        return ""
    try:
        cfg = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        return note(f"{p}: not readable ({e})")
    text = json.dumps(cfg, indent=1)
    return f"<details><summary>Configuration (config.json)</summary><pre>{esc(text)}</pre></details>"
