"""Procedural synthetic dataset written in the REAL raw A2D2 layout (``mtl data synth``). Torch-free.

Every frame is one small 3D world (street, sidewalks, buildings, vegetation, poles, signs, vehicles,
pedestrians, cyclists) from which BOTH sensors are ray-cast analytically, so camera, semantic label,
LiDAR and 3D boxes agree by construction. ``mtl data convert`` reads the result with the real-A2D2
reader, exactly like downloaded data (layout: docs/FORMAT.md):

    DIR/cams_lidars.json, DIR/class_list.json, DIR/synth_summary.json
    DIR/<YYYYMMDD_hhmmss>/{camera,lidar,label,label3D}/cam_front_center/
        <scene14>_camera_frontcenter_<id9>.png   original (distorted) 1920x1208 RGB
        <scene14>_camera_frontcenter_<id9>.json  info sidecar (cam_name, cam_tstamp, lidar_ids)
        <scene14>_label_frontcenter_<id9>.png    RGB, every pixel one of the 55 class_list colours
        <scene14>_lidar_frontcenter_<id9>.npz    the 9 A2D2 keys / dtypes, points in the camera view frame
        <scene14>_label3D_frontcenter_<id9>.json A2D2 box schema ("box_0", ...)

World facts other stages may rely on (all in the A2D2 cam_front_center view frame, x fwd, y left, z up):
- the ground plane is z = -CAMERA_HEIGHT = -1.70 m (real A2D2 ground sits at about -1.65..-1.8);
  sidewalks and their pedestrians are raised by the curb height (0.10..0.15 m);
- the LiDAR is one spinning 64-beam sensor at the real front-centre LiDAR position (~0.18 m above the
  camera), azimuth step 0.1 deg; only points that project into the undistorted image are kept (like A2D2);
- every labelled object's LiDAR points lie inside its label box (geometry is inset 6 cm inside the box
  and range noise is clipped to +-5 cm);
- label3D classes: Car, VanSUV, Truck, Bus, Pedestrian, Cyclist; semantic colours: Car 1-4 (Car, VanSUV),
  Truck 1-3 (Truck, Bus), Pedestrian 1-3, Bicycle 1-4 (whole cyclist, rider included), RD normal street,
  Solid line, Dashed line, Curbstone, Sidewalk, Buildings, Nature object (trees, hedges, grass), Poles,
  Traffic sign 1, Sky. Numbered variants distinguish neighbouring instances, as in A2D2.

Frames are independent random draws; the street (layout, buildings, palette) is shared by the frames of
one scene folder while the ego drives along it. Every random number comes from a generator seeded by
(seed, scene) or (seed, frame index), so the output is byte-identical for any number of workers.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

from ..config import CameraConfig, a2d2_classes, front_center_calib
from ..errors import DataError, OutputError
from ..geometry import project_points, scale_cam_matrix, undistort_normalised
from ..io import (
    JOURNAL,
    OutputLock,
    commit_files,
    encode_png,
    recover_commit,
    remove_stale_temps,
    write_bytes_atomic,
    write_json_atomic,
)
from .a2d2 import raw_file_path
from .output import (
    cleanup_staging,
    die_with_parent,
    drop_if_only_lock,
    remove_stale_staging,
    signals_deferred,
    sigterm_as_interrupt,
)

SYNTH_VERSION = 1
CAMERA_HEIGHT = 1.70             # m; ground plane z = -CAMERA_HEIGHT in the camera view frame
RENDER_SCALE = 0.32              # ray-cast resolution relative to 1920x1208 (the PNGs are always full size)
EGO_STEP = 1.5                   # m the ego advances per frame inside a scene (15 m/s at 10 Hz)
FRAME_DT_US = 100_000            # 10 Hz
LIDAR_MAX_RANGE = 120.0
GEOMETRY_INSET = 0.06            # m between an object's surface and its label box
RANGE_NOISE_CLIP = 0.05          # m; < GEOMETRY_INSET so points never leave their box
BASE_TIME = datetime(2099, 1, 1, tzinfo=timezone.utc)
_EPS = 1e-6

# Real A2D2 cams_lidars.json values (front-centre camera file) that mtl.config does not package.
VEHICLE_VIEW = {"origin": [0.0, 0.0, 0.0], "x-axis": [1.0, 0.0, 0.0], "y-axis": [0.0, 1.0, 0.0]}
EGO_DIMENSIONS = {"x-range": [-1.0, 4.0], "y-range": [-1.25, 1.25], "z-range": [-0.75, 1.5]}
LIDAR_VIEW = {
    "origin": [1.7183999999999997, 3.8163916471489756e-17, 1.1201406050000002],
    "x-axis": [-0.007840892071133887, -0.9999275831501491, -0.00912956006775139],
    "y-axis": [0.9807203123118539, -0.005906897013169535, -0.19532736005643384],
}
LIDAR_IDS = {"0": "front_left", "1": "rear_right", "2": "front_right", "3": "front_center", "4": "rear_left"}
LIDAR_ID = 3                     # front_center
TSTAMP_DELAY = 25000
NPZ_KEYS = ("azimuth", "row", "lidar_id", "depth", "reflectance", "col", "points", "timestamp", "distance")

# LiDAR beams: denser near the horizon so far objects still get several rings (like HDL-64 style units)
LIDAR_ELEVATIONS_DEG = np.concatenate([
    np.linspace(-17.0, -4.5, 24, endpoint=False), np.linspace(-4.5, 2.0, 28, endpoint=False),
    np.linspace(2.0, 12.0, 12),
])                               # (64,) ascending
LIDAR_AZ_STEP_DEG = 0.1
LIDAR_AZ_HALF_DEG = 36.0         # a little wider than the undistorted image (+-29.6 deg)

BOX_CLASSES = ("Car", "VanSUV", "Truck", "Bus", "Pedestrian", "Cyclist")
_CLASS_P = np.array([0.42, 0.10, 0.09, 0.04, 0.23, 0.12])
_SEM_BASE = {"Car": "Car", "VanSUV": "Car", "Truck": "Truck", "Bus": "Truck",
             "Pedestrian": "Pedestrian", "Cyclist": "Bicycle"}

KIND_BOX, KIND_CYL, KIND_SPHERE = 0, 1, 2
TEX_PLAIN, TEX_WINDOWS, TEX_FOLIAGE = 0, 1, 2
PID_SKY, PID_GROUND = -1, -2


# ------------------------------------------------------------------------------------------ tables


@cache
def class_colours() -> tuple[tuple[str, str], ...]:
    """The 55 A2D2 (hex, name) pairs in class_list.json order."""
    return tuple(a2d2_classes()["a2d2_colours"].items())


@cache
def _label_index() -> dict[str, int]:
    return {name: i for i, (_, name) in enumerate(class_colours())}


@cache
def _palette() -> np.ndarray:
    """(55, 3) uint8 label colours."""
    return np.array([[int(h[i: i + 2], 16) for i in (1, 3, 5)] for h, _ in class_colours()], np.uint8)


def _lbl(name: str) -> int:
    return _label_index()[name]


def _variants(base: str) -> list[int]:
    """Label indices of 'Car 1', 'Car 2', ... (A2D2 numbers neighbouring instances)."""
    return [i for i, (_, n) in enumerate(class_colours()) if re.fullmatch(rf"{base} \d", n)]


# ------------------------------------------------------------------------------------------ layout


def scene_name(scene_idx: int, scene_size: int) -> str:
    """'YYYYMMDD_hhmmss' of scene ``scene_idx``; scenes start whole minutes apart and never overlap."""
    minutes = max(1, math.ceil(scene_size * FRAME_DT_US / 1e6 / 60))
    return (BASE_TIME + timedelta(minutes=scene_idx * minutes)).strftime("%Y%m%d_%H%M%S")


def cams_lidars_json() -> dict:
    """A2D2 ``cams_lidars.json`` restricted to the sensors the synthetic data uses."""
    c = front_center_calib()
    cam = {
        "tstamp_delay": TSTAMP_DELAY,
        "view": c["view"],
        "CamMatrix": c["cam_matrix"],
        "CamMatrixOriginal": c["cam_matrix_original"],
        "Distortion": [list(c["distortion"])],
        "Lens": c["lens"],
        "Resolution": list(c["resolution_wh"]),
    }
    return {"vehicle": {"view": VEHICLE_VIEW, "ego-dimensions": EGO_DIMENSIONS},
            "lidars": {"front_center": {"view": LIDAR_VIEW}},
            "cameras": {"front_center": cam}}


def _view_rotation(view: dict) -> np.ndarray:
    """(3, 3) view -> vehicle rotation, columns = the view's axes (A2D2 tutorial, research §5.3)."""
    x = np.asarray(view["x-axis"], np.float64)
    x /= np.linalg.norm(x)
    y = np.asarray(view["y-axis"], np.float64)
    y -= x * (x @ y)
    y /= np.linalg.norm(y)
    return np.stack([x, y, np.cross(x, y)], 1)


