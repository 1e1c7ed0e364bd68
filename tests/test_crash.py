"""Crash-safe training: `mtl train` killed with SIGKILL mid-epoch, then `--resume`d, ends with exactly the
weights and metrics of an uninterrupted run with the same seed (deterministic CPU mode)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch")

from conftest import tiny_cfg, write_tiny_chunks
from test_train import _rows

EPOCHS = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    cfg = tiny_cfg(**{"train.viz_every": 0})
    (root / "config.json").write_text(cfg.to_json())
    write_tiny_chunks(root / "train", cfg, n_frames=12, per_chunk=4, seed=0)
    write_tiny_chunks(root / "val", cfg, n_frames=2, per_chunk=2, seed=1)
    return root


def _cmd(data, run, *extra):
    return [sys.executable, "-m", "mtl.cli", "train", "--data", str(data / "train"), "--val", str(data / "val"),
            "--out", str(run), "--config", str(data / "config.json"), "--epochs", str(EPOCHS), "--batch-size", "1",
            "--deterministic", "--seed", "7", "--ckpt-every-steps", "1", "--no-progress", *extra]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _load(path):
    for _ in range(50):     # the trainer may be replacing it right now (os.replace: old or new, never half)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except (FileNotFoundError, RuntimeError, EOFError):
            time.sleep(0.02)
    raise AssertionError(f"cannot read {path}")


def _batch_in_epoch(ck: dict) -> int:
    """Batches done of the epoch in progress (0: an epoch-end checkpoint)."""
    return ck.get("progress", {}).get("batch_in_epoch", 0)


def _kill_mid_epoch(proc: subprocess.Popen, run) -> dict:
    """Freeze the trainer once last.pt is a mid-epoch checkpoint of epoch >= 2, then SIGKILL it."""
    last = run / "last.pt"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run finished before it could be killed mid-epoch"
        if last.is_file():
            ck = _load(last)
            if ck["epoch"] >= 1 and _batch_in_epoch(ck) > 0:
                proc.send_signal(signal.SIGSTOP)            # no more writes while we look
                ck = _load(last)
                if _batch_in_epoch(ck) > 0:
                    proc.kill()
                    proc.wait(30)
                    return ck
                proc.send_signal(signal.SIGCONT)
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("no mid-epoch checkpoint appeared in time")


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(data, tmp_path):
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    p = subprocess.run(_cmd(data, full), check=False, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]

    proc = subprocess.Popen(_cmd(data, crashed), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = _kill_mid_epoch(proc, crashed)
    assert proc.returncode == -signal.SIGKILL
    steps_per_epoch = 12
    assert 0 < _batch_in_epoch(ck) < steps_per_epoch and ck["step"] < EPOCHS * steps_per_epoch
    assert len(_rows(crashed)) < EPOCHS

    p = subprocess.run(_cmd(data, crashed, "--resume"), check=False, env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert f"resuming epoch {ck['epoch'] + 1} after batch {_batch_in_epoch(ck)}/{steps_per_epoch}" in p.stdout

    a = torch.load(full / "last.pt", weights_only=True)
    b = torch.load(crashed / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == EPOCHS and a["step"] == b["step"] == EPOCHS * steps_per_epoch
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ra, rb = _rows(full), _rows(crashed)
    assert [r["epoch"] for r in rb] == list(range(1, EPOCHS + 1))
    for x, y in zip(ra, rb):
        for key in ("train/total", "train/hm", "train/reg", "train/sem", "train/frames", "val/miou", "val/map",
                    "val/loss/total", "step", "lr"):
            assert x[key] == y[key], (x["epoch"], key, x[key], y[key])
    assert not list(crashed.glob(".*.tmp")), "a stale temp file survived the resume"
