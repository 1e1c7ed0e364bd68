"""`mtl data synth`: real A2D2 layout and formats, cross-modal consistency, determinism, CLI behaviour."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtl import geometry
from mtl.config import CameraConfig, a2d2_classes
from mtl.data import synth
from mtl.errors import DataError, OutputError

SCALE = 0.15          # ray-cast resolution for tests; the PNGs are still full size
FRAMES, SEED, SCENE_SIZE = 3, 7, 2
NAME_RE = re.compile(r"^(\d{14})_(camera|label|lidar|label3D)_frontcenter_(\d{9})\.(png|npz|json)$")
SEM_BASE = {"Car": "Car", "VanSUV": "Car", "Truck": "Truck", "Bus": "Truck", "Pedestrian": "Pedestrian",
            "Cyclist": "Bicycle"}


def _gen(out: Path, **kw) -> dict:
    args = {"frames": FRAMES, "seed": SEED, "workers": 1, "scene_size": SCENE_SIZE, "_render_scale": SCALE}
    args.update(kw)
    return synth.generate(out, **args)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "raw"
    _gen(out)
    return out


@pytest.fixture(scope="module")
def camera() -> CameraConfig:
    return CameraConfig.a2d2_front_center()


@pytest.fixture(scope="module")
def undistort(camera):
    return geometry.undistort_map(camera, (1208, 1920))


def _frames(root: Path) -> list[dict[str, Path]]:
    """{kind: path} per frame id, found by walking the scene folders."""
    out: dict[str, dict[str, Path]] = {}
    for p in sorted(root.glob("*/*/cam_front_center/*")):
        m = NAME_RE.match(p.name)
        if m:
            out.setdefault(m.group(3), {})[m.group(2) + ("_info" if p.suffix == ".json" and m.group(2) == "camera"
                                                          else "")] = p
    return [out[k] for k in sorted(out)]


def _colour_names() -> dict[tuple[int, int, int], str]:
    return {tuple(int(h[i: i + 2], 16) for i in (1, 3, 5)): n for h, n in a2d2_classes()["a2d2_colours"].items()}


def _codes(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (...) int64 0xRRGGBB (fast unique / bincount over colours)."""
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _code_names() -> dict[int, str]:
    return {(r << 16) | (g << 8) | b: n for (r, g, b), n in _colour_names().items()}


def _boxes(path: Path) -> list[dict]:
    return list(json.loads(path.read_text()).values())


def _box7(b: dict) -> list[float]:
    return [*b["center"], *b["size"], b["rot_angle"] * b["axis"][2]]


# ------------------------------------------------------------------------------------------ layout


def test_layout_names_and_calibration(dataset):
    cal = json.loads((dataset / "cams_lidars.json").read_text())
    assert cal["vehicle"]["view"]["x-axis"] == [1.0, 0.0, 0.0]
    assert set(cal["lidars"]["front_center"]["view"]) == {"origin", "x-axis", "y-axis"}
    cam = cal["cameras"]["front_center"]
    ref = CameraConfig.a2d2_front_center()
    assert (np.allclose(cam["CamMatrix"], ref.cam_matrix)
            and np.allclose(cam["CamMatrixOriginal"], ref.cam_matrix_original))
    assert cam["Distortion"] == [list(ref.distortion)] and cam["Lens"] == "Telecam"
    assert cam["Resolution"] == [1920, 1208] and cam["tstamp_delay"] == 25000
    assert list(json.loads((dataset / "class_list.json").read_text()).items()) == \
        list(a2d2_classes()["a2d2_colours"].items())

    scenes = sorted(p.name for p in dataset.iterdir() if p.is_dir())
    assert scenes == ["20990101_000000", "20990101_000100"]          # 3 frames, 2 per scene
    frames = _frames(dataset)
    assert len(frames) == FRAMES
    for i, f in enumerate(frames):
        assert set(f) == {"camera", "camera_info", "label", "lidar", "label3D"}
        for kind, p in f.items():
            scene = p.parents[2].name
            assert p.name.startswith(scene.replace("_", "")) and p.name.endswith(f"_{i:09d}{p.suffix}")
            assert p.parents[1].name == kind.replace("_info", "")
        info = json.loads(f["camera_info"].read_text())
        assert info["cam_name"] == "front_center" and info["lidar_ids"]["3"] == "front_center"
        assert isinstance(info["cam_tstamp"], int)
    summary = json.loads((dataset / "synth_summary.json").read_text())
    assert summary["frames"] == FRAMES and summary["seed"] == SEED
    assert sum(summary["objects_per_class"].values()) == sum(len(_boxes(f["label3D"])) for f in frames)
    assert not list(dataset.rglob(".*.tmp*")), "atomic writes left temp files"


