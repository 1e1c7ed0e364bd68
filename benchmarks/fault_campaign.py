#!/usr/bin/env python
"""Fault campaign: N random SIGKILLs across `mtl data convert`, `mtl train`, `mtl export` and `mtl infer`.

    python benchmarks/fault_campaign.py                   # 200 kills, seed 0 -> runs/benchmarks/fault_campaign_<date>.*
    python benchmarks/fault_campaign.py --quick           # 12 kills: a smoke run
    python benchmarks/fault_campaign.py --n 48 --jobs 2   # the run the README quotes (about 10 min on 2 cores)
    python benchmarks/fault_campaign.py --n 40 --seed 3 --jobs 1 --commands convert,infer

It first builds its own tiny inputs and the uninterrupted reference result of every command it kills (a
raw A2D2-layout tree from `mtl data synth`'s generator, tiny chunks and config from tests/conftest.py, the
checkpoints and exports made by the commands themselves; infer's input holds frames of all three modalities
and a truncated chunk, run with ``--eval --skip-bad --overlay``), then runs trials until N kills were delivered.
A trial takes one command (in turn), runs it as a real `python -m mtl.cli` process and SIGKILLs it, one of
two ways drawn at random:

- write: ``MTL_FAULT_AT_WRITE=k`` with k uniform in 1..W, W the command's durable write points (counted once
  with ``MTL_FAULT_LOG`` on the reference run): the process kills itself right after its k-th durable write;
- timer: the campaign SIGKILLs the process after t seconds, t uniform in [0, T), T the reference run's wall
  time: this also hits moments between writes (imports, mid-computation, a temp file half-written).

After every kill the output folder is checked (the invariants of tests/test_bad_inputs_*.py) and the command is
run again (``--resume`` for train; for infer the trial is either ``--overwrite`` of old results or a fresh run
continued with ``--resume``; train and infer-resume trials kill the ``--resume`` once more in half the cases),
and the final result is compared with the reference run. A kill is *lost* when a check after it fails or the
re-run that follows it fails or differs from the reference; it *survived* otherwise.

Checks after a kill, per command:
- convert --overwrite: no worker process left; the folder holds the old set (every file byte for byte) or the
  complete new one (chunks byte-identical to the reference, summary.json of that set, manifest.json matching
  every file, no unlisted chunk), never a mix; a pending commit journal is refused by the reader
  (``list_chunks``, what inspect / train / infer call) and rolls forward (on a copy) to the complete new set;
  otherwise the reader accepts the folder (sha256 checked).
- train (2 epochs, a checkpoint every step, validation on, ``--deterministic``): every checkpoint present
  loads; best.pt is never older than the best epoch last.pt records (the best model is never lost); once an
  interrupted epoch commit is rolled forward (on a copy: what the next `mtl train` does first) metrics.jsonl
  has exactly one readable row per committed epoch and best.pt is that epoch. The re-run (``--resume``, or the
  same command when the kill came before the run wrote anything) must end with last.pt and best.pt weights
  bit-identical to the reference run and the same metrics rows (timings aside).
- export --overwrite (fp16 too, parity + metric gate): the old set byte for byte, or the complete new set
  (models byte-identical to the reference export, manifest matching, report and manifest naming the new
  checkpoint); a pending commit is refused by ``check_export_set`` (what infer / bench call) and rolls
  forward to the new set; the re-run ends with the reference set (report equal but for times and paths).
- infer --overwrite: old or new results (``frames/<id>.json`` modulo timings, every image byte for byte, the
  summary's counts, skipped chunk and metrics), a pending commit rolls forward to the new ones; infer --resume:
  every finished frame (its JSON, metric record included) equals the reference frame and has all its images;
  the final --resume equals the uninterrupted run, its ``--eval`` metrics included (kept frames count exactly).
Every re-run must leave no staging folder, temp file or journal behind (only the lock file).

Writes ``fault_campaign_<date-time>.json`` (every kill: command, kind, when, write points passed, phase, checks,
re-run time; the device state) and ``.md`` (the table) into ``--out`` (default ``runs/benchmarks/``). The work
folder (inputs, references, trial folders; default ``OUT/fault_campaign_<date-time>_work/``) is deleted at the
end unless a kill was lost (then it is kept for inspection) or ``--keep-work``. Exit status 1 when a kill was
lost.
"""
from __future__ import annotations

import argparse
import bisect
import datetime as _dt
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from _common import RESULTS

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("convert", "train", "export", "infer")
MTL = [sys.executable, "-m", "mtl.cli"]
TIMEOUT_S = 900                  # one command; a hang counts as lost
NEVER = str(10**9)               # MTL_FAULT_AT_WRITE that only logs the write points
# every child runs single-threaded, like the reference runs it is compared with (bit-exact training)
CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}

OLD_CONVERT, NEW_CONVERT = ("16x24", "1"), ("24x40", "2")       # (image size, chunk size): other names and bytes
TRAIN_ARGS = ("--epochs", "2", "--batch-size", "2", "--deterministic", "--seed", "2", "--ckpt-every-steps", "1")
TRAIN_TIMINGS = ("epoch_time", "samples_per_s", "val/time_s", "val/samples_per_s")


# ------------------------------------------------------------------------------------------ one process


@dataclass
class Kill:
    kind: str                    # "write" | "timer"
    at: float                    # write point k, or a moment (s) of the reference run's timeline


@dataclass
class Ran:
    rc: int | None               # None: hung past TIMEOUT_S (then killed)
    seconds: float
    labels: list[str]            # the write points passed (MTL_FAULT_LOG)
    times: list[float]           # when the driver saw each of them (s after the start, 10 ms polling)
    stderr: str = ""

    @property
    def killed(self) -> bool:
        return self.rc == -signal.SIGKILL


