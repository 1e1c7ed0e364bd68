"""Atomic file writes: a reader never sees a half-written file and a crash never destroys the old one."""
from __future__ import annotations

import errno
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _read_umask() -> int:
    mask = os.umask(0)       # the only way to read it; done once at import (umask is process-wide)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path in the destination folder; on success it is fsynced and renamed onto ``path``.

    ``suffix`` lets writers that append their own extension (np.savez adds ``.npz``) keep it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the pid in the name lets remove_stale_temps() tell a dead writer's leftovers from a live one's
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp" + suffix, dir=path.parent)
    # mkstemp creates 0600; give the final file the mode a plain open() would (0666 & ~umask)
    os.fchmod(fd, 0o666 & ~_UMASK)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        write_point(f"write {path.name}")
    except OSError as e:
        # name the file the user asked for, not our temp file (only on a system error: giving an errno-less
        # OSError a filename would turn its message into "[Errno None] None: <path>")
        if e.errno is not None and (e.filename is None or Path(e.filename) == tmp_path):
            e.filename = str(path)
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def remove_stale_temps(directory: str | Path) -> int:
    """Delete temp files (``.<name>.<pid>.<random>.tmp*``) that a killed writer left in ``directory``;
    files of a still-running process are kept. Returns how many were removed."""
    import re

    n = 0
    for p in Path(directory).glob(".*.tmp*"):
        m = re.match(r"^\..+\.(\d+)\.[^.]+\.tmp", p.name)
        if m and not pid_alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            n += 1
    return n


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:       # exists, owned by someone else
        return True
    return True


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=1) + "\n").encode())


def decode_png(data: bytes, source: str | Path, mode: str | None = None):
    """Decode PNG bytes to a numpy array; raise ``DataError(source, ...)`` if they do not decode.

    ``mode`` converts ("RGB", "L"); None keeps the stored mode.
    """
    import io

    import numpy as np
    from PIL import Image

    from .errors import DataError

    if len(data) == 0:
        raise DataError(source, "PNG is empty (0 bytes)")
    from .limits import limits, over_limit

    lim = limits()

    def check_size(w: int, h: int) -> None:
        if w * h > lim.max_image_pixels:
            raise DataError(source, f"PNG is {w}x{h} = {w * h} pixels, {over_limit('max_image_pixels', lim)}")

    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":     # the size, before PIL sees the data
        check_size(int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"))
    try:
        im = Image.open(io.BytesIO(data))       # reads the header only: the size is known before decoding
    except Image.DecompressionBombError as e:   # PIL's own cap (only above ours when MTL_MAX_IMAGE_PIXELS is raised)
        raise DataError(source, f"PNG is too large to decode ({e})") from None
    except Exception as e:  # noqa: BLE001 - PIL raises several unrelated types for corrupt data
        raise DataError(source, f"PNG does not decode ({type(e).__name__}: {e})") from None
    try:
        check_size(*im.size)                    # other formats PIL recognises
    except DataError:
        im.close()
        raise
    try:
        with im:
            im.load()
            if mode is not None and im.mode != mode:
                im = im.convert(mode)
            return np.asarray(im)
    except Exception as e:  # PIL raises several unrelated types for corrupt data
        raise DataError(source, f"PNG does not decode ({type(e).__name__}: {e})") from None


def encode_png(array, compress_level: int = 1) -> bytes:
    """Encode an (H, W) uint8 or (H, W, 3) uint8 array as PNG bytes (fast compression by default)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


# ------------------------------------------------------------------------------ environment failures

# errno values that mean "the machine refused", not "mtl has a bug": reported as one line (StorageError)
STORAGE_ERRNOS = frozenset(getattr(errno, n) for n in ("ENOSPC", "EROFS", "EACCES", "EPERM", "EMFILE", "ENFILE",
                                                        "EIO", "EDQUOT", "EFBIG", "ENAMETOOLONG") if hasattr(errno, n))


def storage_error(e: OSError, path: str | Path | None = None):
    """``StorageError`` for an environment ``OSError`` (else None): the path and the system's reason."""
    from .errors import StorageError

    if e.errno not in STORAGE_ERRNOS:
        return None
    where = e.filename if e.filename is not None else path
    reason = e.strerror or str(e)
    hint = {errno.ENOSPC: "free some space and run the command again",
            errno.EROFS: "write to another location (--out)", errno.EACCES: "check the permissions",
            errno.EMFILE: "raise the open-file limit (ulimit -n)"}.get(e.errno)
    return StorageError(where, f"{reason}" + (f" ({hint}; nothing half-written was left)" if hint else ""))


# ------------------------------------------------------------------------------ fault injection

_FAULT_ENV = "MTL_FAULT_AT_WRITE"
_write_points = 0


def write_point(label: str) -> None:
    """Mark a point where a write became durable. With ``MTL_FAULT_AT_WRITE=k`` the process SIGKILLs itself
    at the k-th point (``MTL_FAULT_LOG`` names a file that records the labels passed so far): the
    fault-injection tests kill every command at every write point and check that nothing is lost or mixed."""
    global _write_points
    at = os.environ.get(_FAULT_ENV)
    if not at:
        return
    _write_points += 1
    log = os.environ.get("MTL_FAULT_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{_write_points}\t{label}\n")
    if _write_points == int(at):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------------------ one writer per directory


class OutputLock:
    """Advisory lock ``DIR/.mtl.lock`` held while a command writes into DIR (``with OutputLock(dir, "mtl train"):``).

    A second writer gets ``OutputError`` naming the holder's pid and command. The lock is an ``flock`` on an
    open file, so the kernel releases it when the holder dies (even by SIGKILL): a stale lock of a dead
    process is simply taken over. The file itself stays (removing it would race with a waiting writer)."""

    NAME = ".mtl.lock"

    def __init__(self, directory: str | Path, command: str):
        self.directory, self.command = Path(directory), command
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.directory / self.NAME

    def acquire(self) -> OutputLock:
        import fcntl

        from .errors import OutputError

        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise OutputError(self.directory, f"another mtl process is writing here ({holder}); wait for it to "
                                              "finish or stop it, or choose another output") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "command": self.command, "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "host": os.uname().nodename}
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)          # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']}, `{info['command']}` since {info['since']} on {info['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"