@cache
def _lidar_pose() -> tuple[np.ndarray, np.ndarray]:
    """LiDAR origin in the camera view frame (3,), and the (3, 3) camera-view -> LiDAR-view rotation."""
    cam_view = front_center_calib()["view"]
    r_cam, o_cam = _view_rotation(cam_view), np.asarray(cam_view["origin"])
    r_lid, o_lid = _view_rotation(LIDAR_VIEW), np.asarray(LIDAR_VIEW["origin"])
    origin = r_cam.T @ (o_lid - o_cam)
    origin.setflags(write=False)
    rot = r_lid.T @ r_cam
    rot.setflags(write=False)
    return origin, rot


# ------------------------------------------------------------------------------------------ primitives


@dataclass
class Prims:
    """Struct-of-arrays scene primitives. Boxes rotate about +z by ``yaw``; cylinders are vertical
    (radius = size[0] / 2); spheres have radius size[0] / 2. ``centre`` is the volume centre."""

    kind: np.ndarray      # (P,) int
    centre: np.ndarray    # (P, 3)
    size: np.ndarray      # (P, 3) l, w, h
    yaw: np.ndarray       # (P,)
    label: np.ndarray     # (P,) class_list index
    rgb: np.ndarray       # (P, 3) 0..1
    rgb_top: np.ndarray   # (P, 3) colour of upward faces (car roofs over dark windows)
    refl: np.ndarray      # (P,) mean LiDAR reflectance 0..255
    tex: np.ndarray       # (P,) TEX_*
    obj: np.ndarray       # (P,) labelled-object index, -1 for the static world

    def __len__(self) -> int:
        return len(self.kind)

    def take(self, idx: np.ndarray) -> Prims:
        return Prims(**{k: v[idx] for k, v in self.__dict__.items()})

    @staticmethod
    def concat(parts: list[Prims]) -> Prims:
        return Prims(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in Prims.__dataclass_fields__})


class _PrimList:
    """Row-wise builder for ``Prims``."""

    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def add(self, kind: int, centre, size, yaw: float, label: int, rgb, refl: float,
            tex: int = TEX_PLAIN, obj: int = -1, rgb_top=None) -> None:
        rgb = np.clip(np.asarray(rgb, np.float64), 0, 1)
        top = rgb if rgb_top is None else np.clip(np.asarray(rgb_top, np.float64), 0, 1)
        self.rows.append((kind, centre, size, yaw, label, rgb, top, refl, tex, obj))

    def build(self) -> Prims:
        if not self.rows:
            z3 = np.zeros((0, 3))
            return Prims(np.zeros(0, np.int64), z3, z3, np.zeros(0), np.zeros(0, np.int64), z3, z3,
                         np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64))
        cols = list(zip(*self.rows))
        return Prims(
            kind=np.array(cols[0], np.int64), centre=np.array(cols[1], np.float64).reshape(-1, 3),
            size=np.array(cols[2], np.float64).reshape(-1, 3), yaw=np.array(cols[3], np.float64),
            label=np.array(cols[4], np.int64), rgb=np.array(cols[5]).reshape(-1, 3),
            rgb_top=np.array(cols[6]).reshape(-1, 3), refl=np.array(cols[7], np.float64),
            tex=np.array(cols[8], np.int64), obj=np.array(cols[9], np.int64),
        )


def _jitter(rng: np.random.Generator, rgb, amount: float = 0.06) -> np.ndarray:
    return np.clip(np.asarray(rgb) * rng.uniform(1 - amount, 1 + amount) + rng.normal(0, amount / 3, 3), 0, 1)


# ------------------------------------------------------------------------------------------ street


@dataclass
class Street:
    """Static world of one scene in the road frame (s along the road, t to its left, z up from the
    road surface)."""

    lane_w: float
    n_right: int                  # lanes in the ego's direction (t < 0)
    n_left: int                   # oncoming lanes (t > 0)
    curb_w: float
    curb_h: float
    sidewalk: tuple[tuple[float, float], tuple[float, float]]   # (t_inner, t_outer) right, left
    markings: list[tuple[float, float, int, float, float]]      # t, width, label, dash, period (0 = solid)
    road_rgb: np.ndarray
    grass_rgb: np.ndarray
    line_rgb: np.ndarray
    sun: np.ndarray               # (3,) unit, road frame
    prims: Prims                  # static primitives, road frame, z from the road surface
    obstacles: np.ndarray         # (K, 5) s, t, l, w, yaw of footprints objects must avoid

    @property
    def t_right(self) -> float:
        return -self.n_right * self.lane_w

    @property
    def t_left(self) -> float:
        return self.n_left * self.lane_w


_FACADES = np.array([[0.85, 0.80, 0.70], [0.93, 0.92, 0.88], [0.62, 0.62, 0.64], [0.66, 0.36, 0.28],
                     [0.88, 0.78, 0.52], [0.55, 0.60, 0.68], [0.75, 0.68, 0.62]])


def make_street(rng: np.random.Generator, s_min: float, s_max: float) -> Street:
    """Random straight street with lanes, curbs, sidewalks, verges, buildings, trees, poles and signs."""
    lane_w = rng.uniform(3.0, 3.7)
    n_right, n_left = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    t_r, t_l = -n_right * lane_w, n_left * lane_w
    curb_w, curb_h = rng.uniform(0.15, 0.3), rng.uniform(0.10, 0.15)
    markings = _lane_markings(rng, lane_w, n_right, n_left)
    pl = _PrimList()
    length, s_mid = s_max - s_min, (s_min + s_max) / 2
    obstacles: list[tuple[float, float, float, float, float]] = []
    pave = rng.choice([[0.62, 0.60, 0.58], [0.60, 0.47, 0.44], [0.55, 0.55, 0.56]])
    curb_rgb = _jitter(rng, [0.72, 0.72, 0.70])
    sidewalks = []
    for side in (-1, 1):
        edge = t_r if side < 0 else t_l
        sw_w = rng.uniform(1.8, 4.5)
        inner, outer = edge + side * curb_w, edge + side * (curb_w + sw_w)
        sidewalks.append((inner, outer))
        pl.add(KIND_BOX, (s_mid, edge + side * curb_w / 2, curb_h / 2), (length, curb_w, curb_h), 0.0,
               _lbl("Curbstone"), curb_rgb, 45)
        pl.add(KIND_BOX, (s_mid, (inner + outer) / 2, curb_h / 2), (length, sw_w, curb_h), 0.0,
               _lbl("Sidewalk"), _jitter(rng, pave), 35)
        verge = rng.choice([0.0, rng.uniform(1.0, 4.0)], p=[0.4, 0.6])
        b_line = outer + side * (verge + rng.uniform(0.0, 2.0))
        _add_buildings(rng, pl, obstacles, side, b_line, s_min, s_max)
        if verge > 0:
            _add_trees(rng, pl, obstacles, outer + side * verge / 2, s_min, s_max)
        _add_poles_and_signs(rng, pl, obstacles, side, edge + side * (curb_w + 0.45), curb_h, s_min, s_max)
    sun = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.6, 0.6), 1.0])
    return Street(
        lane_w=lane_w, n_right=n_right, n_left=n_left, curb_w=curb_w, curb_h=curb_h,
        sidewalk=(sidewalks[0], sidewalks[1]), markings=markings,
        road_rgb=_jitter(rng, [0.27, 0.27, 0.29], 0.1), grass_rgb=_jitter(rng, [0.30, 0.44, 0.17], 0.1),
        line_rgb=_jitter(rng, [0.86, 0.86, 0.83], 0.03), sun=sun / np.linalg.norm(sun),
        prims=pl.build(), obstacles=np.array(obstacles, np.float64).reshape(-1, 5),
    )


def _lane_markings(rng: np.random.Generator, lane_w: float, n_right: int, n_left: int):
    solid, dashed = _lbl("Solid line"), _lbl("Dashed line")
    dash, period = (3.0, 9.0) if rng.random() < 0.5 else (6.0, 18.0)
    out = []
    if rng.random() < 0.85:  # edge lines
        out += [(-n_right * lane_w + 0.25, 0.15, solid, 0.0, 0.0), (n_left * lane_w - 0.25, 0.15, solid, 0.0, 0.0)]
    centre_solid = n_right + n_left >= 3 or rng.random() < 0.3
    out.append((0.0, 0.15, solid if centre_solid else dashed, 0.0 if centre_solid else dash, period))
    for k in range(1, n_right):
        out.append((-k * lane_w, 0.15, dashed, dash, period))
    for k in range(1, n_left):
        out.append((k * lane_w, 0.15, dashed, dash, period))
    return out


def _add_buildings(rng, pl: _PrimList, obstacles: list, side: int, t_front: float, s_min: float, s_max: float):
    s = s_min + rng.uniform(-10, 5)
    lbl = _lbl("Buildings")
    while s < s_max:
        length, depth, height = rng.uniform(8, 30), rng.uniform(8, 16), rng.uniform(4, 20)
        if rng.random() < 0.85:
            t_c = t_front + side * depth / 2
            pl.add(KIND_BOX, (s + length / 2, t_c, height / 2), (length, depth, height), 0.0, lbl,
                   _jitter(rng, _FACADES[rng.integers(len(_FACADES))]), rng.uniform(40, 90), TEX_WINDOWS)
            obstacles.append((s + length / 2, t_c, length, depth, 0.0))
        else:  # a gap with a hedge
            h = rng.uniform(0.8, 2.0)
            pl.add(KIND_BOX, (s + length / 2, t_front + side * 0.5, h / 2), (length, 1.0, h), 0.0,
                   _lbl("Nature object"), _jitter(rng, [0.20, 0.36, 0.14], 0.12), 55, TEX_FOLIAGE)
            obstacles.append((s + length / 2, t_front + side * 0.5, length, 1.0, 0.0))
        s += length + rng.choice([0.0, rng.uniform(1, 8)], p=[0.4, 0.6])


