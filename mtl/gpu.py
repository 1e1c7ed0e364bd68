"""The one place that talks to the NVIDIA stack's Python modules: cuda-python (``cuda.bindings.runtime``),
TensorRT, and which onnxruntime distribution is installed. Torch-free; every import is optional.

Every failure leaves here as a one-line ``BackendUnavailableError`` (exit code 6) that says what is missing
and how to fix it. The facts this module relies on:

- cuda-python >= 12.6.1 ships the ``cuda.bindings.runtime`` layout (12.0-12.6.0 only had ``cuda.cudart``;
  13.0 removed ``cuda.cudart``), so ``cuda.bindings`` is required and the old layout is named as the problem.
- Calls return ``(cudaError_t, *values)``; error 35 (``cudaErrorInsufficientDriver``) means the driver is
  older than the CUDA major the wheel was built for (cuda-python / TensorRT for CUDA 13 need driver R580+).
- ``int(stream)`` on a ``cudaStream_t`` is deprecated since cuda-bindings 12.9.1 / 13.0; the replacement is
  ``cuda.bindings.utils.get_cuda_native_handle``.
- ``trt.Builder(logger)`` / ``trt.Runtime(logger)`` are pybind11 factories: when CUDA cannot start they raise
  ``TypeError: pybind11::init(): factory function returned nullptr`` instead of returning ``None``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import BackendUnavailableError

NULLPTR_MESSAGE = "factory function returned nullptr"      # pybind11's TypeError text for a null factory result
CUDA_ERROR_HINTS = {
    35: "the NVIDIA driver is older than the CUDA version this cuda-python / TensorRT build needs (CUDA 13 "
        "builds need driver R580+): update the driver or install the CUDA 12 stack (mtl[trt-cu12])",
    34: "only the CUDA stub library was found: no NVIDIA driver is installed",
    100: "no CUDA-capable device is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES)",
    999: "the driver could not initialise CUDA (reboot or reload the nvidia kernel module)",
}


def import_cudart(context: str = "cuda-python"):
    """``cuda.bindings.runtime`` or a BackendUnavailableError naming the fix."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            import cuda.cudart  # noqa: F401 - only to tell the old layout from "not installed"
        except ImportError:
            raise BackendUnavailableError(None, f"{context}: cuda-python is not installed (pip install "
                                                "'mtl[trt-cu12]' or 'mtl[trt-cu13]', see README)") from None
        raise BackendUnavailableError(None, f"{context}: cuda-python is older than 12.6.1 (no cuda.bindings "
                                            "module); pip install 'cuda-python>=12.6.1,<13'") from None
    except Exception as e:  # noqa: BLE001 - a broken install (missing shared library) is not a traceback
        raise BackendUnavailableError(None, f"{context}: cuda-python does not load ({_first_line(e)})") from None
    return cudart


def error_code(err: Any) -> int:
    """The integer value of a ``cudaError_t`` (IntEnum-compatible in every cuda-bindings release)."""
    return int(getattr(err, "value", err))


def describe_cuda_error(err: Any) -> str:
    """``cudaErrorInsufficientDriver (35): <what it means>``."""
    code = error_code(err)
    name = getattr(err, "name", None) or f"CUDA error {code}"
    hint = CUDA_ERROR_HINTS.get(code)
    return f"{name} ({code})" + (f": {hint}" if hint else "")


