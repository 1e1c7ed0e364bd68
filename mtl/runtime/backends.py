"""Inference backends of the torch-free runtime.

- ``onnxruntime``        CPUExecutionProvider (``threads`` = intra-op threads, inter-op 1, ORT_ENABLE_ALL)
- ``onnxruntime-cuda``   CUDAExecutionProvider with IO binding, so H2D / inference / D2H are timed apart
- ``onnxruntime-trt``    TensorrtExecutionProvider (+ CUDA, CPU behind it)
- ``tensorrt``           native TensorRT 10/11 (``tensorrt`` + ``cuda-python`` ``cuda.bindings.runtime``):
                         deserialised engine, pinned host buffers (cudaHostAlloc), device buffers, one CUDA
                         stream, async H2D -> ``execute_async_v3`` (``set_tensor_address``) -> async D2H,
                         stream sync; CUDA events time the three device stages.
- ``auto``               ``.engine`` -> tensorrt; ``.onnx`` -> the first of TRT EP, CUDA EP, CPU that really
                         initialises. Every step down is recorded in ``Backend.fallback`` (printed by the CLI).

An explicitly requested GPU backend never silently runs on the CPU: it raises ``BackendUnavailableError``
with the reason (missing package, no driver, EP failed to initialise).

Engines: ``<name>.engine`` is opaque; its ``<name>.engine.json`` sidecar holds the ONNX metadata plus
``tensorrt_version``, ``gpu_name``, ``compute_capability``, ``precision_recipe``, ``onnx_sha256``. The
sidecar is checked BEFORE TensorRT is imported (ONNX hash + config vs the ONNX it names / sits next to),
then the TensorRT version and the GPU once TensorRT and a device exist (``ModelMismatchError``).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..config import sha256_file
from ..contract import gpu_info, read_onnx_metadata, read_sidecar, sidecar_path
from ..errors import BackendUnavailableError, ModelMismatchError
from .preprocess import ModelSpec, StageTimer

BACKENDS = ("auto", "onnxruntime", "onnxruntime-cuda", "onnxruntime-trt", "tensorrt")
_ORT_PROVIDERS = {
    "onnxruntime": ["CPUExecutionProvider"],
    "onnxruntime-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "onnxruntime-trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
_NP_OF_ORT = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8,
              "tensor(int8)": np.int8, "tensor(bool)": np.bool_}


class Backend:
    """``run(feeds, timer) -> outputs`` on numpy arrays; records h2d / inference / d2h in ``timer``."""

    name: str = "?"
    providers: list[str] = []
    fallback: str | None = None          # why a lower backend than requested is running (auto only)
    input_shapes: dict[str, tuple] = {}
    output_shapes: dict[str, tuple] = {}
    input_dtypes: dict[str, Any] = {}

    def run(self, feeds: dict[str, np.ndarray], timer: StageTimer) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"backend": self.name, "providers": list(self.providers), "fallback": self.fallback}

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------ onnxruntime


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise BackendUnavailableError(None, f"onnxruntime is not installed ({e}); pip install onnxruntime") from None
    return ort


class OrtBackend(Backend):
    def __init__(self, path: str | Path, kind: str = "onnxruntime", threads: int | None = None,
                 strict: bool = True):
        ort = _import_ort()
        self.path, self.name = str(path), kind
        wanted = _ORT_PROVIDERS[kind]
        available = ort.get_available_providers()
        if strict and wanted[0] not in available:
            raise BackendUnavailableError(path, f"{kind}: this onnxruntime has no {wanted[0]} (available: "
                                                f"{', '.join(available)}; install onnxruntime-gpu for CUDA/TensorRT)")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads:
            so.intra_op_num_threads = int(threads)
        # no busy-waiting pool threads after a run: they would hold a core that the runtime's helper
        # thread (PNG decode || raster, argmax || box decode) and the rest of the vehicle stack need
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3          # EP init failures are reported by us, in one line
        providers = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), so, providers=providers)
        except Exception as e:
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            if "CPUExecutionProvider" in providers and len(providers) == 1:
                raise ModelMismatchError(path, f"onnxruntime cannot load the model ({msg})") from None
            raise BackendUnavailableError(path, f"{kind}: session creation failed ({msg})") from None
        self.providers = self.session.get_providers()
        if strict and wanted[0] not in self.providers:
            raise BackendUnavailableError(path, f"{kind}: {wanted[0]} failed to initialise (no GPU / driver / "
                                                f"CUDA libraries?); the session fell back to {self.providers}")
        self.threads = threads
        self.input_shapes = {i.name: tuple(i.shape) for i in self.session.get_inputs()}
        self.input_dtypes = {i.name: _NP_OF_ORT.get(i.type, np.float32) for i in self.session.get_inputs()}
        self.output_shapes = {o.name: tuple(o.shape) for o in self.session.get_outputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._device = self.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")

    def metadata(self) -> dict:
        return read_onnx_metadata(self.path, self.session)

    def run(self, feeds: dict[str, np.ndarray], timer: StageTimer) -> dict[str, np.ndarray]:
        feeds = {k: np.ascontiguousarray(v, self.input_dtypes.get(k, v.dtype)) for k, v in feeds.items()}
        if not self._device:
            with timer("inference"):
                outs = self.session.run(self.output_names, feeds)
            return dict(zip(self.output_names, outs))
        ort = _import_ort()
        binding = self.session.io_binding()
        with timer("h2d"):
            vals = {k: ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0) for k, v in feeds.items()}
            for k, v in vals.items():
                binding.bind_ortvalue_input(k, v)
            for name in self.output_names:
                binding.bind_output(name, "cuda", 0)
            binding.synchronize_inputs()
        with timer("inference"):
            self.session.run_with_iobinding(binding)
            binding.synchronize_outputs()
        with timer("d2h"):
            outs = binding.copy_outputs_to_cpu()
        return dict(zip(self.output_names, outs))


# ---------------------------------------------------------------------------------------- TensorRT


def sidecar_onnx(engine: Path, meta: dict) -> Path | None:
    """The ONNX the engine was built from: the sidecar's ``onnx_path`` / ``source_onnx`` (relative to the
    engine's folder), else ``<stem>.onnx`` next to the engine, else ``model.onnx`` next to it."""
    for key in ("onnx_path", "source_onnx", "onnx"):
        v = meta.get(key)
        if isinstance(v, str) and v:
            p = Path(v) if Path(v).is_absolute() else engine.parent / v
            return p if p.is_file() else None
    for cand in (engine.with_suffix(".onnx"), engine.parent / "model.onnx"):
        if cand.is_file():
            return cand
    return None


