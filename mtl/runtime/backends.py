"""Inference backends of the torch-free runtime.

- ``onnxruntime``        CPUExecutionProvider (``threads`` = intra-op threads, inter-op 1, ORT_ENABLE_ALL)
- ``onnxruntime-cuda``   CUDAExecutionProvider with IO binding, so H2D / inference / D2H are timed apart
- ``onnxruntime-trt``    TensorrtExecutionProvider (+ CUDA, CPU behind it), with its engine and timing caches
                         in ``<model>.trt_cache/`` beside the model (created on first use), so only the first
                         session on a machine builds the engine
- ``tensorrt``           native TensorRT 10/11 (``tensorrt`` + ``cuda-python`` ``cuda.bindings.runtime``):
                         deserialised engine, pinned host buffers (cudaHostAlloc), device buffers, one CUDA
                         stream, async H2D -> ``execute_async_v3`` (``set_tensor_address``) -> async D2H,
                         stream sync; CUDA events time the three device stages. A dynamic-batch engine runs
                         any batch inside its optimisation profile (buffers sized for the profile's maximum).
- ``auto``               ``.engine`` -> tensorrt; ``.onnx`` -> the first of TRT EP, CUDA EP, CPU that really
                         initialises. Every step down is recorded in ``Backend.fallback`` (printed by the CLI).

An explicitly requested GPU backend never silently runs on the CPU: it raises ``BackendUnavailableError``
with the reason (missing package, no driver, EP failed to initialise).

Engines: ``<name>.engine`` is opaque; its ``<name>.engine.json`` sidecar holds the ONNX metadata plus
``tensorrt_version``, ``gpu_name``, ``compute_capability``, ``precision_recipe``, ``onnx_sha256``,
``onnx_path`` and ``engine_sha256``. Before TensorRT is imported (``check_sidecar``): the engine's bytes must
hash to ``engine_sha256``; the ONNX it names must lie in the engine's folder (an absolute path or one that
escapes it is refused unread), exist, stay under 2 GiB, hash to ``onnx_sha256`` and carry the same config.
Then the TensorRT version and the GPU once TensorRT and a device exist. Every refusal is a
``ModelMismatchError`` (exit 5); every GPU-side failure a ``BackendUnavailableError`` (exit 6).
"""
from __future__ import annotations

import ctypes
import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import (
    MAX_ENGINE_BYTES,
    MAX_ONNX_BYTES,
    read_capped,
    read_onnx_metadata,
    read_sidecar,
    sha256_capped,
    sidecar_path,
)
from ..errors import BackendUnavailableError, ModelMismatchError
from ..gpu import cuda_check, gpu_info, import_cudart, import_tensorrt, ort_conflict, stream_handle, trt_create
from .preprocess import ModelSpec, StageTimer

