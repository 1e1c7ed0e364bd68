"""`mtl data convert --ray` and `mtl infer --ray` (mtl.fleet, mtl.data.convert_fleet, mtl.runtime.infer_fleet) on
a real 2-CPU local Ray cluster started once for the module: the same chunks / results as one machine whatever the
worker count, resume after a failed or killed job runs only the missing shards, a worker SIGKILLed mid-job is
retried, and without ray one line naming the extra (exit 6)."""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_cfg, write_tiny_chunks
from test_convert import ALL, write_raw_tree

from mtl.data import a2d2
from mtl.data.chunk import HAS_BOXES, HAS_IMAGE, HAS_LIDAR, HAS_SEMANTIC, read_chunk
from mtl.data.convert import convert
from mtl.errors import DataError

ray = pytest.importorskip("ray", reason="the [fleet] extra (ray) is not installed")

TIMING_KEYS = {"timing_ms", "mean_timing_ms", "wall_s", "elapsed_s", "seconds_per_frame"}
SCENE_A, SCENE_B = "20180807_145028", "20181108_141609"
# scene A: 5 frames, one of them without LiDAR + boxes (kept by --partial); scene B: 3 frames
RAW_FRAMES = ([(SCENE_A, f"{i:09d}", ALL) for i in (91, 100, 105, 110)] + [(SCENE_A, "000000120", ("camera", "label"))]
              + [(SCENE_B, f"{i:09d}", ALL) for i in (7, 8, 9)])


@pytest.fixture(scope="module")
def cluster():
    """A private local cluster of 2 CPUs; mtl's --ray calls keep this connection. Yields its address."""
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, logging_level=logging.ERROR,
             log_to_driver=False, object_store_memory=100 << 20)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _strip(doc, drop=()):
    """A JSON document without its timings (and the keys in ``drop``); object addresses that PIL puts into
    its error messages (``<_io.BytesIO object at 0x7f...>``, different in every process) blanked."""
    if isinstance(doc, dict):
        return {k: _strip(v) for k, v in doc.items() if k not in TIMING_KEYS and k not in drop}
    if isinstance(doc, list):
        return [_strip(v) for v in doc]
    return re.sub(r" at 0x[0-9a-f]+", " at 0x", doc) if isinstance(doc, str) else doc


def _quiet(_msg: str) -> None:
    pass


# ------------------------------------------------------------------------------------------ convert


@pytest.fixture(scope="module")
def raw_tree(tmp_path_factory) -> Path:
    root = write_raw_tree(tmp_path_factory.mktemp("fleet_raw") / "raw", RAW_FRAMES)
    bad = a2d2.raw_file_path(root, SCENE_B, "lidar", "000000008")
    bad.write_bytes(bad.read_bytes()[:100])                      # a truncated LiDAR file: --skip-bad skips it
    return root


def _convert(raw: Path, out: Path, **kw) -> dict:
    return convert(raw, out, chunk_size=2, partial=True, skip_bad=True, progress=False, log=_quiet, **kw)


def _chunk_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("chunk_*.npz"))}


def test_convert_on_ray_writes_the_chunks_of_one_machine_whatever_the_worker_count(cluster, raw_tree, tmp_path):
    one = _convert(raw_tree, tmp_path / "one", workers=1)
    ref = _chunk_files(tmp_path / "one")
    assert list(ref) == ["chunk_00000.npz", "chunk_00001.npz", "chunk_00002.npz", "chunk_00003.npz"]
    assert one["frames_written"] == 7 and one["skipped"] == {"bad lidar": 1}
    ids = [str(i) for name in ref for i in read_chunk(tmp_path / "one" / name).frame_ids]
    assert ids == sorted(ids) and len(ids) == 7 and f"{SCENE_B}/000000008" not in ids
    for workers in (1, 2):
        out = tmp_path / f"ray{workers}"
        s = _convert(raw_tree, out, ray_address="local", ray_workers=workers)
        assert _chunk_files(out) == ref, workers                          # names, frame order, bytes
        assert s["fleet"]["shards"] == 5 and s["fleet"]["shards_run"] == 5     # scene A: 2 + 2 + 1, B: 2 + 1
        assert s["options"]["workers"] == workers and s["options"]["engine"] == "ray"
        drop = ("fleet", "options", "out")
        assert _strip(s, drop) == _strip(one, drop)                       # counts, bad files, statistics
        chunks = [[e for e in json.loads((d / "manifest.json").read_text())["files"] if e["name"] != "summary.json"]
                  for d in (out, tmp_path / "one")]
        assert chunks[0] == chunks[1] and len(chunks[0]) == 4
        assert not list(out.glob(".convert-fleet-*"))                     # the staging folder is gone


