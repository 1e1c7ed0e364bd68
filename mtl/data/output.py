"""How ``mtl data convert`` / ``synth`` write their output folder safely. Torch-free.

Staging: each run writes into ``OUT/<prefix><pid>`` and commits from there (``io.commit_files``);
``remove_stale_staging`` drops the folders of runs that died, ``drop_if_only_lock`` removes an output
folder a failed run created.

Workers never outlive their parent. A pool worker blocks on a pipe whose write end it inherited itself,
so when the parent is killed (SIGKILL, OOM killer) nothing wakes it up: it would stay forever.
``die_with_parent`` (the pool initializer) asks Linux to SIGKILL the worker when its parent dies
(``prctl(PR_SET_PDEATHSIG)``) and starts a watchdog thread that exits when the parent pid changes (other
systems, and a parent that died before the prctl). Workers ignore SIGINT: Ctrl-C reaches the whole
process group, and only the parent decides what to stop and clean up. ``sigterm_as_interrupt`` makes the
parent treat SIGTERM like Ctrl-C.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..io import OutputLock, pending_commit, pid_alive

PR_SET_PDEATHSIG = 1              # linux/prctl.h
WATCHDOG_PERIOD_S = 0.5


def die_with_parent(parent_pid: int) -> None:
    """Pool initializer: this worker dies when ``parent_pid`` does (see the module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)       # not the parent's handler inherited through fork
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):                 # no libc prctl: the watchdog still works
            pass
    if os.getppid() != parent_pid:                        # the parent died before the prctl took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="mtl-parent-watchdog", daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(WATCHDOG_PERIOD_S)
        if os.getppid() != parent_pid:                    # reparented: the parent is gone
            os._exit(1)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM raises ``KeyboardInterrupt`` (as Ctrl-C does), so a terminated convert
    cleans up exactly like an interrupted one (workers stopped, staging removed, old output kept)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT / SIGTERM that arrive inside the block are delivered when it ends (main thread only): a commit
    is short, and finishing it beats leaving a journal for the next run to roll forward."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def cleanup_staging(staging: Path | None, out: Path) -> None:
    """Remove this run's staging folder, unless a pending commit journal still needs its files (the next
    run, or ``io.recover_commit``, finishes that commit and removes the folder)."""
    if staging is not None and not pending_commit(out):
        shutil.rmtree(staging, ignore_errors=True)


def remove_stale_staging(out: Path, prefix: str) -> int:
    """Delete ``out/<prefix><pid>`` folders of processes that are gone (a live one's is kept)."""
    n = 0
    for stale in out.glob(prefix + "*"):
        pid = stale.name[len(prefix):]
        if stale.is_dir() and (not pid.isdigit() or not pid_alive(int(pid))):
            shutil.rmtree(stale, ignore_errors=True)
            n += 1
    return n


def drop_if_only_lock(out: Path) -> None:
    """Remove an output folder a failed run created when nothing but its lock file is in it."""
    entries = list(out.iterdir())
    if all(e.name == OutputLock.NAME for e in entries):
        for e in entries:
            e.unlink(missing_ok=True)
        try:
            out.rmdir()
        except OSError:            # another process put something there meanwhile: leave it
            pass


__all__ = ["cleanup_staging", "die_with_parent", "drop_if_only_lock", "remove_stale_staging", "signals_deferred",
           "sigterm_as_interrupt"]