def run_mtl(args: list[str], log: Path, kill: Kill | None = None, tag: str = "",
            ref_times: list[float] = ()) -> Ran:
    """Run ``mtl ARGS`` as its own process and SIGKILL it as ``kill`` says; the write points it passes are logged
    (``MTL_FAULT_LOG``) and timed. A timer kill replays a moment of the reference run (``ref_times``: its write
    points' times) on this run's progress (``replay``), so a run slowed by the load is still hit mid-run."""
    log.unlink(missing_ok=True)
    env = {**os.environ, **CHILD_ENV, "MTL_CAMPAIGN_TAG": tag, "MTL_FAULT_LOG": str(log),
           "MTL_FAULT_AT_WRITE": str(int(kill.at)) if kill and kill.kind == "write" else NEVER}
    err_path = log.with_name(log.name + ".stderr")
    times: list[float] = []
    deadline, hung = None, False
    t0 = time.monotonic()
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([*MTL, *args], env=env, stdout=subprocess.DEVNULL, stderr=err)
        while proc.poll() is None:
            now = time.monotonic() - t0
            times += [now] * (count_lines(log) - len(times))
            if kill and kill.kind == "timer" and deadline is None:
                deadline = replay(kill.at, list(ref_times), times)
            if (deadline is not None and now >= deadline) or now > TIMEOUT_S:
                hung = deadline is None or now < deadline
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.01)
    seconds = time.monotonic() - t0
    labels = read_labels(log)
    times += [seconds] * (len(labels) - len(times))
    stderr = err_path.read_bytes().decode(errors="replace")[-2000:]
    return Ran(None if hung else proc.returncode, seconds, labels, times,
               f"hung: killed after {TIMEOUT_S} s" if hung else stderr)


def replay(moment: float, ref_times: list[float], times: list[float]) -> float | None:
    """When to kill a run so that it dies at ``moment`` of the reference run's timeline: once it has passed the
    write points the reference had passed by then (None until it has), the same time after the last of them,
    stretched by how much slower this run reached it."""
    j = bisect.bisect_right(ref_times, moment)
    if len(times) < j:
        return None
    ref_j, got_j = (ref_times[j - 1], times[j - 1]) if j else (0.0, 0.0)
    stretch = min(4.0, max(0.5, got_j / ref_j)) if j and ref_j > 0 else 1.0
    return got_j + (moment - ref_j) * stretch


def count_lines(log: Path) -> int:
    try:
        return log.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def read_labels(log: Path) -> list[str]:
    try:
        return [ln.split("\t", 1)[1] for ln in log.read_text().splitlines() if "\t" in ln]
    except FileNotFoundError:
        return []


def phase(labels: list[str]) -> str:
    """Where a kill landed, by the last durable write before it."""
    if not labels:
        return "before any write"
    last = labels[-1]
    if last == "commit done":
        return "after a commit"
    if last == "commit journal" or last.startswith("commit "):
        return "inside a commit"
    return "between writes"


