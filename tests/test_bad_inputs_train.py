"""Training runs and checkpoints as a hostile or unlucky user meets them: an existing run in --out, a second
`mtl train` on the same run, --resume with changed flags or data, unreadable / foreign / crafted checkpoints,
torn metrics, a full disk or a read-only directory, and SIGKILL at every durable write of a run.

The refused cases use the corpus harness of tests/test_bad_inputs.py (one line ``error: <file>: <reason>``, the
error type's exit code, nothing written); each also checks that the run it was pointed at is unchanged."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner
from conftest import tiny_cfg, write_tiny_chunks
from test_bad_inputs import EXIT, Case

from mtl.cli import main
from mtl.errors import ConfigError, ModelMismatchError, OutputError
from mtl.io import OutputLock, pending_commit, recover_commit

EXIT = {**EXIT, OutputError: 9}


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny config, train / val chunks and a finished 1-epoch run (4 frames, batch 2, with validation)."""
    root = tmp_path_factory.mktemp("runs")
    cfg = tiny_cfg()
    (root / "config.json").write_text(cfg.to_json())
    write_tiny_chunks(root / "train", cfg, n_frames=4, per_chunk=2, seed=0)
    write_tiny_chunks(root / "val", cfg, n_frames=2, per_chunk=2, seed=1)
    r = CliRunner().invoke(main, _train_args(root, root / "run", "--epochs", "1"))
    assert r.exit_code == 0, r.output
    return root


def _train_args(root: Path, out: Path, *extra: str, data: Path | None = None) -> list[str]:
    return ["train", "--data", str(data or root / "train"), "--val", str(root / "val"), "--out", str(out),
            "--config", str(root / "config.json"), "--no-progress", *extra]


def _copy_run(base: Path, tmp: Path, keep: tuple[str, ...] | None = None) -> Path:
    run = shutil.copytree(base / "run", tmp / "run")
    for p in run.iterdir():
        if keep is not None and p.name not in keep and p.is_file():
            p.unlink()
    return run


def _snapshot(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name != OutputLock.NAME}


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------ refused inputs


def _resume_case(spoil: Callable[[Path], Path], *extra: str, keep: tuple[str, ...] | None = None):
    """``mtl train --resume`` on a copy of the 1-epoch run (only ``keep`` files) spoiled by ``spoil(run)``."""
    def build(tmp: Path, base: Path) -> tuple[list[str], Path]:
        run = _copy_run(base, tmp, keep)
        bad = spoil(run)
        return _train_args(base, run, "--epochs", "2", "--resume", *extra), bad
    return build


def _existing_run(tmp: Path, base: Path) -> tuple[list[str], Path]:
    run = _copy_run(base, tmp)
    return _train_args(base, run, "--epochs", "1"), run


def _locked_run(tmp: Path, base: Path) -> tuple[list[str], Path]:
    run = _copy_run(base, tmp)
    _HELD.append(OutputLock(run, "mtl train").acquire())   # held by this process: a second writer is refused
    return _train_args(base, run, "--epochs", "2", "--resume"), run


_HELD: list[OutputLock] = []


def _other_data(tmp: Path, base: Path) -> tuple[list[str], Path]:
    run = _copy_run(base, tmp)
    data = shutil.copytree(base / "train", tmp / "train")
    shutil.copy(data / "chunk_00000.npz", data / "chunk_00002.npz")
    return _train_args(base, run, "--epochs", "2", "--resume", data=data), run / "last.pt"


def _last(edit: Callable[[Path], None]) -> Callable[[Path], Path]:
    def spoil(run: Path) -> Path:
        edit(run / "last.pt")
        return run / "last.pt"
    return spoil


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _pickle_payload(p: Path) -> None:
    torch.save({"model": _Payload(), "config": {}}, p)


class _Payload:
    """Runs code when unpickled (what weights_only must refuse)."""

    def __reduce__(self):
        return (os.system, (f"touch {_PAYLOAD_MARK}",))


_PAYLOAD_MARK = Path(os.environ.get("TMPDIR", "/tmp")) / f"mtl_payload_ran_{os.getpid()}"


