"""Integrity primitives of mtl/io.py: atomic writes, the one-writer lock, journaled directory commits,
environment failures as one-line errors, and the fault-injection hook the kill tests use."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mtl.errors import OutputError, StorageError
from mtl.io import (
    OutputLock,
    commit_files,
    pending_commit,
    recover_commit,
    remove_stale_temps,
    storage_error,
    write_bytes_atomic,
)


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    with OutputLock(tmp_path / "out", "mtl train"):
        with pytest.raises(OutputError, match=rf"pid {os.getpid()}, `mtl train`"):
            OutputLock(tmp_path / "out", "mtl train").acquire()
    with OutputLock(tmp_path / "out", "mtl export"):      # released: the next writer gets it
        pass


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    code = textwrap.dedent(f"""
        import sys, time
        from mtl.io import OutputLock
        OutputLock({str(tmp_path / 'out')!r}, "mtl convert").acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match=f"pid {proc.pid}"):
            OutputLock(tmp_path / "out", "mtl convert").acquire()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        with OutputLock(tmp_path / "out", "mtl convert"):       # stale lock of a dead process
            info = json.loads((tmp_path / "out" / OutputLock.NAME).read_text())
            assert info["pid"] == os.getpid()
    finally:
        proc.kill()


def _stage(tmp_path: Path, files: dict[str, bytes]) -> Path:
    staging = tmp_path / "out" / ".staging-x"
    for name, data in files.items():
        write_bytes_atomic(staging / name, data)
    return staging


def test_commit_replaces_the_set_and_removes_what_the_new_set_lacks(tmp_path):
    out = tmp_path / "out"
    commit_files(_stage(tmp_path, {"a": b"old-a", "b": b"old-b", "manifest": b"old"}), out, ["a", "b", "manifest"])
    commit_files(_stage(tmp_path, {"a": b"new-a", "manifest": b"new"}), out, ["a", "manifest"], remove=["a", "b"])
    assert sorted(p.name for p in out.iterdir()) == ["a", "manifest"]
    assert (out / "a").read_bytes() == b"new-a" and (out / "manifest").read_bytes() == b"new"
    assert not pending_commit(out)


_COMMIT_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from mtl.io import commit_files, write_bytes_atomic
    out = Path(sys.argv[1])
    staging = out / ".staging-new"
    for name in ("c0", "c1", "manifest"):
        write_bytes_atomic(staging / name, b"new-" + name.encode())
    commit_files(staging, out, ["c0", "c1", "manifest"], remove=["c0", "c1", "c2", "manifest"])
""")


def test_a_commit_killed_at_every_write_point_leaves_old_or_new_never_mixed(tmp_path):
    old = {"c0": b"old-c0", "c1": b"old-c1", "c2": b"old-c2", "manifest": b"old-manifest"}
    new = {"c0": b"new-c0", "c1": b"new-c1", "manifest": b"new-manifest"}
    k, outcomes = 0, set()
    while True:
        k += 1
        out = tmp_path / f"run{k}"
        out.mkdir()
        for name, data in old.items():
            (out / name).write_bytes(data)
        env = dict(os.environ, MTL_FAULT_AT_WRITE=str(k))
        rc = subprocess.run([sys.executable, "-c", _COMMIT_SCRIPT, str(out)], env=env).returncode
        if pending_commit(out):
            outcomes.add("recovered")
            assert recover_commit(out)
        files = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
        assert files in (old, new), f"kill at write point {k} left a mixed set: {sorted(files)}"
        outcomes.add("new" if files == new else "old")
        remove_stale_temps(out / ".staging-new") if (out / ".staging-new").exists() else None
        if rc == 0:
            break
        assert rc == -signal.SIGKILL
    assert k > 5 and outcomes == {"old", "new", "recovered"}


def test_stale_temp_files_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / f".last.pt.{dead}.abc123.tmp").write_bytes(b"x")
    (tmp_path / f".last.pt.{os.getpid()}.def456.tmp").write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == [f".last.pt.{os.getpid()}.def456.tmp"]


def test_environment_failures_become_one_line_storage_errors(tmp_path):
    import errno

    err = storage_error(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.npz")))
    assert isinstance(err, StorageError) and err.exit_code == 10
    assert str(err).startswith(f"{tmp_path / 'x.npz'}: No space left on device")
    assert "\n" not in str(err)
    assert storage_error(OSError(errno.ENOENT, "No such file")) is None      # a bug or bad input, not the machine


def test_a_file_size_limit_mid_write_keeps_the_old_file_and_exits_10_in_one_line(tmp_path):
    """RLIMIT_FSIZE makes write() fail with EFBIG like a full disk does: the CLI prints one line, no traceback."""
    target = tmp_path / "summary.json"
    target.write_text("old")
    code = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
        import click
        from mtl.cli import main
        from mtl.io import write_bytes_atomic

        @main.command("_fill")
        def _fill():
            write_bytes_atomic({str(target)!r}, b"x" * 100_000)

        main(["_fill"])
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 10, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {target}: File too large"), lines
    assert target.read_text() == "old"
    assert not [p for p in tmp_path.iterdir() if p.name != "summary.json"]
