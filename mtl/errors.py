"""Error types shared by every stage. Each carries the offending path and a one-line reason, and maps to
a documented CLI exit code (README "Errors and exit codes", docs/TROUBLESHOOTING.md)."""
from __future__ import annotations

from pathlib import Path


class MtlError(Exception):
    """Base class: ``str(err)`` is one line, ``<path>: <reason>``."""

    exit_code = 1

    def __init__(self, path: str | Path | None, reason: str):
        self.path = str(path) if path is not None else None
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


class ChunkError(MtlError):
    """A chunk file is unreadable or violates the chunk format."""

    exit_code = 3


class DataError(MtlError):
    """A raw A2D2 (or synthetic) input file is missing, corrupt or inconsistent."""

    exit_code = 4


class ConfigError(MtlError):
    """A config file or option is invalid."""

    exit_code = 2


class ModelMismatchError(MtlError):
    """A model/engine does not match the frame, the metadata or its sidecar."""

    exit_code = 5


class BackendUnavailableError(MtlError):
    """A requested backend (TensorRT, CUDA) is not installed or has no device."""

    exit_code = 6


class TrainingDivergedError(MtlError):
    """The loss became non-finite; the last good checkpoint is kept."""

    exit_code = 7


class ParityError(MtlError):
    """An exported model differs from torch (or its metric drop exceeds the gate)."""

    exit_code = 8


class OutputError(MtlError):
    """An output location would destroy or mix what is there (refused without ``--overwrite`` /
    ``--resume``), is being written by another mtl process, or lies inside the input data."""

    exit_code = 9


class StorageError(MtlError):
    """The environment refused a read or write: disk full, read-only file system, permission denied,
    too many open files, I/O error. Nothing half-written is left behind (writes are atomic)."""

    exit_code = 10
