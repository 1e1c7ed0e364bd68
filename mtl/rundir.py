"""The run directory of `mtl train`: which files make a run, how an epoch is committed, and what `--resume`
checks before it continues one. Torch-free: checkpoints come in as bytes (``mtl.train`` serialises them).

    RUN/config.json      the run's resolved config (written when the run starts)
    RUN/last.pt          the newest checkpoint: every epoch end, and every ``train.ckpt_every_steps`` steps
    RUN/last.prev.pt     the checkpoint last.pt replaced (``--resume`` falls back to it if last.pt is unreadable)
    RUN/best.pt          the best epoch so far (val mIoU + mAP; the lowest training loss without --val)
    RUN/metrics.jsonl    one JSON row per committed epoch
    RUN/debug/epoch_NNN/, RUN/curves.png    debug images and metric curves
    RUN/.mtl.lock        the one-writer lock (``mtl.io.OutputLock``)

An epoch end is ONE commit (``mtl.io.commit_files``): best.pt (when the epoch is the best so far), the whole
metrics.jsonl with the epoch's row, and last.pt (last: it marks the epoch as done) are written into
``RUN/.epoch-commit-<pid>/`` and moved in under a journal, the replaced last.pt becoming last.prev.pt in the same
commit. A kill at any point leaves the previous epoch's set, or a journal that the next `mtl train` in RUN rolls
forward to the new set (``tidy``): never a last.pt ahead of best.pt, never a committed epoch without its row.
A mid-epoch last.pt is one atomic replace (its predecessor hard-linked to last.prev.pt first).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config
from .errors import ConfigError, OutputError
from .io import atomic_path, commit_files, pending_commit, recover_commit, remove_stale_temps, write_bytes_atomic

RUN_FILES = ("config.json", "last.pt", "last.prev.pt", "best.pt", "metrics.jsonl")
CHECKPOINTS = ("last.pt", "last.prev.pt", "best.pt")      # the order --resume tries them in
STAGING = ".epoch-commit-"

# config keys --resume may change without --force-config: the epoch budget and how (not what) it trains
FREE_ON_RESUME = ("train.epochs", "train.num_workers", "train.viz_every", "train.ckpt_every_steps",
                  "train.skip_bad", "train.deterministic")
DERIVED = ("loss.sem_weights",)                  # resolved from the training chunks when a run starts
FIXED_ON_RESUME = ("model", "grid", "camera", "classes")  # the weights were trained for these


# ------------------------------------------------------------------------------------ the directory


def run_files(out: Path) -> list[str]:
    """The run files present in ``out`` (a pending epoch commit counts as a run too)."""
    names = [n for n in RUN_FILES if (out / n).exists()]
    return names + ([".mtl-commit.json"] if pending_commit(out) else [])


def refuse_existing_run(out: Path, resume: bool, overwrite: bool) -> None:
    """``OutputError`` when ``out`` holds a run and neither ``--resume`` nor ``--overwrite`` was given."""
    if out.exists() and not out.is_dir():
        raise OutputError(out, "--out exists and is not a directory")
    names = run_files(out) if out.is_dir() else []
    if names and not (resume or overwrite):
        raise OutputError(out, f"holds a training run ({', '.join(names)}); add --resume to continue it or "
                               "--overwrite to replace it, or choose another --out")


def tidy(out: Path) -> None:
    """With the lock held: roll an interrupted epoch commit forward, then remove what dead writers left
    (epoch staging folders, temp files)."""
    recover_commit(out)
    for staging in out.glob(STAGING + "*"):
        shutil.rmtree(staging, ignore_errors=True)
    remove_stale_temps(out)


def remove_run(out: Path) -> list[str]:
    """``--overwrite``: delete the old run's files (``RUN_FILES``, curves.png, debug/epoch_*); anything else in
    ``out`` stays. Returns what was removed."""
    removed = []
    for name in RUN_FILES + ("curves.png",):
        if (out / name).is_file():
            (out / name).unlink()
            removed.append(name)
    debug = out / "debug"
    epochs = sorted(p for p in debug.glob("epoch_*") if p.is_dir()) if debug.is_dir() else []
    for d in epochs:
        shutil.rmtree(d)
    if epochs:
        removed.append(f"debug/epoch_* ({len(epochs)})")
        if not any(debug.iterdir()):
            debug.rmdir()
    return removed


# ------------------------------------------------------------------------------------- the commits


def commit_epoch(out: Path, checkpoint: bytes, metrics: bytes, is_best: bool) -> None:
    """Commit an epoch end: last.pt = ``checkpoint`` (and best.pt too when ``is_best``), metrics.jsonl =
    ``metrics`` (every committed row plus this epoch's), the replaced last.pt kept as last.prev.pt."""
    staging = out / f"{STAGING}{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    names = []
    try:
        staging.mkdir()
        if (out / "last.pt").is_file():
            _link_or_copy(out / "last.pt", staging / "last.prev.pt")
            names.append("last.prev.pt")
        write_bytes_atomic(staging / "last.pt", checkpoint)
        if is_best:
            _link_or_copy(staging / "last.pt", staging / "best.pt")
            names.append("best.pt")
        write_bytes_atomic(staging / "metrics.jsonl", metrics)
        names += ["metrics.jsonl", "last.pt"]
        commit_files(staging, out, names)
    except OSError as e:
        if not pending_commit(out):          # nothing was moved: the previous epoch's set is intact
            shutil.rmtree(staging, ignore_errors=True)
        if e.filename is not None and Path(e.filename).parent == staging:
            e.filename = str(out / Path(e.filename).name)      # name the file the user knows
        raise


def rotate_last(out: Path) -> None:
    """Keep the current last.pt as last.prev.pt before a new last.pt replaces it (a hard link renamed into
    place: both names always hold a complete checkpoint)."""
    last = out / "last.pt"
    if not last.is_file():
        return
    with atomic_path(out / "last.prev.pt") as tmp:
        tmp.unlink()
        _link_or_copy(last, tmp)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:                          # a file system without hard links: copy the bytes
        dst.write_bytes(src.read_bytes())


# ---------------------------------------------------------------------------------------- metrics


def reconcile_metrics(path: Path, epochs_done: int) -> tuple[list[str], list[str]]:
    """(rows to keep, one-line warnings) of ``path`` for a run that has committed ``epochs_done`` epochs: rows of
    later epochs (redone now) and unreadable lines (a torn last line of a killed writer) are dropped."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return [], []
    except UnicodeDecodeError:
        return [], [f"warning: {path}: not text; its rows are dropped"]
    lines = [ln for ln in text.splitlines() if ln.strip()]
    keep, bad, later = [], [], []
    for n, line in enumerate(lines, 1):
        row = _row(line)
        if row is None:
            bad.append(n)
        elif row["epoch"] <= epochs_done:
            keep.append(line)
        else:
            later.append(row["epoch"])
    warnings = []
    if bad == [len(lines)] and not text.endswith("\n"):
        warnings.append(f"warning: {path}: repaired a torn last line (a run killed while writing it)")
    elif bad:
        warnings.append(f"warning: {path}: dropped unreadable line(s) {', '.join(map(str, bad))}")
    if later:
        warnings.append(f"warning: {path}: dropped the rows of epoch(s) {', '.join(map(str, later))}, after the "
                        f"checkpoint's epoch {epochs_done} (they are trained again)")
    return keep, warnings


def _row(line: str) -> dict | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    ok = isinstance(row, dict) and isinstance(row.get("epoch"), int) and not isinstance(row["epoch"], bool)
    return row if ok else None


# ------------------------------------------------------------------------------------ the data


def data_record(directory: str | Path) -> dict[str, Any]:
    """What a checkpoint records of a chunk directory: the sha256 of its ``manifest.json`` (when it has one)
    and every chunk's name, size and modification time."""
    from .data.chunk import list_chunks

    d = Path(directory)
    manifest = d / "manifest.json"
    sha = hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None
    chunks = []
    for p in list_chunks(d):
        st = p.stat()
        chunks.append([p.name, int(st.st_size), int(st.st_mtime_ns)])
    return {"dir": str(d.resolve()), "manifest_sha256": sha, "chunks": chunks}


def compare_data(old: dict | None, new: dict | None, split: str) -> tuple[str | None, str | None]:
    """(why the data differs, a note when only modification times differ) for one split ("train" / "val")."""
    if old is None or new is None:
        if old is new:
            return None, None
        return (f"the run was trained {'without' if old is None else 'with'} {split} data, now "
                f"{'with ' + new['dir'] if new else 'without'}"), None
    if old.get("manifest_sha256") and new.get("manifest_sha256"):
        if old["manifest_sha256"] != new["manifest_sha256"]:
            return f"{split} data {new['dir']}: its manifest.json differs from the run's ({old['dir']})", None
        return None, None
    a = {name: (size, mtime) for name, size, mtime in old["chunks"]}
    b = {name: (size, mtime) for name, size, mtime in new["chunks"]}
    added, removed = sorted(b.keys() - a.keys()), sorted(a.keys() - b.keys())
    resized = sorted(n for n in a.keys() & b.keys() if a[n][0] != b[n][0])
    if added or removed or resized:
        parts = [f"{len(v)} chunk(s) {what} ({_names(v)})" for what, v in
                 (("added", added), ("removed", removed), ("changed size", resized)) if v]
        return f"{split} data {new['dir']} differs from the run's ({old['dir']}): {', '.join(parts)}", None
    touched = sorted(n for n in a if a[n][1] != b[n][1])
    if touched:
        return None, (f"{split} data {new['dir']}: {len(touched)} chunk(s) have other modification times than "
                      "when the run started (same names and sizes: copied?)")
    return None, None


def _names(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f", ... {len(names) - limit} more" if len(names) > limit else "")


# ------------------------------------------------------------------------------------ the config


@dataclass(frozen=True)
class Change:
    key: str              # dotted, e.g. "train.lr"
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key} {_short(self.old)} -> {_short(self.new)}"


