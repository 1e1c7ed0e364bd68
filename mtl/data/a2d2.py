"""Reader for the raw A2D2 ``camera_lidar_semantic_bboxes`` layout (front centre camera). Torch-free.

Used by ``mtl data convert`` and by the runtime on raw frames, so every function is pure (no global
state except small caches keyed by immutable configs) and vectorised.

Layout (A2D2's own; docs/FORMAT.md has the frames and units)::

    ROOT/cams_lidars.json, ROOT/class_list.json
    ROOT/<scene>/<kind>/cam_front_center/<scene14>_<kind>_frontcenter_<id9>.<ext>
    kind/ext: camera/.png (original, distorted RGB), label/.png (colour-coded, distorted),
              lidar/.npz (points in the camera view frame), label3D/.json (3D boxes)

Decisions a user may need to know:
- Files are paired by scene folder + 9-digit frame id; any subset of the four kinds is returned.
- ``read_boxes``: an A2D2 class name that the ``ClassesConfig`` neither maps nor ignores raises
  ``DataError`` (a silent -1 would quietly drop training targets; add the name to ``det_groups`` or
  ``det_ignore_names``). Ignored names (default: Animal) get class -1.
- ``read_label_png``: colours are matched exactly against the packaged A2D2 colour table; any other colour
  raises ``DataError`` naming an example colour and its pixel count.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..config import CameraConfig, ClassesConfig, a2d2_classes
from ..errors import DataError
from ..geometry import NearestTable, RemapTable, limit_period, undistort_map
from ..io import decode_png, storage_error
from ..limits import Limits, limits, over_limit
from .chunk import load_npz

_LIDAR_KEYS = ("points", "reflectance", "pcloud_points", "pcloud_attr.reflectance")
_F32_MAX = float(np.finfo(np.float32).max)

KINDS = ("camera", "label", "lidar", "label3D")
_EXT = {"camera": ".png", "label": ".png", "lidar": ".npz", "label3D": ".json"}
_CAM_FOLDER = "cam_front_center"
_NAME_RE = re.compile(r"^(\d{14})_(camera|label|lidar|label3D)_frontcenter_(\d{9})\.(png|npz|json)$")
_SCENE_RE = re.compile(r"^\d{8}_\d{6}$")


# ------------------------------------------------------------------------------------------ pairing


@dataclass(frozen=True)
class RawFramePaths:
    """The raw files of one front-centre frame; a kind that is absent is None."""

    scene: str                    # 'YYYYMMDD_hhmmss'
    frame_id: str                 # 9-digit id as in the file name
    camera: Path | None = None
    label: Path | None = None
    lidar: Path | None = None
    label3D: Path | None = None

    @property
    def key(self) -> str:
        """Chunk ``frame_id``: ``<scene>/<id9>``."""
        return f"{self.scene}/{self.frame_id}"

    def missing(self) -> tuple[str, ...]:
        return tuple(k for k in KINDS if getattr(self, k) is None)


def raw_file_name(scene: str, kind: str, frame_id: str) -> str:
    """A2D2 file name of ``kind`` for a frame, e.g. ``20180807145028_lidar_frontcenter_000000091.npz``."""
    return f"{scene.replace('_', '')}_{kind}_frontcenter_{frame_id}{_EXT[kind]}"


def raw_file_path(root: str | Path, scene: str, kind: str, frame_id: str) -> Path:
    return Path(root) / scene / kind / _CAM_FOLDER / raw_file_name(scene, kind, frame_id)


def find_frames(root: str | Path) -> list[RawFramePaths]:
    """All front-centre frames under ``root``, sorted by (scene, frame id).

    Pairs files by scene + frame id, i.e. by swapping the kind token of the A2D2 names. Files that do not
    follow the naming pattern (camera info ``.json`` sidecars, other cameras, stray files) and files whose
    14-digit prefix disagrees with their scene folder are ignored.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "A2D2 root is not a directory")
    found: dict[tuple[str, str], dict[str, Path]] = {}
    for scene_dir in sorted(p for p in root.iterdir() if p.is_dir() and _SCENE_RE.match(p.name)):
        for kind in KINDS:
            folder = scene_dir / kind / _CAM_FOLDER
            if not folder.is_dir():
                continue
            for f in folder.iterdir():
                m = _NAME_RE.match(f.name)
                if (m is None or m.group(2) != kind or "." + m.group(4) != _EXT[kind]
                        or m.group(1) != scene_dir.name.replace("_", "") or not f.is_file()):
                    continue
                found.setdefault((scene_dir.name, m.group(3)), {})[kind] = f
    return [RawFramePaths(scene=s, frame_id=i, **found[(s, i)]) for s, i in sorted(found)]


# -------------------------------------------------------------------------------------- calibration