BACKENDS = ("auto", "onnxruntime", "onnxruntime-cuda", "onnxruntime-trt", "tensorrt")
_ORT_PROVIDERS = {
    "onnxruntime": ["CPUExecutionProvider"],
    "onnxruntime-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "onnxruntime-trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
# CUDA EP: one device; the arena grows by what is asked (the model's buffers are fixed, power-of-two growth
# only wastes memory); exhaustive cuDNN search is paid once per session for static shapes; copies on the
# compute stream (ORT's safe default, spelled out)
CUDA_EP_OPTIONS = {"device_id": "0", "arena_extend_strategy": "kSameAsRequested",
                   "cudnn_conv_algo_search": "EXHAUSTIVE", "do_copy_in_default_stream": "1"}
TRT_CACHE_SUFFIX = ".trt_cache"
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
    open_ms: dict[str, float] = {}       # what opening took, by step (session creation, engine deserialisation)

    def run(self, feeds: dict[str, np.ndarray], timer: StageTimer) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def clone(self) -> Backend:
        """Another session of the same model with the same settings (``Pipeline.run_stream(sessions=n)``)."""
        raise BackendUnavailableError(None, f"{self.name}: one inference session per pipeline (more sessions "
                                            "run on the onnxruntime backends)")

    def describe(self) -> dict:
        return {"backend": self.name, "providers": list(self.providers), "fallback": self.fallback}

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------ onnxruntime


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise BackendUnavailableError(None, f"onnxruntime is not installed ({e}); pip install 'mtl[runtime]' "
                                            "(CPU) or 'mtl[gpu]' (NVIDIA), not both") from None
    return ort


def trt_cache_dir(model: str | Path) -> Path:
    """Where onnxruntime's TensorRT EP keeps its engines and timing cache for ``model``:
    ``export/model.onnx`` -> ``export/model.trt_cache/``."""
    model = Path(model)
    return model.with_name(model.stem + TRT_CACHE_SUFFIX)


def ort_providers(kind: str, path: str | Path, available: list[str]) -> list:
    """The ``providers`` argument for ``kind``: the available ones of its chain, GPU providers with options.
    The TensorRT EP's cache folder is created here, only when that EP is really going to be tried."""
    chain = [p for p in _ORT_PROVIDERS[kind] if p in available] or ["CPUExecutionProvider"]
    out: list = []
    for name in chain:
        if name == "CUDAExecutionProvider":
            out.append((name, dict(CUDA_EP_OPTIONS)))
        elif name == "TensorrtExecutionProvider":
            cache = trt_cache_dir(path)
            try:
                cache.mkdir(exist_ok=True)
            except OSError as e:
                raise BackendUnavailableError(path, f"{kind}: cannot create the TensorRT engine cache folder "
                                                    f"{cache.name} beside the model ({e.strerror or e}); make "
                                                    "the model's folder writable") from None
            out.append((name, {"device_id": "0", "trt_engine_cache_enable": "1",
                               "trt_engine_cache_path": str(cache), "trt_timing_cache_enable": "1",
                               "trt_timing_cache_path": str(cache)}))
        else:
            out.append(name)
    return out


def _missing_provider(kind: str, provider: str, available: list[str]) -> str:
    conflict = ort_conflict()
    if conflict and provider != "CPUExecutionProvider":
        return f"{kind}: this onnxruntime has no {provider}: {conflict}"
    return (f"{kind}: this onnxruntime has no {provider} (available: {', '.join(available)}; install "
            "mtl[gpu] (onnxruntime-gpu) instead of mtl[runtime] for CUDA/TensorRT)")


class OrtBackend(Backend):
    def __init__(self, path: str | Path, kind: str = "onnxruntime", threads: int | None = None,
                 strict: bool = True):
        ort = _import_ort()
        self.path, self.name = str(path), kind
        wanted = _ORT_PROVIDERS[kind]
        available = ort.get_available_providers()
        if strict and wanted[0] not in available:
            raise BackendUnavailableError(path, _missing_provider(kind, wanted[0], available))
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads:
            so.intra_op_num_threads = int(threads)
        # pool threads spin between the operators of a run (a blocked worker woken for every operator cost
        # ~7% of the network time on the 2-vCPU VM) but stop the moment run() returns: a thread still spinning
        # after the run would hold a core that the runtime's helper thread (raster || remap, argmax || box
        # decode) and the rest of the vehicle stack need (measured: pre + post ~1.6x slower)
        so.add_session_config_entry("session.intra_op.allow_spinning", "1")
        so.add_session_config_entry("session.force_spinning_stop", "1")
        so.log_severity_level = 3          # EP init failures are reported by us, in one line
        providers = ort_providers(kind, path, available)
        t0 = time.perf_counter()
        try:
            self.session = ort.InferenceSession(str(path), so, providers=providers)
        except Exception as e:
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            if providers == ["CPUExecutionProvider"]:
                raise ModelMismatchError(path, f"onnxruntime cannot load the model ({msg})") from None
            raise BackendUnavailableError(path, f"{kind}: session creation failed ({msg})") from None
        self.open_ms = {"session_create": (time.perf_counter() - t0) * 1e3}
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

    def clone(self) -> OrtBackend:
        other = OrtBackend(self.path, self.name, self.threads, strict=True)
        other.fallback = self.fallback
        return other

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


def sidecar_onnx(engine: str | Path, meta: dict) -> Path:
    """The ONNX the engine was built from: the sidecar's ``onnx_path``, relative to the engine's folder and
    confined to it. An absolute path, one that leaves the folder (``..``, or a symlink pointing out), a missing
    file or a non-regular file is refused (``ModelMismatchError``) without being read."""
    engine = Path(engine)
    sc = sidecar_path(engine)
    v = meta.get("onnx_path")
    if not isinstance(v, str) or not v.strip():
        raise ModelMismatchError(sc, "sidecar lacks 'onnx_path' (the ONNX the engine was built from); rebuild the "
                                     "engine with `mtl export --trt`")
    if Path(v).is_absolute() or v.startswith(("\\", "/")) or (len(v) > 1 and v[1] == ":"):
        raise ModelMismatchError(sc, f"onnx_path {v!r} is absolute; a sidecar names its ONNX relative to the "
                                     "engine's folder (refused, not read)")
    root = engine.parent.resolve()
    onnx = (engine.parent / v).resolve()
    if root not in onnx.parents:
        raise ModelMismatchError(sc, f"onnx_path {v!r} leaves the engine's folder (resolves to {onnx}); refused, "
                                     "not read")
    if not onnx.exists():
        raise ModelMismatchError(sc, f"the ONNX {v} the engine was built from is missing next to it; ship it "
                                     "with the engine (the engine is checked against it)")
    if not onnx.is_file():
        raise ModelMismatchError(sc, f"onnx_path {v!r} is not a regular file")
    return onnx


def check_sidecar(engine: str | Path, meta: dict) -> ModelSpec:
    """Everything checkable without TensorRT: the metadata contract, the engine's bytes against
    ``engine_sha256``, and the confined source ONNX's hash and config against the sidecar."""
    engine = Path(engine)
    sc = sidecar_path(engine)
    for key in ("onnx_sha256", "engine_sha256", "tensorrt_version"):
        if not meta.get(key):
            raise ModelMismatchError(sc, f"sidecar lacks {key!r}; rebuild the engine with `mtl export --trt`")
    spec = ModelSpec.from_metadata(meta, engine)
    sha = sha256_capped(engine, MAX_ENGINE_BYTES, "TensorRT engine")
    if sha != meta["engine_sha256"]:
        raise ModelMismatchError(engine, f"engine bytes do not match its sidecar (engine_sha256 "
                                         f"{str(meta['engine_sha256'])[:12]}... but the file is {sha[:12]}...): "
                                         "the engine was replaced or rebuilt without its sidecar; rebuild both")
    onnx = sidecar_onnx(engine, meta)
    sha = sha256_capped(onnx, MAX_ONNX_BYTES, "ONNX model")
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
    """(tensorrt, cuda.bindings.runtime) or BackendUnavailableError."""
    return import_tensorrt("tensorrt"), import_cudart("tensorrt")


def check_build_identity(path: Path, meta: dict, trt_version: str, dev: dict) -> None:
    """The engine was built by this TensorRT version on this GPU (same name normalisation as the builder)."""
    if str(meta["tensorrt_version"]) != str(trt_version):
        raise ModelMismatchError(path, f"engine was built with TensorRT {meta['tensorrt_version']} but "
                                       f"{trt_version} is installed (rebuild the engine)")
    for key in ("gpu_name", "compute_capability"):
        if meta.get(key) is not None and str(meta[key]) != dev[key]:
            raise ModelMismatchError(path, f"engine was built for {key} {meta[key]!r} but this GPU is "
                                           f"{dev[key]!r} (rebuild the engine on this machine)")


class TensorRTBackend(Backend):
    """A deserialised engine on one stream. Buffers hold the largest shapes the engine admits (the profile's
    maximum batch); ``run`` sets the input shapes for the feeds' batch and copies only that many bytes."""

    name = "tensorrt"

    def __init__(self, engine: str | Path, meta: dict):
        self.path = Path(engine)
        self._alloc: list[tuple[str, int]] = []
        self.events: list = []
        self.stream = None
        self.cudart = None
        t0 = time.perf_counter()
        data = read_capped(self.path, MAX_ENGINE_BYTES, "TensorRT engine")
        if hashlib.sha256(data).hexdigest() != meta.get("engine_sha256"):
            raise ModelMismatchError(self.path, "engine bytes do not match the sidecar's engine_sha256 (replaced "
                                                "after the check?); rebuild the engine")
        trt, cudart = _import_tensorrt()
        self.trt = trt
        dev = gpu_info()
        check_build_identity(self.path, meta, trt.__version__, dev)
        self.cudart = cudart
        self.open_ms = {"read_verify_import": (time.perf_counter() - t0) * 1e3}
        try:
            self._open(trt, data, dev)
        except BaseException:
            self.close()
            raise

    def _open(self, trt, data: bytes, dev: dict) -> None:
        cudart, path = self.cudart, self.path
        self.providers = [f"TensorRT {trt.__version__} on {dev['gpu_name']}"]
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt_create(trt.Runtime, self.logger, what="runtime (trt.Runtime)", path=path)
        t0 = time.perf_counter()
        try:
            self.engine = self.runtime.deserialize_cuda_engine(data)
        except Exception as e:  # noqa: BLE001 - TensorRT raises RuntimeError / TypeError on bad data
            raise ModelMismatchError(path, f"TensorRT could not deserialise the engine "
                                           f"({str(e).strip()[:200]})") from None
        if self.engine is None:
            raise ModelMismatchError(path, "TensorRT could not deserialise the engine (corrupt, or built for "
                                           "another TensorRT/GPU; see the TensorRT log above)")
        t1 = time.perf_counter()
        self.context = self.engine.create_execution_context()
        self.open_ms.update(engine_deserialise=(t1 - t0) * 1e3, context_create=(time.perf_counter() - t1) * 1e3)
        if self.context is None:
            raise BackendUnavailableError(path, "tensorrt: create_execution_context failed (out of GPU memory?)")
        self.stream = cuda_check(cudart.cudaStreamCreate(), "cudaStreamCreate", path)
        self._stream_handle = stream_handle(self.stream)
        self.events = [cuda_check(cudart.cudaEventCreate(), "cudaEventCreate", path) for _ in range(4)]
        self.inputs, self.outputs, self.profiles = engine_io(trt, self.engine, path)
        self.dtypes = {n: _np_dtype(trt, self.engine.get_tensor_dtype(n), n, path) for n in self.inputs + self.outputs}
        self.batch = None
        self._allocate()
        self.set_batch(self.default_batch)
        self.input_shapes = {n: (None if n in self.profiles else self.views[n][0].shape[0],
                                 *self.views[n][0].shape[1:]) for n in self.inputs}
        self.input_dtypes = {n: self.dtypes[n] for n in self.inputs}
        self.output_shapes = {n: self.views[n][0].shape for n in self.outputs}

    @property
    def batch_range(self) -> tuple[int, int]:
        """(min, max) batch the engine runs: its profile's range, or its static batch twice."""
        if self.profiles:
            lo = max(p[0][0] for p in self.profiles.values())
            hi = min(p[2][0] for p in self.profiles.values())
            return lo, hi
        b = int(self.engine.get_tensor_shape(self.inputs[0])[0])
        return b, b

    @property
    def default_batch(self) -> int:
        """The batch the runtime's pipeline uses (1) when the engine admits it, else the smallest it admits."""
        lo, _ = self.batch_range
        return max(1, lo)

    def _allocate(self) -> None:
        """Pinned host + device buffers for every tensor at the largest batch the engine admits."""
        self.set_batch(self.batch_range[1], allocating=True)
        self.buffers: dict[str, tuple[np.ndarray, int, int]] = {}
        for name in self.inputs + self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            nbytes = max(int(np.prod(shape)) * self.dtypes[name].itemsize, 1)
            host_ptr = cuda_check(self.cudart.cudaHostAlloc(nbytes, self.cudart.cudaHostAllocDefault),
                                  "cudaHostAlloc", self.path)
            self._alloc.append(("host", host_ptr))
            dev_ptr = cuda_check(self.cudart.cudaMalloc(nbytes), "cudaMalloc", self.path)
            self._alloc.append(("dev", dev_ptr))
            host = np.ctypeslib.as_array((ctypes.c_byte * nbytes).from_address(int(host_ptr)))
            self.buffers[name] = (host, int(dev_ptr), nbytes)
            if self.context.set_tensor_address(name, int(dev_ptr)) is False:
                raise BackendUnavailableError(self.path, f"tensorrt: set_tensor_address({name}) failed")

    def set_batch(self, n: int, allocating: bool = False) -> None:
        """Set every dynamic input to batch ``n`` (checked against the profile and TensorRT's answer) and
        point the host views at the first ``n`` samples of each buffer."""
        if n == self.batch and not allocating:
            return
        lo, hi = self.batch_range
        if not lo <= n <= hi:
            raise ModelMismatchError(self.path, f"batch {n} is outside what the engine runs (batch {lo}..{hi}); "
                                                "rebuild it with `mtl export --trt --trt-profile MIN:OPT:MAX` "
                                                "covering it (the runtime's pipeline runs batch 1)")
        for name, (mn, _, _) in self.profiles.items():
            want = (n, *mn[1:])
            if not self.context.set_input_shape(name, want):
                raise ModelMismatchError(self.path, f"TensorRT refused input shape {want} for {name!r} "
                                                    f"(profile {self.profiles[name]})")
        shapes = {name: tuple(int(d) for d in self.context.get_tensor_shape(name))
                  for name in self.inputs + self.outputs}
        bad = {k: v for k, v in shapes.items() if any(d < 0 for d in v)}
        if bad:
            raise ModelMismatchError(self.path, f"shapes stay unresolved after setting batch {n}: {bad}")
        if allocating:
            return
        self.views: dict[str, tuple[np.ndarray, int, int]] = {}
        for name, shape in shapes.items():
            host, dev, cap = self.buffers[name]
            nbytes = int(np.prod(shape)) * self.dtypes[name].itemsize
            if nbytes > cap:
                raise ModelMismatchError(self.path, f"{name} needs {nbytes} bytes at batch {n}, buffer has {cap}")
            self.views[name] = (host[:nbytes].view(self.dtypes[name]).reshape(shape), dev, nbytes)
        self.batch = n

    def run(self, feeds: dict[str, np.ndarray], timer: StageTimer) -> dict[str, np.ndarray]:
        cudart, s, ev = self.cudart, self.stream, self.events
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        t0 = time.perf_counter()
        self.set_batch(int(np.shape(feeds[self.inputs[0]])[0]))
        for name in self.inputs:
            host = self.views[name][0]
            if tuple(np.shape(feeds[name])) != host.shape:
                raise ModelMismatchError(self.path, f"input {name!r} has shape {tuple(np.shape(feeds[name]))}, "
                                                    f"the engine expects {host.shape}")
            np.copyto(host, feeds[name], casting="same_kind")
        cuda_check(cudart.cudaEventRecord(ev[0], s), "cudaEventRecord", self.path)
        for name in self.inputs:
            host, dev, n = self.views[name]
            cuda_check(cudart.cudaMemcpyAsync(dev, host.ctypes.data, n, h2d, s), "cudaMemcpyAsync H2D", self.path)
        cuda_check(cudart.cudaEventRecord(ev[1], s), "cudaEventRecord", self.path)
        if not self.context.execute_async_v3(self._stream_handle):
            raise BackendUnavailableError(self.path, "tensorrt: execute_async_v3 failed (see the TensorRT log)")
        cuda_check(cudart.cudaEventRecord(ev[2], s), "cudaEventRecord", self.path)
        for name in self.outputs:
            host, dev, n = self.views[name]
            cuda_check(cudart.cudaMemcpyAsync(host.ctypes.data, dev, n, d2h, s), "cudaMemcpyAsync D2H", self.path)
        cuda_check(cudart.cudaEventRecord(ev[3], s), "cudaEventRecord", self.path)
        cuda_check(cudart.cudaStreamSynchronize(s), "cudaStreamSynchronize", self.path)
        wall = (time.perf_counter() - t0) * 1e3
        ms = [cuda_check(cudart.cudaEventElapsedTime(ev[i], ev[i + 1]), "cudaEventElapsedTime", self.path)
              for i in range(3)]
        timer.add("h2d", ms[0])
        timer.add("inference", ms[1])
        timer.add("d2h", ms[2])
        timer.add("device_wall", wall)
        return {name: self.views[name][0].copy() for name in self.outputs}

    def close(self) -> None:
        cudart = getattr(self, "cudart", None)
        if cudart is None:
            return
        if getattr(self, "stream", None) is not None:
            cudart.cudaStreamSynchronize(self.stream)    # no copy may still target a buffer freed below
        for kind, ptr in getattr(self, "_alloc", []):
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


def engine_io(trt, engine, path: Path) -> tuple[list[str], list[str], dict[str, tuple]]:
    """Input and output tensor names, and for each dynamic input its profile-0 (min, opt, max) shapes.
    Only the batch axis may be dynamic (what ``mtl export --trt`` builds)."""
    inputs, outputs, profiles = [], [], {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        shape = tuple(int(d) for d in engine.get_tensor_shape(name))
        if engine.get_tensor_mode(name) != trt.TensorIOMode.INPUT:
            outputs.append(name)
            continue
        inputs.append(name)
        if any(d < 0 for d in shape):
            if any(d < 0 for d in shape[1:]):
                raise ModelMismatchError(path, f"engine input {name!r} has dynamic non-batch dims {shape}")
            mn, opt, mx = (tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(name, 0))
            profiles[name] = (mn, opt, mx)
    if not inputs or not outputs:
        raise ModelMismatchError(path, f"engine has inputs {inputs} and outputs {outputs}")
    return inputs, outputs, profiles


def _np_dtype(trt, dtype, name: str, path: Path) -> np.dtype:
    try:
        return np.dtype(trt.nptype(dtype))
    except TypeError:
        raise ModelMismatchError(path, f"engine tensor {name!r} has type {dtype}, which numpy cannot hold") from None


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
            raise BackendUnavailableError(path, f"{backend} runs ONNX models; "
                                                "a TensorRT engine needs --backend tensorrt")
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
