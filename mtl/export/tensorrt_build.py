"""TensorRT engine build from an exported ONNX model (TensorRT 10 and 11 Python builder API).

Import-guarded: ``tensorrt`` and ``cuda-python`` are optional; without them (or without a CUDA device) the
entry points raise one-line ``BackendUnavailableError`` s saying what is missing.

Precision recipe:
- TensorRT 11 is strongly typed: the network is created with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``
  and the precision is the ONNX model's (fp32 / the fp16 ONNX / the INT8 Q/DQ ONNX). Builder precision
  flags do not exist there, so an fp16 engine is built from ``model_fp16.onnx``.
- TensorRT 10: the same strongly-typed build by default; ``builder_fp16=True`` instead builds the fp32 ONNX
  weakly typed with ``BuilderFlag.FP16`` (TensorRT picks fp16 kernels where faster), the classic recipe.
The engine is written atomically next to a ``<engine>.json`` sidecar (``metadata.write_sidecar``) with the
TensorRT version, GPU name / compute capability, recipe, the ONNX sha256 and the optimisation profiles.
A timing cache file is loaded when present and saved after the build (faster rebuilds on the same GPU).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..config import sha256_file
from ..errors import BackendUnavailableError, ModelMismatchError
from ..io import write_bytes_atomic
from ..contract import gpu_info, read_onnx_metadata, write_sidecar


def import_tensorrt():
    """``import tensorrt`` or a one-line BackendUnavailableError."""
    try:
        import tensorrt as trt
    except Exception as e:  # noqa: BLE001 - ImportError, or OSError for missing libnvinfer / libnvonnxparser
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BackendUnavailableError(None, f"TensorRT is not available ({reason}); install it on a machine with an "
                                            "NVIDIA GPU and driver (`pip install tensorrt cuda-python`, extra "
                                            "mtl[trt]) or drop --trt to export ONNX only") from None
    return trt


def trt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def check_available() -> tuple[Any, dict]:
    """(tensorrt module, gpu info) or BackendUnavailableError: call before spending time on an export."""
    trt = import_tensorrt()
    return trt, gpu_info()


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


def build_engine(onnx_path: str | Path, engine_path: str | Path, *, profile: tuple[int, int, int] | None = None,
                 timing_cache: str | Path | None = None, builder_fp16: bool = False, workspace_gib: float = 4.0,
                 verbose: bool = False) -> dict[str, Any]:
    """Build ``engine_path`` (+ sidecar) from ``onnx_path``; returns the sidecar metadata."""
    trt, gpu = check_available()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    meta = read_onnx_metadata(onnx_path)
    major = trt_major(trt)
    if builder_fp16 and major >= 11:
        raise BackendUnavailableError(None, f"TensorRT {trt.__version__} is strongly typed: builder fp16 flags are "
                                            "gone; build from the fp16 ONNX (mtl export --fp16) instead")
    strongly_typed = not builder_fp16
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if builder is None:
        raise BackendUnavailableError(None, "trt.Builder could not be created (CUDA initialisation failed)")
    flags = 0
    st_flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed and st_flag is not None:
        # required on 10.x (opt-in); accepted and ignored on 11.x where every network is strongly typed
        flags |= 1 << int(st_flag)
    network = builder.create_network(flags)   # explicit batch is the only mode in TensorRT >= 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelMismatchError(onnx_path, f"TensorRT's ONNX parser rejected the model: {errs[:500]}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    recipe = f"strongly typed from {meta['precision']} ONNX" if strongly_typed else "fp32 ONNX + BuilderFlag.FP16"
    if not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)

    # timing cache: load if present, save after the build
    cache_bytes = b""
    if timing_cache and Path(timing_cache).is_file():
        cache_bytes = Path(timing_cache).read_bytes()
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    profiles = []
    dynamic = [network.get_input(i) for i in range(network.num_inputs)
               if any(int(d) < 0 for d in network.get_input(i).shape)]
    if dynamic:
        lo, opt, hi = profile or (1, 1, 1)
        prof = builder.create_optimization_profile()
        entry: dict[str, Any] = {}
        for t in dynamic:
            shape = list(t.shape)
            if any(int(d) < 0 for d in shape[1:]):
                raise ModelMismatchError(onnx_path, f"input {t.name} has dynamic non-batch dims {shape}")
            rest = [int(d) for d in shape[1:]]

            def mk(b: int, rest=rest) -> tuple:
                return (b, *rest)

            prof.set_shape(t.name, mk(lo), mk(opt), mk(hi))
            entry[t.name] = {"min": list(mk(lo)), "opt": list(mk(opt)), "max": list(mk(hi))}
        config.add_optimization_profile(prof)
        profiles.append(entry)

    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelMismatchError(onnx_path, "TensorRT engine build failed (see the TensorRT log above)")
    build_s = time.perf_counter() - t0
    write_bytes_atomic(engine_path, bytes(memoryview(serialized)))
    if timing_cache:
        write_bytes_atomic(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))

    side = dict(meta)
    side.update({
        "tensorrt_version": str(trt.__version__), "gpu_name": gpu["gpu_name"],
        "compute_capability": gpu["compute_capability"], "precision_recipe": recipe,
        "onnx_sha256": sha256_file(onnx_path), "onnx_path": onnx_path.name, "profiles": profiles,
        "build_time_s": round(build_s, 2), "engine_sha256": sha256_file(engine_path),
    })
    if not strongly_typed:
        side["precision"] = "fp16"
    write_sidecar(engine_path, side)
    return side
