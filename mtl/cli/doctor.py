"""`mtl doctor`: what is installed and usable on this machine, one line per component, one line per problem
with its fix, and a verdict per path (CPU runtime, GPU runtime, native TensorRT, GPU training).

Torch-free at import; ``torch``, ``onnxruntime``, ``cuda-python`` and ``tensorrt`` are imported inside the
probes, each guarded, so a broken optional part is reported instead of crashing the report. Exit code 0
when the CPU runtime is usable (problems with the optional GPU parts are warnings), 6
(``BackendUnavailableError``) when it is not.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from typing import Any

import click

COMMANDS: list = []
TRT_DISTS = ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-lean", "tensorrt-dispatch")


def _version(dist: str) -> str | None:
    from ..gpu import distribution_version

    return distribution_version(dist)


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "reason", None) or e).strip()
    return (text.splitlines()[0][:240] if text else type(e).__name__)


def _run(cmd: list[str], timeout: float = 20.0) -> str | None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


# ------------------------------------------------------------------------------------------ probes


def probe_onnxruntime(gpu_visible: bool) -> dict[str, Any]:
    """Installed distributions, the import, its providers, and (with a GPU) whether the CUDA EP starts."""
    out: dict[str, Any] = {"packages": {d: _version(d) for d in ("onnxruntime", "onnxruntime-gpu")}}
    try:
        import onnxruntime as ort
    except Exception as e:  # noqa: BLE001 - report any import failure
        out["error"] = f"{type(e).__name__}: {_first_line(e)}"
        return out
    out["version"] = ort.__version__
    out["providers"] = list(ort.get_available_providers())
    if gpu_visible and "CUDAExecutionProvider" in out["providers"]:
        out["cuda_ep"] = _probe_cuda_ep(ort)
    return out


def _probe_cuda_ep(ort) -> dict[str, Any]:
    """Create a session on a one-node model with the runtime's CUDA EP options: does the EP really start?"""
    import tempfile
    from pathlib import Path

    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError:
        return {"usable": None, "reason": "not probed (the onnx package is not installed)"}
    from ..runtime.backends import ort_providers

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "doctor", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "doctor.onnx"
        onnx.save(model, str(path))
        so = ort.SessionOptions()
        so.log_severity_level = 3
        try:
            sess = ort.InferenceSession(str(path), so, providers=ort_providers(
                "onnxruntime-cuda", path, ort.get_available_providers()))
        except Exception as e:  # noqa: BLE001
            return {"usable": False, "reason": _first_line(e)}
        got = sess.get_providers()
    if "CUDAExecutionProvider" in got:
        return {"usable": True, "reason": "a session started on the CUDA EP"}
    return {"usable": False, "reason": f"the session fell back to {got} (CUDA 12 / cuDNN 9 libraries not found?)"}


def probe_torch() -> dict[str, Any] | None:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return None
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {_first_line(e)}"}
    out: dict[str, Any] = {"version": torch.__version__, "cuda_build": torch.version.cuda,
                           "cuda_available": bool(torch.cuda.is_available())}
    if out["cuda_available"]:
        cap = torch.cuda.get_device_capability(0)
        out["device"] = torch.cuda.get_device_name(0)
        out["capability"] = f"{cap[0]}.{cap[1]}"
    return out


def probe_driver() -> dict[str, Any]:
    """nvidia-smi: driver version, the CUDA version it supports, GPUs (name, compute capability, memory)."""
    smi = shutil.which("nvidia-smi")
    out: dict[str, Any] = {"nvidia_smi": smi, "gpus": []}
    if not smi:
        return out
    q = _run([smi, "--query-gpu=name,driver_version,compute_cap,memory.total", "--format=csv,noheader"]) or \
        _run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    for line in (q or "").strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4:
            out["gpus"].append({"name": parts[0], "compute_capability": parts[2], "memory": parts[3]})
        elif len(parts) == 3:
            out["gpus"].append({"name": parts[0], "compute_capability": None, "memory": parts[2]})
        out["driver_version"] = parts[1] if len(parts) > 1 else None
    m = re.search(r"CUDA Version:\s*([0-9.]+)", _run([smi]) or "")
    out["driver_cuda"] = m.group(1) if m else None
    if q is None:
        out["error"] = "nvidia-smi found but failed (driver not loaded?)"
    return out


