"""TensorRT and GPU paths.

Without a GPU (here, CI): the engine sidecar contract that is checked before TensorRT is imported (engine
hash, the sidecar's ONNX confined to the engine's folder, missing / huge ONNX), the exit codes of those
refusals through `mtl infer`, the nullptr-TypeError mapping of our `trt_create`, and the onnxruntime EP
options. With a GPU (tests marked `gpu` / `trt`, skipped with the reason elsewhere; `scripts/gpu_check.sh`
runs them): build -> deserialise -> run -> compare with onnxruntime CPU for fp32, fp16, INT8 and a 1:1:2
batch profile, the CUDA and TensorRT execution providers against the CPU, and the refusals on a real engine.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from click.testing import CliRunner
from conftest import ort_gpu_or_skip, tensorrt_or_skip, write_tiny_chunks

from mtl.cli import main
from mtl.errors import BackendUnavailableError, ModelMismatchError

# ------------------------------------------------------------------------------------------ helpers


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fake_engine_dir(root: Path, onnx: Path, **changes) -> Path:
    """An engine folder as `mtl export --trt` writes it (ONNX + engine + sidecar) around fake engine bytes:
    everything the checks before TensorRT look at is real."""
    from mtl.contract import read_onnx_metadata

    d = root / "eng"
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(onnx, d / "model.onnx")
    engine = d / "model.engine"
    engine.write_bytes(b"serialized engine stand-in")
    meta = read_onnx_metadata(d / "model.onnx")
    meta.update(tensorrt_version="10.9.0", gpu_name="NVIDIA H200", compute_capability="9.0",
                precision_recipe="strongly typed from fp32 ONNX", onnx_sha256=_sha(d / "model.onnx"),
                onnx_path="model.onnx", engine_sha256=_sha(engine), profiles=[])
    meta.update(changes)
    (d / "model.engine.json").write_text(json.dumps(meta))
    return engine


def infer_exit(engine: Path, chunks: Path, out: Path) -> tuple[int, list[str]]:
    r = CliRunner().invoke(main, ["infer", "--model", str(engine), "--data", str(chunks), "--out", str(out),
                                  "--backend", "tensorrt", "--no-progress", "--limit", "1"])
    return r.exit_code, r.output.strip().splitlines()


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    from test_runtime import tiny_artifacts

    return tiny_artifacts(tmp_path_factory.mktemp("trt_cpu"))


# ------------------------------------------------------------------- checks before TensorRT (no GPU)


def test_sidecar_onnx_is_confined_to_the_engine_folder(art, tmp_path):
    from mtl.runtime.backends import check_sidecar

    outside = tmp_path / "model.onnx"                      # exists, but outside the engine's folder
    shutil.copy(art["onnx"], outside)
    cases = {
        "../model.onnx": "leaves the engine's folder",
        str(outside): "is absolute",
        "sub/../../model.onnx": "leaves the engine's folder",
    }
    for value, reason in cases.items():
        engine = fake_engine_dir(tmp_path, art["onnx"], onnx_path=value)
        meta = json.loads((engine.parent / "model.engine.json").read_text())
        with pytest.raises(ModelMismatchError, match=reason) as e:
            check_sidecar(engine, meta)
        assert e.value.exit_code == 5 and e.value.path.endswith("model.engine.json")
        code, lines = infer_exit(engine, art["chunks"], tmp_path / "o")
        assert code == 5 and len(lines) == 1 and lines[0].startswith("error: ") and reason in lines[0]

    # a symlink inside the folder that points out of it is refused like `..`
    engine = fake_engine_dir(tmp_path, art["onnx"], onnx_path="link.onnx")
    (engine.parent / "link.onnx").symlink_to(outside)
    with pytest.raises(ModelMismatchError, match="leaves the engine's folder"):
        check_sidecar(engine, json.loads((engine.parent / "model.engine.json").read_text()))


def test_missing_onnx_and_missing_keys_refuse_instead_of_skipping_the_check(art, tmp_path):
    engine = fake_engine_dir(tmp_path, art["onnx"])
    (engine.parent / "model.onnx").unlink()
    code, lines = infer_exit(engine, art["chunks"], tmp_path / "o")
    assert code == 5 and "the ONNX model.onnx the engine was built from is missing next to it" in lines[0]

    for key in ("onnx_path", "engine_sha256"):
        engine = fake_engine_dir(tmp_path / key, art["onnx"])
        side = engine.parent / "model.engine.json"
        meta = json.loads(side.read_text())
        del meta[key]
        side.write_text(json.dumps(meta))
        code, lines = infer_exit(engine, art["chunks"], tmp_path / "o")
        assert code == 5 and len(lines) == 1 and key in lines[0]


def test_engine_hash_mismatch_is_refused_before_tensorrt_is_imported(art, tmp_path):
    """A tripwire `tensorrt` module on sys.path records any import attempt: the swapped engine is refused
    (exit 5) and TensorRT was never imported."""
    engine = fake_engine_dir(tmp_path, art["onnx"])
    engine.write_bytes(b"another engine under the same sidecar")
    trip = tmp_path / "tripwire"
    trip.mkdir()
    marker = tmp_path / "tensorrt_was_imported"
    (trip / "tensorrt.py").write_text(f"open({str(marker)!r}, 'w').close()\n__version__ = '10.9.0'\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(trip), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "mtl.cli", "infer", "--model", str(engine), "--data",
                        str(art["chunks"]), "--out", str(tmp_path / "o"), "--backend", "tensorrt", "--no-progress"],
                       capture_output=True, text=True, env=env, timeout=120, check=False)
    assert r.returncode == 5, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "engine bytes do not match its sidecar" in r.stderr
    assert not marker.exists()
    # the same folder with the right bytes gets past every pre-TensorRT check and reaches the tripwire
    engine.write_bytes(b"serialized engine stand-in")
    code = ("import json, sys\nfrom mtl.runtime.backends import check_sidecar\n"
            f"e = {str(engine)!r}\ncheck_sidecar(e, json.load(open(e + '.json')))\nprint('tensorrt' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "False" and not marker.exists(), r.stderr


def test_huge_onnx_is_refused_by_size_without_reading_it(art, tmp_path):
    from mtl.contract import MAX_ONNX_BYTES
    from mtl.runtime.backends import check_sidecar

    engine = fake_engine_dir(tmp_path, art["onnx"])
    with open(engine.parent / "model.onnx", "r+b") as f:       # sparse: no disk used, 2 GiB + 1 byte long
        f.truncate(MAX_ONNX_BYTES + 1)
    t0 = time.perf_counter()
    with pytest.raises(ModelMismatchError, match=r"model.onnx: ONNX model is 2.00 GiB, over the 2 GiB limit; "
                                                 r"refused without reading it"):
        check_sidecar(engine, json.loads((engine.parent / "model.engine.json").read_text()))
    assert time.perf_counter() - t0 < 2.0
    fifo = engine.parent / "fifo.onnx"                          # a reader of a FIFO would block forever
    os.mkfifo(fifo)
    meta = json.loads((engine.parent / "model.engine.json").read_text())
    with pytest.raises(ModelMismatchError, match="not a regular file"):
        check_sidecar(engine, dict(meta, onnx_path="fifo.onnx"))


def test_trt_create_maps_the_pybind11_nullptr_typeerror():
    """`trt.Builder(logger)` / `trt.Runtime(logger)` raise pybind11's TypeError when CUDA cannot start; our
    wrapper turns exactly that (and a None result) into one line with exit code 6, and nothing else."""
    from mtl.gpu import NULLPTR_MESSAGE, trt_create

    def nullptr_factory(_logger):
        raise TypeError("pybind11::init(): factory function returned nullptr")

    assert NULLPTR_MESSAGE in "pybind11::init(): factory function returned nullptr"
    for factory in (nullptr_factory, lambda _logger: None):
        with pytest.raises(BackendUnavailableError, match=r"^TensorRT could not create its builder \(trt.Builder\): "
                                                          r"CUDA failed to initialise \(") as e:
            trt_create(factory, object(), what="builder (trt.Builder)")
        assert e.value.exit_code == 6 and "\n" not in str(e.value)

    def wrong_arguments(_logger):
        raise TypeError("__init__(): incompatible constructor arguments")

    with pytest.raises(TypeError, match="incompatible constructor arguments"):
        trt_create(wrong_arguments, object(), what="builder")


def test_ort_provider_options_and_the_engine_cache_folder(tmp_path):
    from mtl.runtime.backends import CUDA_EP_OPTIONS, ort_providers, trt_cache_dir

    model = tmp_path / "export" / "model_fp16.onnx"
    model.parent.mkdir()
    assert trt_cache_dir(model) == tmp_path / "export" / "model_fp16.trt_cache"
    # a CPU-only onnxruntime: only the CPU provider, and no cache folder appears
    assert ort_providers("onnxruntime-trt", model, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert not trt_cache_dir(model).exists()
    got = ort_providers("onnxruntime-trt", model, ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                   "CPUExecutionProvider"])
    assert [p if isinstance(p, str) else p[0] for p in got] == ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                               "CPUExecutionProvider"]
    trt_opts = got[0][1]
    assert trt_opts["trt_engine_cache_enable"] == "1" and trt_opts["trt_timing_cache_enable"] == "1"
    assert trt_opts["trt_engine_cache_path"] == trt_opts["trt_timing_cache_path"] == str(trt_cache_dir(model))
    assert trt_cache_dir(model).is_dir()                       # created on demand
    assert got[1][1] == CUDA_EP_OPTIONS and got[1][1]["device_id"] == "0"
    # an unwritable model folder is one line, exit 6 (auto then falls back to the CUDA EP and says why)
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "model.trt_cache").write_text("a file where the folder should go")
    with pytest.raises(BackendUnavailableError, match="cannot create the TensorRT engine cache folder"):
        ort_providers("onnxruntime-trt", ro / "model.onnx", ["TensorrtExecutionProvider"])


# ------------------------------------------------------------------------------------ GPU: fixtures


@pytest.fixture(scope="module")
def gpu_art(tmp_path_factory):
    """Real engines from `mtl export --trt` of a tiny model: fp32 + fp16 + INT8 (static batch 1), and an
    fp32 engine with a 1:1:2 batch profile; skipped with the reason where TensorRT cannot run."""
    tensorrt_or_skip()
    from test_runtime import runtime_cfg, save_tiny_checkpoint

    root = tmp_path_factory.mktemp("trt_gpu")
    cfg = runtime_cfg()
    ckpt = save_tiny_checkpoint(cfg, root / "ckpt.pt")
    val = write_tiny_chunks(root / "val", cfg, n_frames=4, per_chunk=2, seed=1)
    calib = write_tiny_chunks(root / "calib", cfg, n_frames=4, per_chunk=2, seed=2)
    common = ["--val-data", str(val), "--calib-data", str(calib), "--calib-frames", "4", "--gate-frames", "4",
              "--parity-frames", "2", "--max-drop-miou", "1", "--max-drop-map", "1", "--trt"]
    res = CliRunner().invoke(main, ["export", str(ckpt), "--out", str(root / "static"), "--fp16", "--int8", *common])
    assert res.exit_code == 0, res.output + repr(res.exception)
    res = CliRunner().invoke(main, ["export", str(ckpt), "--out", str(root / "dynamic"), "--trt-profile", "1:1:2",
                                    *common])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return {"cfg": cfg, "ckpt": ckpt, "val": val, "root": root, "static": root / "static",
            "dynamic": root / "dynamic"}


def _feeds(cfg, chunks: Path, n: int) -> list[dict[str, np.ndarray]]:
    from mtl.runtime import Pipeline, iter_frames

    pipe = Pipeline.open(chunks.parent / "static" / "model.onnx", "onnxruntime", threads=1)
    from mtl.runtime.preprocess import StageTimer

    out = []
    for f in list(iter_frames(chunks, pipe.cfg))[:n]:
        feeds, _, _ = pipe.preprocess(f, StageTimer())
        out.append(feeds)
    pipe.close()
    return out


def _ort_cpu(model: Path, feeds: dict) -> dict[str, np.ndarray]:
    from mtl.runtime.backends import OrtBackend
    from mtl.runtime.preprocess import StageTimer

    return OrtBackend(model, "onnxruntime", threads=1).run(feeds, StageTimer())


def _rel_err(got: dict, ref: dict) -> dict[str, float]:
    return {k: float(np.max(np.abs(np.asarray(got[k], np.float32) - ref[k])) / (np.max(np.abs(ref[k])) + 1e-6))
            for k in ("bbox_heatmap", "bbox_reg", "sem_logits")}


# ------------------------------------------------------------------------------ GPU: TensorRT engines


@pytest.mark.gpu
@pytest.mark.trt
@pytest.mark.parametrize("variant,tol", [("model", 2e-2), ("model_fp16", 5e-2), ("model_int8", 0.15)])
def test_engine_runs_and_matches_onnxruntime_cpu(gpu_art, variant, tol):
    """fp32 (TF32 kernels allowed), fp16 and INT8 engines against onnxruntime CPU on the same ONNX."""
    from mtl.contract import read_sidecar
    from mtl.runtime import Pipeline
    from mtl.runtime.preprocess import StageTimer

    d = gpu_art["static"]
    engine, onnx = d / f"{variant}.engine", d / f"{variant}.onnx"
    side = read_sidecar(engine)
    assert side["engine_sha256"] == _sha(engine) and side["onnx_path"] == onnx.name
    pipe = Pipeline.open(engine, "tensorrt")
    assert pipe.backend_name == "tensorrt" and pipe.backend.batch == 1
    for feeds in _feeds(gpu_art["cfg"], gpu_art["val"], 2):
        timer = StageTimer()
        got = pipe.infer(feeds, timer)
        assert {"h2d", "inference", "d2h"} <= set(timer.ms)
        err = _rel_err(got, _ort_cpu(onnx, feeds))
        assert max(err.values()) <= tol, err
    if variant == "model":                                  # the whole frame path, boxes decoded from the engine
        from mtl.runtime import iter_frames

        r = pipe.run_frame(next(iter(iter_frames(gpu_art["val"], pipe.cfg))))
        assert r.semantic.shape == tuple(gpu_art["cfg"].camera.image_hw) and r.boxes.shape[1] == 7
    pipe.close()


@pytest.mark.gpu
@pytest.mark.trt
def test_dynamic_profile_engine_runs_batch_1_and_2_and_refuses_3(gpu_art):
    from mtl.contract import read_sidecar
    from mtl.runtime.backends import TensorRTBackend, check_sidecar
    from mtl.runtime.preprocess import StageTimer

    d = gpu_art["dynamic"]
    engine = d / "model.engine"
    meta = read_sidecar(engine)
    assert meta["profiles"][0]["image"]["min"][0] == 1 and meta["profiles"][0]["image"]["max"][0] == 2
    check_sidecar(engine, meta)
    b = TensorRTBackend(engine, meta)
    assert b.batch_range == (1, 2) and b.input_shapes["image"][0] is None
    one = _feeds(gpu_art["cfg"], gpu_art["val"], 2)
    two = {k: np.concatenate([one[0][k], one[1][k]]) for k in one[0]}
    for feeds in (one[0], two, one[1]):                      # 1 -> 2 -> 1: shapes follow the feeds each time
        got = b.run(feeds, StageTimer())
        assert got["bbox_heatmap"].shape[0] == feeds["image"].shape[0]
        err = _rel_err(got, _ort_cpu(d / "model.onnx", feeds))
        assert max(err.values()) <= 2e-2, err
    three = {k: np.concatenate([two[k], one[0][k]]) for k in two}
    with pytest.raises(ModelMismatchError, match=r"batch 3 is outside what the engine runs \(batch 1..2\)"):
        b.run(three, StageTimer())
    b.close()


@pytest.mark.gpu
@pytest.mark.trt
def test_foreign_or_corrupt_timing_cache_is_ignored_and_replaced(gpu_art, tmp_path):
    from mtl.export.tensorrt_build import build_engine

    """A cache this TensorRT rejects (set_timing_cache -> False) never fails the build: it is reported in the
    log and the sidecar, and the file is replaced by this GPU's cache, which the next build loads."""
    garbage = b"\x00not a timing cache from this GPU" * 64
    cache = tmp_path / "timing.cache"
    cache.write_bytes(garbage)
    notes: list[str] = []
    side = build_engine(gpu_art["static"] / "model.onnx", tmp_path / "model.engine", timing_cache=cache,
                        log=notes.append)
    assert side["timing_cache"] in ("loaded", "ignored (another GPU or TensorRT version)")
    assert (side["timing_cache"] != "loaded") == any("timing cache made by another GPU" in n for n in notes)
    assert (tmp_path / "model.engine.json").is_file() and cache.read_bytes() != garbage
    side2 = build_engine(gpu_art["static"] / "model.onnx", tmp_path / "again.engine", timing_cache=cache)
    assert side2["timing_cache"] == "loaded"                  # the replaced cache is this GPU's