def _add_trees(rng, pl: _PrimList, obstacles: list, t: float, s_min: float, s_max: float):
    s = s_min + rng.uniform(0, 10)
    nature = _lbl("Nature object")
    while s < s_max:
        trunk_h, trunk_r, crown_r = rng.uniform(1.8, 3.2), rng.uniform(0.12, 0.25), rng.uniform(1.3, 2.8)
        tt = t + rng.uniform(-0.3, 0.3)
        pl.add(KIND_CYL, (s, tt, trunk_h / 2), (2 * trunk_r, 2 * trunk_r, trunk_h), 0.0, nature,
               _jitter(rng, [0.33, 0.24, 0.16]), 50)
        pl.add(KIND_SPHERE, (s, tt, trunk_h + crown_r * 0.8), (2 * crown_r,) * 3, 0.0, nature,
               _jitter(rng, [0.18, 0.36, 0.12], 0.15), 55, TEX_FOLIAGE)
        obstacles.append((s, tt, 2 * trunk_r, 2 * trunk_r, 0.0))
        s += rng.uniform(7, 20)


def _add_poles_and_signs(rng, pl: _PrimList, obstacles: list, side: int, t: float, z0: float,
                         s_min: float, s_max: float):
    pole, sign = _lbl("Poles"), _lbl("Traffic sign 1")
    metal = _jitter(rng, [0.55, 0.57, 0.60])
    s = s_min + rng.uniform(0, 25)
    while s < s_max:  # street lamps
        h = rng.uniform(6, 8.5)
        pl.add(KIND_CYL, (s, t, z0 + h / 2), (0.2, 0.2, h), 0.0, pole, metal, 90)
        pl.add(KIND_BOX, (s, t - side * 0.6, z0 + h - 0.1), (0.5, 1.4, 0.2), 0.0, pole, metal, 90)
        obstacles.append((s, t, 0.3, 0.3, 0.0))
        s += rng.uniform(20, 35)
    s = s_min + rng.uniform(5, 40)
    while s < s_max:  # traffic signs face the oncoming traffic of their side
        h, plate = rng.uniform(2.2, 3.0), rng.uniform(0.5, 0.8)
        ts = t + side * rng.uniform(0.0, 0.4)
        pl.add(KIND_CYL, (s, ts, z0 + h / 2), (0.08, 0.08, h), 0.0, pole, metal, 90)
        colour = [[0.85, 0.10, 0.10], [0.10, 0.30, 0.80], [0.95, 0.80, 0.10], [0.92, 0.92, 0.92]][rng.integers(4)]
        pl.add(KIND_BOX, (s - 0.06 * (1 if side < 0 else -1), ts, z0 + h + plate / 2), (0.04, plate, plate),
               0.0, sign, _jitter(rng, colour, 0.05), 240)
        obstacles.append((s, ts, 0.3, 0.3, 0.0))
        s += rng.uniform(25, 60)


# ------------------------------------------------------------------------------------------ objects


@dataclass
class Obj:
    """A labelled object: A2D2 class, label box (road frame until ``to_camera``), its primitives."""

    cls: str
    centre: np.ndarray          # (3,) box centre
    size: np.ndarray            # (3,) l, w, h
    yaw: float
    sem_label: int
    prims: Prims


_CAR_COLOURS = np.array([[0.92, 0.92, 0.92], [0.70, 0.71, 0.73], [0.08, 0.08, 0.09], [0.60, 0.06, 0.06],
                         [0.10, 0.20, 0.55], [0.35, 0.36, 0.38], [0.12, 0.30, 0.18], [0.85, 0.65, 0.20]])
_GLASS = np.array([0.10, 0.12, 0.16])


def _class_size(rng: np.random.Generator, cls: str) -> np.ndarray:
    lo, hi = {
        "Car": ((3.8, 1.70, 1.40), (4.9, 2.00, 1.62)), "VanSUV": ((4.5, 1.85, 1.75), (5.4, 2.10, 2.30)),
        "Truck": ((6.0, 2.40, 2.80), (10.5, 2.60, 3.80)), "Bus": ((10.0, 2.50, 3.00), (13.0, 2.60, 3.40)),
        "Pedestrian": ((0.50, 0.50, 1.55), (0.85, 0.75, 1.95)), "Cyclist": ((1.60, 0.60, 1.60), (1.95, 0.80, 1.95)),
    }[cls]
    return rng.uniform(lo, hi)


def _object_parts(rng: np.random.Generator, cls: str, size: np.ndarray):
    """Object parts in the object frame (x along the length, z from the ground) as
    (kind, centre, size, rgb, rgb_top, refl): geometry stays GEOMETRY_INSET inside the label box."""
    m = GEOMETRY_INSET
    l, w, h = size[0] - 2 * m, size[1] - 2 * m, size[2] - m
    body = _jitter(rng, _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))], 0.05)
    if cls in ("Car", "VanSUV"):
        split = 0.55 if cls == "Car" else 0.5
        cab_l = l * (0.52 if cls == "Car" else 0.75)
        return [(KIND_BOX, (0, 0, h * split / 2), (l, w, h * split), body, body, 45),
                (KIND_BOX, (-0.06 * l, 0, h * (1 + split) / 2), (cab_l, w - 0.12, h * (1 - split)), _GLASS, body, 12)]
    if cls == "Truck":
        cargo = _jitter(rng, [[0.9, 0.9, 0.9], [0.5, 0.5, 0.52], [0.2, 0.3, 0.6]][rng.integers(3)], 0.05)
        cab_l = 2.2
        return [(KIND_BOX, (l / 2 - cab_l / 2, 0, h * 0.4), (cab_l, w, h * 0.8), body, body, 50),
                (KIND_BOX, (-cab_l / 2 - 0.1, 0, h / 2), (l - cab_l - 0.2, w, h), cargo, cargo, 60)]
    if cls == "Bus":
        return [(KIND_BOX, (0, 0, h * 0.25), (l, w, h * 0.5), body, body, 50),
                (KIND_BOX, (0, 0, h * 0.75), (l, w, h * 0.5), _GLASS, body, 15)]
    skin = _jitter(rng, [[0.87, 0.70, 0.58], [0.55, 0.38, 0.28], [0.75, 0.58, 0.45]][rng.integers(3)], 0.04)
    shirt = rng.uniform(0.05, 0.9, 3)
    trousers = rng.uniform(0.05, 0.45) * np.array([1.0, 1.0, rng.uniform(1.0, 1.6)])
    head_r = 0.11
    if cls == "Pedestrian":
        return [(KIND_BOX, (0, 0, h * 0.24), (min(l, 0.30), min(w, 0.38), h * 0.48), trousers, trousers, 30),
                (KIND_BOX, (0, 0, h * 0.64), (min(l, 0.30), min(w, 0.46), h * 0.32), shirt, shirt, 35),
                (KIND_SPHERE, (0, 0, h - head_r), (2 * head_r,) * 3, skin, skin, 25)]
    frame_rgb = _jitter(rng, _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))], 0.05)
    bike_h = 1.0
    return [(KIND_BOX, (0, 0, bike_h / 2), (l, 0.12, bike_h), frame_rgb, frame_rgb, 40),
            (KIND_BOX, (-0.1, 0, (bike_h + h - 2 * head_r) / 2), (0.35, min(w, 0.46), h - 2 * head_r - bike_h),
             shirt, shirt, 35),
            (KIND_SPHERE, (-0.05, 0, h - head_r), (2 * head_r,) * 3, skin, skin, 25)]


def _footprint(s: float, t: float, l: float, w: float, yaw: float) -> np.ndarray:
    """(4, 2) BEV corners of a rectangle."""
    c, sn = math.cos(yaw), math.sin(yaw)
    local = np.array([[l, w], [l, -w], [-l, -w], [-l, w]]) / 2
    return local @ np.array([[c, sn], [-sn, c]]) + (s, t)