def probe_cuda_python() -> dict[str, Any]:
    """cuda-python / cuda-bindings versions, module layout, CUDA versions and device 0 through it."""
    from ..errors import BackendUnavailableError
    from ..gpu import cuda_versions, gpu_info, import_cudart

    out: dict[str, Any] = {"version": _version("cuda-python"), "bindings": _version("cuda-bindings")}
    try:
        import_cudart()
    except BackendUnavailableError as e:
        out["layout"] = "old (cuda.cudart)" if "older than 12.6.1" in e.reason else None
        out["error"] = e.reason
        return out
    out["layout"] = "cuda.bindings"
    out.update(cuda_versions())
    try:
        out["gpu"] = gpu_info()
    except BackendUnavailableError as e:
        out["gpu_error"] = e.reason
    return out


def probe_tensorrt(cuda_ok: bool) -> dict[str, Any]:
    """TensorRT distributions, whether ``import tensorrt`` works, and (with CUDA) whether a builder starts."""
    import importlib.util

    from ..errors import BackendUnavailableError
    from ..gpu import import_tensorrt, trt_create

    out: dict[str, Any] = {"packages": {d: v for d in TRT_DISTS if (v := _version(d))}}
    if importlib.util.find_spec("tensorrt") is None:
        return out
    try:
        trt = import_tensorrt("tensorrt")
    except BackendUnavailableError as e:
        out["error"] = e.reason
        return out
    out["version"] = str(trt.__version__)
    if cuda_ok:
        try:
            trt_create(trt.Builder, trt.Logger(trt.Logger.ERROR), what="builder (trt.Builder)")
            out["builder"] = "ok"
        except BackendUnavailableError as e:
            out["builder"] = e.reason
    return out


def collect() -> dict[str, Any]:
    """Every fact the report and the problem list are made of (the ``--json`` document's ``facts``)."""
    from .. import __version__

    driver = probe_driver()
    cp = probe_cuda_python()
    facts: dict[str, Any] = {
        "python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
        "mtl": __version__, "numpy": _version("numpy"), "driver": driver, "cuda_python": cp,
    }
    gpu_visible = bool(driver["gpus"]) or "gpu" in cp
    facts["onnxruntime"] = probe_onnxruntime(gpu_visible)
    facts["torch"] = probe_torch()
    facts["tensorrt"] = probe_tensorrt("gpu" in cp)
    facts["kernels"] = probe_kernels()
    return facts


def probe_kernels() -> dict[str, Any]:
    """numba's version and whether the runtime's compiled per-frame kernels work here (compiles them once)."""
    from ..runtime import kernels

    return {"numba": _version("numba"), "used": kernels.available(), "failure": kernels.failure(),
            "disabled": os.environ.get(kernels.ENV, "").strip().lower() == "numpy"}


# ------------------------------------------------------------------------------------------ verdicts


def _major(v: str | None) -> int | None:
    try:
        return int(str(v).split(".")[0]) if v else None
    except ValueError:
        return None


def _cuda_major_of_trt(trt: dict) -> int | None:
    pk = trt.get("packages", {})
    return 13 if pk.get("tensorrt-cu13") else 12 if pk.get("tensorrt-cu12") else None