def config_changes(old: Config, new: Config) -> list[Change]:
    """Every field that differs between two configs (dotted keys, in the tree's order)."""
    a, b = old.to_dict(), new.to_dict()
    return [Change(f"{section}.{key}", value, b[section][key])
            for section, fields in a.items() if isinstance(fields, dict)
            for key, value in fields.items() if value != b[section][key]]


def resume_config(run_cfg: Config, asked: Config, force: bool, where: Path) -> tuple[Config, list[Change]]:
    """The config a resumed run continues with, and the changes to it that need ``--force-config``.

    ``asked`` is ``run_cfg`` with the user's --config / --set / flags applied. The epoch budget and
    ``FREE_ON_RESUME`` always apply; any other change is refused without ``force`` (one line listing every
    ``key old -> new``), and model / grid / camera / class changes are refused even with it."""
    changes = [c for c in config_changes(run_cfg, asked) if c.key not in DERIVED]
    fixed = [c for c in changes if c.key.split(".")[0] in FIXED_ON_RESUME]
    if fixed:
        raise ConfigError(where, f"--resume cannot change {', '.join(map(str, fixed))}: the weights were trained "
                                 "for them (start a new run: another --out, or --overwrite)")
    forced = [c for c in changes if c.key not in FREE_ON_RESUME]
    if forced and not force:
        raise ConfigError(where, f"--resume would change the run's config: {', '.join(map(str, forced))} (add "
                                 "--force-config to continue with the new values, or leave those options out)")
    sem_weights = asked.loss.sem_weights if asked.loss.sem_class_weights != run_cfg.loss.sem_class_weights \
        else run_cfg.loss.sem_weights
    return asked.override(**{"loss.sem_weights": sem_weights}), forced


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
