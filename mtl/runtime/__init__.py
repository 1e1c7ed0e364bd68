"""Torch-free runtime: ``Pipeline.open(model, backend)`` -> ``run_frame(frame)`` (frames from ``iter_frames``)
or ``run(image, points)`` (arrays in memory) -> ``Result``.

README "Python API" is the user-facing example (run verbatim by tests/test_readme_api.py). Nothing under
``mtl.runtime`` imports torch (tests/test_runtime.py checks it in a subprocess).
"""
from __future__ import annotations

from .backends import BACKENDS, Backend, OrtBackend, TensorRTBackend, open_backend, read_onnx_metadata, read_sidecar
from .frames import RuntimeFrame, detect_source, iter_frames, sanitise_frame_id
from .pipeline import Pipeline
from .postprocess import Result, decode_outputs, overlay
from .preprocess import STAGES, ModelSpec, StageTimer

__all__ = [
    "BACKENDS",
    "STAGES",
    "Backend",
    "ModelSpec",
    "OrtBackend",
    "Pipeline",
    "Result",
    "RuntimeFrame",
    "StageTimer",
    "TensorRTBackend",
    "decode_outputs",
    "detect_source",
    "iter_frames",
    "open_backend",
    "overlay",
    "read_onnx_metadata",
    "read_sidecar",
    "sanitise_frame_id",
]