def test_formats_match_real_a2d2_sample(dataset, a2d2_sample):
    real_npz = next(a2d2_sample.rglob("*_lidar_frontcenter_*.npz"), None)
    real_boxes = next(a2d2_sample.rglob("*_label3D_frontcenter_*.json"), None)
    if real_npz is None or real_boxes is None:
        pytest.skip("the A2D2 sample has no lidar npz / label3D json")
    f = _frames(dataset)[0]
    with np.load(real_npz) as r, np.load(f["lidar"]) as s:
        assert list(s.files) == list(r.files)                                 # same keys, same order
        for k in r.files:
            assert (s[k].dtype, s[k].ndim) == (r[k].dtype, r[k].ndim), k
            assert s[k].shape[1:] == r[k].shape[1:], k
    real = _boxes(real_boxes)[0]
    for box in _boxes(f["label3D"]):
        assert list(box) == list(real)                                         # same keys, same order
        for k, v in real.items():
            assert type(box[k]) is type(v) or {type(box[k]), type(v)} <= {int, float}, k
        assert np.shape(box["3d_points"]) == (8, 3) and len(box["2d_bbox"]) == 4
    real_cal = json.loads((a2d2_sample / "cams_lidars.json").read_text())["cameras"]["front_center"]
    ours = json.loads((dataset / "cams_lidars.json").read_text())["cameras"]["front_center"]
    assert set(ours) <= set(real_cal)
    for k in ("CamMatrix", "CamMatrixOriginal", "Distortion", "Lens", "Resolution", "tstamp_delay", "view"):
        assert ours[k] == real_cal[k], k
    assert json.loads((dataset / "class_list.json").read_text()) == \
        json.loads((a2d2_sample / "class_list.json").read_text())


def test_images_are_full_size_rgb_and_labels_use_only_class_colours(dataset):
    palette = set(_code_names())
    names_seen: set[str] = set()
    for f in _frames(dataset):
        for kind in ("camera", "label"):
            with Image.open(f[kind]) as im:
                assert (im.mode, im.size) == ("RGB", (1920, 1208))
        colours = set(np.unique(_codes(np.asarray(Image.open(f["label"])))).tolist())
        assert colours <= palette, sorted(colours - palette)
        names_seen |= {_code_names()[c] for c in colours}
    for name in ("Sky", "RD normal street", "Sidewalk", "Curbstone", "Buildings", "Nature object", "Poles"):
        assert name in names_seen


def test_camera_image_colours_follow_the_semantics(dataset):
    """Learnability sanity check: materials look different in the camera image."""
    names = _code_names()
    sums: dict[str, np.ndarray] = {}
    for f in _frames(dataset):
        img = np.asarray(Image.open(f["camera"])).reshape(-1, 3).astype(np.float64)
        codes, inv = np.unique(_codes(np.asarray(Image.open(f["label"]))).reshape(-1), return_inverse=True)
        count = np.bincount(inv)
        for code, n, *rgb in zip(codes, count, *(np.bincount(inv, weights=img[:, c]) for c in range(3))):
            sums[names[code]] = sums.get(names[code], np.zeros(4)) + [n, *rgb]
    mean = {k: v[1:] / v[0] for k, v in sums.items() if v[0] > 1000}
    assert mean["Sky"][2] > mean["Sky"][0] + 30                 # blue sky
    assert mean["RD normal street"].mean() < mean["Sidewalk"].mean() - 20
    assert mean["Nature object"][1] > mean["Nature object"][2]  # green vegetation