# ------------------------------------------------------------------------------ directory commits

JOURNAL = ".mtl-commit.json"


def fsync_dir(path: str | Path) -> None:
    """Make renames inside ``path`` durable (a crash after this keeps them)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_files(staging: Path, out: Path, names: list[str], remove: list[str] = ()) -> None:
    """Move the complete, fsynced files ``staging/<name>`` into ``out`` as ONE commit, then delete ``remove``.

    A journal (``out/.mtl-commit.json``) is written first, so a kill at any point of the moves leaves either
    the old set (no journal yet) or a journal that ``recover_commit`` rolls forward to the complete new set;
    readers refuse a directory with a pending journal (``pending_commit``). Put the file that marks the set as
    complete (a manifest, a report) last in ``names``."""
    out.mkdir(parents=True, exist_ok=True)
    fsync_dir(staging)
    write_json_atomic(out / JOURNAL, {"staging": os.path.relpath(staging, out), "files": list(names),
                                      "remove": [r for r in remove if r not in set(names)]})
    write_point("commit journal")
    recover_commit(out)


def recover_commit(out: Path) -> bool:
    """Finish a commit interrupted after its journal was written (idempotent). True if one was pending."""
    journal = out / JOURNAL
    if not journal.is_file():
        return False
    plan = json.loads(journal.read_text())
    staging = (out / plan["staging"]).resolve()
    for name in plan["files"]:
        src = staging / name
        if src.exists():                 # not moved yet (a moved file is already in place)
            os.replace(src, out / name)
            write_point(f"commit {name}")
    for name in plan["remove"]:
        (out / name).unlink(missing_ok=True)
    fsync_dir(out)
    journal.unlink()
    write_point("commit done")
    import shutil

    shutil.rmtree(staging, ignore_errors=True)
    return True


def pending_commit(out: Path) -> bool:
    return (Path(out) / JOURNAL).is_file()