def cuda_check(result: Any, what: str, path: Any = None) -> Any:
    """Unpack a cuda-bindings call's ``(err, *values)``; a non-zero error is a BackendUnavailableError."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if error_code(err) != 0:
        raise BackendUnavailableError(path, f"{what} failed with {describe_cuda_error(err)}")
    return rest[0] if len(rest) == 1 else (tuple(rest) if rest else None)


def gpu_info(device: int = 0) -> dict[str, Any]:
    """Name and compute capability of CUDA device ``device``: the identity the engine builder writes into the
    sidecar and the TensorRT backend compares, with one name normalisation for both."""
    cudart = import_cudart("querying the GPU")
    count = cuda_check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount (no usable CUDA device)")
    if not count:
        raise BackendUnavailableError(None, "no CUDA device found; TensorRT engines need an NVIDIA GPU and driver")
    if device >= count:
        raise BackendUnavailableError(None, f"CUDA device {device} does not exist ({count} device(s))")
    prop = cuda_check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = prop.name
    name = name.split(b"\0", 1)[0].decode(errors="replace") if isinstance(name, (bytes, bytearray)) else str(name)
    return {"gpu_name": name.strip(), "compute_capability": f"{prop.major}.{prop.minor}", "device": device}


def cuda_versions() -> dict[str, str | None]:
    """CUDA versions the driver supports and cuda-python was built for, as ``"12.4"`` strings (None if unknown)."""
    cudart = import_cudart("querying CUDA versions")
    out: dict[str, str | None] = {}
    for key, fn in (("driver", cudart.cudaDriverGetVersion), ("runtime", cudart.cudaRuntimeGetVersion)):
        try:
            v = cuda_check(fn(), key)
            out[key] = f"{v // 1000}.{(v % 1000) // 10}" if v else None
        except BackendUnavailableError:
            out[key] = None
    return out


def stream_handle(stream: Any) -> int:
    """The native ``cudaStream_t`` address TensorRT's ``execute_async_v3`` takes."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:           # cuda-bindings < 12.9.1: int() is the documented way there
        return int(stream)
    return int(get_cuda_native_handle(stream))


def import_tensorrt(context: str = "tensorrt"):
    """``import tensorrt`` or a one-line BackendUnavailableError (ImportError, or the OSError a wheel raises
    when libnvinfer / the CUDA libraries it needs cannot be loaded)."""
    try:
        import tensorrt as trt
    except Exception as e:  # noqa: BLE001 - ImportError, OSError (missing .so), RuntimeError from its loader
        raise BackendUnavailableError(None, f"{context}: TensorRT is not installed or does not load "
                                            f"({type(e).__name__}: {_first_line(e)}); install mtl[trt-cu12] "
                                            "(CUDA 12) or mtl[trt-cu13] (CUDA 13) on an NVIDIA machine, see "
                                            "README") from None
    return trt


def trt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def trt_create(factory: Callable[..., Any], *args: Any, what: str, path: Any = None) -> Any:
    """``factory(*args)`` for TensorRT objects that need CUDA (``trt.Builder``, ``trt.Runtime``,
    ``trt.OnnxParser``): a null result -- returned as ``None`` or raised by pybind11 as the nullptr TypeError --
    becomes a BackendUnavailableError that says why CUDA did not start."""
    try:
        obj = factory(*args)
    except TypeError as e:
        if NULLPTR_MESSAGE not in str(e):
            raise                                 # a real bug (wrong arguments): keep the traceback
        obj = None
    if obj is None:
        raise BackendUnavailableError(path, f"TensorRT could not create its {what}: CUDA failed to initialise "
                                            f"({cuda_start_problem()})")
    return obj


def cuda_start_problem() -> str:
    """Why CUDA does not start, as far as cuda-python can tell (a short clause for an error line)."""
    try:
        cudart = import_cudart()
        err = cudart.cudaGetDeviceCount()[0]
    except Exception as e:  # noqa: BLE001 - this only words an error that is already being raised
        return f"cuda-python cannot tell: {getattr(e, 'reason', None) or _first_line(e)}"
    if error_code(err) != 0:
        return describe_cuda_error(err)
    return "the device is visible to cuda-python; see the TensorRT log above (driver too old for this TensorRT?)"


def distribution_version(name: str) -> str | None:
    """Installed version of a distribution (``onnxruntime-gpu``), or None."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def ort_conflict() -> str | None:
    """The fix line when both ``onnxruntime`` and ``onnxruntime-gpu`` are installed: they share the
    ``onnxruntime`` module, and whichever was installed last wins (the GPU providers disappear)."""
    if distribution_version("onnxruntime") and distribution_version("onnxruntime-gpu"):
        return ("both onnxruntime and onnxruntime-gpu are installed and overwrite each other's module; run "
                "`pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu` "
                "(install mtl[gpu] without mtl[runtime])")
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


__all__ = [
    "CUDA_ERROR_HINTS",
    "NULLPTR_MESSAGE",
    "cuda_check",
    "cuda_start_problem",
    "cuda_versions",
    "describe_cuda_error",
    "distribution_version",
    "error_code",
    "gpu_info",
    "import_cudart",
    "import_tensorrt",
    "ort_conflict",
    "stream_handle",
    "trt_create",
    "trt_major",
]
