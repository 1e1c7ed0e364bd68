"""Quiet by default: progress bars only on a terminal (or with --progress), notes only with -v, and a real
Ctrl-C (SIGINT) ends a command with exit code 130 and one line."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import pytest

from mtl.cli import main
from mtl.cli.options import note_printer, want_progress


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_want_progress_follows_the_terminal_unless_told(monkeypatch):
    for tty in (True, False):
        monkeypatch.setattr(sys, "stderr", _Stream(tty))
        assert want_progress(None) is tty
        assert want_progress(True) is True and want_progress(False) is False


def test_notes_only_with_verbose(capsys):
    note_printer(False)("note: auto -> onnxruntime (CPU)")
    assert capsys.readouterr().err == ""
    note_printer(True)("note: auto -> onnxruntime (CPU)")
    assert capsys.readouterr().err == "note: auto -> onnxruntime (CPU)\n"


def test_commands_with_bars_share_the_progress_flag():
    flags = {name: {o for p in cmd.params for o in p.opts + p.secondary_opts}
             for name, cmd in [*main.commands.items(), *main.commands["data"].commands.items()]}
    for name in ("train", "eval", "export", "bench", "synth", "convert"):
        assert {"--progress", "--no-progress"} <= flags[name], name


def _mtl(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtl.cli", *args], capture_output=True, text=True, timeout=300, **kw)


def test_no_bar_when_stderr_is_not_a_terminal_and_one_with_progress(tmp_path):
    quiet = _mtl("data", "synth", "--out", str(tmp_path / "a"), "--frames", "1", "--workers", "1")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "" and quiet.stdout.startswith("synth: 1 frames")
    loud = _mtl("data", "synth", "--out", str(tmp_path / "b"), "--frames", "1", "--workers", "1", "--progress")
    assert loud.returncode == 0, loud.stderr
    assert "synth: 100%" in loud.stderr and "1/1" in loud.stderr


def test_ctrl_c_exits_130_with_one_line(tmp_path):
    """A real SIGINT to a running `mtl data synth` (long enough to be interrupted mid-way)."""
    out = tmp_path / "raw"
    proc = subprocess.Popen([sys.executable, "-m", "mtl.cli", "data", "synth", "--out", str(out), "--frames", "5000",
                             "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        # started writing frames (into its staging folder): past imports and checks
        while not any(out.glob(".synth-staging-*/*/camera/*/*.png")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "synth did not start"
            time.sleep(0.1)
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (stdout, stderr)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines == ["error: interrupted (Ctrl-C); finished outputs are intact, nothing half-written was kept"]
    assert stdout == "" and "Traceback" not in stderr
    assert not list(out.rglob(".*.tmp"))                       # no temp file left behind


@pytest.mark.parametrize("cmd", [["viz", "--help"], ["report", "--help"]])
def test_help_mentions_the_new_inputs(cmd):
    from click.testing import CliRunner

    r = CliRunner().invoke(main, cmd)
    assert r.exit_code == 0 and ("--data" in r.output if cmd[0] == "viz" else "--out" in r.output)