def problems(facts: dict) -> list[dict[str, str]]:
    """One ``{"level", "problem", "fix"}`` per problem found in ``facts`` (pure: no probing here)."""
    out: list[dict[str, str]] = []

    def add(level: str, problem: str, fix: str) -> None:
        out.append({"level": level, "problem": problem, "fix": fix})

    ort, drv, cp, torch = facts["onnxruntime"], facts["driver"], facts["cuda_python"], facts.get("torch")
    gpu_visible = bool(drv.get("gpus")) or "gpu" in cp
    pk = ort.get("packages", {})
    if pk.get("onnxruntime") and pk.get("onnxruntime-gpu"):
        add("warning", "both onnxruntime and onnxruntime-gpu are installed; they overwrite each other's module "
                       "and the CUDA / TensorRT providers can disappear",
            "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu (mtl[gpu], not mtl[runtime])")
    if "error" in ort:
        add("error", f"onnxruntime does not import ({ort['error']}): the runtime cannot run",
            "pip install 'mtl[runtime]' (CPU) or 'mtl[gpu]' (NVIDIA), exactly one of them")
    elif gpu_visible and "CUDAExecutionProvider" not in ort.get("providers", []):
        add("note", "an NVIDIA GPU is present but onnxruntime is the CPU build (no CUDA / TensorRT EP)",
            "pip uninstall -y onnxruntime && pip install 'mtl[gpu]'")
    elif (ort.get("cuda_ep") or {}).get("usable") is False:
        add("warning", f"onnxruntime's CUDA EP does not start: {ort['cuda_ep']['reason']}",
            "onnxruntime-gpu from PyPI needs CUDA 12 + cuDNN 9 libraries on the loader path (CUDA toolkit "
            "and cuDNN, or a CUDA 12 torch imported first)")
    if str(cp.get("layout") or "").startswith("old"):
        add("warning", f"cuda-python {cp.get('version')} has the old module layout (no cuda.bindings)",
            "pip install 'cuda-python>=12.6.1,<13' (or mtl[trt-cu12] / mtl[trt-cu13])")
    elif "gpu_error" in cp:
        add("warning", f"cuda-python cannot use the GPU: {cp['gpu_error']}",
            "install mtl[trt-cu12] (CUDA 12 stack) or update the NVIDIA driver (R580+ for CUDA 13)")
    _trt_problems(facts, add)
    if gpu_visible and torch and not torch.get("cuda_available") and "error" not in torch:
        add("note", f"torch {torch.get('version')} cannot use the GPU (CUDA build: {torch.get('cuda_build')})",
            "install a CUDA build of torch for GPU training (pytorch.org, matching the driver's CUDA)")
    return out


def _trt_problems(facts: dict, add) -> None:
    cp, trt, drv = facts["cuda_python"], facts["tensorrt"], facts["driver"]
    if "error" in trt:
        add("warning", f"TensorRT is installed but does not load: {trt['error']}",
            "reinstall one coherent stack: pip install 'mtl[trt-cu12]' or 'mtl[trt-cu13]' (README table)")
    elif str(trt.get("builder", "ok")) != "ok":
        add("warning", f"TensorRT {trt.get('version')} loads but cannot start: {trt['builder']}",
            "install mtl[trt-cu12] on drivers older than R580, or update the driver")
    trt_cuda, cp_cuda = _cuda_major_of_trt(trt), _major(cp.get("bindings") or cp.get("version"))
    if trt_cuda and cp_cuda and trt_cuda != cp_cuda:
        add("warning", f"TensorRT is built for CUDA {trt_cuda} but cuda-python is for CUDA {cp_cuda}",
            f"pip install 'mtl[trt-cu{trt_cuda}]' to get the matching cuda-python")
    drv_cuda = _major(drv.get("driver_cuda") or cp.get("driver"))
    need = max(x for x in (trt_cuda, cp_cuda, 0) if x is not None)
    if drv_cuda and need > drv_cuda:
        add("warning", f"the driver supports CUDA {drv_cuda}.x but the installed TensorRT / cuda-python need "
                       f"CUDA {need} (driver R580+)", "pip install 'mtl[trt-cu12]' or update the NVIDIA driver")
    if (trt.get("version") or trt.get("packages")) and "is not installed" in str(cp.get("error", "")):
        add("warning", "TensorRT is installed without cuda-python (the native backend needs both)",
            "pip install 'mtl[trt-cu12]' or 'mtl[trt-cu13]'")
    k = facts.get("kernels") or {}
    if k.get("failure"):
        add("warning", f"numba {k.get('numba')} is installed but the runtime's kernels do not compile "
                       f"({k['failure']}); the slower numpy stages are used", "pip install 'numba>=0.68'")