@pytest.mark.gpu
@pytest.mark.trt
def test_refusals_on_a_real_engine_exit_with_the_documented_codes(gpu_art, tmp_path):
    src = gpu_art["static"]
    chunks = gpu_art["val"]

    def engine_copy(name: str, **side_changes) -> Path:
        d = tmp_path / name
        d.mkdir()
        for f in ("model.onnx", "model.engine", "model.engine.json"):
            shutil.copy(src / f, d / f)
        if side_changes:
            meta = json.loads((d / "model.engine.json").read_text())
            meta.update(side_changes)
            (d / "model.engine.json").write_text(json.dumps(meta))
        return d / "model.engine"

    cases = [
        (engine_copy("gpu", gpu_name="Some Other GPU"), "engine was built for gpu_name 'Some Other GPU'"),
        (engine_copy("trtver", tensorrt_version="9.9.9"), "engine was built with TensorRT 9.9.9"),
        (engine_copy("escape", onnx_path="../static/model.onnx"), "leaves the engine's folder"),
    ]
    swapped = engine_copy("swapped")
    shutil.copy(src / "model_fp16.engine", swapped)                # another real engine under this sidecar
    cases.append((swapped, "engine bytes do not match its sidecar"))
    missing = engine_copy("missing")
    (missing.parent / "model.onnx").unlink()
    cases.append((missing, "is missing next to it"))
    for engine, reason in cases:
        code, lines = infer_exit(engine, chunks, tmp_path / "out")
        assert code == 5 and len(lines) == 1 and lines[0].startswith("error: ") and reason in lines[0], lines
    code, lines = infer_exit(engine_copy("ok"), chunks, tmp_path / "out_ok")
    assert code == 0, lines