def _matrix(value, path: Path, what: str, shape: tuple[int, ...]) -> np.ndarray:
    try:
        a = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        raise DataError(path, f"{what} is not numeric") from None
    if a.size != int(np.prod(shape)) or not np.isfinite(a).all():
        raise DataError(path, f"{what} must be {shape} finite numbers, got {np.shape(value)}")
    return a.reshape(shape)


def read_json(path: Path, missing: str = "file not found"):
    """Parsed JSON of ``path``; a missing, unreadable, oversized or malformed file is a one-line ``DataError``."""
    lim = limits()
    try:
        size = path.stat().st_size
        if size > lim.max_json_bytes:
            raise DataError(path, f"JSON file is {size} bytes, {over_limit('max_json_bytes', lim)}")
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise DataError(path, missing) from None
    except OSError as e:
        raise storage_error(e, path) or DataError(path, f"cannot read ({e})") from None
    # ValueError: malformed JSON, bad UTF-8, or an integer of over 4300 digits; RecursionError: deep nesting
    except (ValueError, RecursionError) as e:
        raise DataError(path, f"not readable JSON ({type(e).__name__}: {e})") from None


def read_camera_config(path: str | Path, camera: str = "front_center",
                       base: CameraConfig | None = None) -> CameraConfig:
    """Calibration of ``camera`` from an A2D2 ``cams_lidars.json`` as a ``CameraConfig``.

    Model-side fields (``image_hw``, mean/std) are kept from ``base`` (default: the packaged config).
    """
    path = Path(path)
    base = base or CameraConfig.a2d2_front_center()
    doc = read_json(path, "cams_lidars.json not found (it sits next to the scene folders)")
    cams = doc.get("cameras") if isinstance(doc, dict) else None
    if not isinstance(cams, dict):
        raise DataError(path, "no 'cameras' object")
    cam = cams.get(camera)
    if not isinstance(cam, dict):
        raise DataError(path, f"camera {camera!r} missing (has {sorted(cams)})")
    for key in ("CamMatrix", "CamMatrixOriginal", "Distortion", "Lens", "Resolution"):
        if key not in cam:
            raise DataError(path, f"cameras.{camera} has no {key!r}")
    k = _matrix(cam["CamMatrix"], path, f"cameras.{camera}.CamMatrix", (3, 3))
    k0 = _matrix(cam["CamMatrixOriginal"], path, f"cameras.{camera}.CamMatrixOriginal", (3, 3))
    try:
        dist = np.asarray(cam["Distortion"], np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(path, f"cameras.{camera}.Distortion is not numeric") from None
    if dist.size not in (4, 5) or not np.isfinite(dist).all():
        raise DataError(path, f"cameras.{camera}.Distortion must hold 4 or 5 finite numbers")
    res = cam["Resolution"]
    if (not isinstance(res, list) or len(res) != 2 or not all(isinstance(v, int) and v > 0 for v in res)):
        raise DataError(path, f"cameras.{camera}.Resolution must be [width, height], got {res!r}")
    return replace(
        base, name=camera, lens=str(cam["Lens"]), resolution_wh=(res[0], res[1]),
        cam_matrix=tuple(map(tuple, k.tolist())), cam_matrix_original=tuple(map(tuple, k0.tolist())),
        distortion=tuple(dist.tolist()),
    )


# ------------------------------------------------------------------------------------------- LiDAR


def read_lidar(path: str | Path) -> np.ndarray:
    """(N, 4) float32 x, y, z (cam_front_center view frame, metres), reflectance / 255 clipped to [0, 1].

    Accepts the camera-set keys (``points``, ``reflectance``) and the sensor-fusion spelling
    (``pcloud_points``, ``pcloud_attr.reflectance``). An empty cloud gives (0, 4).
    """
    path = Path(path)
    lim = limits()

    def check(members: dict) -> None:          # from the headers, before any array is loaded
        for key in _LIDAR_KEYS:
            if key in members and members[key][1] and members[key][1][0] > lim.max_points:
                raise DataError(path, f"{key} has {members[key][1][0]} rows, {over_limit('max_points', lim)}")

    z = load_npz(path, DataError, keys=_LIDAR_KEYS, check=check)
    pts = z.get("points", z.get("pcloud_points"))
    refl = z.get("reflectance", z.get("pcloud_attr.reflectance"))
    if pts is None:
        raise DataError(path, f"no 'points' array (keys: {sorted(z)})")
    if refl is None:
        raise DataError(path, f"no 'reflectance' array (keys: {sorted(z)})")
    if pts.size == 0 and refl.size == 0:
        return np.zeros((0, 4), np.float32)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise DataError(path, f"points has shape {pts.shape}, expected (N, 3)")
    if refl.shape != (len(pts),):
        raise DataError(path, f"reflectance has shape {refl.shape}, expected ({len(pts)},)")
    if pts.dtype.kind not in "fiu" or refl.dtype.kind not in "fiu":
        raise DataError(path, f"points/reflectance must be numeric, got {pts.dtype}/{refl.dtype}")
    bad = ~np.isfinite(pts).all(axis=1) | ~np.isfinite(refl)
    if bad.any():
        raise DataError(path, f"{int(bad.sum())} of {len(pts)} points are NaN or inf")
    huge = (np.abs(pts) > _F32_MAX).any(axis=1)
    if huge.any():
        raise DataError(path, f"{int(huge.sum())} of {len(pts)} points have coordinates that overflow float32 "
                              f"(|value| > {_F32_MAX:.3g})")
    out = np.empty((len(pts), 4), np.float32)              # (N, 4)
    out[:, :3] = pts
    out[:, 3] = np.clip(refl.astype(np.float32) * (1.0 / 255.0), 0.0, 1.0)
    return out


# ------------------------------------------------------------------------------------------- boxes


def _box_vector(box: dict, field: str, n: int, path: Path, name: str, lim: Limits) -> np.ndarray:
    if field not in box:
        raise DataError(path, f"{name} has no {field!r}")
    try:
        v = np.asarray(box[field], np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(path, f"{name}.{field} is not numeric") from None
    except OverflowError:                      # an integer beyond float64 (e.g. 10**400)
        raise DataError(path, f"{name}.{field} holds a number too large for float64") from None
    if v.size != n or not np.isfinite(v).all():
        raise DataError(path, f"{name}.{field} must be {n} finite numbers, got {_short(repr(box[field]))}")
    big = np.abs(v) > lim.max_coordinate
    if big.any():
        raise DataError(path, f"{name}.{field} value {v[big][0]:g} is out of range: |value| "
                              f"{over_limit('max_coordinate', lim)}")
    return v


def _short(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def read_boxes(path: str | Path, classes_cfg: ClassesConfig) -> tuple[np.ndarray, np.ndarray]:
    """A2D2 label3D JSON -> boxes (M, 7) float32 [x, y, z, l, w, h, yaw], classes (M,) int16.

    yaw = rot_angle * axis_z (axis normalised) wrapped to [-pi, pi): A2D2 stores the rotation as
    axis-angle with axis ~ (0, 0, +-1), so rot_angle alone has the wrong sign whenever axis z is -1.
    Detection ids come from ``classes_cfg.a2d2_name_to_det_id()`` (ignored names -> -1; unknown names
    raise ``DataError``).
    """
    path = Path(path)
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise DataError(path, f"expected an object of boxes, got {type(doc).__name__}")
    lim = limits()
    if len(doc) > lim.max_boxes:
        raise DataError(path, f"{len(doc)} boxes, {over_limit('max_boxes', lim)}")
    name_to_id = classes_cfg.a2d2_name_to_det_id()
    boxes = np.zeros((len(doc), 7), np.float64)            # (M, 7)
    cls = np.zeros(len(doc), np.int16)                     # (M,)
    for i, (name, box) in enumerate(doc.items()):
        if not isinstance(box, dict):
            raise DataError(path, f"{name} is not an object")
        label = box.get("class")
        if not isinstance(label, str):
            raise DataError(path, f"{name} has no 'class' name")
        if label not in name_to_id:
            raise DataError(path, f"{name}: unknown class {label!r} (add it to classes.det_groups or det_ignore_names)")
        centre = _box_vector(box, "center", 3, path, name, lim)
        size = _box_vector(box, "size", 3, path, name, lim)
        axis = _box_vector(box, "axis", 3, path, name, lim)
        angle = _box_vector(box, "rot_angle", 1, path, name, lim)[0]
        if (size <= 0).any():
            raise DataError(path, f"{name}.size must be positive, got {size.tolist()}")
        norm = float(np.linalg.norm(axis))
        if norm == 0.0:
            raise DataError(path, f"{name}.axis is the zero vector")
        boxes[i, :3], boxes[i, 3:6] = centre, size
        boxes[i, 6] = limit_period(angle * axis[2] / norm)
        cls[i] = name_to_id[label]
    return boxes.astype(np.float32), cls


# -------------------------------------------------------------------------------------- label PNGs


def _hex_key(colour: str) -> int:
    return int(colour.lstrip("#"), 16)


@lru_cache(maxsize=4)
def _colour_lut(classes_cfg: ClassesConfig) -> tuple[np.ndarray, np.ndarray]:
    """(2**24,) uint8 LUT 24-bit colour -> palette index + 1 (0 = unknown colour), and
    (n_palette + 1,) uint8 palette index + 1 -> training class id. Two small gathers beat a 2-byte LUT."""
    colours = a2d2_classes()["a2d2_colours"]               # '#rrggbb' -> A2D2 name
    name_to_sem = classes_cfg.a2d2_name_to_sem_id()
    lut = np.zeros(1 << 24, np.uint8)
    to_id = np.full(len(colours) + 1, classes_cfg.ignore_index, np.uint8)
    for i, (colour, name) in enumerate(colours.items(), start=1):
        lut[_hex_key(colour)] = i
        to_id[i] = name_to_sem.get(name, classes_cfg.ignore_index)
    return lut, to_id


def colours_to_ids(rgb: np.ndarray, classes_cfg: ClassesConfig, source: str | Path | None = None) -> np.ndarray:
    """(H, W, 3) uint8 A2D2 label colours -> (H, W) uint8 training ids (exact match; else ``DataError``)."""
    lut, to_id = _colour_lut(classes_cfg)
    key = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    pal = lut[key]                                         # (H, W) palette index + 1
    unknown = pal == 0
    if unknown.any():
        keys, counts = np.unique(key[unknown], return_counts=True)
        top = int(np.argmax(counts))
        raise DataError(source, f"{int(unknown.sum())} pixels have colours outside the A2D2 class table "
                                f"({len(keys)} colours, e.g. #{int(keys[top]):06x} x {int(counts[top])})")
    return to_id[pal]


def read_label_png(path: str | Path, classes_cfg: ClassesConfig) -> np.ndarray:
    """A2D2 colour label PNG -> (H, W) uint8 training class ids (ignore = ``classes_cfg.ignore_index``)."""
    path = Path(path)
    rgb = decode_png(_read_bytes(path), path, "RGB")       # (H, W, 3)
    return colours_to_ids(rgb, classes_cfg, path)


def read_camera_png(path: str | Path) -> np.ndarray:
    """Original (distorted) camera PNG -> (H, W, 3) uint8 RGB."""
    path = Path(path)
    return decode_png(_read_bytes(path), path, "RGB")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except OSError as e:
        raise storage_error(e, path) or DataError(path, f"cannot read ({e})") from None


# ------------------------------------------------------------------------------ undistort + resize


@lru_cache(maxsize=8)
def _maps(camera_cfg: CameraConfig, out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    # ~0.1 s at full resolution, so computed once per (camera, size) and shared by every frame
    map_x, map_y = undistort_map(camera_cfg, out_hw)       # (H, W) float32 each
    map_x.setflags(write=False)
    map_y.setflags(write=False)
    return map_x, map_y


@lru_cache(maxsize=8)
def _remap_table(camera_cfg: CameraConfig, out_hw: tuple[int, int], nearest: bool = False
                 ) -> RemapTable | NearestTable:
    w, h = camera_cfg.resolution_wh
    return (NearestTable if nearest else RemapTable)(*_maps(camera_cfg, out_hw), (h, w))


def _check_input(a: np.ndarray, camera_cfg: CameraConfig, ndim: int, what: str,
                 source: str | Path | None) -> None:
    w, h = camera_cfg.resolution_wh
    if a.dtype != np.uint8 or a.ndim != ndim or a.shape[:2] != (h, w) or (ndim == 3 and a.shape[2] != 3):
        want = f"({h}, {w}, 3)" if ndim == 3 else f"({h}, {w})"
        raise DataError(source, f"{what} is {a.dtype} {a.shape}, expected uint8 {want} "
                                f"(camera {camera_cfg.name} resolution)")


def prepare_image(original_rgb: np.ndarray, camera_cfg: CameraConfig, out_hw: tuple[int, int],
                  source: str | Path | None = None) -> np.ndarray:
    """Original distorted (H0, W0, 3) uint8 -> undistorted, resized (out_h, out_w, 3) uint8 (bilinear).

    The result matches ``geometry.scale_cam_matrix(camera_cfg.cam_matrix, resolution_wh, out_hw)``;
    pixels that fall outside the original image are black.
    """
    _check_input(original_rgb, camera_cfg, 3, "camera image", source)
    return _remap_table(camera_cfg, tuple(out_hw)).apply(original_rgb, fill=0)


def prepare_label(ids: np.ndarray, camera_cfg: CameraConfig, out_hw: tuple[int, int],
                  ignore_index: int = 255, source: str | Path | None = None) -> np.ndarray:
    """Original (H0, W0) uint8 class ids -> undistorted, resized (out_h, out_w) uint8 (nearest, so no
    invented classes at edges); pixels outside the original image get ``ignore_index``."""
    _check_input(ids, camera_cfg, 2, "label map", source)
    return _remap_table(camera_cfg, tuple(out_hw), nearest=True).apply(ids, fill=ignore_index)


__all__ = [
    "KINDS",
    "RawFramePaths",
    "colours_to_ids",
    "find_frames",
    "prepare_image",
    "prepare_label",
    "raw_file_name",
    "raw_file_path",
    "read_boxes",
    "read_camera_config",
    "read_camera_png",
    "read_label_png",
    "read_lidar",
]