def test_convert_rerun_after_a_failed_job_converts_only_the_missing_shards(cluster, tmp_path):
    raw = write_raw_tree(tmp_path / "raw", RAW_FRAMES)               # every file good
    ref = _convert(raw, tmp_path / "one", workers=1)
    last = a2d2.raw_file_path(raw, SCENE_B, "lidar", "000000009")    # in the last of the 5 shards (3 + 2)
    saved = last.read_bytes()
    last.write_bytes(saved[:100])
    out = tmp_path / "ray"
    # without --skip-bad the job stops there; one worker runs the shards in order, so 0..3 are recorded first
    with pytest.raises(DataError, match="000000009"):
        convert(raw, out, chunk_size=2, partial=True, progress=False, log=_quiet, ray_address="local",
                ray_workers=1)
    assert not list(out.glob("chunk_*.npz")) and not (out / "summary.json").exists()
    last.write_bytes(saved)
    s = convert(raw, out, chunk_size=2, partial=True, progress=False, log=_quiet, ray_address="local", ray_workers=2)
    assert s["fleet"]["shards"] == 5 and s["fleet"]["shards_reused"] == 4 and s["fleet"]["shards_run"] == 1
    assert s["frames_written"] == ref["frames_written"] == 8
    assert _chunk_files(out) == _chunk_files(tmp_path / "one")


def test_convert_worker_killed_mid_job_is_retried(cluster, raw_tree, tmp_path, monkeypatch):
    _convert(raw_tree, tmp_path / "one", workers=1)
    monkeypatch.setenv("MTL_FAULT_SHARD", "1")                        # shard 1's first attempt SIGKILLs its worker
    s = _convert(raw_tree, tmp_path / "ray", ray_address="local", ray_workers=2)
    assert _chunk_files(tmp_path / "ray") == _chunk_files(tmp_path / "one")
    assert s["fleet"]["shards_run"] == 5 and s["frames_written"] == 7