# ------------------------------------------------------------------------- GPU: onnxruntime providers


@pytest.mark.gpu
def test_cuda_execution_provider_matches_cpu(tmp_path):
    ort_gpu_or_skip("CUDAExecutionProvider")
    from test_runtime import tiny_artifacts

    from mtl.runtime import Pipeline, iter_frames
    from mtl.runtime.preprocess import StageTimer

    a = tiny_artifacts(tmp_path)
    try:
        gpu = Pipeline.open(a["onnx"], "onnxruntime-cuda")
    except BackendUnavailableError as e:
        pytest.fail(f"onnxruntime-gpu is installed but its CUDA EP does not start: {e} (run `mtl doctor`)")
    assert gpu.backend.providers[0] == "CUDAExecutionProvider"
    cpu = Pipeline.open(a["onnx"], "onnxruntime", threads=1)
    for f in iter_frames(a["chunks"], cpu.cfg):
        feeds, _, _ = cpu.preprocess(f, StageTimer())
        timer = StageTimer()
        err = _rel_err(gpu.infer(feeds, timer), cpu.infer(feeds, StageTimer()))
        assert max(err.values()) <= 2e-2, err
        assert {"h2d", "inference", "d2h"} <= set(timer.ms)


@pytest.mark.gpu
@pytest.mark.trt
def test_tensorrt_execution_provider_matches_cpu_and_caches_its_engine(tmp_path):
    ort_gpu_or_skip("TensorrtExecutionProvider")
    from test_runtime import tiny_artifacts

    from mtl.runtime import Pipeline, iter_frames
    from mtl.runtime.backends import trt_cache_dir
    from mtl.runtime.preprocess import StageTimer

    a = tiny_artifacts(tmp_path)
    try:
        p = Pipeline.open(a["onnx"], "onnxruntime-trt")
    except BackendUnavailableError as e:
        pytest.skip(f"onnxruntime's TensorRT EP does not start here (needs TensorRT 10 libraries): {e}")
    cpu = Pipeline.open(a["onnx"], "onnxruntime", threads=1)
    f = next(iter(iter_frames(a["chunks"], cpu.cfg)))
    feeds, _, _ = cpu.preprocess(f, StageTimer())
    err = _rel_err(p.infer(feeds, StageTimer()), cpu.infer(feeds, StageTimer()))
    assert max(err.values()) <= 2e-2, err
    cached = [q for q in trt_cache_dir(a["onnx"]).iterdir() if q.is_file()]
    assert cached, "the TensorRT EP wrote no engine / timing cache beside the model"
    t0 = time.perf_counter()                               # a second session loads the cached engine
    Pipeline.open(a["onnx"], "onnxruntime-trt").close()
    assert time.perf_counter() - t0 < 60
