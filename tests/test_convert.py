"""`mtl data convert` / `mtl data inspect`: the real partial sample and tiny hand-made raw trees."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from mtl.cli import main
from mtl.config import ClassesConfig, a2d2_classes
from mtl.data import a2d2
from mtl.data.chunk import HAS_ALL, HAS_BOXES, HAS_IMAGE, HAS_LIDAR, HAS_SEMANTIC, Frame, read_chunk, write_chunk
from mtl.data.convert import convert
from mtl.data.inspect import inspect_chunks
from mtl.errors import ChunkError, ConfigError, DataError, OutputError
from mtl.geometry import scale_cam_matrix
from mtl.io import encode_png

CLASSES = ClassesConfig.a2d2_default()
RES_WH = (48, 32)                      # tiny raw camera so conversions take milliseconds
K = [[40.0, 0.0, 23.5], [0.0, 42.0, 15.5], [0.0, 0.0, 1.0]]
K_ORIG = [[44.0, 0.0, 23.5], [0.0, 44.0, 15.5], [0.0, 0.0, 1.0]]
SKY, ROAD, CAR = "#87ceff", "#ff00ff", "#ff0000"
K_REAL = [[1687.3369140625, 0.0, 965.4341405582381], [0.0, 1783.428466796875, 684.4193604186803], [0, 0, 1]]


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i: i + 2], 16) for i in (1, 3, 5))


def write_raw_tree(root: Path, frames: list[tuple[str, str, tuple[str, ...]]]) -> Path:
    """A raw A2D2-layout tree with a tiny front-centre camera; frames = (scene, id9, kinds present)."""
    root.mkdir(parents=True, exist_ok=True)
    cam = {"CamMatrix": K, "CamMatrixOriginal": K_ORIG, "Distortion": [[-0.2, 0, 0, 0, 0]], "Lens": "Telecam",
           "Resolution": list(RES_WH), "view": {}}
    (root / "cams_lidars.json").write_text(json.dumps({"cameras": {"front_center": cam}}))
    (root / "class_list.json").write_text(json.dumps(a2d2_classes()["a2d2_colours"]))
    w, h = RES_WH
    for n, (scene, fid, kinds) in enumerate(frames):
        rng = np.random.default_rng(n)

        def path(kind: str, scene: str = scene, fid: str = fid) -> Path:
            p = a2d2.raw_file_path(root, scene, kind, fid)
            p.parent.mkdir(parents=True, exist_ok=True)
            return p

        if "camera" in kinds:
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path("camera"))
        if "label" in kinds:
            label = np.zeros((h, w, 3), np.uint8)
            label[: h // 3], label[h // 3:, : w // 2], label[h // 3:, w // 2:] = _rgb(SKY), _rgb(ROAD), _rgb(CAR)
            Image.fromarray(label).save(path("label"))
        if "lidar" in kinds:
            pts = np.column_stack([rng.uniform(2, 40, 20 + n), rng.uniform(-5, 5, 20 + n), rng.uniform(-2, 1, 20 + n)])
            np.savez_compressed(path("lidar"), points=pts, reflectance=rng.integers(0, 256, len(pts)),
                                lidar_id=rng.integers(0, 5, len(pts)).astype(np.float64),
                                row=np.zeros(len(pts)), col=np.zeros(len(pts)))
        if "label3D" in kinds:
            boxes = {"box_0": {"class": "Car", "center": [12.0, 1.0, -0.8], "size": [4.2, 1.9, 1.6],
                               "axis": [0.0, 0.0, -1.0], "rot_angle": 0.25, "id": 0},
                     "box_1": {"class": "Animal", "center": [8.0, -2.0, -0.9], "size": [1.0, 0.5, 0.8],
                               "axis": [0.0, 0.0, 1.0], "rot_angle": 1.0, "id": 1}}
            path("label3D").write_text(json.dumps(boxes))
    return root


ALL = ("camera", "label", "lidar", "label3D")
COMPLETE = [("20180807_145028", "000000091", ALL), ("20180807_145028", "000000100", ALL),
            ("20181108_141609", "000000007", ALL)]


def _sha256s(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _chunks(out: Path) -> list:
    return [read_chunk(p) for p in sorted(out.glob("chunk_*.npz"))]


# ------------------------------------------------------------------------------------- real sample


@pytest.fixture(scope="module")
def sample_partial(a2d2_sample, tmp_path_factory):
    before = _sha256s(a2d2_sample)
    out = tmp_path_factory.mktemp("partial") / "out"
    summary = convert(a2d2_sample, out, partial=True, workers=1, progress=False, log=lambda m: None)
    return out, summary, before


def test_real_sample_default_mode_skips_everything_with_reasons(a2d2_sample, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DataError) as e:
        convert(a2d2_sample, out, workers=1, progress=False, log=lambda m: None)
    msg = str(e.value)
    assert msg.startswith(str(a2d2_sample)) and "no frame could be converted: 8 found" in msg
    for reason in ("3 missing lidar+label3D", "4 missing camera+lidar+label3D", "1 missing camera+label", "--partial"):
        assert reason in msg
    assert not out.exists() or not any(out.iterdir())


def test_real_sample_partial_frames_and_masks(sample_partial):
    out, summary, _ = sample_partial
    (chunk,) = _chunks(out)
    frames = {f.frame_id: f for f in chunk}
    assert sorted(frames) == ["20180807_145028/000006882", "20180810_142822/000006737",
                              "20180810_142822/000015196", "20181108_141609/000011097"]
    assert list(chunk.frame_ids) == sorted(chunk.frame_ids)                 # deterministic order
    lidar = frames.pop("20180810_142822/000015196")
    assert lidar.modality_mask == HAS_LIDAR | HAS_BOXES
    assert lidar.points.shape == (8196, 4) and lidar.image_png == b"" and lidar.semantic_png == b""
    assert lidar.boxes.shape == (4, 7) and lidar.box_class.tolist() == [1, 3, 3, 0]
    assert lidar.boxes[0, 6] == pytest.approx(-0.0320, abs=1e-4)            # Truck: rot 0.0320, axis z -1
    k = scale_cam_matrix(np.asarray(K_REAL), (1920, 1208), (320, 512))
    for f in frames.values():
        assert f.modality_mask == HAS_IMAGE | HAS_SEMANTIC
        assert len(f.points) == 0 and len(f.boxes) == 0
        assert f.image().shape == (320, 512, 3) and f.semantic().shape == (320, 512)
        np.testing.assert_allclose(f.cam_matrix, k, rtol=1e-6)
    assert chunk.meta["sem_classes"] == list(CLASSES.sem_classes) and chunk.meta["source"] == "a2d2"
    assert chunk.meta["converter_version"] == 1 and chunk.meta["camera"]["image_hw"] == [320, 512]

    saved = json.loads((out / "summary.json").read_text())
    assert saved == summary
    assert summary["frames_found"] == 8 and summary["frames_written"] == 4
    assert summary["skipped"] == {"no camera image or lidar": 4}
    assert summary["modalities"] == {"image": 3, "semantic": 3, "lidar": 1, "boxes": 1}
    assert summary["boxes_per_class"] == {"car": 1, "truck": 1, "pedestrian": 0, "cyclist": 2, "ignore": 0}
    assert summary["points"]["total"] == 8196 and summary["semantic_pixels"]["road"] > 0


def test_real_sample_files_unchanged_and_inspect_accepts(sample_partial, a2d2_sample):
    out, _, before = sample_partial
    assert _sha256s(a2d2_sample) == before
    report = inspect_chunks(out)
    assert report["frames"] == 4 and report["image_sizes"] == {"320x512": 3}
    assert report["points"]["min"] == report["points"]["max"] == 8196


# ------------------------------------------------------------------------------ hand-made raw trees


def test_tiny_complete_tree_converts_and_inspects(tmp_path):
    root = write_raw_tree(tmp_path / "raw", COMPLETE)
    out = tmp_path / "out"
    summary = convert(root, out, chunk_size=2, image_size="16x24", workers=1, progress=False)
    assert summary["frames_written"] == 3 and summary["skipped"] == {}
    assert [c["frames"] for c in summary["chunks"]] == [2, 1]
    chunks = _chunks(out)
    assert [f.frame_id for c in chunks for f in c] == [
        "20180807_145028/000000091", "20180807_145028/000000100", "20181108_141609/000000007"]
    f = chunks[0].frame(0)
    assert f.modality_mask == HAS_ALL and "modality_mask" not in chunks[0].arrays
    assert f.image().shape == (16, 24, 3)
    sem = f.semantic()
    names = list(CLASSES.sem_classes)
    assert set(np.unique(sem)) <= {names.index("sky"), names.index("road"), names.index("car"), 255}
    assert sem[0, 12] == names.index("sky") and sem[-1, 2] == names.index("road") and sem[-1, -3] == names.index("car")
    assert f.points.shape == (20, 4) and f.box_class.tolist() == [0, -1]
    np.testing.assert_allclose(f.boxes[:, 6], [-0.25, 1.0], atol=1e-6)
    np.testing.assert_allclose(f.cam_matrix, scale_cam_matrix(np.asarray(K), RES_WH, (16, 24)), rtol=1e-6)

    report = inspect_chunks(out)
    assert report["frames"] == 3 and report["boxes_per_class"]["car"] == 3 and report["boxes_per_class"]["ignore"] == 3
    assert report["points"] == {"frames": 3, "total": 63, "min": 20, "mean": 21.0, "max": 22,
                                **{k: report["points"][k] for k in ("x", "y", "z", "reflectance")}}
    assert report["semantic_pixels"]["sky"] > 0 and report["image_sizes"] == {"16x24": 3}


def test_original_size_keeps_cam_matrix(tmp_path):
    root = write_raw_tree(tmp_path / "raw", COMPLETE[:1])
    convert(root, tmp_path / "out", image_size="original", workers=1, progress=False)
    (chunk,) = _chunks(tmp_path / "out")
    assert chunk.frame(0).image().shape == (32, 48, 3)
    np.testing.assert_allclose(chunk.frame(0).cam_matrix, K, rtol=1e-6)


def test_workers_give_identical_chunks(tmp_path):
    root = write_raw_tree(tmp_path / "raw", COMPLETE)
    convert(root, tmp_path / "a", chunk_size=2, workers=1, progress=False)
    convert(root, tmp_path / "b", chunk_size=2, workers=2, progress=False)
    for name in ("chunk_00000.npz", "chunk_00001.npz"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_partial_modes_on_tiny_tree(tmp_path):
    root = write_raw_tree(tmp_path / "raw", [
        ("20180807_145028", "000000001", ALL),
        ("20180807_145028", "000000002", ("camera",)),
        ("20180807_145028", "000000003", ("lidar",)),
        ("20180807_145028", "000000004", ("label", "lidar", "label3D")),
        ("20180807_145028", "000000005", ("label", "label3D")),
    ])
    summary = convert(root, tmp_path / "strict", workers=1, progress=False, log=lambda m: None)
    assert summary["frames_written"] == 1
    assert summary["skipped"] == {"missing label+lidar+label3D": 1, "missing camera+label+label3D": 1,
                                  "missing camera": 1, "missing camera+lidar": 1}
    summary = convert(root, tmp_path / "partial", partial=True, workers=1, progress=False, log=lambda m: None)
    assert summary["frames_written"] == 4 and summary["skipped"] == {"no camera image or lidar": 1}
    masks = [f.modality_mask for c in _chunks(tmp_path / "partial") for f in c]
    assert masks == [HAS_ALL, HAS_IMAGE, HAS_LIDAR, HAS_LIDAR | HAS_BOXES]   # label without camera is dropped
    assert inspect_chunks(tmp_path / "partial")["modalities"] == {"image": 2, "semantic": 1, "lidar": 3, "boxes": 2}


def test_bad_file_aborts_or_is_skipped(tmp_path):
    root = write_raw_tree(tmp_path / "raw", COMPLETE)
    bad = a2d2.raw_file_path(root, "20180807_145028", "lidar", "000000100")
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(DataError, match="corrupt or truncated") as e:
        convert(root, tmp_path / "out", workers=1, progress=False)
    assert str(e.value).startswith(str(bad))
    assert not (tmp_path / "out").exists()                                    # nothing half-written
    logged: list[str] = []
    summary = convert(root, tmp_path / "out", skip_bad=True, workers=1, progress=False, log=logged.append)
    assert summary["frames_written"] == 2 and summary["skipped"] == {"bad lidar": 1}
    assert summary["bad_files"][0]["path"] == str(bad) and any(str(bad) in m for m in logged)


def test_overwrite_replaces_only_after_success(tmp_path):
    root = write_raw_tree(tmp_path / "raw", COMPLETE)
    out = tmp_path / "out"
    convert(root, out, chunk_size=1, workers=1, progress=False)
    assert len(list(out.glob("chunk_*.npz"))) == 3
    with pytest.raises(OutputError, match="--overwrite"):
        convert(root, out, workers=1, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # a failing conversion with --overwrite must not lose the old one
    a2d2.raw_file_path(root, "20181108_141609", "label3D", "000000007").write_text("{broken")
    with pytest.raises(DataError, match="not readable JSON"):
        convert(root, out, overwrite=True, workers=1, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # a successful one replaces it and removes stale chunks
    summary = convert(root, out, chunk_size=64, overwrite=True, skip_bad=True, workers=1, progress=False,
                      log=lambda m: None)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "chunk_00000.npz", "manifest.json", "summary.json"]
    assert summary["frames_written"] == 2


def test_bad_root_and_options(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        convert(tmp_path / "nope", tmp_path / "out", progress=False)
    root = write_raw_tree(tmp_path / "raw", COMPLETE[:1])
    with pytest.raises(ConfigError, match="HxW"):
        convert(root, tmp_path / "out", image_size="big", progress=False)
    (root / "cams_lidars.json").unlink()
    with pytest.raises(DataError, match="cams_lidars.json not found"):
        convert(root, tmp_path / "out", progress=False)
    root = write_raw_tree(tmp_path / "raw2", COMPLETE[:1])
    colours = dict(a2d2_classes()["a2d2_colours"], **{"#ff0000": "Truck 1"})
    (root / "class_list.json").write_text(json.dumps(colours))
    with pytest.raises(DataError, match="differs from mtl's packaged A2D2 colour table"):
        convert(root, tmp_path / "out", progress=False)


# ---------------------------------------------------------------------------------------- inspect


def _frame(fid: str, sem: np.ndarray, image_hw=(8, 12)) -> Frame:
    return Frame(frame_id=fid, image_png=encode_png(np.zeros((*image_hw, 3), np.uint8)), semantic_png=encode_png(sem),
                 points=np.zeros((0, 4), np.float32), boxes=np.zeros((0, 7), np.float32),
                 box_class=np.zeros(0, np.int16), cam_matrix=np.eye(3, dtype=np.float32))


def test_inspect_rejects_bad_semantic_maps_and_mixed_classes(tmp_path):
    meta = {"sem_classes": ["a", "b", "c"], "det_classes": ["car"], "ignore_index": 255}
    ok = write_chunk(tmp_path / "ok" / "chunk_00000.npz", [_frame("f0", np.full((8, 12), 255, np.uint8))], meta)
    assert inspect_chunks(ok)["semantic_pixels"] == {"a": 0, "b": 0, "c": 0, "ignore": 96}
    bad_id = write_chunk(tmp_path / "id.npz", [_frame("f1", np.full((8, 12), 3, np.uint8))], meta)
    with pytest.raises(ChunkError, match="frame f1: semantic id 3 is not < 3 classes") as e:
        inspect_chunks(bad_id)
    assert str(e.value).startswith(str(bad_id))
    bad_size = write_chunk(tmp_path / "size.npz", [_frame("f2", np.zeros((4, 12), np.uint8))], meta)
    with pytest.raises(ChunkError, match="semantic map is 4x12 but the image is 8x12"):
        inspect_chunks(bad_size)
    write_chunk(tmp_path / "ok" / "chunk_00001.npz", [_frame("f3", np.zeros((8, 12), np.uint8))],
                {**meta, "sem_classes": ["x", "y", "z"]})
    with pytest.raises(ChunkError, match="class names differ"):
        inspect_chunks(tmp_path / "ok")


def test_cli_convert_and_inspect(tmp_path):
    root = write_raw_tree(tmp_path / "raw", COMPLETE)
    out = tmp_path / "out"
    runner = CliRunner()
    r = runner.invoke(main, ["data", "convert", "--a2d2", str(root), "--out", str(out), "--chunk-size", "2",
                             "--image-size", "16x24", "--workers", "1", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip().startswith("converted 3/3 frames into 2 chunk(s)") and len(r.stdout.splitlines()) == 1
    r = runner.invoke(main, ["data", "inspect", str(out), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["frames"] == 3
    r = runner.invoke(main, ["data", "inspect", str(out / "chunk_00001.npz")])
    assert r.exit_code == 0 and "1 frames" in r.stdout and "OK" in r.stdout
    r = runner.invoke(main, ["data", "convert", "--a2d2", str(root), "--out", str(out), "--no-progress"])
    assert r.exit_code == OutputError.exit_code and "--overwrite" in r.stderr
    (out / "chunk_00001.npz").write_bytes(b"")
    r = runner.invoke(main, ["data", "inspect", str(out)])
    assert r.exit_code == ChunkError.exit_code
    assert r.stderr.strip() == (f"error: {out}: chunk_00001.npz is 0 bytes but manifest.json says "
                                f"{_listed_size(out, 'chunk_00001.npz')} "
                                "(changed or truncated after it was written)")
    (out / "manifest.json").unlink()          # a legacy directory: the chunk itself is then refused
    r = runner.invoke(main, ["data", "inspect", str(out)])
    assert r.exit_code == ChunkError.exit_code
    assert r.stderr.strip() == f"error: {out / 'chunk_00001.npz'}: file is empty (0 bytes)"


def _listed_size(out: Path, name: str) -> int:
    return next(e["size"] for e in json.loads((out / "manifest.json").read_text())["files"] if e["name"] == name)