def check_sidecar(engine: str | Path, meta: dict) -> ModelSpec:
    """Everything checkable without TensorRT: metadata contract, ONNX hash and config vs the source ONNX."""
    engine = Path(engine)
    sc = sidecar_path(engine)
    for key in ("onnx_sha256", "tensorrt_version"):
        if not meta.get(key):
            raise ModelMismatchError(sc, f"sidecar lacks {key!r}")
    spec = ModelSpec.from_metadata(meta, engine)
    onnx = sidecar_onnx(engine, meta)
    if onnx is not None:
        sha = sha256_file(onnx)
        if sha != meta["onnx_sha256"]:
            raise ModelMismatchError(engine, f"engine was built from another ONNX: sidecar onnx_sha256 "
                                             f"{meta['onnx_sha256'][:12]}... but {onnx.name} is {sha[:12]}... "
                                             "(rebuild the engine)")
        try:
            onnx_meta = read_onnx_metadata(onnx)
        except ModelMismatchError:
            onnx_meta = None
        if onnx_meta is not None and onnx_meta.get("config") != meta.get("config"):
            diff = _first_config_diff(onnx_meta.get("config"), meta.get("config"))
            raise ModelMismatchError(engine, f"sidecar config differs from {onnx.name}'s ({diff}); rebuild the engine")
    return spec


