"""TensorRT engine build from an exported ONNX model (TensorRT 10 and 11 Python builder API).

Import-guarded: ``tensorrt`` and ``cuda-python`` are optional; without them, without a CUDA device, or when
CUDA cannot start (driver too old for the installed CUDA major: ``trt.Builder`` then raises pybind11's nullptr
TypeError), the entry points raise one-line ``BackendUnavailableError`` s saying what is missing (exit 6).

Precision recipe:
- TensorRT 11 is strongly typed: the network is created with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``
  and the precision is the ONNX model's (fp32 / the fp16 ONNX / the INT8 Q/DQ ONNX). Builder precision
  flags do not exist there, so an fp16 engine is built from ``model_fp16.onnx``.
- TensorRT 10: the same strongly-typed build by default; ``builder_fp16=True`` instead builds the fp32 ONNX
  weakly typed with ``BuilderFlag.FP16`` (TensorRT picks fp16 kernels where faster), the classic recipe.
The engine is written atomically, then its ``<engine>.json`` sidecar (``contract.write_sidecar``) with the
TensorRT version, GPU name / compute capability, recipe, the ONNX's sha256 and name, the engine's sha256 and
the optimisation profiles. The runtime refuses an engine whose bytes do not match ``engine_sha256``, so a
build killed between the two writes never runs with a stale sidecar.

Timing cache: loaded when the file exists and was made by this GPU and TensorRT version; a cache from another
GPU or version (a shared ``--timing-cache``, a reused output folder) is reported, ignored and replaced after
the build -- never merged (``ignore_mismatch=False``: mixing device timings can give wrong kernels).
"""
from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..contract import MAX_ONNX_BYTES, read_onnx_metadata, sha256_capped, write_sidecar
from ..errors import BackendUnavailableError, ModelMismatchError
from ..gpu import gpu_info, trt_create, trt_major
from ..gpu import import_tensorrt as _import_tensorrt
from ..io import write_bytes_atomic


def import_tensorrt():
    """``import tensorrt`` or a one-line BackendUnavailableError."""
    return _import_tensorrt("mtl export --trt")


def check_available() -> tuple[Any, dict]:
    """(tensorrt module, gpu info) or BackendUnavailableError: call before spending time on an export. A
    builder is created and dropped, so a CUDA that does not start for TensorRT (driver too old for its CUDA
    major) is reported here, not after the ONNX export."""
    trt = import_tensorrt()
    gpu = gpu_info()
    trt_create(trt.Builder, trt.Logger(trt.Logger.ERROR), what="builder (trt.Builder)")
    return trt, gpu


