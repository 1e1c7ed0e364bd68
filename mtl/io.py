"""Atomic file writes: a reader never sees a half-written file and a crash never destroys the old one."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    # mkstemp creates 0600; give the final file the mode a plain open() would (0666 & ~umask)
    os.fchmod(fd, 0o666 & ~_UMASK)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


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
    try:
        with Image.open(io.BytesIO(data)) as im:
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