def _no_training_state(p: Path) -> None:
    ck = torch.load(p, weights_only=True)
    torch.save({"model": ck["model"], "config": ck["config"]}, p)


def _checkpoint_case(make: Callable[[Path, Path], None]):
    """``mtl eval --checkpoint BAD``: ``make(bad, good checkpoint)`` writes the bad file."""
    def build(tmp: Path, base: Path) -> tuple[list[str], Path]:
        bad = tmp / "bad.pt"
        make(bad, base / "run" / "last.pt")
        return ["eval", "--checkpoint", str(bad), "--data", str(base / "val"), "--no-progress"], bad
    return build


def _huge_model(bad: Path, good: Path) -> None:
    ck = torch.load(good, weights_only=True)
    ck["config"]["model"].update(cam_channels=[4096] * 4, cam_depth=32)       # 19 G parameters
    torch.save(ck, bad)


def _zip_bomb(bad: Path, good: Path) -> None:
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
        dst.writestr("archive/data/999", b"\0" * (64 << 20))       # 64 MiB of zeros in a few KiB


def _bad_config_json(run: Path) -> Path:
    (run / "config.json").write_text('{"train": {"lr": "fast"}}')
    return run / "config.json"


def _all_unreadable(run: Path) -> Path:
    (run / "last.pt").write_bytes(b"")
    shutil.copy(run / "config.json", run / "last.prev.pt")
    _truncate(run / "best.pt")
    return run / "last.pt"


CASES = [
    Case("train_into_an_existing_run", _existing_run, OutputError,
         r"holds a training run \(config\.json, last\.pt, best\.pt, metrics\.jsonl\); add --resume to continue it "
         r"or --overwrite to replace it"),
    Case("train_into_a_run_another_process_writes", _locked_run, OutputError,
         rf"another mtl process is writing here \(pid {os.getpid()}, `mtl train` since"),
    Case("resume_and_overwrite_together", _resume_case(lambda run: run, "--overwrite"), ConfigError,
         "--resume and --overwrite exclude each other"),
    Case("resume_with_changed_flags", _resume_case(lambda run: run / "last.pt", "--lr", "5", "--batch-size", "3",
                                                   "--sem-loss", "focal"), ConfigError,
         r"--resume would change the run's config: loss\.sem_loss \"ce\" -> \"focal\", train\.batch_size 2 -> 3, "
         r"train\.lr 0\.002 -> 5\.0 \(add --force-config"),
    Case("resume_with_changed_model", _resume_case(lambda run: run / "last.pt", "--set", "model.head_channels=16"),
         ConfigError, r"--resume cannot change model\.head_channels 8 -> 16: the weights were trained for them"),
    Case("resume_with_other_data", _other_data, ConfigError,
         r"--resume with other data: train data .*: 1 chunk\(s\) added \(chunk_00002\.npz\); resuming would train "
         r"one run on two datasets \(--force-config"),
    Case("resume_last_truncated_no_fallback", _resume_case(_last(_truncate), keep=("config.json", "last.pt")),
         ModelMismatchError, r"not a readable checkpoint: truncated, or not a PyTorch checkpoint .* \(no other "
                             r"checkpoint in the run to fall back on\)$"),
    Case("resume_last_zero_bytes_no_fallback",
         _resume_case(_last(lambda p: p.write_bytes(b"")), keep=("config.json", "last.pt")), ModelMismatchError,
         r"not a readable checkpoint: the file is empty \(0 bytes\)"),
    Case("resume_last_is_a_json_file",
         _resume_case(_last(lambda p: p.write_text('{"model": 1}')), keep=("config.json", "last.pt")),
         ModelMismatchError, "no complete zip archive"),
    Case("resume_last_pickle_payload", _resume_case(_last(_pickle_payload), keep=("config.json", "last.pt")),
         ModelMismatchError, r"holds Python objects other than tensors and plain containers \(a checkpoint is "
                             r"loaded as data, never as code\)"),
    Case("resume_last_not_an_mtl_checkpoint",
         _resume_case(_last(lambda p: torch.save({"weights": torch.zeros(3)}, p)), keep=("config.json", "last.pt")),
         ModelMismatchError, r"not an mtl checkpoint \(needs 'model' and 'config' entries\)"),
    Case("resume_last_without_training_state",
         _resume_case(_last(_no_training_state), keep=("config.json", "last.pt")), ModelMismatchError,
         r"not a resumable checkpoint \(lacks optimizer, scheduler, epoch, step, rng, best_score\)"),
    Case("resume_every_checkpoint_unreadable", _resume_case(_all_unreadable), ModelMismatchError,
         r"the file is empty \(0 bytes\) \(and last\.prev\.pt: not a readable checkpoint: truncated.*; best\.pt: "
         r"not a readable checkpoint"),
    Case("resume_before_first_checkpoint_bad_config_json", _resume_case(_bad_config_json, keep=()), ConfigError,
         r"train\.lr: expected a number, got str 'fast'"),
    Case("checkpoint_zero_bytes", _checkpoint_case(lambda bad, good: bad.write_bytes(b"")), ModelMismatchError,
         r"the file is empty \(0 bytes\)"),
    Case("checkpoint_pickle_payload", _checkpoint_case(lambda bad, good: _pickle_payload(bad)), ModelMismatchError,
         "holds Python objects other than tensors"),
    Case("checkpoint_is_a_png", _checkpoint_case(lambda bad, good: bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(99))),
         ModelMismatchError, "no complete zip archive"),
    Case("checkpoint_model_too_big", _checkpoint_case(_huge_model), ConfigError,
         r"checkpoint config is invalid \(model: these widths and depths make a model of 19,178 M parameters, "
         r"more than the 250 M"),
    Case("checkpoint_member_inflates", _checkpoint_case(_zip_bomb), ModelMismatchError,
         r"its members unpack to \d+ bytes, more than the file's \d+"),
]