def leftover_processes(tag: str) -> list[str]:
    """Processes (zombies aside) still carrying this trial's tag 5 s after its command died: killed, reported."""
    import psutil

    def tagged() -> list:
        found = []
        for p in psutil.process_iter():
            try:
                if p.status() != psutil.STATUS_ZOMBIE and p.environ().get("MTL_CAMPAIGN_TAG") == tag:
                    found.append(p)
            except psutil.Error:
                pass
        return found

    deadline = time.monotonic() + 5
    while (left := tagged()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for p in left:
        p.kill()
    return [f"process {p.pid} outlived the killed command (orphaned worker)" for p in left]


# ------------------------------------------------------------------------------------------ folder views


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def visible_files(d: Path) -> dict[str, str]:
    """Every file under ``d`` outside hidden names (lock, journal, staging, temp files) -> its sha256."""
    return {str(p.relative_to(d)): sha256(p) for p in sorted(d.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(d).parts)}


def hidden_entries(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith(".")) if d.is_dir() else []


def leftovers(d: Path) -> list[str]:
    """What a finished command must not leave: anything hidden but the lock file."""
    extra = [n for n in hidden_entries(d) if n != ".mtl.lock"]
    return [f"left {', '.join(extra)} behind"] if extra else []


def recovered_copy(d: Path) -> Path:
    """A copy of ``d`` with its pending commit rolled forward (what the next writer does first)."""
    from mtl.io import recover_commit

    view = d.parent / f"{d.name}.view"
    shutil.rmtree(view, ignore_errors=True)
    shutil.copytree(d, view, copy_function=shutil.copy)
    recover_commit(view)
    return view


def manifest_problems(d: Path, set_patterns: tuple[str, ...]) -> list[str]:
    """manifest.json lists every file of the set (``set_patterns``) and each listed file has its size and
    sha256. No manifest at all is a problem too (every command here writes one)."""
    man = d / "manifest.json"
    try:
        listed = {e["name"]: e for e in json.loads(man.read_text())["files"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [f"{man.name}: unreadable or missing ({type(e).__name__})"]
    problems = []
    for name, e in listed.items():
        f = d / name
        if not f.is_file():
            problems.append(f"{name}: listed in manifest.json but missing")
        elif f.stat().st_size != e.get("size") or sha256(f) != e.get("sha256"):
            problems.append(f"{name}: differs from what manifest.json records")
    for pattern in set_patterns:
        for f in sorted(d.glob(pattern)):
            rel = str(f.relative_to(d))
            if f.is_file() and rel not in listed and not f.name.startswith("."):
                problems.append(f"{rel}: not listed in manifest.json (two sets mixed)")
    return problems


def without(doc: object, keys: tuple[str, ...]) -> object:
    """``doc`` with every dict key in ``keys`` removed, at any depth (timings, paths, dates)."""
    if isinstance(doc, dict):
        return {k: without(v, keys) for k, v in doc.items() if k not in keys}
    if isinstance(doc, list):
        return [without(v, keys) for v in doc]
    return doc


def read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------ convert


CONVERT_SET = ("*.npz", "summary.json")
CONVERT_VOLATILE = ("out", "elapsed_s", "seconds_per_frame", "workers")


def convert_state(d: Path, old: dict[str, str], new_chunks: dict[str, str],
                  new_summary: object) -> tuple[str, list[str]]:
    """("old" | "new" | "mixed", problems) of a chunk folder: the old set file for file, or the complete new
    set (chunks as the reference run's, its summary, a manifest that matches), nothing else."""
    files = visible_files(d)
    if files == old:
        return "old", []
    problems = manifest_problems(d, CONVERT_SET)
    chunks = {n: s for n, s in files.items() if n.endswith(".npz")}
    if chunks != new_chunks:
        problems.append(f"chunks {sorted(chunks)} are neither the old set nor the new one (mixed or incomplete)")
    elif without(read_json(d / "summary.json"), CONVERT_VOLATILE) != new_summary:
        problems.append("summary.json does not describe the new chunks")
    other = sorted(set(files) - set(chunks) - {"summary.json", "manifest.json"})
    if other:
        problems.append(f"unexpected files {other}")
    return ("new" if not problems else "mixed"), problems


def chunk_reader_problems(d: Path) -> list[str]:
    """The reader every command uses (``list_chunks``, sha256 checked) refuses a pending commit, accepts the rest."""
    from mtl.contract import PENDING_REASON
    from mtl.data.chunk import list_chunks
    from mtl.errors import ChunkError
    from mtl.io import pending_commit

    try:
        list_chunks(d, sha256=True)
    except ChunkError as e:
        if pending_commit(d) and "interrupted write" in e.reason:
            return []
        return [f"the chunk reader refuses the folder: {e.reason}"]
    return [f"the chunk reader accepts a folder with a pending commit ({PENDING_REASON})"] if pending_commit(d) else []


# ------------------------------------------------------------------------------------------ train


def load_checkpoint(path: Path) -> dict | None:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def metrics_rows(run: Path) -> tuple[list[dict], list[str]]:
    """(rows, problems) of RUN/metrics.jsonl: every line must parse (epoch commits rewrite it whole)."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return [], []
    rows, problems = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            problems.append(f"metrics.jsonl line {n} is torn / not JSON")
    return rows, problems


def run_problems(run: Path, committed: bool) -> list[str]:
    """What a kill may leave in a run folder: every checkpoint present loads, best.pt is never older than the
    best epoch last.pt records; when ``committed`` (no commit pending), one metrics row per committed epoch and
    best.pt is exactly last.pt's best epoch; no last.pt means no best.pt and no rows."""
    problems, ckpt = [], {}
    for name in ("last.pt", "last.prev.pt", "best.pt"):
        if (run / name).exists():
            try:
                ckpt[name] = load_checkpoint(run / name)
            except Exception as e:  # noqa: BLE001 - any failure to load is the finding
                problems.append(f"{name} does not load ({type(e).__name__}: {str(e)[:80]})")
    rows, torn = metrics_rows(run)
    problems += torn
    last, best = ckpt.get("last.pt"), ckpt.get("best.pt")
    if last and best and last.get("best_epoch") and best["epoch"] < last["best_epoch"]:
        problems.append(f"best.pt is epoch {best['epoch']} but last.pt records epoch {last['best_epoch']} as "
                        "best: the best model was lost")
    if not committed or problems:
        return problems
    if last is None:
        if (run / "best.pt").exists() or rows:
            problems.append("best.pt or metrics rows without a last.pt")
        return problems
    epochs = [r.get("epoch") for r in rows]
    if epochs != list(range(1, last["epoch"] + 1)):
        problems.append(f"metrics.jsonl rows of epochs {epochs}, but last.pt has committed {last['epoch']}")
    if last.get("best_epoch") and (best is None or best["epoch"] != last["best_epoch"]):
        problems.append(f"best.pt is not last.pt's best epoch {last['best_epoch']}")
    return problems


def train_after_kill(run: Path) -> list[str]:
    from mtl.io import pending_commit

    if not run.is_dir():
        return []
    if not pending_commit(run):
        return run_problems(run, committed=True)
    view = recovered_copy(run)
    try:
        return run_problems(run, committed=False) + [f"rolled forward: {p}" for p in run_problems(view, True)]
    finally:
        shutil.rmtree(view, ignore_errors=True)


def train_matches_reference(run: Path, ref: Path) -> list[str]:
    """last.pt and best.pt weights bit for bit, the same steps / epochs, the same metrics rows but timings."""
    import torch

    problems = []
    for name in ("last.pt", "best.pt"):
        try:
            got, want = load_checkpoint(run / name), load_checkpoint(ref / name)
        except Exception as e:  # noqa: BLE001
            return [f"{name} does not load after the re-run ({type(e).__name__})"]
        if (got["epoch"], got.get("step")) != (want["epoch"], want.get("step")):
            problems.append(f"{name}: epoch/step {got['epoch']}/{got.get('step')}, reference "
                            f"{want['epoch']}/{want.get('step')}")
        diff = [k for k in want["model"] if not torch.equal(got["model"][k], want["model"][k])]
        if diff:
            problems.append(f"{name}: {len(diff)} tensors differ from the uninterrupted run (e.g. {diff[0]})")
    rows, torn = metrics_rows(run)
    want_rows, _ = metrics_rows(ref)
    if torn or without(rows, TRAIN_TIMINGS) != without(want_rows, TRAIN_TIMINGS):
        problems.append("metrics.jsonl differs from the uninterrupted run's (timings aside)")
    return problems


# ------------------------------------------------------------------------------------------ export


EXPORT_VOLATILE = ("created", "out_dir", "timings_s", "export_time_s", "checkpoint")


def export_state(d: Path, old: dict[str, str], ref: Path) -> tuple[str, list[str]]:
    """("old" | "new" | "mixed", problems) of an export folder: the old set file for file, or the reference
    export's set (model files byte-identical, manifest matching, report = reference's but times and paths)."""
    from mtl.contract import EXPORT_SET_PATTERNS

    files = visible_files(d)
    if files == old:
        return "old", []
    problems = manifest_problems(d, EXPORT_SET_PATTERNS)
    want = visible_files(ref)
    models = {n: s for n, s in files.items() if ".onnx" in n or n.endswith(".engine")}
    want_models = {n: s for n, s in want.items() if ".onnx" in n or n.endswith(".engine")}
    if models != want_models:
        problems.append(f"models {sorted(models)} are neither the old set nor the new one (mixed or incomplete)")
    rep, want_rep = read_json(d / "export_report.json"), read_json(ref / "export_report.json")
    if without(rep, EXPORT_VOLATILE) != without(want_rep, EXPORT_VOLATILE):
        problems.append("export_report.json does not describe the new models")
    man = read_json(d / "manifest.json")
    sha = (want_rep or {}).get("checkpoint_sha256")
    if not isinstance(man, dict) or man.get("checkpoint_sha256") != sha:
        problems.append("manifest.json does not name the new checkpoint")
    if sorted(files) != sorted(want):
        problems.append(f"files {sorted(set(files) ^ set(want))} differ from the new set's")
    return ("new" if not problems else "mixed"), problems


def export_reader_problems(d: Path) -> list[str]:
    """``check_export_set`` (what infer and bench call) refuses a pending commit and accepts a finished set."""
    from mtl.contract import PENDING_REASON, check_export_set
    from mtl.errors import ModelMismatchError
    from mtl.io import pending_commit

    try:
        check_export_set([d / "model.onnx"])
    except ModelMismatchError as e:
        if pending_commit(d) and e.reason == PENDING_REASON:
            return []
        return [f"check_export_set refuses the folder: {e.reason}"]
    return ["check_export_set accepts a folder with a pending commit"] if pending_commit(d) else []


# ------------------------------------------------------------------------------------------ infer


INFER_SET = ("frames/*", "summary.json")
# what an infer summary must carry over a kill (the rest is timings, paths and how many frames a --resume kept)
INFER_SUMMARY = ("model_sha256", "eval", "decode", "frames_written", "modalities", "frames_skipped", "bad",
                 "detections", "metrics", "files")


def infer_view(out: Path) -> dict[str, object]:
    """An infer output as comparable content: frame JSONs without timings, image bytes, the summary's model,
    counts, skipped chunks, metrics and frame names (``INFER_SUMMARY``), the manifest's file names (hidden files
    left out)."""
    view: dict[str, object] = {}
    for rel, digest in visible_files(out).items():
        p = out / rel
        if rel == "summary.json":
            s = read_json(p) or {}
            view[rel] = {k: s.get(k) for k in INFER_SUMMARY}
        elif rel == "manifest.json":
            view[rel] = sorted(e["name"] for e in (read_json(p) or {}).get("files", []))
        elif p.suffix == ".json":
            view[rel] = without(read_json(p), ("timing_ms",))
        else:
            view[rel] = digest
    return view


def infer_state(d: Path, old: dict, new: dict) -> tuple[str, list[str]]:
    view = infer_view(d)
    if view == old:
        return "old", []
    if view == new:
        return "new", manifest_problems(d, INFER_SET)
    differ = sorted(k for k in set(view) | set(new) if view.get(k) != new.get(k))[:3]
    return "mixed", [f"neither the old results nor the new ones (e.g. {differ} differ from the new ones)"]


def infer_prefix_problems(d: Path, want: dict) -> list[str]:
    """A run killed before its end: every finished frame (its JSON, written last) equals the reference frame
    and has all its images; images without their JSON are unfinished frames that --resume redoes."""
    from mtl.runtime.results import IMAGE_SUFFIXES

    if not (d / "frames").is_dir():
        return []
    view, problems = infer_view(d), []
    for j in sorted((d / "frames").glob("*.json")):
        rel = f"frames/{j.name}"
        if view.get(rel) != want.get(rel):
            problems.append(f"{rel} differs from the uninterrupted run's")
        for suffix in IMAGE_SUFFIXES:
            img = rel[: -len(".json")] + suffix
            if img in want and view.get(img) != want[img]:
                problems.append(f"{img} is missing or differs while its frame is finished")
    return problems


# ------------------------------------------------------------------------------------------ the inputs


@dataclass
class Reference:
    """One command's uninterrupted run: its wall time and durable write points."""

    seconds: float
    labels: list[str]
    times: list[float]


@dataclass
class Fixtures:
    work: Path
    raw: Path = None
    refs: dict[str, Reference] = field(default_factory=dict)
    old_files: dict[str, dict] = field(default_factory=dict)       # command -> the old output as files / view
    new_chunks: dict = field(default_factory=dict)
    new_summary: object = None
    infer_new: dict = field(default_factory=dict)
    infer_fresh: dict = field(default_factory=dict)
    infer_model: Path = None                                        # the model the infer trials run

    def p(self, name: str) -> Path:
        return self.work / name


def convert_args(fx: Fixtures, out: Path, size: tuple[str, str]) -> list[str]:
    return ["data", "convert", "--a2d2", str(fx.raw), "--out", str(out), "--image-size", size[0], "--chunk-size",
            size[1], "--workers", "2", "--overwrite", "--no-progress"]


def train_args(fx: Fixtures, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(fx.p("train")), "--val", str(fx.p("val")), "--out", str(out), "--config",
            str(fx.p("config.json")), "--no-progress", *extra]


def export_args(fx: Fixtures, ckpt: Path, out: Path) -> list[str]:
    return ["export", str(ckpt), "--out", str(out), "--fp16", "--val-data", str(fx.p("val")), "--no-progress",
            "--overwrite"]


def infer_args(fx: Fixtures, model: Path, out: Path, *extra: str) -> list[str]:
    return ["infer", "--model", str(model), "--data", str(fx.p("infer_data")), "--out", str(out), "--backend",
            "onnxruntime", "--threads", "1", "--overlay", "--eval", "--skip-bad", "--no-progress", *extra]


def write_infer_data(d: Path, cfg) -> Path:
    """Infer's input: 6 tiny frames of every modality (frame 1 LiDAR-only, frame 4 camera-only) in 3 chunks,
    and a fourth chunk cut in half, which ``--skip-bad`` skips and counts."""
    from conftest import write_tiny_chunks

    from mtl.data.chunk import HAS_IMAGE, HAS_LIDAR, HAS_SEMANTIC

    write_tiny_chunks(d, cfg, n_frames=6, per_chunk=2, seed=3, masks={1: HAS_LIDAR, 4: HAS_IMAGE | HAS_SEMANTIC})
    whole = (d / "chunk_00002.npz").read_bytes()
    (d / "chunk_00003.npz").write_bytes(whole[: len(whole) // 2])
    return d


def must_run(args: list[str], log: Path, what: str) -> Ran:
    ran = run_mtl(args, log)
    if ran.rc != 0:
        raise SystemExit(f"setup: {what} failed (rc {ran.rc}): {ran.stderr}")
    return ran


def build_fixtures(work: Path, commands: tuple[str, ...], say: Callable[[str], None]) -> Fixtures:
    """Inputs, old outputs and the reference run of every command in ``commands``."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import tiny_cfg, write_tiny_chunks

    fx = Fixtures(work)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "setup.log"
    cfg = tiny_cfg()
    fx.p("config.json").write_text(cfg.to_json())
    write_tiny_chunks(fx.p("train"), cfg, n_frames=4, per_chunk=2, seed=0)
    write_tiny_chunks(fx.p("val"), cfg, n_frames=2, per_chunk=2, seed=1)
    write_infer_data(fx.p("infer_data"), cfg)
    if "convert" in commands:
        from mtl.data import synth

        say("setup: raw A2D2-layout tree (mtl data synth generator, 3 frames) ...")
        fx.raw = fx.p("raw")
        synth.generate(fx.raw, 3, seed=4, workers=1, scene_size=2, _render_scale=0.08)
        must_run(convert_args(fx, fx.p("convert_old"), OLD_CONVERT), log, "convert (old)")
        shutil.copytree(fx.p("convert_old"), fx.p("convert_ref"))
        r = must_run(convert_args(fx, fx.p("convert_ref"), NEW_CONVERT), log, "convert (reference)")
        fx.refs["convert"] = Reference(r.seconds, r.labels, r.times)
        fx.old_files["convert"] = visible_files(fx.p("convert_old"))
        fx.new_chunks = {n: s for n, s in visible_files(fx.p("convert_ref")).items() if n.endswith(".npz")}
        fx.new_summary = without(read_json(fx.p("convert_ref") / "summary.json"), CONVERT_VOLATILE)
    if {"train", "export", "infer"} & set(commands):
        say("setup: reference training run (2 epochs, --deterministic) ...")
        r = must_run(train_args(fx, fx.p("train_ref"), *TRAIN_ARGS), log, "train (reference)")
        fx.refs["train"] = Reference(r.seconds, r.labels, r.times)
    if {"export", "infer"} & set(commands):
        say("setup: exports of two checkpoints (fp32 + fp16, parity, metric gate) ...")
        must_run(train_args(fx, fx.p("train_a"), "--epochs", "1", "--seed", "3"), log, "train (checkpoint A)")
        must_run(export_args(fx, fx.p("train_a") / "best.pt", fx.p("export_old")), log, "export (old)")
        shutil.copytree(fx.p("export_old"), fx.p("export_ref"))
        r = must_run(export_args(fx, fx.p("train_ref") / "best.pt", fx.p("export_ref")), log, "export (reference)")
        fx.refs["export"] = Reference(r.seconds, r.labels, r.times)
        fx.old_files["export"] = visible_files(fx.p("export_old"))
    if "infer" in commands:
        say("setup: infer results of both models ...")
        build_infer_fixtures(fx, fx.p("export_old") / "model.onnx", fx.p("export_ref") / "model.onnx")
    return fx


def build_infer_fixtures(fx: Fixtures, old_model: Path, new_model: Path) -> None:
    """Infer's old results (``old_model``) and the reference runs of the model the trials kill (``new_model``):
    ``--overwrite`` of the old results, and a fresh run. ``fx.p("infer_data")`` must exist."""
    log = fx.p("setup.log")
    fx.infer_model = new_model
    must_run(infer_args(fx, old_model, fx.p("infer_old")), log, "infer (old)")
    shutil.copytree(fx.p("infer_old"), fx.p("infer_ref"))
    r = must_run(infer_args(fx, new_model, fx.p("infer_ref"), "--overwrite"), log, "infer --overwrite (reference)")
    fx.refs["infer"] = Reference(r.seconds, r.labels, r.times)
    r = must_run(infer_args(fx, new_model, fx.p("infer_fresh")), log, "infer (fresh)")
    fx.refs["infer-fresh"] = Reference(r.seconds, r.labels, r.times)
    fx.old_files["infer"] = infer_view(fx.p("infer_old"))
    fx.infer_new, fx.infer_fresh = infer_view(fx.p("infer_ref")), infer_view(fx.p("infer_fresh"))


# ------------------------------------------------------------------------------------------ after a kill


def convert_after_kill(d: Path, old: dict, new_chunks: dict, new_summary: object) -> list[str]:
    """The reader refuses a pending commit, which rolls forward (on a copy) to the new set; otherwise the
    folder is the old set or the new one and the reader accepts it."""
    from mtl.io import pending_commit

    problems = chunk_reader_problems(d)
    if pending_commit(d):
        view = recovered_copy(d)
        state, found = convert_state(view, old, new_chunks, new_summary)
        shutil.rmtree(view, ignore_errors=True)
        return problems + [f"rolled forward: {p}" for p in found] + (
            [] if state == "new" else [f"the pending commit rolls forward to the {state} set, not the new one"])
    return problems + convert_state(d, old, new_chunks, new_summary)[1]


def convert_final(d: Path, old: dict, new_chunks: dict, new_summary: object) -> list[str]:
    state, problems = convert_state(d, old, new_chunks, new_summary)
    return problems + leftovers(d) + ([] if state == "new" else [f"the re-run ends with the {state} set"])


def export_after_kill(d: Path, old: dict, ref: Path) -> list[str]:
    """As convert_after_kill, with ``check_export_set`` as the reader and the reference export as the new set."""
    from mtl.io import pending_commit

    problems = export_reader_problems(d)
    if pending_commit(d):
        view = recovered_copy(d)
        state, found = export_state(view, old, ref)
        shutil.rmtree(view, ignore_errors=True)
        return problems + [f"rolled forward: {p}" for p in found] + (
            [] if state == "new" else [f"the pending commit rolls forward to the {state} set, not the new one"])
    return problems + export_state(d, old, ref)[1]


def export_final(d: Path, old: dict, ref: Path) -> list[str]:
    state, problems = export_state(d, old, ref)
    return problems + leftovers(d) + ([] if state == "new" else [f"the re-run ends with the {state} set"])


def infer_after_kill(d: Path, variant: str, old: dict, want: dict) -> list[str]:
    """--overwrite: the old results or the new ones (a pending commit rolls forward to the new ones); a fresh
    run or --resume: finished frames equal to the uninterrupted run's (``want``)."""
    from mtl.io import pending_commit

    if variant != "overwrite":
        return infer_prefix_problems(d, want)
    if pending_commit(d):
        view = recovered_copy(d)
        state, found = infer_state(view, old, want)
        shutil.rmtree(view, ignore_errors=True)
        return found + ([] if state == "new" else [f"the pending commit rolls forward to the {state} results"])
    return infer_state(d, old, want)[1]


def infer_final(d: Path, want: dict) -> list[str]:
    view = infer_view(d)
    if view != want:
        diff = sorted(k for k in set(view) | set(want) if view.get(k) != want.get(k))[:3]
        return [f"the re-run's results differ from the uninterrupted run's (e.g. {diff})"] + leftovers(d)
    return manifest_problems(d, INFER_SET) + leftovers(d)


# ------------------------------------------------------------------------------------------ trials


@dataclass
class KillRecord:
    trial: int
    command: str
    variant: str                 # overwrite | fresh | resume: what was killed
    kind: str                    # write | timer
    at: float                    # write point k, or the timer's seconds
    of: float                    # the reference run's write points (write) or wall seconds (timer)
    died_after_s: float
    points_passed: int
    last_write: str
    phase: str
    problems: list[str] = field(default_factory=list)
    rerun_s: float | None = None


class Budget:
    """The kills still to deliver, shared by the worker threads (a missed kill is given back)."""

    def __init__(self, n: int):
        self.left, self._lock = n, threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.left <= 0:
                return False
            self.left -= 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self.left += 1


MAX_ATTEMPTS = 6                 # draws per kill before a trial gives up (each miss = a run that finished first)


class Trial:
    """One command killed (once, or twice for a resume variant), checked after each kill, then re-run to the end."""

    def __init__(self, index: int, command: str, fx: Fixtures, rng: np.random.Generator, budget: Budget, root: Path):
        self.index, self.command, self.fx, self.rng, self.budget = index, command, fx, rng, budget
        self.dir = root / f"{index:04d}-{command}"
        self.dir.mkdir(parents=True)
        self.tag = uuid.uuid4().hex
        self.log = self.dir / "points.log"
        self.records: list[KillRecord] = []
        self.misses = 0

    def draw(self, ref: Reference) -> Kill:
        if self.rng.random() < 0.5:
            return Kill("write", int(self.rng.integers(1, len(ref.labels) + 1)))
        return Kill("timer", round(float(self.rng.uniform(0.0, ref.seconds)), 3))

    def attempt(self, args: list[str], ref: Reference, variant: str) -> tuple[Ran, KillRecord | None]:
        kill = self.draw(ref)
        ran = run_mtl(args, self.log, kill, self.tag, ref.times)
        if not ran.killed:
            return ran, None
        rec = KillRecord(self.index, self.command, variant, kill.kind, kill.at,
                         len(ref.labels) if kill.kind == "write" else round(ref.seconds, 3), round(ran.seconds, 3),
                         len(ran.labels), ran.labels[-1] if ran.labels else "", phase(ran.labels))
        rec.problems += leftover_processes(self.tag)
        self.records.append(rec)
        return ran, rec

    def first_kill(self, args: list[str], ref: Reference, variant: str, reset: Callable[[], None]) -> KillRecord | None:
        """Kill ``args`` (its budget already taken), drawing again from a fresh state while the run finishes first."""
        for _ in range(MAX_ATTEMPTS):
            reset()
            ran, rec = self.attempt(args, ref, variant)
            if rec is not None:
                return rec
            self.misses += 1
            if ran.rc != 0:                     # neither killed nor finished: a real failure
                self.failure(f"{variant} run failed without a kill (rc {ran.rc}): {ran.stderr.strip()[-300:]}")
                return None
        self.budget.give_back()
        return None

    def second_kill(self, args: list[str], ref: Reference, variant: str) -> None:
        """Half the time, kill the --resume too (if the budget allows); a run that finishes first is just done."""
        if self.rng.random() >= 0.5 or not self.budget.take():
            return
        ran, rec = self.attempt(args, ref, variant)
        if rec is None:
            self.budget.give_back()
            self.misses += 1

    def failure(self, problem: str) -> None:
        """A problem that belongs to no kill of its own (a failed run): charged to the last kill, or a new record."""
        if not self.records:
            self.records.append(KillRecord(self.index, self.command, "-", "none", 0, 0, 0, 0, "", "-"))
        self.records[-1].problems.append(problem)

    def finish(self, args: list[str], check: Callable[[], list[str]]) -> None:
        """The re-run that must end the job: rc 0 and the reference result; its time is the last kill's re-run."""
        ran = run_mtl(args, self.log, tag=self.tag)
        if self.records:
            self.records[-1].rerun_s = round(ran.seconds, 3)
        if ran.rc != 0:
            self.failure(f"the re-run failed (rc {ran.rc}): {ran.stderr.strip()[-300:]}")
        else:
            for p in check():
                self.failure(p)

    def after(self, rec: KillRecord | None, check: Callable[[], list[str]]) -> None:
        if rec is not None:
            rec.problems += check()

    # -------------------------------------------------------------------- the commands

    def run(self) -> list[KillRecord]:
        try:
            getattr(self, f"_{self.command}")()
        except Exception as e:  # noqa: BLE001 - a crash of the checker itself is reported, never hidden
            self.failure(f"the campaign crashed on this trial: {type(e).__name__}: {e}")
        if not any(r.problems for r in self.records):
            shutil.rmtree(self.dir, ignore_errors=True)
        return self.records

    def _reset_to(self, d: Path, source: Path | None) -> Callable[[], None]:
        def reset() -> None:
            shutil.rmtree(d, ignore_errors=True)
            if source is not None:
                shutil.copytree(source, d)
        return reset

    def _convert(self) -> None:
        fx, d = self.fx, self.dir / "out"
        args = convert_args(fx, d, NEW_CONVERT)
        rec = self.first_kill(args, fx.refs["convert"], "overwrite", self._reset_to(d, fx.p("convert_old")))
        if rec is None:
            return
        want = (fx.old_files["convert"], fx.new_chunks, fx.new_summary)
        self.after(rec, lambda: convert_after_kill(d, *want))
        self.finish(args, lambda: convert_final(d, *want))

    def _train(self) -> None:
        from mtl.rundir import run_files

        fx, run = self.fx, self.dir / "run"

        def again() -> list[str]:     # --resume, or the same command when the kill came before any run file
            resume = run.is_dir() and bool(run_files(run))
            return train_args(fx, run, *TRAIN_ARGS, *(["--resume"] if resume else []))

        rec = self.first_kill(train_args(fx, run, *TRAIN_ARGS), fx.refs["train"], "fresh", self._reset_to(run, None))
        if rec is None:
            return
        self.after(rec, lambda: train_after_kill(run))
        n = len(self.records)
        self.second_kill(again(), fx.refs["train"], "resume")
        if len(self.records) > n:
            self.after(self.records[-1], lambda: train_after_kill(run))
        self.finish(again(), lambda: train_matches_reference(run, fx.p("train_ref")) + leftovers(run))

    def _export(self) -> None:
        fx, d = self.fx, self.dir / "out"
        args = export_args(fx, fx.p("train_ref") / "best.pt", d)
        rec = self.first_kill(args, fx.refs["export"], "overwrite", self._reset_to(d, fx.p("export_old")))
        if rec is None:
            return
        want = (fx.old_files["export"], fx.p("export_ref"))
        self.after(rec, lambda: export_after_kill(d, *want))
        self.finish(args, lambda: export_final(d, *want))

    def _infer(self) -> None:
        fx, d = self.fx, self.dir / "out"
        model = fx.infer_model
        if self.rng.random() < 0.5:
            args = infer_args(fx, model, d, "--overwrite")
            rec = self.first_kill(args, fx.refs["infer"], "overwrite", self._reset_to(d, fx.p("infer_old")))
            if rec is None:
                return
            self.after(rec, lambda: infer_after_kill(d, "overwrite", fx.old_files["infer"], fx.infer_new))
            self.finish(args, lambda: infer_final(d, fx.infer_new))
            return
        rec = self.first_kill(infer_args(fx, model, d), fx.refs["infer-fresh"], "fresh", self._reset_to(d, None))
        if rec is None:
            return
        self.after(rec, lambda: infer_after_kill(d, "fresh", {}, fx.infer_fresh))
        resume = infer_args(fx, model, d, "--resume")
        n = len(self.records)
        self.second_kill(resume, fx.refs["infer-fresh"], "resume")
        if len(self.records) > n:
            self.after(self.records[-1], lambda: infer_after_kill(d, "resume", {}, fx.infer_fresh))
        self.finish(resume, lambda: infer_final(d, fx.infer_fresh))


# ------------------------------------------------------------------------------------------ the campaign


def campaign(n: int, seed: int, jobs: int, commands: tuple[str, ...], work: Path,
             say: Callable[[str], None] = print, fixtures: Fixtures | None = None) -> dict:
    """Build the inputs in ``work`` (or take ``fixtures`` built for ``commands``), deliver ``n`` kills with ``jobs``
    trials at a time; returns the results."""
    t0, load_start = time.monotonic(), [round(x, 2) for x in os.getloadavg()]
    fx = fixtures or build_fixtures(work, commands, say)
    setup_s = time.monotonic() - t0
    say(f"setup done in {setup_s:.0f} s; write points of the reference runs: "
        + ", ".join(f"{c} {len(r.labels)}" for c, r in fx.refs.items()))
    budget, lock, records, misses = Budget(n), threading.Lock(), [], [0]
    next_index = iter(range(10**9))

    def worker() -> None:
        while budget.take():
            with lock:
                i = next(next_index)
            if i >= 5 * n + 20:                     # the commands keep finishing before their kills: stop
                return
            trial = Trial(i, commands[i % len(commands)], fx, np.random.default_rng([seed, i]), budget,
                          work / "trials")
            recs = trial.run()
            with lock:
                records.extend(recs)
                misses[0] += trial.misses
                done = sum(r.kind != "none" for r in records)
                for r in recs:
                    at = f"k={int(r.at)}/{int(r.of)}" if r.kind == "write" else f"t={r.at:.2f}/{r.of:.1f}s"
                    verdict = "LOST: " + "; ".join(r.problems) if r.problems else "survived"
                    rerun = f", re-run {r.rerun_s:.1f} s" if r.rerun_s is not None else ""
                    say(f"[{done:>4}/{n}] {r.command:<7} {r.variant:<9} {r.kind:<5} {at:<14} "
                        f"{r.phase:<16} ({r.last_write or '-'}) -> {verdict}{rerun}")

    with ThreadPoolExecutor(jobs) as pool:
        for f in [pool.submit(worker) for _ in range(jobs)]:
            f.result()
    res = summarise(records, misses[0], fx, commands, n, seed, jobs, setup_s, time.monotonic() - t0)
    res["device"]["load_avg_start"] = load_start
    return res


def _spread(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


PHASES = ("before any write", "between writes", "inside a commit", "after a commit")


def summarise(records: list[KillRecord], misses: int, fx: Fixtures, commands: tuple[str, ...], n: int, seed: int,
              jobs: int, setup_s: float, total_s: float) -> dict:
    per = {}
    for c in commands:
        rs = [r for r in records if r.command == c]
        kills = [r for r in rs if r.kind != "none"]
        ref = fx.refs[c]
        per[c] = {
            "kills": len(kills), "write_kills": sum(r.kind == "write" for r in kills),
            "timer_kills": sum(r.kind == "timer" for r in kills),
            "survived": sum(not r.problems for r in kills), "lost": sum(bool(r.problems) for r in rs),
            "killed_runs": {v: sum(r.variant == v for r in kills) for v in ("overwrite", "fresh", "resume")
                            if any(r.variant == v for r in kills)},
            "kill_time_s": _spread([r.died_after_s for r in kills]),
            "write_points_passed": _spread([r.points_passed for r in kills]),
            "phases": {p: sum(r.phase == p for r in kills) for p in PHASES},
            "rerun_s": _spread([r.rerun_s for r in rs if r.rerun_s is not None]),
            "reference_s": round(ref.seconds, 3), "reference_write_points": len(ref.labels),
        }
    kills = [r for r in records if r.kind != "none"]
    lost = [r for r in records if r.problems]
    from mtl.bench import device_state

    return {
        "campaign": {"n": n, "seed": seed, "jobs": jobs, "commands": list(commands), "setup_s": round(setup_s, 1),
                     "total_s": round(total_s, 1), "misses": misses},
        "device": {**device_state(1), "load_avg_end": [round(x, 2) for x in os.getloadavg()]},   # threads: each child
        "totals": {"kills": len(kills), "survived": len(kills) - sum(bool(r.problems) for r in kills),
                   "lost": len(lost)},
        "per_command": per,
        "lost": [asdict(r) for r in lost],
        "kills": [asdict(r) for r in records],
    }


def markdown(res: dict) -> str:
    c, t, dev = res["campaign"], res["totals"], res["device"]
    lines = [f"# Fault campaign: survived {t['survived']}/{t['kills']}, lost {t['lost']}", "",
             f"{t['kills']} SIGKILLs (seed {c['seed']}, {c['jobs']} trial(s) at a time) across "
             f"{', '.join(c['commands'])}; {c['total_s'] / 60:.1f} min in all ({c['setup_s']:.0f} s of setup), "
             f"CPU {dev['cpu_model'] or 'unknown'} ({dev['cpu_count']} cores, load avg at the start "
             f"{dev.get('load_avg_start', '-')}, at the end {dev['load_avg_end']}; every command single-threaded). "
             f"{c['misses']} draws missed (the run finished before its kill) "
             "and were drawn again.", "",
             "| command | kills (write / timer) | runs killed | survived | lost | died after s (median, range) "
             "| phase: before any write / between writes / inside a commit / after a commit "
             "| re-run s (median, max) | reference run s, write points |",
             "|---|---:|---|---:|---:|---|---|---|---|"]
    for name, p in res["per_command"].items():
        kt, rr = p["kill_time_s"], p["rerun_s"]
        lines.append(
            f"| {name} | {p['kills']} ({p['write_kills']} / {p['timer_kills']}) | "
            + ", ".join(f"{v} {k}" for v, k in p["killed_runs"].items())
            + f" | {p['survived']} | {p['lost']} | "
            + (f"{kt['median']:.2f} ({kt['min']:.2f}-{kt['max']:.2f})" if kt else "-") + " | "
            + " / ".join(str(p["phases"][ph]) for ph in PHASES) + " | "
            + (f"{rr['median']:.1f}, {rr['max']:.1f}" if rr else "-")
            + f" | {p['reference_s']:.1f}, {p['reference_write_points']} |")
    if res["lost"]:
        lines += ["", "## Lost", ""]
        for r in res["lost"]:
            lines.append(f"- trial {r['trial']} {r['command']} {r['variant']} {r['kind']} at {r['at']}: "
                         + "; ".join(r["problems"]))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="kills to deliver (default 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2, help="trials at a time (default 2)")
    ap.add_argument("--commands", default=",".join(COMMANDS), help="comma-separated subset of " + ",".join(COMMANDS))
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder of the results (default runs/benchmarks)")
    ap.add_argument("--work", type=Path, default=None,
                    help="inputs and trial folders (default: OUT/fault_campaign_<date-time>_work)")
    ap.add_argument("--keep-work", action="store_true", help="keep the work folder even when nothing was lost")
    ap.add_argument("--quick", action="store_true", help="12 kills: a smoke run")
    a = ap.parse_args(argv)
    commands = tuple(c.strip() for c in a.commands.split(",") if c.strip())
    unknown = sorted(set(commands) - set(COMMANDS))
    if unknown or not commands:
        ap.error(f"--commands: unknown {unknown}; choose from {', '.join(COMMANDS)}")
    n = 12 if a.quick else a.n
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = a.work or a.out / f"fault_campaign_{stamp}_work"
    res = campaign(n, a.seed, max(1, a.jobs), commands, work, say=lambda s: print(s, flush=True))
    from mtl.bench import write_results

    written = write_results(a.out, "fault_campaign", res, markdown(res), stamp=stamp)
    t = res["totals"]
    if t["lost"] == 0 and not a.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    print(f"survived {t['survived']}/{t['kills']}, lost {t['lost']} -> {written['markdown']}"
          + (f" (trial folders of the lost kills kept in {work / 'trials'})" if t["lost"] else ""))
    return 1 if t["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
