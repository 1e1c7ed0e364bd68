"""ONNX models in and out, shared by the export steps: an atomic single-file save, a CPU onnxruntime session
and one run of it. Imports onnxruntime only when a session is made."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import write_bytes_atomic


def save_proto_atomic(proto: Any, path: str | Path) -> Path:
    """Single-file ONNX written atomically (temp file + rename)."""
    write_bytes_atomic(path, proto.SerializeToString())
    return Path(path)


def ort_session(model: Any, threads: int = 0):
    """CPU onnxruntime session from a path or a ModelProto."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    src = model if isinstance(model, (str, Path)) else model.SerializeToString()
    return ort.InferenceSession(str(src) if isinstance(src, Path) else src, so, providers=["CPUExecutionProvider"])


def run_ort(model: Any, feeds: dict) -> dict:
    """All outputs by name of a session (or of a path / ModelProto, through a fresh CPU session)."""
    sess = model if hasattr(model, "run") else ort_session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))