def test_corpus_is_big_enough_and_names_are_unique():
    assert len(CASES) >= 8 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_refused_with_one_line_naming_the_file_and_nothing_changed(case, tmp_path, base):
    args, bad = case.build(tmp_path, base)
    run = tmp_path / "run"
    before = _snapshot(run) if run.is_dir() else None
    try:
        r = CliRunner().invoke(main, args)
    finally:
        while _HELD:
            _HELD.pop().release()
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == EXIT[case.error], r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and lines == r.stderr.strip().splitlines(), r.stderr
    assert lines[0].startswith(f"error: {bad}: "), lines[0]
    assert re.search(case.reason, lines[0]), lines[0]
    assert "weights_only" not in r.output and "Traceback" not in r.output
    assert not _PAYLOAD_MARK.exists(), "a pickle payload ran"
    if before is not None:
        assert _snapshot(run) == before, "a refused command changed the run"


# -------------------------------------------------------------------------------- resume reconciles


def test_resume_falls_back_to_the_previous_checkpoint_with_one_warning(base, tmp_path):
    run = tmp_path / "run"
    r = CliRunner().invoke(main, _train_args(base, run, "--epochs", "2"))
    assert r.exit_code == 0, r.output
    prev = torch.load(run / "last.prev.pt", weights_only=True)
    assert prev["epoch"] == 1 and torch.load(run / "last.pt", weights_only=True)["epoch"] == 2
    _truncate(run / "last.pt")
    r = CliRunner().invoke(main, _train_args(base, run, "--epochs", "3", "--resume"))
    assert r.exit_code == 0, r.output
    warnings = [ln for ln in r.output.splitlines() if ln.startswith("warning: ")]
    assert warnings[0] == (f"warning: {run / 'last.pt'}: not a readable checkpoint: truncated, or not a PyTorch "
                           "checkpoint (no complete zip archive); resuming from last.prev.pt instead (epoch 1, step 2)")
    assert "dropped the rows of epoch(s) 2, after the checkpoint's epoch 1" in warnings[1]
    assert [row["epoch"] for row in _rows(run)] == [1, 2, 3]
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 3