def _separated(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating-axis test for two convex (4, 2) polygons."""
    for poly in (a, b):
        edges = np.roll(poly, -1, 0) - poly
        normals = np.stack([-edges[:, 1], edges[:, 0]], 1)
        pa, pb = a @ normals.T, b @ normals.T
        if np.any((pa.max(0) < pb.min(0)) | (pb.max(0) < pa.min(0))):
            return True
    return False


def _collides(fp: np.ndarray, placed: list[np.ndarray], obstacles: np.ndarray, margin: float) -> bool:
    centre = fp.mean(0)
    radius = np.linalg.norm(fp - centre, axis=1).max() + margin
    grown = centre + (fp - centre) * (1 + margin / max(radius - margin, 0.1))
    for other in placed:
        reach = radius + np.linalg.norm(other - other.mean(0), axis=1).max()
        if np.linalg.norm(other.mean(0) - centre) < reach and not _separated(grown, other):
            return True
    if len(obstacles):
        o_rad = np.hypot(obstacles[:, 2], obstacles[:, 3]) / 2
        near = np.hypot(obstacles[:, 0] - centre[0], obstacles[:, 1] - centre[1]) < radius + o_rad
        for s, t, l, w, yaw in obstacles[near]:
            if not _separated(grown, _footprint(s, t, l, w, yaw)):
                return True
    return False


@dataclass
class Ego:
    s: float
    t: float
    psi: float                    # heading relative to the road (rad)

    def to_camera(self, s: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, sn = math.cos(self.psi), math.sin(self.psi)
        ds, dt = s - self.s, t - self.t
        return c * ds + sn * dt, -sn * ds + c * dt

    def to_road(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, sn = math.cos(self.psi), math.sin(self.psi)
        return self.s + c * x - sn * y, self.t + sn * x + c * y


def _camera_sees(x: float, y: float) -> bool:
    # centre inside the undistorted horizontal field of view (tan 29.6 deg ~ 0.57), a bit beyond
    return x > 3.0 and abs(y) < 0.6 * x


def place_objects(rng: np.random.Generator, street: Street, ego: Ego, n_target: int) -> list[Obj]:
    """Sample up to ``n_target`` non-overlapping objects in front of the ego (road frame)."""
    placed: list[np.ndarray] = [_footprint(ego.s, ego.t, 4.8, 2.0, ego.psi)]   # the ego car itself
    objs: list[Obj] = []
    variant_next = {k: 0 for k in set(_SEM_BASE.values())}
    for _ in range(n_target * 25):
        if len(objs) >= n_target:
            break
        cls = BOX_CLASSES[rng.choice(len(BOX_CLASSES), p=_CLASS_P)]
        size = _class_size(rng, cls)
        pose = _sample_pose(rng, street, ego, cls, size)
        if pose is None:
            continue
        s, t, z0, yaw = pose
        x, y = ego.to_camera(np.array(s), np.array(t))
        if not _camera_sees(float(x), float(y)):
            continue
        fp = _footprint(s, t, size[0], size[1], yaw)
        cx, _ = ego.to_camera(fp[:, 0], fp[:, 1])
        if cx.min() < 1.5:  # keep every corner well in front of the camera (2d_bbox stays defined)
            continue
        if _collides(fp, placed, street.obstacles, 0.3):
            continue
        placed.append(fp)
        base = _SEM_BASE[cls]
        variants = _variants(base)
        sem = variants[variant_next[base] % len(variants)]
        variant_next[base] += 1
        objs.append(_build_object(rng, cls, size, s, t, z0, yaw, sem, len(objs)))
    return objs


def _sample_pose(rng, street: Street, ego: Ego, cls: str, size: np.ndarray):
    """(s, t, z0, yaw) in the road frame, or None."""
    # vehicles start a little further out so a truck does not fill the whole image too often
    near = 4.0 + size[0] / 2
    ahead = rng.uniform(near, 50) if rng.random() < 0.85 else rng.uniform(50, 75)
    s = ego.s + ahead
    lw, t_r, t_l = street.lane_w, street.t_right, street.t_left
    jitter = rng.normal(0, math.radians(2.5))
    if cls == "Pedestrian":
        if rng.random() < 0.15:  # crossing the road
            return s, rng.uniform(t_r + 0.5, t_l - 0.5), 0.0, rng.uniform(-math.pi, math.pi)
        inner, outer = street.sidewalk[rng.integers(2)]
        lo, hi = sorted((inner, outer))
        if hi - lo < 1.0:
            return None
        return s, rng.uniform(lo + 0.45, hi - 0.45), street.curb_h, rng.uniform(-math.pi, math.pi)
    if cls == "Cyclist":
        if rng.random() < 0.5:
            return s, t_r + rng.uniform(0.6, 1.0), 0.0, jitter
        return s, t_l - rng.uniform(0.6, 1.0), 0.0, math.pi + jitter
    if cls in ("Car", "VanSUV") and rng.random() < 0.2:  # parked at the kerb, either side
        if rng.random() < 0.5:
            return s, t_r + size[1] / 2 + 0.15, 0.0, rng.normal(0, 0.02)
        return s, t_l - size[1] / 2 - 0.15, 0.0, math.pi + rng.normal(0, 0.02)
    if rng.random() < 0.07:  # turning / manoeuvring: any heading
        yaw = rng.uniform(-math.pi, math.pi)
    else:
        yaw = None
    lane = int(rng.integers(-street.n_right, street.n_left))        # lane k spans [k*lw, (k+1)*lw]
    t = (lane + 0.5) * lw + rng.normal(0, 0.2)
    if yaw is None:
        yaw = jitter if lane < 0 else math.pi + jitter
    half_t = abs(size[0] / 2 * math.sin(yaw)) + abs(size[1] / 2 * math.cos(yaw))
    t = float(np.clip(t, t_r + half_t + 0.05, t_l - half_t - 0.05)) if t_l - t_r > 2 * half_t + 0.1 else None
    return None if t is None else (s, t, 0.0, yaw)


def _build_object(rng, cls: str, size: np.ndarray, s: float, t: float, z0: float, yaw: float,
                  sem: int, index: int) -> Obj:
    pl = _PrimList()
    c, sn = math.cos(yaw), math.sin(yaw)
    for kind, (lx, ly, lz), psize, rgb, top, refl in _object_parts(rng, cls, size):
        centre = (s + c * lx - sn * ly, t + sn * lx + c * ly, z0 + lz)
        pl.add(kind, centre, psize, yaw, sem, rgb, refl, obj=index, rgb_top=top)
    return Obj(cls, np.array([s, t, z0 + size[2] / 2]), size, yaw, sem, pl.build())


def street_in_view(street: Street, ego: Ego, near: float = 2.0, far: float = 240.0) -> Prims:
    """Static primitives between ``near`` and ``far`` metres ahead of the ego along the road; boxes are
    clipped to that stretch.

    Why: a box reaching behind the camera cannot be windowed and costs a full-grid ray test; what is
    cut away (s < ego + 2 m) is outside both sensors' view (those need |y| < 0.75 x and the ground
    closer than 3.5 m is below the image), so the images and scans do not change."""
    p = street.prims
    lo, hi = p.centre[:, 0] - p.size[:, 0] / 2, p.centre[:, 0] + p.size[:, 0] / 2
    s0, s1 = ego.s + near, ego.s + far
    box = p.kind == KIND_BOX
    keep = np.where(box, (hi > s0) & (lo < s1), (p.centre[:, 0] >= s0) & (p.centre[:, 0] < s1))
    out = p.take(np.flatnonzero(keep))
    b = np.flatnonzero(out.kind == KIND_BOX)
    clo = np.maximum(out.centre[b, 0] - out.size[b, 0] / 2, s0)
    chi = np.minimum(out.centre[b, 0] + out.size[b, 0] / 2, s1)
    out.centre = out.centre.copy()
    out.size = out.size.copy()
    out.centre[b, 0], out.size[b, 0] = (clo + chi) / 2, chi - clo
    return out


def prims_to_camera(p: Prims, ego: Ego, ground_z: float) -> Prims:
    """Road-frame primitives -> camera view frame (ground at ``ground_z``)."""
    x, y = ego.to_camera(p.centre[:, 0], p.centre[:, 1])
    out = Prims(**p.__dict__)
    out.centre = np.stack([x, y, p.centre[:, 2] + ground_z], 1)
    out.yaw = p.yaw - ego.psi
    return out


# ------------------------------------------------------------------------------------------ ray casting


def _bounding_corners(p: Prims, i: int) -> np.ndarray:
    """(8, 3) corners of the oriented box bounding primitive ``i`` (cylinders/spheres: their cube)."""
    l, w, h = p.size[i]
    if p.kind[i] != KIND_BOX:
        w = l
    c, s = math.cos(p.yaw[i]), math.sin(p.yaw[i])
    lx = np.array([-1, 1, 1, -1, -1, 1, 1, -1]) * l / 2
    ly = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * w / 2
    lz = np.array([-1, -1, -1, -1, 1, 1, 1, 1]) * h / 2
    return np.stack([c * lx - s * ly, s * lx + c * ly, lz], 1) + p.centre[i]


class _RayGrid:
    """Rays on a 2D grid from one origin; ``window`` returns the grid rectangle that can see a primitive."""

    origin: np.ndarray          # (3,)
    dirs: np.ndarray            # (3, H, W) direction components (contiguous windows per component)

    @property
    def flat_dirs(self) -> np.ndarray:
        """(H * W, 3) directions in row-major grid order."""
        return self.dirs.reshape(3, -1).T

    def window(self, p: Prims, i: int) -> tuple[int, int, int, int]:
        raise NotImplementedError


class _PinholeGrid(_RayGrid):
    def __init__(self, k: np.ndarray, hw: tuple[int, int]) -> None:
        self.k, self.hw = k, hw
        self.origin = np.zeros(3)
        v, u = np.mgrid[0: hw[0], 0: hw[1]].astype(np.float64)
        # un-normalised: x = 1, so the hit parameter t is the depth
        self.dirs = np.stack([np.ones_like(u), -(u - k[0, 2]) / k[0, 0], -(v - k[1, 2]) / k[1, 1]])

    def window(self, p: Prims, i: int) -> tuple[int, int, int, int]:
        h, w = self.hw
        corners = _bounding_corners(p, i)
        if corners[:, 0].max() <= 0.05:
            return 0, 0, 0, 0
        if corners[:, 0].min() <= 0.05:
            return 0, h, 0, w        # straddles the camera plane: conservative
        u, v, _ = project_points(corners, self.k)
        return (max(0, math.floor(v.min())), min(h, math.ceil(v.max()) + 1),
                max(0, math.floor(u.min())), min(w, math.ceil(u.max()) + 1))


class _SpinGrid(_RayGrid):
    """Spinning multi-beam LiDAR: rows = beams (ascending elevation), columns = azimuth (CCW from +x)."""

    def __init__(self, origin: np.ndarray, elevations: np.ndarray, az0: float, daz: float, n_az: int) -> None:
        self.origin, self.el, self.az0, self.daz, self.n_az = origin, elevations, az0, daz, n_az
        az = az0 + daz * np.arange(n_az)
        ce = np.cos(elevations)[:, None]
        self.dirs = np.stack([ce * np.cos(az), ce * np.sin(az),
                              np.broadcast_to(np.sin(elevations)[:, None], (len(elevations), n_az))])

    def window(self, p: Prims, i: int) -> tuple[int, int, int, int]:
        nb = len(self.el)
        rel = _bounding_corners(p, i) - self.origin
        if rel[:, 0].max() <= 0.05:
            return 0, 0, 0, 0
        # distance from the sensor axis to the footprint rectangle (exact for boxes)
        l, w = p.size[i, 0], p.size[i, 1] if p.kind[i] == KIND_BOX else p.size[i, 0]
        c, s = math.cos(p.yaw[i]), math.sin(p.yaw[i])
        d = self.origin[:2] - p.centre[i, :2]
        lx, ly = c * d[0] + s * d[1], -s * d[0] + c * d[1]
        rho_min = math.hypot(max(abs(lx) - l / 2, 0.0), max(abs(ly) - w / 2, 0.0))
        if rel[:, 0].min() <= 0.05 or rho_min < 0.05:
            return 0, nb, 0, self.n_az
        rho_max = float(np.hypot(rel[:, 0], rel[:, 1]).max())
        z0, z1 = rel[:, 2].min(), rel[:, 2].max()
        e_hi = math.atan2(z1, rho_min if z1 > 0 else rho_max)
        e_lo = math.atan2(z0, rho_min if z0 < 0 else rho_max)
        az = np.arctan2(rel[:, 1], rel[:, 0])
        c0 = math.floor((az.min() - self.az0) / self.daz)
        c1 = math.ceil((az.max() - self.az0) / self.daz) + 1
        return (int(np.searchsorted(self.el, e_lo, "left")), int(np.searchsorted(self.el, e_hi, "right")),
                max(0, c0), min(self.n_az, c1))


def _hit_box(o: np.ndarray, d: np.ndarray, centre, size, yaw: float) -> np.ndarray:
    """Ray parameter of the first hit of rays o + t d (d: (3, ...) components) with an oriented box;
    inf = miss. Slab test in the box frame, one axis at a time (no (n, 3) temporaries)."""
    c, s = math.cos(yaw), math.sin(yaw)
    rx, ry, rz = o[0] - centre[0], o[1] - centre[1], o[2] - centre[2]
    lo = (c * rx + s * ry, -s * rx + c * ry, rz)
    ld = (c * d[0] + s * d[1], -s * d[0] + c * d[1], d[2])
    tn = tf = None
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(3):
            half = size[k] / 2
            inv = 1.0 / ld[k]
            a, b = (-half - lo[k]) * inv, (half - lo[k]) * inv
            near, far = np.fmin(a, b), np.fmax(a, b)
            tn = near if tn is None else np.fmax(tn, near)
            tf = far if tf is None else np.fmin(tf, far)
    return np.where((tn <= tf) & (tn > _EPS), tn, np.inf)


def _hit_cylinder(o: np.ndarray, d: np.ndarray, centre, size, yaw: float) -> np.ndarray:
    """Vertical cylinder side (no caps: nothing looks at a pole top)."""
    r, half_h = size[0] / 2, size[2] / 2
    ox, oy = o[0] - centre[0], o[1] - centre[1]
    a = d[0] * d[0] + d[1] * d[1]
    b = 2 * (d[0] * ox + d[1] * oy)
    disc = b * b - 4 * a * (ox * ox + oy * oy - r * r)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    z = o[2] + t * d[2] - centre[2]
    hit = (disc >= 0) & (a > 1e-12) & (t > _EPS) & (np.abs(z) <= half_h)
    return np.where(hit, t, np.inf)


def _hit_sphere(o: np.ndarray, d: np.ndarray, centre, size, yaw: float) -> np.ndarray:
    r = size[0] / 2
    rx, ry, rz = o[0] - centre[0], o[1] - centre[1], o[2] - centre[2]
    a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    b = 2 * (d[0] * rx + d[1] * ry + d[2] * rz)
    disc = b * b - 4 * a * (rx * rx + ry * ry + rz * rz - r * r)
    t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    return np.where((disc >= 0) & (t > _EPS), t, np.inf)


_HIT: dict[int, Callable] = {KIND_BOX: _hit_box, KIND_CYL: _hit_cylinder, KIND_SPHERE: _hit_sphere}


@dataclass
class Hits:
    t: np.ndarray               # (H, W) ray parameter (depth for the camera, range for the LiDAR); inf = sky
    pid: np.ndarray             # (H, W) primitive index, PID_GROUND, PID_SKY
    own: np.ndarray | None      # (n_obj, H, W) object hit ignoring occlusion (camera only)


def cast(grid: _RayGrid, prims: Prims, ground_z: float, n_obj: int = 0, max_t: float = np.inf) -> Hits:
    """First hits of every grid ray against the ground plane and all primitives (z-buffer); each
    primitive is tested only on the grid window that can see it."""
    d = grid.dirs
    h, w = d.shape[1:]
    with np.errstate(divide="ignore"):
        tg = (ground_z - grid.origin[2]) / d[2]
    ground = (d[2] < 0) & (tg < max_t)
    best_t = np.where(ground, tg, np.inf)
    pid = np.where(ground, PID_GROUND, PID_SKY).astype(np.int32)
    own = np.zeros((n_obj, h, w), bool) if n_obj else None
    for i in range(len(prims)):
        r0, r1, c0, c1 = grid.window(prims, i)
        if r1 <= r0 or c1 <= c0:
            continue
        t = _HIT[int(prims.kind[i])](grid.origin, d[:, r0:r1, c0:c1], prims.centre[i], prims.size[i], prims.yaw[i])
        if own is not None and prims.obj[i] >= 0:
            own[prims.obj[i], r0:r1, c0:c1] |= np.isfinite(t)
        bt = best_t[r0:r1, c0:c1]
        closer = t < bt
        bt[closer] = t[closer]
        pid[r0:r1, c0:c1][closer] = i
    return Hits(best_t, pid, own)


def normals_at(pts: np.ndarray, pid: np.ndarray, prims: Prims) -> np.ndarray:
    """(n, 3) outward unit normals at hit points ``pts`` (n, 3) of primitives ``pid`` (n,); the ground
    (and sky) get +z. Computed from the hit point, so casting never carries normals around."""
    normal = np.zeros_like(pts)
    normal[:, 2] = 1.0
    on = np.flatnonzero(pid >= 0)
    if len(on) == 0:
        return normal
    k = pid[on]
    rel = pts[on] - prims.centre[k]
    kind, size = prims.kind[k], prims.size[k]
    c, s = np.cos(prims.yaw[k]), np.sin(prims.yaw[k])
    lx, ly = c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1]
    local = np.stack([lx, ly, rel[:, 2]], 1)
    # box: the face whose slab the point is closest to leaving
    ratio = np.abs(local) / np.maximum(size / 2, 1e-9)
    axis = ratio.argmax(1)
    nl = np.zeros_like(local)
    rows = np.arange(len(k))
    nl[rows, axis] = np.sign(local[rows, axis])
    box_n = np.stack([c * nl[:, 0] - s * nl[:, 1], s * nl[:, 0] + c * nl[:, 1], nl[:, 2]], 1)
    radial = rel.copy()
    radial[kind == KIND_CYL, 2] = 0.0
    radial /= np.maximum(np.linalg.norm(radial, axis=1, keepdims=True), 1e-9)
    normal[on] = np.where((kind == KIND_BOX)[:, None], box_n, radial)
    return normal


# ------------------------------------------------------------------------------------------ materials


def ground_labels(street: Street, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """class_list index of ground-plane points at road coordinates (s, t): road, lane lines or grass."""
    out = np.full(s.shape, _lbl("Nature object"), np.int64)
    road = (t >= street.t_right) & (t <= street.t_left)
    out[road] = _lbl("RD normal street")
    for tm, width, label, dash, period in street.markings:
        on = road & (np.abs(t - tm) <= width / 2)
        if dash > 0:
            on &= np.mod(s, period) < dash
        out[on] = label
    return out


@dataclass
class Surface:
    """Per-ray material of the first hit (sky rays: label Sky)."""

    label: np.ndarray           # (n,) class_list index
    rgb: np.ndarray             # (n, 3) albedo 0..1
    refl: np.ndarray            # (n,) mean reflectance 0..255
    obj: np.ndarray             # (n,) labelled-object index or -1
    tex: np.ndarray             # (n,)
    pts: np.ndarray             # (n, 3) hit points (sky: the ray origin)
    normal: np.ndarray          # (n, 3)


def surfaces(hits: Hits, grid: _RayGrid, prims: Prims, street: Street, ego: Ego) -> Surface:
    """Materials, hit points and normals of all grid rays (flattened, row-major)."""
    pid = hits.pid.reshape(-1)
    t = np.where(np.isfinite(hits.t), hits.t, 0.0).reshape(-1)
    pts = grid.origin + t[:, None] * grid.flat_dirs
    normal = normals_at(pts, pid, prims)
    n = len(pid)
    label = np.full(n, _lbl("Sky"), np.int64)
    rgb = np.zeros((n, 3))
    refl = np.zeros(n)
    obj = np.full(n, -1, np.int64)
    tex = np.zeros(n, np.int64)
    on = pid >= 0
    k = pid[on]
    label[on], refl[on], obj[on], tex[on] = prims.label[k], prims.refl[k], prims.obj[k], prims.tex[k]
    up = normal[on, 2] > 0.5
    rgb[on] = np.where(up[:, None], prims.rgb_top[k], prims.rgb[k])
    g = pid == PID_GROUND
    s_road, t_road = ego.to_road(pts[g, 0], pts[g, 1])
    gl = ground_labels(street, s_road, t_road)
    label[g] = gl
    is_line = (gl == _lbl("Solid line")) | (gl == _lbl("Dashed line"))
    is_road = gl == _lbl("RD normal street")
    rgb[g] = np.where(is_line[:, None], street.line_rgb, np.where(is_road[:, None], street.road_rgb, street.grass_rgb))
    refl[g] = np.where(is_line, 170.0, np.where(is_road, 14.0, 50.0))
    tex[g] = np.where(is_road | is_line, TEX_PLAIN, TEX_FOLIAGE)
    return Surface(label, rgb, refl, obj, tex, pts, normal)


# ------------------------------------------------------------------------------------------ camera


@dataclass(frozen=True)
class CameraModel:
    """Reduced-resolution undistorted render grid and the nearest map original pixel -> render pixel."""

    k_render: np.ndarray        # (3, 3)
    render_hw: tuple[int, int]
    index: np.ndarray           # (1208 * 1920,) int32 flat render index of each original pixel
    out_hw: tuple[int, int]
    grid: _PinholeGrid          # the render rays


def camera_model(camera: CameraConfig, scale: float = RENDER_SCALE) -> CameraModel:
    """Each ORIGINAL (distorted) pixel looks along the ray obtained by un-distorting it with
    CamMatrixOriginal + Distortion; the render is an undistorted pinhole image (CamMatrix scaled) just
    large enough to contain all those rays."""
    w, h = camera.resolution_wh
    k0 = np.asarray(camera.cam_matrix_original, np.float64)
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    xn, yn = undistort_normalised((u - k0[0, 2]) / k0[0, 0], (v - k0[1, 2]) / k0[1, 1], camera.distortion)
    kr = scale_cam_matrix(np.asarray(camera.cam_matrix, np.float64), (w, h), (round(h * scale), round(w * scale)))
    col, row = xn * kr[0, 0] + kr[0, 2], yn * kr[1, 1] + kr[1, 2]
    left, top = max(0, math.ceil(-0.5 - col.min())), max(0, math.ceil(-0.5 - row.min()))
    kr[0, 2] += left
    kr[1, 2] += top
    ci, ri = np.rint(col + left).astype(np.int64), np.rint(row + top).astype(np.int64)
    rw, rh = int(ci.max()) + 1, int(ri.max()) + 1
    index = (ri * rw + ci).astype(np.int32).reshape(-1)
    return CameraModel(kr, (rh, rw), index, (h, w), _PinholeGrid(kr, (rh, rw)))


def upsample(render_rgb: np.ndarray, cam: CameraModel) -> np.ndarray:
    """(n_render, 3) uint8 -> (1208, 1920, 3) original image through the nearest index map."""
    packed = np.zeros((len(render_rgb), 4), np.uint8)
    packed[:, :3] = render_rgb
    # gathering one uint32 per pixel is ~5x faster than gathering 3-byte rows
    full = packed.view(np.uint32).reshape(-1)[cam.index]
    return np.ascontiguousarray(full.view(np.uint8).reshape(*cam.out_hw, 4)[..., :3])


def shade(surf: Surface, grid: _RayGrid, prims: Prims, hits: Hits, street: Street, ego: Ego,
          objs: list[Obj], ground_z: float, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) float RGB 0..1: albedo x (ambient + sun) + textures, contact shadows, haze, sky gradient.
    ``objs`` are in the road frame."""
    n = len(surf.label)
    pts, normals = surf.pts, surf.normal
    pid = hits.pid.reshape(-1)
    sky = pid == PID_SKY
    sun_road = street.sun
    c, s = math.cos(ego.psi), math.sin(ego.psi)
    sun = np.array([c * sun_road[0] + s * sun_road[1], -s * sun_road[0] + c * sun_road[1], sun_road[2]])
    lam = np.clip(normals @ sun, 0, 1)
    col = surf.rgb * (0.55 + 0.55 * lam)[:, None]
    # procedural textures
    bld = surf.tex == TEX_WINDOWS
    if bld.any():
        k = pid[bld]
        rel = pts[bld] - prims.centre[k]
        cy, sy = np.cos(prims.yaw[k]), np.sin(prims.yaw[k])
        along = cy * rel[:, 0] + sy * rel[:, 1] - sy * rel[:, 0] + cy * rel[:, 1]
        height = rel[:, 2] + prims.size[k, 2] / 2
        win = (np.mod(along, 2.6) < 1.3) & (np.mod(height - 0.9, 3.0) < 1.5) & (height > 2.0) \
            & (height < prims.size[k, 2] - 0.8) & (np.abs(normals[bld, 2]) < 0.5)
        col[np.flatnonzero(bld)[win]] = np.array([0.16, 0.20, 0.26]) * (0.8 + 0.4 * lam[bld][win, None])
    foliage = surf.tex == TEX_FOLIAGE
    col[foliage] *= rng.uniform(0.7, 1.3, (int(foliage.sum()), 1))
    # objects: dark lower band (tyres / shoes) and contact shadows on the ground
    has_obj = surf.obj >= 0
    low = has_obj & (pts[:, 2] - ground_z < 0.28) & np.isin(surf.label, _variants("Car") + _variants("Truck"))
    col[low] *= 0.3
    ground = pid == PID_GROUND
    if objs and ground.any():
        gp = pts[ground]
        shadow = np.zeros(len(gp), bool)
        sr, tr = ego.to_road(gp[:, 0], gp[:, 1])
        for o in objs:
            cy, sy = math.cos(o.yaw), math.sin(o.yaw)
            ds, dt = sr - o.centre[0], tr - o.centre[1]
            shadow |= ((np.abs(cy * ds + sy * dt) < o.size[0] / 2 + 0.25)
                       & (np.abs(-sy * ds + cy * dt) < o.size[1] / 2 + 0.25))
        col[np.flatnonzero(ground)[shadow]] *= 0.45
    col += rng.standard_normal((n, 3), dtype=np.float32) * 0.018
    # haze towards the horizon colour, then the sky gradient
    horizon = np.array([0.80, 0.86, 0.93])
    dist = np.linalg.norm(pts, axis=1)
    fog = 1 - np.exp(-dist / 450.0)
    col = col * (1 - fog[:, None]) + horizon * fog[:, None]
    d = grid.flat_dirs[sky]
    elev = np.clip(d[:, 2] / np.linalg.norm(d, axis=1), 0, 1)
    zenith = np.array([0.30, 0.52, 0.86])
    col[sky] = horizon + (zenith - horizon) * np.sqrt(elev)[:, None] * 1.6
    return col