def _first_config_diff(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_config_diff(a.get(k), b.get(k), f"{prefix}{k}.")
    return f"{prefix.rstrip('.') or 'config'}: {str(a)[:60]} vs {str(b)[:60]}"


def _import_tensorrt():
    try:
        import tensorrt as trt
    except Exception as e:  # ImportError, or OSError from missing libnvinfer
        raise BackendUnavailableError(None, f"tensorrt: TensorRT is not installed or does not load "
                                            f"({type(e).__name__}: {e}); pip install tensorrt (needs an NVIDIA "
                                            "GPU + driver)") from None
    try:
        from cuda.bindings import runtime as cudart
    except Exception as e:
        raise BackendUnavailableError(None, f"tensorrt: cuda-python is not installed ({type(e).__name__}: {e}); "
                                            "pip install cuda-python") from None
    return trt, cudart


def _cuda_check(result: Any, what: str) -> Any:
    """cuda-bindings calls return (err, *values)."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendUnavailableError(None, f"tensorrt: {what} failed with CUDA error {err!r}")
    return rest[0] if len(rest) == 1 else (tuple(rest) if rest else None)


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, engine: str | Path, meta: dict):
        self.path = Path(engine)
        self._alloc: list[tuple[str, int]] = []
        trt, cudart = _import_tensorrt()
        self.trt, self.cudart = trt, cudart
        # the GPU identity exactly as the builder wrote it into the sidecar (same name normalisation)
        dev = gpu_info()
        if str(meta["tensorrt_version"]) != trt.__version__:
            raise ModelMismatchError(self.path, f"engine was built with TensorRT {meta['tensorrt_version']} but "
                                                f"{trt.__version__} is installed (rebuild the engine)")
        for key in ("gpu_name", "compute_capability"):
            if meta.get(key) is not None and str(meta[key]) != dev[key]:
                raise ModelMismatchError(self.path, f"engine was built for {key} {meta[key]!r} but this GPU is "
                                                    f"{dev[key]!r} (rebuild the engine on this machine)")
        self.providers = [f"TensorRT {trt.__version__} on {dev['gpu_name']}"]
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ModelMismatchError(self.path, "TensorRT could not deserialise the engine (corrupt, or built "
                                                "for another TensorRT/GPU)")
        self.context = self.engine.create_execution_context()
        self.stream = _cuda_check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.events = [_cuda_check(cudart.cudaEventCreate(), "cudaEventCreate") for _ in range(4)]
        self.inputs, self.outputs = [], []
        spec_in = {"image": tuple(meta["inputs"]["image"]), "bev": tuple(meta["inputs"]["bev"])}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            shape = tuple(self.engine.get_tensor_shape(name))
            if is_input and any(d < 0 for d in shape):   # dynamic batch: run at batch 1
                want = tuple(1 if not isinstance(d, int) or d < 0 else d for d in spec_in.get(name, shape))
                self.context.set_input_shape(name, want)
            (self.inputs if is_input else self.outputs).append(name)
        self.buffers: dict[str, tuple[np.ndarray, int, int]] = {}
        for name in self.inputs + self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            nbytes = int(np.prod(shape)) * dtype.itemsize
            host_ptr = _cuda_check(cudart.cudaHostAlloc(max(nbytes, 1), cudart.cudaHostAllocDefault), "cudaHostAlloc")
            self._alloc.append(("host", host_ptr))
            dev_ptr = _cuda_check(cudart.cudaMalloc(max(nbytes, 1)), "cudaMalloc")
            self._alloc.append(("dev", dev_ptr))
            import ctypes

            host = np.ctypeslib.as_array((ctypes.c_byte * max(nbytes, 1)).from_address(int(host_ptr)))
            host = host[:nbytes].view(dtype).reshape(shape)
            self.buffers[name] = (host, int(dev_ptr), nbytes)
            self.context.set_tensor_address(name, int(dev_ptr))
        self.input_shapes = {n: self.buffers[n][0].shape for n in self.inputs}
        self.input_dtypes = {n: self.buffers[n][0].dtype for n in self.inputs}
        self.output_shapes = {n: self.buffers[n][0].shape for n in self.outputs}

    def run(self, feeds: dict[str, np.ndarray], timer: StageTimer) -> dict[str, np.ndarray]:
        cudart, s, ev = self.cudart, self.stream, self.events
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        t0 = time.perf_counter()
        for name in self.inputs:
            host, dev, n = self.buffers[name]
            np.copyto(host, feeds[name].reshape(host.shape), casting="same_kind")
        _cuda_check(cudart.cudaEventRecord(ev[0], s), "cudaEventRecord")
        for name in self.inputs:
            host, dev, n = self.buffers[name]
            _cuda_check(cudart.cudaMemcpyAsync(dev, host.ctypes.data, n, h2d, s), "cudaMemcpyAsync H2D")
        _cuda_check(cudart.cudaEventRecord(ev[1], s), "cudaEventRecord")
        if not self.context.execute_async_v3(int(s)):
            raise BackendUnavailableError(self.path, "tensorrt: execute_async_v3 failed (see TensorRT log)")
        _cuda_check(cudart.cudaEventRecord(ev[2], s), "cudaEventRecord")
        for name in self.outputs:
            host, dev, n = self.buffers[name]
            _cuda_check(cudart.cudaMemcpyAsync(host.ctypes.data, dev, n, d2h, s), "cudaMemcpyAsync D2H")
        _cuda_check(cudart.cudaEventRecord(ev[3], s), "cudaEventRecord")
        _cuda_check(cudart.cudaStreamSynchronize(s), "cudaStreamSynchronize")
        wall = (time.perf_counter() - t0) * 1e3
        ms = [_cuda_check(cudart.cudaEventElapsedTime(ev[i], ev[i + 1]), "cudaEventElapsedTime") for i in range(3)]
        timer.add("h2d", ms[0])
        timer.add("inference", ms[1])
        timer.add("d2h", ms[2])
        timer.add("device_wall", wall)
        return {name: self.buffers[name][0].copy() for name in self.outputs}

    def close(self) -> None:
        cudart = getattr(self, "cudart", None)
        if cudart is None:
            return
        for kind, ptr in self._alloc:
            (cudart.cudaFreeHost if kind == "host" else cudart.cudaFree)(ptr)
        self._alloc = []
        for ev in getattr(self, "events", []):
            cudart.cudaEventDestroy(ev)
        self.events = []
        if getattr(self, "stream", None) is not None:
            cudart.cudaStreamDestroy(self.stream)
            self.stream = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


# ------------------------------------------------------------------------------------------ opening


def open_backend(path: str | Path, backend: str = "auto", threads: int | None = None
                 ) -> tuple[Backend, ModelSpec]:
    """Open ``path`` (``.onnx`` or ``.engine``) on ``backend``; returns the backend and the checked spec."""
    path = Path(path)
    if backend not in BACKENDS:
        raise BackendUnavailableError(path, f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if not path.is_file():
        raise ModelMismatchError(path, "model file not found")
    is_engine = path.suffix in (".engine", ".plan", ".trt")
    if is_engine:
        if backend not in ("auto", "tensorrt"):
            raise BackendUnavailableError(path, f"{backend} runs ONNX models; a TensorRT engine needs --backend tensorrt")
        meta = read_sidecar(path)
        spec = check_sidecar(path, meta)
        b = TensorRTBackend(path, meta)
    elif backend == "tensorrt":
        raise BackendUnavailableError(path, "tensorrt needs a .engine file (build it with `mtl export --trt`)")
    elif backend == "auto":
        b, reasons = None, []
        for kind in ("onnxruntime-trt", "onnxruntime-cuda"):
            try:
                b = OrtBackend(path, kind, threads, strict=True)
                break
            except BackendUnavailableError as e:
                reasons.append(e.reason)
        if b is None:
            b = OrtBackend(path, "onnxruntime", threads, strict=True)
            b.fallback = "auto -> onnxruntime (CPU): " + "; ".join(reasons)
        spec = ModelSpec.from_metadata(b.metadata(), path)
    else:
        b = OrtBackend(path, backend, threads, strict=True)
        spec = ModelSpec.from_metadata(b.metadata(), path)
    spec.check_tensors(b.input_shapes, b.output_shapes)
    return b, spec


__all__ = [
    "BACKENDS",
    "Backend",
    "OrtBackend",
    "TensorRTBackend",
    "check_sidecar",
    "open_backend",
    "read_onnx_metadata",
    "read_sidecar",
    "sidecar_onnx",
    "sidecar_path",
]