def test_resume_repairs_a_torn_metrics_line_and_viz_reads_one(base, tmp_path):
    run = _copy_run(base, tmp_path)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "step": 4, "lr": 0.0')         # what an append killed half-way leaves
    r = CliRunner().invoke(main, ["viz", str(run)])
    assert r.exit_code == 0 and "skipped a torn last line" in r.stderr, r.output
    r = CliRunner().invoke(main, _train_args(base, run, "--epochs", "2", "--resume"))
    assert r.exit_code == 0, r.output
    assert f"warning: {run / 'metrics.jsonl'}: repaired a torn last line" in r.output
    assert [row["epoch"] for row in _rows(run)] == [1, 2]


def test_resume_accepts_operational_flags_and_force_config_applies_a_change(base, tmp_path):
    run = _copy_run(base, tmp_path)
    r = CliRunner().invoke(main, _train_args(base, run, "--epochs", "2", "--resume", "--workers", "0",
                                             "--viz-every", "0", "--ckpt-every-steps", "1", "--skip-bad"))
    assert r.exit_code == 0, r.output
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["epochs"] == 2 and cfg["train"]["skip_bad"] and cfg["train"]["ckpt_every_steps"] == 1
    r = CliRunner().invoke(main, _train_args(base, run, "--epochs", "3", "--resume", "--lr", "0.01",
                                             "--force-config"))
    assert r.exit_code == 0, r.output
    assert "warning: --force-config: the run continues with train.lr 0.002 -> 0.01" in r.output
    ck = torch.load(run / "last.pt", weights_only=True)
    assert ck["config"]["train"]["lr"] == 0.01 and json.loads((run / "config.json").read_text()) == ck["config"]
    assert ck["optimizer"]["param_groups"][0]["initial_lr"] == 0.01
    r = CliRunner().invoke(main, _train_args(base, run, "--force-config"))
    assert r.exit_code == 2 and "--force-config only applies with --resume" in r.output


def test_resume_notes_data_that_was_only_copied(base, tmp_path):
    run = _copy_run(base, tmp_path)
    data = shutil.copytree(base / "train", tmp_path / "train", copy_function=shutil.copy)   # new mtimes
    r = CliRunner().invoke(main, _train_args(base, run, "--epochs", "2", "--resume", data=data))
    assert r.exit_code == 0, r.output
    assert "2 chunk(s) have other modification times than when the run started" in r.output
    record = torch.load(run / "last.pt", weights_only=True)["data"]
    assert record["train"]["dir"] == str(data.resolve()) and [c[0] for c in record["train"]["chunks"]] == \
        ["chunk_00000.npz", "chunk_00001.npz"] and record["val"]["dir"] == str((base / "val").resolve())


def test_overwrite_replaces_the_runs_files_and_keeps_the_rest(base, tmp_path):
    run = _copy_run(base, tmp_path)
    (run / "notes.txt").write_text("mine")
    (run / "debug" / "epoch_001").mkdir(parents=True)
    (run / "debug" / "epoch_001" / "x.png").write_bytes(b"png")
    (run / "export").mkdir()
    (run / "export" / "model.onnx").write_bytes(b"onnx")
    old_best = _snapshot(run)["best.pt"]
    r = CliRunner().invoke(main, _train_args(base, run, "--epochs", "1", "--seed", "5", "--overwrite"))
    assert r.exit_code == 0, r.output
    assert f"--overwrite: removed the previous run's config.json, last.pt, best.pt, metrics.jsonl, " \
           f"debug/epoch_* (1) from {run}" in r.output
    assert (run / "notes.txt").read_text() == "mine" and (run / "export" / "model.onnx").read_bytes() == b"onnx"
    assert not (run / "debug").exists() and not (run / "last.prev.pt").exists()
    assert _snapshot(run)["best.pt"] != old_best and [row["epoch"] for row in _rows(run)] == [1]
    assert json.loads((run / "config.json").read_text())["train"]["seed"] == 5


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_its_config(base, tmp_path):
    run = _copy_run(base, tmp_path, keep=("config.json",))
    r = CliRunner().invoke(main, _train_args(base, run, "--epochs", "1", "--resume"))
    assert r.exit_code == 0, r.output
    assert f"warning: {run}: the run stopped before its first checkpoint; starting it over" in r.output
    assert [row["epoch"] for row in _rows(run)] == [1]