def test_original_pixels_see_the_undistorted_rays(camera):
    """Each ORIGINAL (distorted) pixel shows the ray that CamMatrixOriginal + Distortion assign to it:
    forward-distort random rays and check the index map points at their render pixel."""
    cam = synth.camera_model(camera, SCALE)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-0.62, 0.62, 5000), rng.uniform(-0.42, 0.42, 5000)              # pinhole x/z, y/z
    xd, yd = geometry.distort_normalised(x, y, camera.distortion)
    k0 = geometry.cam_matrix(camera, original=True)
    u0, v0 = np.rint(xd * k0[0, 0] + k0[0, 2]).astype(int), np.rint(yd * k0[1, 1] + k0[1, 2]).astype(int)
    ok = (u0 >= 0) & (u0 < 1920) & (v0 >= 0) & (v0 < 1208)
    assert ok.mean() > 0.5
    row, col = np.divmod(cam.index[v0[ok] * 1920 + u0[ok]], cam.render_hw[1])
    kr = cam.k_render
    assert np.abs(col - (x[ok] * kr[0, 0] + kr[0, 2])).max() < 0.6
    assert np.abs(row - (y[ok] * kr[1, 1] + kr[1, 2])).max() < 0.6
    # the render covers every original pixel
    assert cam.index.min() >= 0 and cam.index.max() < cam.render_hw[0] * cam.render_hw[1]


# ------------------------------------------------------------------------------------------ boxes


def _rodrigues_corners(b: dict) -> np.ndarray:
    """Independent re-implementation of the A2D2 tutorial's corner computation."""
    a = np.asarray(b["axis"], np.float64)
    th = b["rot_angle"]
    ax = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    r = np.cos(th) * np.eye(3) + np.sin(th) * ax + (1 - np.cos(th)) * np.outer(a, a)
    l, w, h = b["size"]
    local = np.array([[-l, w, -h], [l, w, -h], [l, -w, -h], [-l, -w, -h],
                      [-l, w, h], [l, w, h], [l, -w, h], [-l, -w, h]]) / 2
    return local @ r.T + np.asarray(b["center"])


def test_boxes_schema_yaw_and_2d_bbox(dataset, camera):
    k = geometry.cam_matrix(camera)
    signs, n = set(), 0
    for f in _frames(dataset):
        boxes = json.loads(f["label3D"].read_text())
        assert list(boxes) == [f"box_{i}" for i in range(len(boxes))]
        for i, b in enumerate(boxes.values()):
            n += 1
            assert b["id"] == i and b["class"] in synth.BOX_CLASSES and b["alpha"] == 0.0
            assert b["axis"][:2] == [0.0, 0.0] and abs(b["axis"][2]) == 1.0
            signs.add(b["axis"][2])
            assert 0.0 <= b["occlusion"] <= 1.0 and 0.0 <= b["truncation"] <= 1.0
            pts = np.asarray(b["3d_points"])
            assert np.allclose(pts, _rodrigues_corners(b), atol=1e-9)
            assert np.allclose(pts, synth.box_corners(b["center"], b["size"], _box7(b)[6]), atol=1e-9)
            u, v, depth = geometry.project_points(pts, k)
            assert (depth > 0).all()
            assert np.allclose(b["2d_bbox"], [u.min(), v.min(), u.max(), v.max()], atol=1e-6)
    assert n >= 6, "expected several labelled objects per frame"
    assert signs == {1.0, -1.0}, "both axis signs must occur (readers must use yaw = rot_angle * axis[2])"


# ------------------------------------------------------------------------------------------ LiDAR


def test_lidar_arrays_are_self_consistent(dataset, camera):
    k = geometry.cam_matrix(camera)
    for f in _frames(dataset):
        with np.load(f["lidar"]) as z:
            p = z["points"]
            assert 15_000 < len(p) < 60_000
            assert np.array_equal(z["depth"], p[:, 0])
            assert np.allclose(z["distance"], np.linalg.norm(p, axis=1))
            u, v, _ = geometry.project_points(p, k)
            assert np.allclose(z["col"], u, atol=1e-9) and np.allclose(z["row"], v, atol=1e-9)
            assert ((z["col"] >= 0).all() and (z["col"] < 1920).all()
                    and (z["row"] >= 0).all() and (z["row"] < 1208).all())
            assert (z["lidar_id"] == 3.0).all()
            assert z["reflectance"].min() >= 0 and z["reflectance"].max() <= 255
            assert len(np.unique(z["reflectance"])) > 20
            assert ((z["azimuth"] >= 0) & (z["azimuth"] < 2 * np.pi)).all()
            assert z["timestamp"].max() - z["timestamp"].min() < 100_000


