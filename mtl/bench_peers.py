"""``mtl bench``'s peer columns: what a user could run instead of the mtl runtime, through the SAME numpy
pre / postprocess (``mtl.runtime.Pipeline``), so only the inference engine differs.

- ``torch``          the checkpoint eagerly (``torch.inference_mode``)
- ``torch-compile``  the checkpoint through ``torch.compile`` (inductor); its first call compiles, which the
                     bench reports as ``compile_s`` apart from the timed frames
- ``openvino``       the fp32 ONNX on OpenVINO's CPU plugin with ``INFERENCE_PRECISION_HINT=f32`` (like for
                     like with onnxruntime fp32); needs the optional extra ``mtl[openvino]``
- ``openvino-auto``  the same with OpenVINO's own default precision for the device (bf16 on CPUs with AMX /
                     AVX512-BF16): what a user gets without setting anything

torch and openvino are imported inside the constructors, only when such a column is asked for.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .errors import BackendUnavailableError
from .runtime.backends import Backend
from .runtime.pipeline import Pipeline
from .runtime.preprocess import ModelSpec, StageTimer

PEERS = ("torch", "torch-compile", "openvino", "openvino-auto")


class TorchBackend(Backend):
    """The checkpoint run eagerly (or compiled); outputs follow the ONNX contract (heatmap sigmoid applied)."""

    name = "torch"

    def __init__(self, checkpoint: str | Path, threads: int | None = None, compile: bool = False):
        import torch

        from .model import load_checkpoint

        self.torch = torch
        if threads:
            torch.set_num_threads(int(threads))
        t0 = time.perf_counter()
        self.model, self.cfg, _ = load_checkpoint(checkpoint)
        self.model.eval()
        self.open_ms = {"checkpoint_load": (time.perf_counter() - t0) * 1e3}
        how = "eager"
        if compile:
            self.name, how = "torch-compile", "torch.compile (inductor)"
            self.model = torch.compile(self.model)          # compiles on the first call
        self.providers = [f"torch {torch.__version__} {how}, {torch.get_num_threads()} threads"]
        h, w = self.cfg.camera.image_hw
        self.input_shapes = {"image": (1, 3, h, w), "bev": (1, self.cfg.grid.n_channels, *self.cfg.grid.shape)}
        self.input_dtypes = {"image": np.float32, "bev": np.float32}

    def run(self, feeds: dict[str, np.ndarray], timer: StageTimer) -> dict[str, np.ndarray]:
        torch = self.torch
        with timer("inference"), torch.inference_mode():
            out = self.model(torch.from_numpy(feeds["image"]), torch.from_numpy(feeds["bev"]))
            res = {"bbox_heatmap": torch.sigmoid(out["bbox_heatmap"]).numpy(),
                   "bbox_reg": out["bbox_reg"].numpy(), "sem_logits": out["sem_logits"].numpy()}
        return res


def torch_pipeline(checkpoint: str | Path, threads: int | None = None, compile: bool = False) -> Pipeline:
    b = TorchBackend(checkpoint, threads, compile)
    # no helper thread: torch's OpenMP workers busy-wait after each op, so overlapped numpy stages would
    # fight them for the second core (measured: +1 ms per frame) - the baseline gets its best setting
    return Pipeline(ModelSpec.from_config(b.cfg, checkpoint, heatmap_activation="sigmoid"), b, overlap=False)


class OpenVINOBackend(Backend):
    """An ONNX model on OpenVINO's CPU plugin (latency hint, ``threads`` inference threads)."""

    def __init__(self, path: str | Path, threads: int | None = None, precision: str | None = "f32"):
        try:
            import openvino as ov
        except ImportError as e:
            raise BackendUnavailableError(None, f"openvino is not installed ({e}); pip install 'mtl[openvino]'") \
                from None
        self.name = "openvino" if precision == "f32" else "openvino-auto"
        config: dict = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        core = ov.Core()
        t0 = time.perf_counter()
        try:
            model = core.read_model(str(path))
            t1 = time.perf_counter()
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses with multi-line text
            raise BackendUnavailableError(path, f"{self.name}: {str(e).strip().splitlines()[0][:200]}") from None
        self.open_ms = {"read_model": (t1 - t0) * 1e3, "compile_model": (time.perf_counter() - t1) * 1e3}
        self.request = self.compiled.create_infer_request()
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")        # an ov.Type: f32, bf16, f16
        self.precision = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(hint.get_type_name(),
                                                                             hint.get_type_name())
        self.providers = [f"OpenVINO {ov.__version__} CPU, {self.compiled.get_property('INFERENCE_NUM_THREADS')} "
                          f"threads, inference precision {self.precision}"]
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        self.input_shapes = {i.get_any_name(): tuple(i.get_partial_shape().to_shape()) for i in self.compiled.inputs}
        self.output_shapes = {o.get_any_name(): tuple(o.get_partial_shape().to_shape()) for o in self.compiled.outputs}
        self.input_dtypes = {n: np.float32 for n in self.input_shapes}

    def run(self, feeds: dict[str, np.ndarray], timer: StageTimer) -> dict[str, np.ndarray]:
        with timer("inference"):
            res = self.request.infer(feeds)                  # copies the outputs (share_outputs=False)
        return {o.get_any_name(): res[o] for o in self.compiled.outputs}


def openvino_pipeline(path: str | Path, threads: int | None = None, precision: str | None = "f32") -> Pipeline:
    from .contract import read_onnx_metadata

    spec = ModelSpec.from_metadata(read_onnx_metadata(path), path)
    b = OpenVINOBackend(path, threads, precision)
    spec.check_tensors(b.input_shapes, b.output_shapes)
    return Pipeline(spec, b, overlap=None if threads is None or threads >= 2 else False)


def open_peer(name: str, model: Path, checkpoint: Path | None, threads: int | None) -> Pipeline:
    """The peer column ``name`` (one of ``PEERS``); ``BackendUnavailableError`` when it cannot run here."""
    if name.startswith("openvino"):
        return openvino_pipeline(model, threads, "f32" if name == "openvino" else None)
    if checkpoint is None:
        raise BackendUnavailableError(None, "no --checkpoint given")
    try:
        import torch  # noqa: F401
    except ImportError:
        raise BackendUnavailableError(None, "torch is not installed") from None
    return torch_pipeline(checkpoint, threads, compile=name == "torch-compile")


__all__ = ["PEERS", "OpenVINOBackend", "TorchBackend", "open_peer", "openvino_pipeline", "torch_pipeline"]