def test_parameter_count_is_exact_without_building(base):
    from mtl.config import Config
    from mtl.model import build_model, count_parameters, parameter_count

    for cfg in (tiny_cfg(), Config(), tiny_cfg(**{"model.cam_channels": (4, 8, 8, 8, 8), "model.cam_depth": 3,
                                                 "model.bev_channels": (8, 16), "model.head_channels": 5})):
        assert parameter_count(cfg) == count_parameters(build_model(cfg))
    assert parameter_count(Config()) == 409_742


# ------------------------------------------------------------------------------ concurrent writers


def test_a_second_train_into_the_same_run_is_refused_naming_the_first(base, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "mtl.cli", *_train_args(base, run, "--epochs", "500")], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.jsonl").is_file():          # the first one is training
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        r = CliRunner().invoke(main, _train_args(base, run, "--epochs", "500", "--resume"))
        assert r.exit_code == 9, r.output
        assert r.stderr.strip().splitlines() == [
            f"error: {run}: another mtl process is writing here (pid {first.pid}, `mtl train` since "
            + r.stderr.split("since ", 1)[1].strip()]
    finally:
        first.kill()
        first.wait(30)
    r = CliRunner().invoke(main, _train_args(base, run, "--epochs", "1", "--resume"))   # dead holder: taken over
    assert r.exit_code == 0, r.output


# ---------------------------------------------------------------------------- environment failures


_LIMITED = textwrap.dedent("""
    import os, resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    from mtl.cli import main
    import fcntl, pickle, zipfile, mtl.train, mtl.evaluate, mtl.rundir   # before the privilege drop: nobody
                                                        # cannot read this interpreter's lazily imported modules
    if sys.argv[1] == "fsize":
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
    elif os.getuid() == 0:
        os.setgid(65534); os.setuid(65534)              # root ignores permissions: act as nobody
    main(sys.argv[3:], prog_name="mtl")
""")


def _limited(how: str, value: int, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _LIMITED, how, str(value), *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)


def test_disk_full_during_an_epoch_commit_exits_10_and_keeps_the_last_good_checkpoint(base, tmp_path):
    run = _copy_run(base, tmp_path)
    before = _snapshot(run)
    p = _limited("fsize", 20_000, _train_args(base, run, "--epochs", "2", "--resume"))   # a checkpoint is ~95 kB
    assert p.returncode == 10, p.stdout + p.stderr
    assert p.stderr.strip().splitlines() == [f"error: {run / 'last.pt'}: File too large"], p.stderr
    after = _snapshot(run)
    assert sorted(p.name for p in run.iterdir()) == sorted([*before, OutputLock.NAME]), "leftovers"
    assert after.pop("config.json") != before.pop("config.json")            # the new epoch budget
    assert after == before
    r = CliRunner().invoke(main, _train_args(base, run, "--epochs", "2", "--resume"))   # space again: continues
    assert r.exit_code == 0 and [row["epoch"] for row in _rows(run)] == [1, 2], r.output


def test_read_only_run_directory_exits_10_in_one_line(base):
    import tempfile

    top = Path(tempfile.mkdtemp())              # pytest's tmp_path lies under a 0700 folder nobody cannot enter
    try:
        os.chmod(top, 0o755)
        run = _copy_run(base, top)
        os.chmod(run, 0o555)
        p = _limited("nobody", 0, _train_args(base, run, "--epochs", "2", "--resume"))
    finally:
        shutil.rmtree(top)
    assert p.returncode == 10, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(rf"error: {re.escape(str(run))}/\S+: Permission denied", lines[0]), lines


def test_eval_out_on_a_full_disk_exits_10_and_keeps_the_old_file(base, tmp_path):
    out = tmp_path / "metrics.json"
    out.write_text("old")
    p = _limited("fsize", 200, ["eval", "--checkpoint", str(base / "run" / "best.pt"), "--data", str(base / "val"),
                                "--out", str(out), "--no-progress"])
    assert p.returncode == 10, p.stdout + p.stderr
    assert p.stderr.strip().splitlines() == [f"error: {out}: File too large"], p.stderr
    assert out.read_text() == "old" and sorted(x.name for x in tmp_path.iterdir()) == ["metrics.json"]