def paths(facts: dict) -> dict[str, tuple[bool, str]]:
    """For each use of the machine: (usable, why)."""
    ort, cp, trt, torch = facts["onnxruntime"], facts["cuda_python"], facts["tensorrt"], facts.get("torch")
    providers = ort.get("providers", [])
    cuda_ep = ort.get("cuda_ep") or {}
    out = {"cpu runtime (onnxruntime CPU)": ("CPUExecutionProvider" in providers,
                                             ort.get("error") or "CPUExecutionProvider available")}
    if "CUDAExecutionProvider" not in providers:
        out["gpu runtime (onnxruntime CUDA / TensorRT EP)"] = (False, "no CUDA EP in this onnxruntime")
    else:
        out["gpu runtime (onnxruntime CUDA / TensorRT EP)"] = (bool(cuda_ep.get("usable")),
                                                               cuda_ep.get("reason", "no GPU visible"))
    trt_ok = trt.get("builder") == "ok" and "gpu" in cp
    why = ("TensorRT builder starts on the GPU" if trt_ok else trt.get("error")
           or ("TensorRT not installed" if "version" not in trt else None)
           or cp.get("error") or cp.get("gpu_error") or trt.get("builder") or "no GPU")
    out["native TensorRT (export --trt, --backend tensorrt)"] = (trt_ok, why)
    k = facts.get("kernels") or {}
    if k.get("used"):
        why = "remap, raster, argmax and peak kernels compiled"
    elif not k.get("numba"):
        why = "numba not installed: the numpy stages run (same results, slower; pip install 'mtl[fast]')"
    else:
        why = "disabled by MTL_KERNELS=numpy" if k.get("disabled") else f"compile failed: {k.get('failure')}"
    out["compiled per-frame stages (numba)"] = (bool(k.get("used")), why)
    if torch is None:
        out["gpu training (torch CUDA)"] = (False, "torch not installed")
    else:
        out["gpu training (torch CUDA)"] = (bool(torch.get("cuda_available")), torch.get("error") or (
            f"{torch.get('device')} (sm {torch.get('capability')})" if torch.get("cuda_available")
            else f"torch {torch.get('version')} sees no CUDA device"))
    return out


# ------------------------------------------------------------------------------------------ report