# ------------------------------------------------------------------------------------------ LiDAR


@cache
def lidar_grid() -> _SpinGrid:
    origin, _ = _lidar_pose()
    half, step = math.radians(LIDAR_AZ_HALF_DEG), math.radians(LIDAR_AZ_STEP_DEG)
    n_az = round(2 * half / step) + 1
    return _SpinGrid(origin, np.radians(LIDAR_ELEVATIONS_DEG), -half, step, n_az)


@lru_cache(maxsize=4)
def _scan_order(n: int, n_az: int) -> np.ndarray:
    """Scan order of the (elevation, azimuth) grid rays: column by column, as the head spins clockwise
    (decreasing camera azimuth). Depends on the grid only, so it is sorted once."""
    order = np.lexsort((np.arange(n) // n_az, -(np.arange(n) % n_az)))
    order.flags.writeable = False
    return order


def lidar_scan(prims: Prims, street: Street, ego: Ego, ground_z: float, k: np.ndarray,
               image_wh: tuple[int, int], cam_tstamp: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A2D2 lidar npz arrays (points in the camera view frame, kept only where they project into the
    undistorted image). Also returns '_obj' (object index per point) for bookkeeping."""
    grid = lidar_grid()
    hits = cast(grid, prims, ground_z, max_t=LIDAR_MAX_RANGE)
    surf = surfaces(hits, grid, prims, street, ego)
    t = hits.t.reshape(-1)
    dirs = grid.flat_dirs
    normals = surf.normal
    n = len(t)
    keep = np.isfinite(t) & (t < LIDAR_MAX_RANGE)
    keep &= rng.random(n) >= 0.02 + 0.25 * (np.minimum(t, LIDAR_MAX_RANGE) / LIDAR_MAX_RANGE) ** 2
    noise = np.clip(rng.normal(0, 0.012, n), -RANGE_NOISE_CLIP, RANGE_NOISE_CLIP)
    cos_inc = np.abs((normals * dirs).sum(1))
    refl = surf.refl * (0.55 + 0.45 * cos_inc) * rng.lognormal(0, 0.2, n)
    pts = grid.origin + np.where(keep, t + noise, 0.0)[:, None] * dirs
    u, v, depth = project_points(pts, k)
    keep &= (depth > 0.5) & (u >= 0) & (u < image_wh[0]) & (v >= 0) & (v < image_wh[1])
    order = _scan_order(n, grid.n_az)
    idx = order[keep[order]]
    pts, u, v = pts[idx], u[idx], v[idx]
    _, rot = _lidar_pose()
    pl = (pts - grid.origin) @ rot.T
    azimuth = np.mod(math.pi / 2 - np.arctan2(pl[:, 1], pl[:, 0]), 2 * math.pi)
    cam_az = idx % grid.n_az
    timestamp = cam_tstamp - TSTAMP_DELAY - 30_000 + (
        (grid.n_az - 1 - cam_az) * (FRAME_DT_US * LIDAR_AZ_STEP_DEG / 360)).astype(np.int64)
    return {
        "azimuth": azimuth.astype(np.float64),
        "row": v.astype(np.float64),
        "lidar_id": np.full(len(idx), float(LIDAR_ID)),
        "depth": pts[:, 0].copy(),
        "reflectance": np.clip(np.rint(refl[idx]), 0, 255).astype(np.int64),
        "col": u.astype(np.float64),
        "points": pts.astype(np.float64),
        "timestamp": timestamp.astype(np.int64),
        "distance": np.linalg.norm(pts, axis=1),
        "_obj": surf.obj[idx],
    }


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """``np.savez_compressed`` layout with a fixed zip timestamp, so equal arrays give equal bytes
    (numpy stamps the current time into every member)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in NPZ_KEYS:
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            # level 1: several times faster than numpy's default 6 and only slightly larger
            for attr in ("compress_level", "_compresslevel"):  # renamed in Python 3.13
                if hasattr(info, attr):
                    setattr(info, attr, 1)
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arrays[key]), allow_pickle=False)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ boxes


def box_corners(centre, size, yaw: float) -> np.ndarray:
    """(8, 3) corners in A2D2 order: bottom rear-left, front-left, front-right, rear-right, then top."""
    l, w, h = size
    lx = np.array([-1, 1, 1, -1, -1, 1, 1, -1]) * l / 2
    ly = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * w / 2
    lz = np.array([-1, -1, -1, -1, 1, 1, 1, 1]) * h / 2
    c, s = math.cos(yaw), math.sin(yaw)
    return np.stack([c * lx - s * ly, s * lx + c * ly, lz], 1) + np.asarray(centre)


def box_json(obj: Obj, box_id: int, k: np.ndarray, image_wh: tuple[int, int], occlusion: float,
             axis_sign: float) -> dict:
    """One label3D entry (A2D2 schema, keys in the real file's order); ``axis_sign`` is used only for
    yaw == 0, where either axis is correct."""
    yaw = float(math.remainder(obj.yaw, 2 * math.pi))
    # canonical axis-angle like the real files: rot_angle in [0, pi], the axis sign carries the direction,
    # so yaw = rot_angle * axis[2] (both signs occur; readers that ignore the axis get half the yaws wrong)
    if yaw != 0.0:
        axis_sign = 1.0 if yaw > 0 else -1.0
    rot_angle = abs(yaw)
    corners = box_corners(obj.centre, obj.size, yaw)
    u, v, _ = project_points(corners, k)
    bbox = [float(u.min()), float(v.min()), float(u.max()), float(v.max())]
    area = (bbox[2] - bbox[0]) * (bbox[3] - bbox[1])
    iw = max(0.0, min(bbox[2], image_wh[0]) - max(bbox[0], 0.0))
    ih = max(0.0, min(bbox[3], image_wh[1]) - max(bbox[1], 0.0))
    return {
        "2d_bbox": bbox,
        "3d_points": corners.tolist(),
        "alpha": 0.0,
        "axis": [0.0, 0.0, float(axis_sign)],
        "center": [float(v_) for v_ in obj.centre],
        "class": obj.cls,
        "id": box_id,
        "occlusion": round(float(occlusion), 3),
        "rot_angle": rot_angle,
        "size": [float(v_) for v_ in obj.size],
        "truncation": round(1.0 - iw * ih / area, 3) if area > 0 else 1.0,
    }


# ------------------------------------------------------------------------------------------ frames


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, *key]))


