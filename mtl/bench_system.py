"""What machine a benchmark ran on: ``system_description`` (``mtl bench``'s ``system.json``, like MLPerf's systems
JSON) and the shorter ``device_state`` of the benchmark scripts. Torch-free: library versions come from the
installed distributions' metadata, nothing heavy is imported.

Everything is read where Linux exposes it (/proc/cpuinfo, /proc/meminfo, /sys/devices/system/cpu/cpu*/cpufreq,
/etc/os-release, nvidia-smi); what is not readable is ``None``, never guessed.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

LIBRARIES = ("numpy", "numba", "onnxruntime", "onnxruntime-gpu", "openvino", "torch", "tensorrt", "tensorrt-cu12",
             "tensorrt-cu13", "cuda-python", "pillow", "onnx")
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
                "amx_int8", "avx_vnni", "neon", "asimd")


def _run(cmd: list[str]) -> str | None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return r.stdout.strip() if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _cpuinfo() -> dict[str, str]:
    """The first processor's ``key: value`` lines of /proc/cpuinfo (empty where there is none)."""
    out: dict[str, str] = {}
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if not line.strip():
            if out:
                break
            continue
        key, _, value = line.partition(":")
        out.setdefault(key.strip(), value.strip())
    return out


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else ``platform.processor()`` (may be empty)."""
    return _cpuinfo().get("model name") or platform.processor() or ""


def load_avg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / 1024.0, 1) if sys.platform != "darwin" else round(kb / 2**20, 1)


def _gpus() -> list[str] | None:
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.mem,clocks.max.sm,"
                              "temperature.gpu,power.draw", "--format=csv,noheader"])
    return smi.splitlines() if smi else None


def device_state(threads: int | None) -> dict:
    """The short device record of the benchmark scripts (CPU, cores, load, GPU, library versions)."""
    from . import __version__

    libs = {d: _version(d) for d in LIBRARIES}
    return {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "threads": threads, "load_avg": load_avg(),
            "python": platform.python_version(), "platform": platform.platform(), "gpu": _gpus(),
            "libraries": {k: v for k, v in libs.items() if v}, "mtl_version": __version__,
            "date": _dt.datetime.now().isoformat(timespec="seconds")}


def _cpu() -> dict:
    info = _cpuinfo()
    flags = set(info.get("flags", info.get("Features", "")).split())
    freq = "/sys/devices/system/cpu/cpu0/cpufreq/"
    khz = {k: _read(freq + f) for k, f in (("cur_khz", "scaling_cur_freq"), ("min_khz", "scaling_min_freq"),
                                           ("max_khz", "scaling_max_freq"))}
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    return {"model": cpu_model(), "logical_cores": os.cpu_count(), "usable_cores": usable,
            "mhz_cpuinfo": info.get("cpu MHz"), "governor": _read(freq + "scaling_governor"),
            "scaling_driver": _read(freq + "scaling_driver"),
            **{k: int(v) if v and v.isdigit() else None for k, v in khz.items()},
            "boost": _read("/sys/devices/system/cpu/cpufreq/boost"),
            "virtualised": "hypervisor" in flags, "features": [f for f in CPU_FEATURES if f in flags]}


def _memory() -> dict:
    mem: dict = {}
    for line in (_read("/proc/meminfo") or "").splitlines():
        key, _, value = line.partition(":")
        if key in ("MemTotal", "MemAvailable") and value.strip().endswith("kB"):
            mem[key] = round(int(value.split()[0]) / 1024.0)
    return {"total_mb": mem.get("MemTotal"), "available_mb": mem.get("MemAvailable")}


def _os() -> dict:
    pretty = None
    for line in (_read("/etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            pretty = line.split("=", 1)[1].strip('"')
    return {"system": platform.system(), "distribution": pretty, "kernel": platform.release(),
            "machine": platform.machine()}


def _gpu() -> dict | None:
    rows = _run(["nvidia-smi", "--query-gpu=name,driver_version,compute_cap,memory.total,clocks.sm,clocks.max.sm,"
                               "clocks.mem,power.limit,persistence_mode,temperature.gpu", "--format=csv,noheader"])
    if not rows:
        return None
    keys = ("name", "driver", "compute_capability", "memory", "clock_sm", "clock_sm_max", "clock_mem", "power_limit",
            "persistence_mode", "temperature")
    header = _run(["nvidia-smi"]) or ""
    cuda = header.split("CUDA Version:")[1].split()[0] if "CUDA Version:" in header else None
    return {"devices": [dict(zip(keys, (c.strip() for c in r.split(",")))) for r in rows.splitlines()],
            "cuda_driver_version": cuda}


def system_description(threads: int | None) -> dict:
    """The machine and software a benchmark ran on; ``load_avg_before`` is taken now (the caller adds
    ``load_avg_after`` and the models it ran)."""
    from . import __version__

    libs = {d: _version(d) for d in LIBRARIES}
    return {"date": _dt.datetime.now().isoformat(timespec="seconds"), "cpu": _cpu(), "threads_used": threads,
            "memory": _memory(), "os": _os(),
            "python": {"version": platform.python_version(), "implementation": platform.python_implementation()},
            "libraries": {"mtl": __version__, **{k: v for k, v in libs.items() if v}}, "gpu": _gpu(),
            "load_avg_before": load_avg()}


def summary_lines(system: dict) -> list[str]:
    """The two lines the markdown states the system in."""
    cpu, mem, osd = system["cpu"], system["memory"], system["os"]
    freq = f"governor {cpu['governor']}" if cpu.get("governor") else "no cpufreq governor readable"
    if cpu.get("max_khz"):
        freq += f", max {cpu['max_khz'] / 1e6:.2f} GHz"
    gpu = system.get("gpu")
    gpus = ", ".join(f"{d['name']} (driver {d['driver']})" for d in gpu["devices"]) if gpu else "no GPU"
    libs = system["libraries"]
    models = "; ".join(f"{name} {m['precision']} sha256 {str(m['sha256'])[:12]}"
                       for name, m in system.get("models", {}).items()) or "no model"
    virt = ", virtualised" if cpu["virtualised"] else ""
    return [f"system: {cpu['model']} ({cpu['logical_cores']} logical cores{virt}, {freq}; "
            f"threads used: {system['threads_used'] or 'default'}), {mem['total_mb']} MB RAM, "
            f"{osd['distribution'] or osd['system']} (kernel {osd['kernel']}), Python {system['python']['version']}; "
            f"load avg {system['load_avg_before']} before, {system.get('load_avg_after')} after",
            "software: " + ", ".join(f"{k} {v}" for k, v in libs.items()) + f"; {gpus}; models: {models}"]


__all__ = ["cpu_model", "device_state", "load_avg", "peak_rss_mb", "summary_lines", "system_description"]