def _labels_at_points(label_png: Path, points: np.ndarray, camera, undistort) -> np.ndarray:
    """A2D2 class name of the undistorted label pixel under each point's CamMatrix projection."""
    lab = np.asarray(Image.open(label_png))
    und = geometry.remap(lab, *undistort, nearest=True)
    u, v, _ = geometry.project_points(points, geometry.cam_matrix(camera))
    r = np.clip(np.rint(v).astype(int), 0, 1207)
    c = np.clip(np.rint(u).astype(int), 0, 1919)
    names = _colour_names()
    return np.array([names.get(tuple(int(x) for x in px), "?") for px in und[r, c]])


def test_lidar_points_inside_boxes_land_on_their_class_in_the_label(dataset, camera, undistort):
    agree = total = 0
    for f in _frames(dataset):
        boxes = _boxes(f["label3D"])
        if not boxes:
            continue
        with np.load(f["lidar"]) as z:
            pts = z["points"]
        inside = geometry.points_in_boxes(pts, np.array([_box7(b) for b in boxes]))       # (M, N)
        sem = _labels_at_points(f["label"], pts, camera, undistort)
        for b, m in zip(boxes, inside):
            base = SEM_BASE[b["class"]]
            agree += int(sum(s.startswith(base + " ") for s in sem[m]))
            total += int(m.sum())
    assert total > 200
    assert agree / total >= 0.9, f"only {agree}/{total} in-box points land on their class"


def test_every_visible_object_has_points_inside_its_box(dataset):
    checked = 0
    for f in _frames(dataset):
        boxes = _boxes(f["label3D"])
        with np.load(f["lidar"]) as z:
            pts = z["points"]
        counts = geometry.points_in_boxes(pts, np.array([_box7(b) for b in boxes]).reshape(-1, 7)).sum(1)
        for b, n in zip(boxes, counts):
            if np.hypot(*b["center"][:2]) < 40 and b["occlusion"] < 0.5 and b["truncation"] < 0.3:
                checked += 1
                assert n >= 5, f"{b['class']} at {b['center']} has {n} points"
    assert checked >= 3


def test_ground_is_at_camera_height(dataset, camera, undistort):
    f = _frames(dataset)[0]
    with np.load(f["lidar"]) as z:
        pts = z["points"]
    road = _labels_at_points(f["label"], pts, camera, undistort) == "RD normal street"
    assert road.sum() > 1000
    assert abs(np.median(pts[road, 2]) + synth.CAMERA_HEIGHT) < 0.02


# ------------------------------------------------------------------------------------------ determinism / CLI


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "synth_summary.json" and p.name != ".mtl.lock"}


def test_same_seed_same_bytes_for_any_workers_and_other_seed_differs(dataset, tmp_path):
    _gen(tmp_path / "w2", workers=2)
    a, b = _file_bytes(dataset), _file_bytes(tmp_path / "w2")
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    _gen(tmp_path / "s8", seed=SEED + 1, frames=1)
    c = _file_bytes(tmp_path / "s8")
    for k in c:
        if k.endswith((".png", ".npz")) or "label3D" in k:
            assert c[k] != a[k], k


def test_refuses_non_empty_out_and_overwrite_replaces_only_synth_output(tmp_path):
    out = tmp_path / "raw"
    _gen(out, frames=2, scene_size=1)                      # scenes 000000, 000100
    with pytest.raises(OutputError, match="not empty"):
        _gen(out, frames=1)
    _gen(out, frames=1, overwrite=True)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["20990101_000000"]   # stale scene removed
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="notes.txt"):
        _gen(out, frames=1, overwrite=True)
    assert (out / "notes.txt").exists()
    (out / "notes.txt").unlink()
    (out / "20180807_145028").mkdir()                     # looks like a real A2D2 scene: never deleted
    with pytest.raises(OutputError, match="20180807_145028"):
        _gen(out, frames=1, overwrite=True)
    with pytest.raises(DataError, match="frames"):
        _gen(tmp_path / "x", frames=0)


def test_cli_synth(tmp_path):
    from click.testing import CliRunner

    from mtl.cli import main

    out = tmp_path / "cli"
    res = CliRunner().invoke(main, ["data", "synth", "--out", str(out), "--frames", "1", "--seed", "3",
                                    "--workers", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("synth: 1 frames in 1 scenes") and "points/frame" in res.output
    assert len(_frames(out)) == 1 and (out / "synth_summary.json").is_file()
    res = CliRunner().invoke(main, ["data", "synth", "--out", str(out), "--frames", "1", "--no-progress"])
    assert res.exit_code == OutputError.exit_code
    assert "error:" in res.output and "not empty" in res.output