@lru_cache(maxsize=4)
def _street(seed: int, scene_idx: int, scene_size: int) -> Street:
    rng = _rng(seed, 1, scene_idx)
    return make_street(rng, -40.0, scene_size * EGO_STEP + 260.0)


def render_frame(seed: int, index: int, scene_size: int, cam: CameraModel, camera: CameraConfig) -> dict:
    """Everything of frame ``index`` in memory: images (full size), npz arrays, boxes, timestamps."""
    scene_idx, local = divmod(index, scene_size)
    street = _street(seed, scene_idx, scene_size)
    rng = _rng(seed, 2, index)
    lane = int(rng.integers(0, street.n_right))
    ego = Ego(s=local * EGO_STEP, t=street.t_right + (lane + 0.5) * street.lane_w + rng.normal(0, 0.15),
              psi=rng.normal(0, math.radians(1.2)))
    ground_z = -CAMERA_HEIGHT
    objs = place_objects(rng, street, ego, int(rng.integers(4, 13)))
    world = Prims.concat([street_in_view(street, ego)] + [o.prims for o in objs])
    prims = prims_to_camera(world, ego, ground_z)
    cam_objs = []
    for o in objs:
        x, y = ego.to_camera(np.array(o.centre[0]), np.array(o.centre[1]))
        cam_objs.append(Obj(o.cls, np.array([float(x), float(y), o.centre[2] + ground_z]), o.size,
                            o.yaw - ego.psi, o.sem_label, o.prims))

    # camera
    grid = cam.grid
    hits = cast(grid, prims, ground_z, n_obj=len(objs))
    surf = surfaces(hits, grid, prims, street, ego)
    rgb = shade(surf, grid, prims, hits, street, ego, objs, ground_z, rng)
    gain = rng.uniform(0.85, 1.12) * rng.uniform(0.96, 1.04, 3)
    render_rgb = np.clip(rgb * gain * 255.0 + 0.5, 0, 255).astype(np.uint8)
    image = upsample(render_rgb, cam)
    label = upsample(_palette()[surf.label], cam)
    visible = np.bincount(surf.obj[surf.obj >= 0], minlength=len(objs))
    unoccluded = hits.own.reshape(len(objs), -1).sum(1) if objs else np.zeros(0, np.int64)

    # LiDAR
    k = np.asarray(camera.cam_matrix, np.float64)
    scene = scene_name(scene_idx, scene_size)
    cam_tstamp = _scene_start_us(scene) + local * FRAME_DT_US
    lidar = lidar_scan(prims, street, ego, ground_z, k, camera.resolution_wh, cam_tstamp, rng)
    obj_points = np.bincount(lidar.pop("_obj") + 1, minlength=len(objs) + 1)[1:]

    boxes = {}
    for i, o in enumerate(cam_objs):
        if obj_points[i] == 0 and visible[i] == 0:
            continue  # not observed by any sensor
        occ = 1.0 - visible[i] / unoccluded[i] if unoccluded[i] else 1.0
        axis_sign = 1.0 if rng.random() < 0.5 else -1.0
        boxes[f"box_{len(boxes)}"] = box_json(o, len(boxes), k, camera.resolution_wh, occ, axis_sign)
    return {"scene": scene, "frame_id": f"{index:09d}", "image": image, "label": label, "lidar": lidar,
            "boxes": boxes, "cam_tstamp": cam_tstamp}


