"""`mtl doctor` on this machine's real environment (the lines for what is present / absent here), its JSON
form, the problem rules on edited copies of the real facts, and the exit code when the CPU runtime is broken."""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from mtl.cli import main
from mtl.cli.doctor import collect, paths, problems
from mtl.gpu import distribution_version


@pytest.fixture(scope="module")
def facts():
    return collect()


def _line(text: str, component: str) -> str:
    return next(ln for ln in text.splitlines() if ln.startswith(f"  {component:<14} "))


def test_doctor_reports_this_machine(facts):
    r = CliRunner().invoke(main, ["doctor"])
    assert r.exit_code == 0, r.output
    out = r.output
    assert out.startswith("mtl doctor\n")
    assert sys.version.split()[0] in _line(out, "python")
    ort_line = _line(out, "onnxruntime")
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    if ort is not None:
        assert ort.__version__ in ort_line and "CPUExecutionProvider" in ort_line
        assert "usable      cpu runtime (onnxruntime CPU)" in out
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        v = distribution_version(dist)
        assert (f"{dist} {v}" in ort_line) == (v is not None)
    if importlib.util.find_spec("torch") is None:
        assert _line(out, "torch").endswith("not installed")
    else:
        import torch

        assert torch.__version__ in _line(out, "torch")
        if not torch.cuda.is_available():
            assert "CUDA: not available" in _line(out, "torch")
            assert "not usable  gpu training (torch CUDA)" in out
    if shutil.which("nvidia-smi") is None:
        assert _line(out, "NVIDIA driver") == "  NVIDIA driver  none (nvidia-smi not found)"
    if importlib.util.find_spec("tensorrt") is None:
        assert _line(out, "TensorRT").strip() == "TensorRT       not installed"
        assert "not usable  native TensorRT (export --trt, --backend tensorrt): TensorRT not installed" in out
    if distribution_version("cuda-python") is None and distribution_version("cuda-bindings") is None:
        assert _line(out, "cuda-python").strip() == "cuda-python    not installed"
    probs = problems(facts)
    assert ("problems: none" in out) == (not probs)
    for p in probs:
        assert f"  {p['level']}: {p['problem']}; fix: {p['fix']}" in out


def test_doctor_json_is_the_same_report(facts):
    r = CliRunner().invoke(main, ["doctor", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert set(doc) == {"facts", "paths", "problems", "cpu_path_usable"}
    assert doc["cpu_path_usable"] is True
    assert doc["facts"]["mtl"] == facts["mtl"] and doc["facts"]["python"] == facts["python"]
    assert doc["facts"]["onnxruntime"]["providers"] == facts["onnxruntime"]["providers"]
    assert doc["problems"] == problems(facts)
    assert {k: v["usable"] for k, v in doc["paths"].items()} == {k: ok for k, (ok, _) in paths(facts).items()}


def test_problem_rules_name_the_fix(facts):
    def with_(**edits):
        f = copy.deepcopy(facts)
        for dotted, value in edits.items():
            node = f
            *parents, leaf = dotted.split("__")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        return problems(f)

    both = with_(onnxruntime__packages={"onnxruntime": "1.23.2", "onnxruntime-gpu": "1.23.2"})
    assert any("both onnxruntime and onnxruntime-gpu are installed" in p["problem"]
               and p["fix"].startswith("pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu")
               for p in both)
    old = with_(cuda_python__layout="old (cuda.cudart)", cuda_python__version="12.4.0")
    assert any("old module layout" in p["problem"] and "cuda-python>=12.6.1,<13" in p["fix"] for p in old)
    driver = with_(cuda_python__gpu_error="cudaGetDeviceCount (no usable CUDA device) failed with "
                                          "cudaErrorInsufficientDriver (35): the NVIDIA driver is older ...",
                   cuda_python__layout="cuda.bindings")
    assert any("cudaErrorInsufficientDriver (35)" in p["problem"] and "trt-cu12" in p["fix"] for p in driver)
    mixed = with_(tensorrt__packages={"tensorrt-cu13": "11.4.0.106"}, tensorrt__version="11.4.0",
                  cuda_python__version="12.9.4", cuda_python__bindings="12.9.4", driver__driver_cuda="12.4")
    assert any("built for CUDA 13 but cuda-python is for CUDA 12" in p["problem"] and "trt-cu13" in p["fix"]
               for p in mixed)
    assert any("driver supports CUDA 12.x" in p["problem"] for p in mixed)
    broken = with_(onnxruntime={"packages": {"onnxruntime": "1.23.2"}, "error": "ImportError: no libonnxruntime"})
    assert [p["level"] for p in broken if "onnxruntime does not import" in p["problem"]] == ["error"]


def test_doctor_exits_6_when_the_cpu_runtime_is_broken(tmp_path):
    """An onnxruntime that does not import (a broken install, shadowed here by a package on PYTHONPATH)."""
    shadow = tmp_path / "shadow" / "onnxruntime"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('libonnxruntime.so.1: cannot open shared object file')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "mtl.cli", "doctor"], capture_output=True, text=True, env=env,
                       timeout=120, check=False)
    assert r.returncode == 6, r.stdout + r.stderr
    assert "not usable  cpu runtime (onnxruntime CPU)" in r.stdout
    assert "  error: onnxruntime does not import (ImportError: libonnxruntime.so.1: cannot open shared object " \
           "file): the runtime cannot run; fix: pip install 'mtl[runtime]'" in r.stdout