def parse_profile(text: str | None) -> tuple[int, int, int] | None:
    """'1:4:8' -> (1, 4, 8) batch sizes (min <= opt <= max)."""
    if not text:
        return None
    try:
        lo, opt, hi = (int(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"--trt-profile must be MIN:OPT:MAX batch sizes, got {text!r}") from None
    if not 1 <= lo <= opt <= hi:
        raise ValueError(f"--trt-profile needs 1 <= min <= opt <= max, got {text!r}")
    return lo, opt, hi


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def build_engine(onnx_path: str | Path, engine_path: str | Path, *, profile: tuple[int, int, int] | None = None,
                 timing_cache: str | Path | None = None, builder_fp16: bool = False, workspace_gib: float = 4.0,
                 verbose: bool = False, log: Callable[[str], None] = _stderr) -> dict[str, Any]:
    """Build ``engine_path`` (+ sidecar) from ``onnx_path``; returns the sidecar metadata. ``log`` gets one-line
    notes (a timing cache that was ignored or could not be saved)."""
    trt, gpu = check_available()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    meta = read_onnx_metadata(onnx_path)
    if builder_fp16 and trt_major(trt) >= 11:
        raise BackendUnavailableError(None, f"TensorRT {trt.__version__} is strongly typed: builder fp16 flags are "
                                            "gone; build from the fp16 ONNX (mtl export --fp16) instead")
    strongly_typed = not builder_fp16
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt_create(trt.Builder, logger, what="builder (trt.Builder)", path=onnx_path)
    network, parser = _parse_network(trt, builder, logger, onnx_path, strongly_typed)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    recipe = f"strongly typed from {meta['precision']} ONNX" if strongly_typed else "fp32 ONNX + BuilderFlag.FP16"
    if not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    cache_status = _load_timing_cache(config, timing_cache, log)
    profiles = _add_profile(builder, config, network, profile, onnx_path)

    t0 = time.perf_counter()
    try:
        serialized = builder.build_serialized_network(network, config)
    except RuntimeError as e:        # some TensorRT releases raise instead of returning None
        raise ModelMismatchError(onnx_path, f"TensorRT engine build failed ({str(e).strip()[:300]})") from None
    if serialized is None:
        raise ModelMismatchError(onnx_path, "TensorRT engine build failed (see the TensorRT log above)")
    build_s = time.perf_counter() - t0
    del parser                       # it owns weight memory the network referenced until the build
    engine_bytes = bytes(memoryview(serialized))
    write_bytes_atomic(engine_path, engine_bytes)

    side = dict(meta)
    side.update({
        "tensorrt_version": str(trt.__version__), "gpu_name": gpu["gpu_name"],
        "compute_capability": gpu["compute_capability"], "precision_recipe": recipe,
        "onnx_sha256": sha256_capped(onnx_path, MAX_ONNX_BYTES, "ONNX model"), "onnx_path": onnx_path.name,
        "profiles": profiles, "build_time_s": round(build_s, 2),
        "engine_sha256": hashlib.sha256(engine_bytes).hexdigest(), "timing_cache": cache_status,
    })
    if not strongly_typed:
        side["precision"] = "fp16"
    write_sidecar(engine_path, side)
    if timing_cache:
        _save_timing_cache(config, Path(timing_cache), log)
    return side


def _parse_network(trt, builder, logger, onnx_path: Path, strongly_typed: bool):
    """(network, parser) parsed from the ONNX, strongly typed unless the weak fp16 recipe. The parser owns
    weight memory the network refers to: the caller keeps it alive until the engine is built."""
    flags = 0
    st_flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed and st_flag is not None:
        # required on 10.x (opt-in); accepted and ignored on 11.x where every network is strongly typed
        flags |= 1 << int(st_flag)
    network = builder.create_network(flags)   # explicit batch is the only mode in TensorRT >= 10
    parser = trt_create(trt.OnnxParser, network, logger, what="ONNX parser", path=onnx_path)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelMismatchError(onnx_path, f"TensorRT's ONNX parser rejected the model: {errs[:500]}")
    return network, parser


def _load_timing_cache(config, timing_cache: str | Path | None, log: Callable[[str], None]) -> str:
    """Attach a timing cache to ``config``: the file's when it fits this GPU + TensorRT, else an empty one.
    Returns what happened (recorded in the sidecar)."""
    path = Path(timing_cache) if timing_cache else None
    data = path.read_bytes() if path is not None and path.is_file() else b""
    if data:
        try:
            cache = config.create_timing_cache(data)
        except Exception:  # noqa: BLE001 - a corrupt file is treated like a foreign one
            cache = None
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return "loaded"
        log(f"note: {path}: timing cache made by another GPU or TensorRT version; ignored, and replaced after "
            "this build")
    if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
        raise BackendUnavailableError(None, "TensorRT refused an empty timing cache (set_timing_cache returned "
                                            "False)")
    return "ignored (another GPU or TensorRT version)" if data else "new"


def _save_timing_cache(config, path: Path, log: Callable[[str], None]) -> None:
    cache = config.get_timing_cache()
    if cache is None:
        log(f"note: {path}: TensorRT returned no timing cache after the build; not saved")
        return
    write_bytes_atomic(path, bytes(memoryview(cache.serialize())))


def _add_profile(builder, config, network, profile: tuple[int, int, int] | None, onnx_path: Path) -> list[dict]:
    """One optimisation profile over the batch axis of the dynamic inputs (none for a static graph)."""
    dynamic = [network.get_input(i) for i in range(network.num_inputs)
               if any(int(d) < 0 for d in network.get_input(i).shape)]
    if not dynamic:
        return []
    lo, opt, hi = profile or (1, 1, 1)
    prof = builder.create_optimization_profile()
    entry: dict[str, Any] = {}
    for t in dynamic:
        shape = [int(d) for d in t.shape]
        if any(d < 0 for d in shape[1:]):
            raise ModelMismatchError(onnx_path, f"input {t.name} has dynamic non-batch dims {shape}")
        shapes = {k: [b, *shape[1:]] for k, b in (("min", lo), ("opt", opt), ("max", hi))}
        prof.set_shape(t.name, tuple(shapes["min"]), tuple(shapes["opt"]), tuple(shapes["max"]))
        entry[t.name] = shapes
    config.add_optimization_profile(prof)
    return [entry]