def _scene_start_us(scene: str) -> int:
    dt = datetime.strptime(scene, "%Y%m%d_%H%M%S").replace(tzinfo=timezone.utc)
    return int(dt.timestamp()) * 1_000_000


def write_frame(root: Path, frame: dict) -> None:
    """Write the four A2D2 files (+ camera info sidecar) of one rendered frame, each atomically."""
    scene, fid = frame["scene"], frame["frame_id"]
    cam_png = raw_file_path(root, scene, "camera", fid)
    write_bytes_atomic(cam_png, encode_png(frame["image"]))
    write_bytes_atomic(raw_file_path(root, scene, "label", fid), encode_png(frame["label"]))
    npz = raw_file_path(root, scene, "lidar", fid)
    write_bytes_atomic(npz, npz_bytes(frame["lidar"]))
    write_bytes_atomic(raw_file_path(root, scene, "label3D", fid),
                       (json.dumps(frame["boxes"], indent=4) + "\n").encode())
    write_json_atomic(cam_png.with_suffix(".json"), {
        "cam_name": "front_center", "cam_tstamp": frame["cam_tstamp"], "lidar_ids": LIDAR_IDS,
        "image_png": cam_png.name, "pcld_npz": npz.name,
    })


# ------------------------------------------------------------------------------------------ driver