# ------------------------------------------------------------------------------- kills at every write


# what a training child runs: `mtl train`, single-threaded like every run it is compared with, SIGKILLed at its
# write point MTL_FAULT_AT_WRITE (MTL_FAULT_LOG: a file recording the points passed). Run by ``exec`` in a child
# of the forkserver, so the child imports nothing the server has not imported already.
_CHILD = """
import os, torch
from mtl.cli import main
for key in ("MTL_FAULT_AT_WRITE", "MTL_FAULT_LOG"):
    os.environ.pop(key, None)
os.environ.update(ENV)
torch.set_num_threads(1)
main(ARGS, prog_name="mtl")
"""


def _run_child(ctx, args: list[str], fault_at: int = 0, log: Path | None = None) -> int:
    env = {"MTL_FAULT_AT_WRITE": str(fault_at)} if fault_at else {}
    env.update({"MTL_FAULT_LOG": str(log)} if log else {})
    proc = ctx.Process(target=exec, args=(_CHILD, {"ARGS": args, "ENV": env}))
    proc.start()
    proc.join(300)
    assert proc.exitcode is not None, "the training child hung"
    return proc.exitcode


_TIMING_KEYS = ("epoch_time", "samples_per_s", "val/time_s", "val/samples_per_s")


def _without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in _TIMING_KEYS} for row in rows]


def _check_after_kill(run: Path, k: int) -> None:
    """What a kill may leave: best.pt never older than what last.pt records; after the interrupted commit is
    rolled forward (what the next `mtl train` does first) exactly one metrics row per committed epoch."""
    if not (run / "last.pt").exists():
        assert not (run / "best.pt").exists() and not (run / "metrics.jsonl").exists(), k
        return
    last = torch.load(run / "last.pt", weights_only=True)
    if last["best_epoch"]:
        assert torch.load(run / "best.pt", weights_only=True)["epoch"] >= last["best_epoch"], k
    view = shutil.copytree(run, run.parent / f"view{k}", copy_function=shutil.copy)
    if pending_commit(view):
        recover_commit(view)
    last = torch.load(view / "last.pt", weights_only=True)
    rows = _rows(view) if (view / "metrics.jsonl").exists() else []
    assert [row["epoch"] for row in rows] == list(range(1, last["epoch"] + 1)), (k, rows)
    if last["best_epoch"]:
        assert torch.load(view / "best.pt", weights_only=True)["epoch"] == last["best_epoch"], k
    shutil.rmtree(view)


@pytest.mark.slow
def test_train_killed_at_every_write_point_resumes_to_the_uninterrupted_run(base, tmp_path):
    """SIGKILL `mtl train` (2 epochs of 2 steps, a checkpoint every step, validation on) at its k-th durable
    write for every k, check what is left, `--resume` it and compare with an uninterrupted run: the same last.pt
    and best.pt weights (bit-exact: --deterministic on CPU) and the same metrics rows apart from timings."""
    ctx = multiprocessing.get_context("forkserver")
    # the server imports torch, mtl and what torch imports lazily on a first training step (1.2 s of CPU per
    # child otherwise) once; each child then costs only its training
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "torch.distributed.tensor", "torch.distributed.fsdp",
                                "torch.distributed.nn", "PIL.PngImagePlugin", "mtl.cli", "mtl.train", "mtl.evaluate",
                                "mtl.losses"])
    args = ["--epochs", "2", "--batch-size", "2", "--deterministic", "--seed", "2", "--ckpt-every-steps", "1"]
    ref = tmp_path / "ref"
    log = tmp_path / "points.log"
    assert _run_child(ctx, _train_args(base, ref, *args), fault_at=10**6, log=log) == 0
    points = log.read_text().splitlines()
    labels = [p.split("\t")[1] for p in points]
    assert labels.count("commit best.pt") == 2, labels          # both epochs improve: best.pt moves twice
    ref_last = torch.load(ref / "last.pt", weights_only=True)
    ref_best = torch.load(ref / "best.pt", weights_only=True)
    assert ref_last["epoch"] == 2 and ref_last["best_epoch"] == 2 and ref_best["epoch"] == 2
    for k in range(1, len(points) + 1):
        run = tmp_path / f"run{k}"
        assert _run_child(ctx, _train_args(base, run, *args), fault_at=k) == -signal.SIGKILL, k
        _check_after_kill(run, k)
        assert _run_child(ctx, _train_args(base, run, *args, "--resume")) == 0, k
        last = torch.load(run / "last.pt", weights_only=True)
        best = torch.load(run / "best.pt", weights_only=True)
        assert last["step"] == ref_last["step"] and best["epoch"] == ref_best["epoch"], k
        for name in ref_last["model"]:
            assert torch.equal(last["model"][name], ref_last["model"][name]), (k, labels[k - 1], name)
            assert torch.equal(best["model"][name], ref_best["model"][name]), (k, labels[k - 1], name)
        assert _without_timings(_rows(run)) == _without_timings(_rows(ref)), (k, labels[k - 1])
        assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".epoch-")], k
        assert not pending_commit(run), k
        shutil.rmtree(run)



