"""Raw A2D2 reader: real sample files (read in place) and hand-made bad inputs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtl import geometry
from mtl.config import CameraConfig, ClassesConfig, a2d2_classes
from mtl.data import a2d2
from mtl.errors import DataError

CLASSES = ClassesConfig.a2d2_default()
LIDAR_FRAME = ("20180810_142822", "000015196")


def _sample(root: Path, kind: str, scene: str = LIDAR_FRAME[0], fid: str = LIDAR_FRAME[1]) -> Path:
    return a2d2.raw_file_path(root, scene, kind, fid)


# ------------------------------------------------------------------------------------- real sample


def test_find_frames_pairs_the_partial_sample(a2d2_sample):
    frames = a2d2.find_frames(a2d2_sample)
    assert [f.key for f in frames] == sorted(f.key for f in frames)
    by_missing = {f.key: f.missing() for f in frames}
    assert len(frames) == 8
    assert by_missing["20180810_142822/000015196"] == ("camera", "label")
    for fid in ("20180807_145028/000006882", "20180810_142822/000006737", "20181108_141609/000011097"):
        assert by_missing[fid] == ("lidar", "label3D")
    assert sum(m == ("camera", "lidar", "label3D") for m in by_missing.values()) == 4
    for f in frames:  # every returned path exists and has the swapped kind token
        for kind in a2d2.KINDS:
            p = getattr(f, kind)
            assert p is None or (p.is_file() and f"_{kind}_frontcenter_{f.frame_id}" in p.name)


def test_read_camera_config_matches_packaged_calibration(a2d2_sample):
    cam = a2d2.read_camera_config(a2d2_sample / "cams_lidars.json")
    assert cam == CameraConfig.a2d2_front_center()
    assert cam.cam_matrix[0][0] == pytest.approx(1687.3369140625) and cam.resolution_wh == (1920, 1208)


def test_read_lidar_real_sample(a2d2_sample):
    path = _sample(a2d2_sample, "lidar")
    pts = a2d2.read_lidar(path)
    with np.load(path) as z:
        raw_points, refl = z["points"], z["reflectance"]
    assert pts.shape == (8196, 4) and pts.dtype == np.float32
    np.testing.assert_allclose(pts[:, :3], raw_points, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(pts[:, 3], refl / 255.0, atol=1e-6)
    assert 0 < pts[:, 3].min() and pts[:, 3].max() <= 1


def test_lidar_points_project_onto_npz_row_col(a2d2_sample):
    path = _sample(a2d2_sample, "lidar")
    cam = a2d2.read_camera_config(a2d2_sample / "cams_lidars.json")
    with np.load(path) as z:
        points, row, col = z["points"], z["row"], z["col"]
    u, v, depth = geometry.project_points(points, geometry.cam_matrix(cam))
    assert (depth > 0).all()
    np.testing.assert_allclose(u, col, atol=1e-6)
    np.testing.assert_allclose(v, row, atol=1e-6)


def test_read_boxes_real_sample_yaw_sign(a2d2_sample):
    path = _sample(a2d2_sample, "label3D")
    boxes, cls = a2d2.read_boxes(path, CLASSES)
    raw = json.loads(path.read_text())
    assert boxes.shape == (4, 7) and boxes.dtype == np.float32 and cls.dtype == np.int16
    det = list(CLASSES.det_classes)
    assert [det[c] for c in cls] == ["truck", "cyclist", "cyclist", "car"]
    assert boxes[0, 6] == pytest.approx(-0.03198790457781439, abs=1e-6)   # rot_angle 0.0320, axis z -1
    assert boxes[3, 6] == pytest.approx(-3.1407963267950234, abs=1e-6)
    np.testing.assert_allclose(boxes[0, 3:6], [7.46, 3.06, 3.2], rtol=1e-6)
    # the JSON's own 8 corners must be reproduced by (centre, size, yaw): checks the yaw sign for real
    for i, box in enumerate(raw.values()):
        corners = np.asarray(box["3d_points"])                                     # (8, 3)
        bev = geometry.box_corners_bev(boxes[i:i + 1])[0]                           # (4, 2)
        d = np.linalg.norm(corners[:, None, :2] - bev[None], axis=-1).min(axis=1)
        assert d.max() < 1e-3, (box["class"], d)
    # and the LiDAR points inside each box are the known counts (the flipped sign gives 23/42/32/22)
    pts = a2d2.read_lidar(_sample(a2d2_sample, "lidar"))
    assert geometry.points_in_boxes(pts, boxes).sum(axis=1).tolist() == [24, 42, 31, 22]


def test_every_sample_label_pixel_maps_to_a_known_class(a2d2_sample):
    labels = sorted(a2d2_sample.glob("*/label/cam_front_center/*.png"))
    assert len(labels) == 7
    colours = a2d2_classes()["a2d2_colours"]
    name_to_id = CLASSES.a2d2_name_to_sem_id()
    for path in labels:
        ids = a2d2.read_label_png(path, CLASSES)
        assert ids.shape == (1208, 1920) and ids.dtype == np.uint8
        assert ((ids < CLASSES.n_sem) | (ids == 255)).all()
    # spot-check the vectorised LUT against a plain per-colour lookup on one image
    rgb = np.asarray(Image.open(labels[0]).convert("RGB"))[::7, ::7]
    ids = a2d2.colours_to_ids(rgb, CLASSES)
    for colour in np.unique(rgb.reshape(-1, 3), axis=0):
        want = name_to_id[colours["#{:02x}{:02x}{:02x}".format(*tuple(colour))]]
        assert (ids[(rgb == colour).all(-1)] == want).all()


def test_undistort_map_sanity():
    cam = CameraConfig.a2d2_front_center()
    for out_hw in [(1208, 1920), (320, 512)]:
        map_x, map_y = a2d2._maps(cam, out_hw)
        assert map_x.shape == out_hw and map_x.dtype == np.float32
        k_out = geometry.scale_cam_matrix(geometry.cam_matrix(cam), cam.resolution_wh, out_hw)
        k0 = geometry.cam_matrix(cam, original=True)
        # undistorting the looked-up original positions must give back the output pixel grid
        xn, yn = geometry.undistort_normalised((map_x - k0[0, 2]) / k0[0, 0], (map_y - k0[1, 2]) / k0[1, 1],
                                               cam.distortion)
        v, u = np.mgrid[0:out_hw[0], 0:out_hw[1]]
        np.testing.assert_allclose(xn * k_out[0, 0] + k_out[0, 2], u, atol=1e-2)
        np.testing.assert_allclose(yn * k_out[1, 1] + k_out[1, 2], v, atol=1e-2)
        # k1 < 0 (barrel): the undistorted view stays inside the original image almost everywhere
        inside = (map_x >= -0.5) & (map_x <= 1919.5) & (map_y >= -0.5) & (map_y <= 1207.5)
        assert inside.mean() > 0.99
    assert a2d2._maps(cam, (320, 512)) is a2d2._maps(cam, (320, 512))   # cached per (camera, size)


def test_prepare_image_and_label_on_real_frame(a2d2_sample):
    scene, fid = "20180810_142822", "000006737"
    cam = CameraConfig.a2d2_front_center()
    rgb = a2d2.read_camera_png(_sample(a2d2_sample, "camera", scene, fid))
    ids = a2d2.read_label_png(_sample(a2d2_sample, "label", scene, fid), CLASSES)
    img = a2d2.prepare_image(rgb, cam, (320, 512))
    sem = a2d2.prepare_label(ids, cam, (320, 512))
    assert img.shape == (320, 512, 3) and img.dtype == np.uint8 and sem.shape == (320, 512)
    assert (img == 0).all(-1).mean() < 0.01
    assert abs(float(img.mean()) - float(rgb.mean())) < 0.1 * float(rgb.mean())
    assert set(np.unique(sem)) <= set(np.unique(ids)) | {255}   # nearest: no invented classes
    with pytest.raises(DataError, match="expected uint8 \\(1208, 1920, 3\\)"):
        a2d2.prepare_image(rgb[:100], cam, (320, 512), source="x.png")


# ----------------------------------------------------------------------------------- bad raw inputs


def _npz(path: Path, **arrays) -> Path:
    np.savez_compressed(path, **arrays)
    return path


def test_lidar_dtypes_empty_and_bad_files(tmp_path):
    pts = np.array([[1.0, 2, 3], [4, 5, 6]])
    ok = a2d2.read_lidar(_npz(tmp_path / "ok.npz", points=pts, reflectance=np.array([0, 255], np.int64),
                              lidar_id=np.array([3.0, 1.0])))
    np.testing.assert_allclose(ok, [[1, 2, 3, 0], [4, 5, 6, 1]])
    fusion = a2d2.read_lidar(_npz(tmp_path / "f.npz", pcloud_points=pts,
                                  **{"pcloud_attr.reflectance": np.array([51, 102])}))
    np.testing.assert_allclose(fusion[:, 3], [0.2, 0.4], atol=1e-6)
    empty = a2d2.read_lidar(_npz(tmp_path / "e.npz", points=np.zeros((0, 3)), reflectance=np.zeros(0, np.int64)))
    assert empty.shape == (0, 4) and empty.dtype == np.float32

    nan = pts.copy()
    nan[1, 2] = np.nan
    cases = {
        "1 of 2 points are NaN or inf": {"points": nan, "reflectance": np.array([1, 2])},
        "no 'points'": {"reflectance": np.array([1, 2])},
        "no 'reflectance'": {"points": pts},
        "points has shape \\(2, 2\\)": {"points": pts[:, :2], "reflectance": np.array([1, 2])},
        "reflectance has shape": {"points": pts, "reflectance": np.array([1, 2, 3])},
    }
    for i, (reason, arrays) in enumerate(cases.items()):
        path = _npz(tmp_path / f"bad{i}.npz", **arrays)
        with pytest.raises(DataError, match=reason) as e:
            a2d2.read_lidar(path)
        assert str(e.value).startswith(str(path))
    np.savez(tmp_path / "obj.npz", points=np.array([None, 1], dtype=object), reflectance=np.zeros(2))
    with pytest.raises(DataError, match="object arrays"):
        a2d2.read_lidar(tmp_path / "obj.npz")
    (tmp_path / "trunc.npz").write_bytes((tmp_path / "ok.npz").read_bytes()[:50])
    with pytest.raises(DataError, match="corrupt or truncated"):
        a2d2.read_lidar(tmp_path / "trunc.npz")


def _box(**over) -> dict:
    box = {"class": "Car", "center": [10.0, 1.0, -0.5], "size": [4.0, 2.0, 1.5], "axis": [0.0, 0.0, -1.0],
           "rot_angle": 0.5, "id": 0}
    box.update(over)
    return {k: v for k, v in box.items() if v is not None}


def test_read_boxes_classes_and_yaw(tmp_path):
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"box_0": _box(), "box_1": _box(**{"class": "Animal", "axis": [0, 0, 1]}),
                                "box_2": _box(**{"class": "Bus", "rot_angle": 3.5, "axis": [0, 0, 1]})}))
    boxes, cls = a2d2.read_boxes(path, CLASSES)
    assert cls.tolist() == [0, -1, 1]
    np.testing.assert_allclose(boxes[:, 6], [-0.5, 0.5, 3.5 - 2 * np.pi], atol=1e-6)  # wrapped to [-pi, pi)
    path.write_text("{}")
    boxes, cls = a2d2.read_boxes(path, CLASSES)
    assert boxes.shape == (0, 7) and cls.shape == (0,)


@pytest.mark.parametrize("box, reason", [
    (_box(size=None), "box_0 has no 'size'"),
    (_box(center=None), "box_0 has no 'center'"),
    (_box(rot_angle=None), "box_0 has no 'rot_angle'"),
    (_box(**{"class": None}), "no 'class' name"),
    (_box(size=[4.0, 0.0, 1.5]), "size must be positive"),
    (_box(center=[1.0, float("nan"), 0.0]), "center must be 3 finite numbers"),
    (_box(center=[1.0, 2.0]), "center must be 3 finite numbers"),
    (_box(axis=[0, 0, 0]), "zero vector"),
    (_box(**{"class": "Spaceship"}), "unknown class 'Spaceship'"),
])
def test_read_boxes_rejects_bad_boxes(tmp_path, box, reason):
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"box_0": box}, allow_nan=True))
    with pytest.raises(DataError, match=reason) as e:
        a2d2.read_boxes(path, CLASSES)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_read_boxes_bad_json(tmp_path):
    (tmp_path / "t.json").write_text('{"box_0": {')
    with pytest.raises(DataError, match="not readable JSON"):
        a2d2.read_boxes(tmp_path / "t.json", CLASSES)
    (tmp_path / "l.json").write_text("[1]")
    with pytest.raises(DataError, match="expected an object"):
        a2d2.read_boxes(tmp_path / "l.json", CLASSES)


def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def test_label_png_unknown_colour_and_truncated(tmp_path):
    road, car = (255, 0, 255), (255, 0, 0)
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[:, :4], rgb[:, 4:] = road, car
    ids = a2d2.read_label_png(_png(tmp_path / "ok.png", rgb), CLASSES)
    assert ids[:, :4].tolist() == [[0] * 4] * 6 and (ids[:, 4:] == CLASSES.sem_classes.index("car")).all()
    rgb[2, 1] = rgb[3, 1] = (1, 2, 3)
    path = _png(tmp_path / "unknown.png", rgb)
    with pytest.raises(DataError, match="2 pixels have colours outside.*#010203 x 2") as e:
        a2d2.read_label_png(path, CLASSES)
    assert str(e.value).startswith(str(path))
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="PNG does not decode"):
        a2d2.read_label_png(tmp_path / "trunc.png", CLASSES)
    with pytest.raises(DataError, match="file not found"):
        a2d2.read_camera_png(tmp_path / "absent.png")


def test_camera_config_errors(tmp_path, a2d2_sample):
    doc = json.loads((a2d2_sample / "cams_lidars.json").read_text())
    del doc["cameras"]["front_center"]
    path = tmp_path / "cams_lidars.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="camera 'front_center' missing") as e:
        a2d2.read_camera_config(path)
    assert str(e.value).startswith(str(path))
    doc["cameras"]["front_center"] = {"CamMatrix": [[1, 0], [0, 1]], "CamMatrixOriginal": [[1, 0, 0]] * 3,
                                      "Distortion": [[0, 0, 0, 0, 0]], "Lens": "Telecam", "Resolution": [4, 3]}
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="CamMatrix must be \\(3, 3\\)"):
        a2d2.read_camera_config(path)
    with pytest.raises(DataError, match="not found"):
        a2d2.read_camera_config(tmp_path / "absent.json")


def test_find_frames_ignores_foreign_files(tmp_path):
    cam = tmp_path / "20180807_145028" / "camera" / "cam_front_center"
    cam.mkdir(parents=True)
    (cam / "20180807145028_camera_frontcenter_000000091.png").write_bytes(b"x")
    (cam / "20180807145028_camera_frontcenter_000000091.json").write_text("{}")   # info sidecar
    (cam / "20180807145028_camera_frontleft_000000092.png").write_bytes(b"x")     # other camera
    (cam / "20990101000000_camera_frontcenter_000000093.png").write_bytes(b"x")   # other scene's prefix
    lid = tmp_path / "20180807_145028" / "lidar" / "cam_front_center"
    lid.mkdir(parents=True)
    (lid / "20180807145028_lidar_frontcenter_000000091.npz").write_bytes(b"x")
    frames = a2d2.find_frames(tmp_path)
    assert [(f.key, f.missing()) for f in frames] == [("20180807_145028/000000091", ("label", "label3D"))]
    with pytest.raises(DataError, match="not a directory"):
        a2d2.find_frames(tmp_path / "nope")