_WORKER: dict = {}


def _init_worker(root: str, seed: int, scene_size: int, cam: CameraModel, camera: CameraConfig) -> None:
    _WORKER.update(root=Path(root), seed=seed, scene_size=scene_size, cam=cam, camera=camera)


def _work(index: int) -> dict:
    w = _WORKER
    frame = render_frame(w["seed"], index, w["scene_size"], w["cam"], w["camera"])
    write_frame(w["root"], frame)
    classes: dict[str, int] = {}
    for b in frame["boxes"].values():
        classes[b["class"]] = classes.get(b["class"], 0) + 1
    return {"index": index, "scene": frame["scene"], "points": len(frame["lidar"]["points"]),
            "classes": classes}


def _pool_init(parent_pid: int, *args) -> None:
    die_with_parent(parent_pid)
    _init_worker(*args)


_OWN_ROOT_FILES = {"cams_lidars.json", "class_list.json", "synth_summary.json"}
# only the synthetic year: --overwrite must never delete a real A2D2 tree (2018 scene folders)
_SCENE_RE = re.compile(rf"^{BASE_TIME.year}\d{{4}}_\d{{6}}$")
_STAGING_PREFIX = ".synth-staging-"


def _own_hidden(name: str) -> bool:
    """mtl's own bookkeeping in OUT (lock, commit journal, staging folders), not user content."""
    return name in (OutputLock.NAME, JOURNAL) or name.startswith(_STAGING_PREFIX)


def _prepare_out(out: Path, overwrite: bool) -> list[str]:
    """Under the output lock: finish an interrupted commit, drop what dead runs left, refuse a non-empty
    ``out`` unless ``overwrite``. Returns the files (relative to ``out``) of the old synthetic dataset, which
    the commit of the new one removes; anything synth never writes makes ``--overwrite`` refuse."""
    recover_commit(out)
    remove_stale_temps(out)
    remove_stale_staging(out, _STAGING_PREFIX)
    entries = sorted(e for e in out.iterdir() if not _own_hidden(e.name))
    if not entries:
        return []
    if not overwrite:
        raise OutputError(out, f"is not empty ({len(entries)} entries); pass --overwrite to replace a synthetic "
                               "dataset")
    foreign = [e.name for e in entries if not (e.name in _OWN_ROOT_FILES or (e.is_dir() and _SCENE_RE.match(e.name)))]
    if foreign:
        raise OutputError(out, f"--overwrite refused: holds entries synth never writes ({', '.join(foreign[:3])}); "
                               "choose an empty directory")
    return [str(p.relative_to(out)) for e in entries for p in ([e] if e.is_file() else sorted(e.rglob("*")))
            if p.is_file() or p.is_symlink()]


def _commit_tree(staging: Path, out: Path, old: list[str]) -> None:
    """Switch ``out`` to the tree in ``staging`` in one journaled commit (synth_summary.json last); the old
    dataset's files are removed by the commit, then its emptied scene folders."""
    names = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
    names.remove("synth_summary.json")
    names.append("synth_summary.json")
    for parent in sorted({(out / n).parent for n in names}):     # the commit moves files, not folders
        parent.mkdir(parents=True, exist_ok=True)
    commit_files(staging, out, names, remove=old)
    for scene in (e for e in out.iterdir() if e.is_dir() and _SCENE_RE.match(e.name)):
        for d in sorted((p for p in scene.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [scene]:
            if not any(d.iterdir()):
                d.rmdir()


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def generate(out: str | Path, frames: int, seed: int = 0, workers: int | None = None, scene_size: int = 50,
             overwrite: bool = False, progress: bool = False, _render_scale: float = RENDER_SCALE) -> dict:
    """Write ``frames`` synthetic frames in the raw A2D2 layout under ``out``; returns the summary dict
    (also written to ``out/synth_summary.json``). Output bytes depend only on (frames, seed, scene_size).

    One synth per ``out`` at a time (``OutputLock``); the tree is rendered into a hidden staging folder and
    switched in by one commit, so a failed, interrupted or killed run leaves an earlier dataset as it was."""
    out = Path(out)
    if frames < 1:
        raise DataError(out, f"--frames must be >= 1, got {frames}")
    if scene_size < 1:
        raise DataError(out, f"--scene-size must be >= 1, got {scene_size}")
    if seed < 0:
        raise DataError(out, f"--seed must be >= 0, got {seed}")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise DataError(out, f"--workers must be >= 1, got {workers}")
    workers = min(workers, frames)
    if out.exists() and not out.is_dir():
        raise OutputError(out, "exists and is not a directory")
    created = not out.exists()
    with OutputLock(out, "mtl data synth"), sigterm_as_interrupt():
        staging, ok = None, False
        try:
            old = _prepare_out(out, overwrite)
            staging = out / f"{_STAGING_PREFIX}{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            summary = _render_all(staging, frames, seed, workers, scene_size, progress, _render_scale)
            write_json_atomic(staging / "synth_summary.json", summary)
            with signals_deferred():
                _commit_tree(staging, out, old)
            ok = True
        finally:
            cleanup_staging(staging, out)
            if not ok and created:
                drop_if_only_lock(out)
    return summary


def _render_all(root: Path, frames: int, seed: int, workers: int, scene_size: int, progress: bool,
                render_scale: float) -> dict:
    """Render and write every frame (and the root JSON files) under ``root``; returns the summary."""
    start = time.perf_counter()
    camera = CameraConfig.a2d2_front_center()
    cam = camera_model(camera, render_scale)
    write_bytes_atomic(root / "cams_lidars.json", (json.dumps(cams_lidars_json(), indent=1) + "\n").encode())
    write_bytes_atomic(root / "class_list.json", (json.dumps(dict(class_colours()), indent=4) + "\n").encode())

    from tqdm import tqdm

    results: list[dict] = []
    bar = tqdm(total=frames, unit="frame", desc="synth", disable=not progress)
    try:
        if workers == 1 or frames == 1:
            _init_worker(str(root), seed, scene_size, cam, camera)
            for i in range(frames):
                results.append(_work(i))
                bar.update()
        else:
            import multiprocessing as mp

            with mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn").Pool(
                    workers, initializer=_pool_init,
                    initargs=(os.getpid(), str(root), seed, scene_size, cam, camera)) as pool:
                for r in pool.imap_unordered(_work, range(frames), chunksize=1):
                    results.append(r)
                    bar.update()
    finally:
        bar.close()
    return _summary(results, frames, seed, scene_size, workers, time.perf_counter() - start)


def _summary(results: list[dict], frames: int, seed: int, scene_size: int, workers: int, elapsed: float) -> dict:
    results = sorted(results, key=lambda r: r["index"])
    pts = np.array([r["points"] for r in results])
    per_class: dict[str, int] = {c: 0 for c in BOX_CLASSES}
    for r in results:
        for c, n in r["classes"].items():
            per_class[c] = per_class.get(c, 0) + n
    boxes = np.array([sum(r["classes"].values()) for r in results])
    return {
        "generator": "mtl data synth", "synth_version": SYNTH_VERSION, "frames": frames, "seed": seed,
        "scene_size": scene_size, "scenes": sorted({r["scene"] for r in results}), "workers": workers,
        "camera_height_m": CAMERA_HEIGHT, "ground_z_camera_frame": -CAMERA_HEIGHT,
        "objects_per_class": per_class, "boxes_per_frame": _stats(boxes), "points_per_frame": _stats(pts),
        "elapsed_s": round(elapsed, 2), "frames_per_s": round(frames / elapsed, 2) if elapsed > 0 else None,
    }


def _stats(a: np.ndarray) -> dict:
    return {"min": int(a.min()), "mean": round(float(a.mean()), 1), "max": int(a.max())}


__all__ = [
    "BOX_CLASSES",
    "CAMERA_HEIGHT",
    "box_corners",
    "camera_model",
    "cams_lidars_json",
    "class_colours",
    "default_workers",
    "generate",
    "npz_bytes",
    "render_frame",
    "scene_name",
    "write_frame",
]