# ------------------------------------------------------------------------------- the pure reconcilers


def test_data_records_compare_by_manifest_first_then_by_names_and_sizes(tmp_path):
    from mtl.data.chunk import make_manifest
    from mtl.rundir import compare_data, data_record

    d = write_tiny_chunks(tmp_path / "d", tiny_cfg(), n_frames=4, per_chunk=2, seed=0)
    old = data_record(d)
    assert old["manifest_sha256"] is None and [c[:2] for c in old["chunks"]] == \
        [["chunk_00000.npz", (d / "chunk_00000.npz").stat().st_size], ["chunk_00001.npz",
                                                                     (d / "chunk_00001.npz").stat().st_size]]
    assert compare_data(old, data_record(d), "train") == (None, None)
    os.utime(d / "chunk_00001.npz", ns=(1, 1))
    differs, note = compare_data(old, data_record(d), "train")
    assert differs is None and note.startswith(f"train data {d.resolve()}: 1 chunk(s) have other modification")
    with open(d / "chunk_00001.npz", "ab") as f:
        f.write(b"x")
    differs, _ = compare_data(old, data_record(d), "train")
    assert differs.endswith("1 chunk(s) changed size (chunk_00001.npz)")
    names = ["chunk_00000.npz", "chunk_00001.npz"]
    (d / "manifest.json").write_text(json.dumps(make_manifest(d, names)))
    with_manifest = data_record(d)
    os.utime(d / "chunk_00000.npz", ns=(2, 2))
    assert compare_data(with_manifest, data_record(d), "train") == (None, None)    # the manifest decides
    (d / "manifest.json").write_text(json.dumps(make_manifest(d, names, note="another conversion")))
    assert "its manifest.json differs" in compare_data(with_manifest, data_record(d), "train")[0]
    assert compare_data(None, with_manifest, "val")[0] == f"the run was trained without val data, now with " \
                                                          f"{d.resolve()}"


def test_metrics_rows_are_reconciled_with_the_checkpoint(tmp_path):
    from mtl.rundir import reconcile_metrics

    path = tmp_path / "metrics.jsonl"
    rows = [json.dumps({"epoch": e, "score": e / 10}) for e in (1, 2, 3)]
    path.write_text("\n".join(rows) + "\n")
    assert reconcile_metrics(path, 3) == (rows, [])
    keep, warnings = reconcile_metrics(path, 1)
    assert keep == rows[:1] and warnings == [f"warning: {path}: dropped the rows of epoch(s) 2, 3, after the "
                                             "checkpoint's epoch 1 (they are trained again)"]
    path.write_text(rows[0] + "\n[1, 2]\n" + rows[1] + "\n" + rows[2][:9])
    keep, warnings = reconcile_metrics(path, 3)
    assert keep == rows[:2] and warnings == [f"warning: {path}: dropped unreadable line(s) 2, 4"]
    path.write_text(rows[0] + "\n" + rows[1][:12])
    assert reconcile_metrics(path, 3) == (rows[:1], [f"warning: {path}: repaired a torn last line (a run killed "
                                                     "while writing it)"])
    assert reconcile_metrics(tmp_path / "none.jsonl", 2) == ([], [])