# ------------------------------------------------------------------------------------------ infer


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    """A tiny exported model and 7 chunk frames in 4 chunks (one LiDAR-only, one camera-only), and the one-machine
    results with overlays and --eval."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from test_runtime import tiny_artifacts

    from mtl.runtime.infer import infer_directory

    root = tmp_path_factory.mktemp("fleet_infer")
    a = tiny_artifacts(root)
    masks = {2: HAS_LIDAR | HAS_BOXES, 5: HAS_IMAGE | HAS_SEMANTIC}
    a["data"] = write_tiny_chunks(root / "data", a["cfg"], n_frames=7, per_chunk=2, seed=5, masks=masks)
    a["ref"] = root / "one"
    a["summary"] = infer_directory(a["onnx"], a["data"], a["ref"], backend="onnxruntime", overlay_images=True,
                                   evaluate=True, progress=False)
    return a


def _infer(art, out: Path, **kw) -> dict:
    from mtl.runtime.infer import infer_directory

    return infer_directory(art["onnx"], kw.pop("data", art["data"]), out, backend="onnxruntime",
                           overlay_images=True, evaluate=True, progress=False, **kw)


def assert_same_results(ref: Path, out: Path) -> None:
    """Frame files byte-identical (PNGs) or equal modulo timings (JSON); summary and manifest likewise."""
    names = sorted(p.name for p in (ref / "frames").iterdir())
    assert names == sorted(p.name for p in (out / "frames").iterdir())
    for n in names:
        a, b = (ref / "frames" / n).read_bytes(), (out / "frames" / n).read_bytes()
        if n.endswith(".png"):
            assert a == b, n
        else:
            assert _strip(json.loads(a)) == _strip(json.loads(b)), n
    drop = ("out", "fleet", "frames_resumed")
    s_ref, s = (json.loads((d / "summary.json").read_text()) for d in (ref, out))
    assert _strip(s_ref, drop) == _strip(s, drop)                      # frame list in order, counts, bad, metrics
    m_ref, m = (json.loads((d / "manifest.json").read_text()) for d in (ref, out))
    frame_entries = [[e for e in x["files"] if e["name"].startswith("frames/")] for x in (m_ref, m)]
    frame_json = [[{**e, "sha256": None, "size": None} if e["name"].endswith(".json") else e for e in f]
                  for f in frame_entries]
    assert frame_json[0] == frame_json[1]                              # PNG hashes equal; JSON differ by timings
    for e in m["files"]:                                               # and the manifest tells the truth
        assert (out / e["name"]).stat().st_size == e["size"], e["name"]


def test_infer_on_ray_writes_the_results_of_one_machine(cluster, art, tmp_path):
    assert art["summary"]["frames_written"] == 7
    assert art["summary"]["modalities"] == {"camera+lidar": 5, "camera-only": 1, "lidar-only": 1}
    for workers in (1, 2):
        out = tmp_path / f"ray{workers}"
        s = _infer(art, out, ray_address="local", ray_workers=workers)
        assert_same_results(art["ref"], out)
        assert s["fleet"] == {"engine": "ray", "ray": "local", "workers": workers, "threads_per_worker": 1,
                              "gpus_per_worker": 0, "shards": 4, "shards_kept": 0, "shards_run": 4}


def test_infer_skip_bad_counts_across_workers_into_one_summary(cluster, art, tmp_path):
    import numpy as np
    from test_bad_inputs_deploy import _replace_png

    data = write_tiny_chunks(tmp_path / "d", art["cfg"], n_frames=8, per_chunk=1, seed=4)
    (data / "chunk_00002.npz").write_bytes((data / "chunk_00002.npz").read_bytes()[:300])     # does not list
    with np.load(data / "chunk_00005.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    _replace_png("image_png", lambda b: b[:40])(arrays)                                         # PNG does not decode
    with open(data / "chunk_00005.npz", "wb") as f:
        np.savez(f, **arrays)
    logs: dict[str, list[str]] = {"one": [], "ray": []}
    one = _infer(art, tmp_path / "one", data=data, skip_bad=True, log=logs["one"].append)
    s = _infer(art, tmp_path / "ray", data=data, skip_bad=True, log=logs["ray"].append, ray_address="local")
    assert one["frames_written"] == 6 and sum(one["frames_skipped"].values()) == 2
    assert s["frames_skipped"] == one["frames_skipped"] and _strip(s["bad"]) == _strip(one["bad"])
    assert _strip(logs["ray"]) == _strip(logs["one"]) and len(logs["one"]) == 2
    assert_same_results(tmp_path / "one", tmp_path / "ray")


def test_infer_raw_tree_on_ray_scene_pieces(cluster, tmp_path, monkeypatch):
    """A raw tree: shards are pieces of a scene (here 2 frames), a frame with a bad file is skipped and counted."""
    pytest.importorskip("torch")
    from dataclasses import replace

    from test_runtime import export_tiny, runtime_cfg, save_tiny_checkpoint

    from mtl.data.a2d2 import read_camera_config
    from mtl.runtime import infer_fleet

    raw = write_raw_tree(tmp_path / "raw", RAW_FRAMES)
    bad = a2d2.raw_file_path(raw, SCENE_A, "lidar", "000000100")
    bad.write_bytes(bad.read_bytes()[:100])
    base = runtime_cfg()
    cfg = replace(base, camera=read_camera_config(raw / "cams_lidars.json", base=base.camera))
    onnx = export_tiny(save_tiny_checkpoint(cfg, tmp_path / "ckpt.pt"), tmp_path / "model.onnx")
    monkeypatch.setattr(infer_fleet, "RAW_SHARD_FRAMES", 2)
    art = {"onnx": onnx, "data": raw}
    one = _infer(art, tmp_path / "one", skip_bad=True)
    s = _infer(art, tmp_path / "ray", skip_bad=True, ray_address="local")
    assert one["frames_written"] == 7 and one["frames_skipped"] == {"bad frame": 1}
    assert s["fleet"]["shards"] == 5                                   # scene A: 2 + 2 + 1 frames, scene B: 2 + 1
    assert_same_results(tmp_path / "one", tmp_path / "ray")


def test_infer_rerun_after_a_killed_driver_runs_only_the_missing_shards(cluster, art, tmp_path):
    """The driver (its own process, joining this cluster by address) is SIGKILLed right after shard 1 was
    written; the same command with --resume runs shards 2 and 3 only, and the set is the one-machine set."""
    out = tmp_path / "ray"
    fault_log = tmp_path / "fault.log"
    env = {**os.environ, "MTL_FAULT_AT_WRITE": "2", "MTL_FAULT_LOG": str(fault_log)}
    cmd = [sys.executable, "-m", "mtl.cli", "infer", "--model", str(art["onnx"]), "--data", str(art["data"]),
           "--out", str(out), "--backend", "onnxruntime", "--overlay", "--eval", "--no-progress",
           "--ray", cluster, "--ray-workers", "1"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr
    assert fault_log.read_text().splitlines()[-1].split("\t")[1] == "shard 1 written"
    assert not (out / "summary.json").exists() and len(list((out / "frames").glob("*.json"))) == 4
    s = _infer(art, out, resume=True, ray_address=cluster, ray_workers=1)
    assert s["fleet"]["shards_kept"] == 2 and s["fleet"]["shards_run"] == 2
    assert s["frames_resumed"] == 4 and s["frames_written"] == 7
    assert_same_results(art["ref"], out)


def test_infer_worker_killed_mid_job_is_retried(cluster, art, tmp_path, monkeypatch):
    monkeypatch.setenv("MTL_FAULT_SHARD", "1")                        # shard 1's first attempt SIGKILLs its actor
    out = tmp_path / "ray"
    s = _infer(art, out, ray_address="local", ray_workers=2)
    assert (out / ".fault-1").exists()                                 # the fault did happen
    assert s["fleet"]["shards_run"] == 4
    assert_same_results(art["ref"], out)


def test_infer_gpu_backend_on_a_cluster_without_gpus_is_one_line(cluster, art, tmp_path):
    from mtl.errors import BackendUnavailableError
    from mtl.runtime.infer import infer_directory

    with pytest.raises(BackendUnavailableError, match="needs a GPU; the Ray cluster has none"):
        infer_directory(art["onnx"], art["data"], tmp_path / "o", backend="onnxruntime-cuda", progress=False,
                        ray_address="local")
    assert not (tmp_path / "o").exists()


def test_run_tasks_keeps_at_most_window_tasks_in_flight(cluster):
    """Tasks slower than the driver's 1 s wait: a wait that times out must not submit one more."""
    import time

    from mtl.fleet import remote, run_tasks

    task = remote()
    live, peak, results = 0, 0, []

    def submit(i):
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        return task.remote(time.sleep, 1.3)

    def done(i, value):
        nonlocal live
        live -= 1
        results.append(i)

    run_tasks(submit, range(3), 1, done, "sleep")
    assert peak == 1 and results == [0, 1, 2]


# ------------------------------------------------------------------------------------------ without ray


@pytest.mark.parametrize("command", ["convert", "infer"])
def test_without_ray_one_line_names_the_extra_and_exit_6(tmp_path, command):
    args = (["data", "convert", "--a2d2", str(tmp_path), "--out", str(tmp_path / "o")] if command == "convert" else
            ["infer", "--model", str(tmp_path / "m.onnx"), "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    hide = "import sys; sys.modules['ray'] = None; from mtl.cli import main; sys.argv[0] = 'mtl'; main()"
    r = subprocess.run([sys.executable, "-c", hide, *args, "--ray"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 6, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "pip install 'mtl[fleet]'" in lines[0], r.stderr
    assert not (tmp_path / "o").exists()


def test_ray_workers_without_ray_is_refused(tmp_path):
    from click.testing import CliRunner

    from mtl.cli import main

    cfg = tiny_cfg()
    data = write_tiny_chunks(tmp_path / "d", cfg)
    r = CliRunner().invoke(main, ["infer", "--model", str(tmp_path / "m.onnx"), "--data", str(data), "--out",
                                  str(tmp_path / "o"), "--ray-workers", "2"])
    assert r.exit_code == 2 and "--ray-workers needs --ray" in r.stderr