def component_lines(facts: dict) -> list[tuple[str, str]]:
    """(component, what is installed / usable) rows of the report."""
    ort, drv, cp, trt, torch = (facts["onnxruntime"], facts["driver"], facts["cuda_python"], facts["tensorrt"],
                                facts.get("torch"))
    pk = ", ".join(f"{k} {v}" for k, v in ort.get("packages", {}).items() if v) or "no package"
    rows = [("python", f"{facts['python']} ({facts['executable']})"), ("mtl", facts["mtl"]),
            ("numpy", facts["numpy"] or "not installed"),
            ("numba", (facts.get("kernels") or {}).get("numba") or "not installed")]
    rows.append(("onnxruntime", f"import failed: {ort['error']} [{pk}]" if "error" in ort else
                 f"{ort['version']} [{pk}]; providers: {', '.join(ort['providers'])}"))
    if torch is None:
        rows.append(("torch", "not installed"))
    elif "error" in torch:
        rows.append(("torch", f"import failed: {torch['error']}"))
    else:
        cuda = (f"CUDA {torch['cuda_build']}: {torch['device']} (sm {torch['capability']})" if torch["cuda_available"]
                else f"CUDA: not available ({'CPU build' if not torch['cuda_build'] else 'no device'})")
        rows.append(("torch", f"{torch['version']}; {cuda}"))
    if not drv["nvidia_smi"] and cp.get("driver"):
        rows.append(("NVIDIA driver", f"supports CUDA {cp['driver']} (cudaDriverGetVersion; nvidia-smi not found)"))
    elif not drv["nvidia_smi"]:
        rows.append(("NVIDIA driver", "none (nvidia-smi not found)"))
    else:
        cuda = drv.get("driver_cuda") or "?"
        rows.append(("NVIDIA driver", f"{drv.get('driver_version') or drv.get('error')} (supports CUDA {cuda})"))
    runtime = (f"{cp['runtime']} (cuda-python)" if cp.get("runtime") else
               f"{torch['cuda_build']} (torch's)" if torch and torch.get("cuda_build") else "none found")
    rows.append(("CUDA runtime", runtime))
    gpus = drv.get("gpus") or ([cp["gpu"] | {"name": cp["gpu"]["gpu_name"]}] if "gpu" in cp else [])
    rows.append(("GPU", "; ".join(f"{g['name']} (compute capability {g.get('compute_capability') or '?'})"
                                  for g in gpus) or "none"))
    if cp.get("version") or cp.get("bindings") or cp.get("layout"):
        where = cp.get("layout") or "does not load"
        text = (f"{cp.get('version') or '-'} (cuda-bindings {cp.get('bindings') or '-'}), layout {where}; "
                f"CUDA runtime {cp.get('runtime') or '?'}, driver API {cp.get('driver') or '?'}")
        rows.append(("cuda-python", text))
    else:
        rows.append(("cuda-python", "not installed"))
    tp = ", ".join(f"{k} {v}" for k, v in trt.get("packages", {}).items())
    tp = f" [{tp}]" if tp else ""
    if "version" in trt:
        builder = trt.get("builder", "not tried (no GPU)")
        rows.append(("TensorRT", f"{trt['version']}{tp}; loads; builder: {builder}"))
    elif "error" in trt:
        rows.append(("TensorRT", f"does not load: {trt['error']}{tp}"))
    else:
        rows.append(("TensorRT", f"not installed{tp}"))
    return rows


def render(facts: dict, probs: list[dict], use: dict[str, tuple[bool, str]]) -> str:
    lines = ["mtl doctor"]
    lines += [f"  {k:<14} {v}" for k, v in component_lines(facts)]
    lines.append("paths:")
    lines += [f"  {'usable    ' if ok else 'not usable'}  {k}: {why}" for k, (ok, why) in use.items()]
    lines.append("problems:" if probs else "problems: none")
    lines += [f"  {p['level']}: {p['problem']}; fix: {p['fix']}" for p in probs]
    return "\n".join(lines)


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (facts, paths, problems).")
def doctor_cmd(as_json: bool) -> None:
    """Report what is installed and usable: Python, mtl, numpy, onnxruntime (providers; both onnxruntime and
    onnxruntime-gpu installed?), torch (CUDA), the NVIDIA driver, cuda-python (version, layout, CUDA
    versions), TensorRT (loads? builder starts?) and the GPU, then one line per problem with its fix.
    Exits 0 when the CPU runtime is usable (GPU problems are warnings), 6 when it is not."""
    from ..errors import BackendUnavailableError

    facts = collect()
    probs, use = problems(facts), paths(facts)
    cpu_ok = use["cpu runtime (onnxruntime CPU)"][0]
    if as_json:
        click.echo(json.dumps({"facts": facts, "paths": {k: {"usable": ok, "why": why} for k, (ok, why) in use.items()},
                               "problems": probs, "cpu_path_usable": cpu_ok}, indent=2, default=str))
    else:
        click.echo(render(facts, probs, use))
    if not cpu_ok:
        sys.exit(BackendUnavailableError.exit_code)


COMMANDS.append(doctor_cmd)
