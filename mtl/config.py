"""One frozen, typed config tree for the whole project.

The same tree is dumped into ``RUN/config.json``, the checkpoint, ONNX ``metadata_props`` (key ``mtl``)
and the TensorRT sidecar; the runtime rebuilds it from that JSON alone (``Config.from_dict``), so every
stage agrees on grid geometry, classes, calibration and normalisation by construction.

Torch-free on purpose: the runtime imports it.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

CONFIG_VERSION = 1


@lru_cache(maxsize=None)
def _resource(name: str) -> dict:
    return json.loads(resources.files("mtl.resources").joinpath(name).read_text())


def a2d2_classes() -> dict:
    """The packaged A2D2 colour table and default class grouping (see resources/a2d2_classes.json)."""
    return _resource("a2d2_classes.json")


def front_center_calib() -> dict:
    """The packaged A2D2 cam_front_center calibration (from A2D2's cams_lidars.json)."""
    return _resource("front_center_calib.json")


@dataclass(frozen=True)
class GridConfig:
    """BEV grid. Row index follows x (forward), column index follows y (left): cell (r, c) covers
    x in [x_min + r*cell, x_min + (r+1)*cell) and y in [y_min + c*cell, y_min + (c+1)*cell)."""

    x_min: float = 0.0
    x_max: float = 51.2
    y_min: float = -25.6
    y_max: float = 25.6
    z_min: float = -3.0
    z_max: float = 3.0
    cell: float = 0.2
    head_stride: int = 2
    n_height_slices: int = 3

    @property
    def shape(self) -> tuple[int, int]:
        return (round((self.x_max - self.x_min) / self.cell), round((self.y_max - self.y_min) / self.cell))

    @property
    def head_shape(self) -> tuple[int, int]:
        h, w = self.shape
        return (h // self.head_stride, w // self.head_stride)

    @property
    def head_cell(self) -> float:
        return self.cell * self.head_stride

    @property
    def n_channels(self) -> int:
        # occupancy, max height, mean height, mean reflectance, log density + height slices
        return 5 + self.n_height_slices


@dataclass(frozen=True)
class CameraConfig:
    """Front camera: calibration of the raw images and the model input size."""

    name: str = "front_center"
    lens: str = "Telecam"
    resolution_wh: tuple[int, int] = (1920, 1208)
    cam_matrix: tuple[tuple[float, ...], ...] = ()          # undistorted images (3x3)
    cam_matrix_original: tuple[tuple[float, ...], ...] = ()  # original (distorted) images (3x3)
    distortion: tuple[float, ...] = ()                      # OpenCV k1, k2, p1, p2, k3
    image_hw: tuple[int, int] = (320, 512)                  # model input (H, W)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @staticmethod
    def a2d2_front_center(**overrides: Any) -> "CameraConfig":
        c = front_center_calib()
        return CameraConfig(
            name=c["name"], lens=c["lens"], resolution_wh=tuple(c["resolution_wh"]),
            cam_matrix=_tuplify(c["cam_matrix"]), cam_matrix_original=_tuplify(c["cam_matrix_original"]),
            distortion=tuple(c["distortion"]), **overrides,
        )


@dataclass(frozen=True)
class ClassesConfig:
    """Semantic and detection classes; the colour->id mapping is the packaged A2D2 table grouped by
    ``sem_groups`` (A2D2 class name -> training class) unless overridden."""

    sem_classes: tuple[str, ...] = ()
    sem_groups: tuple[tuple[str, tuple[str, ...]], ...] = ()
    sem_ignore_names: tuple[str, ...] = ()
    det_classes: tuple[str, ...] = ()
    det_groups: tuple[tuple[str, tuple[str, ...]], ...] = ()
    det_ignore_names: tuple[str, ...] = ()
    ignore_index: int = 255

    @staticmethod
    def a2d2_default() -> "ClassesConfig":
        t = a2d2_classes()
        return ClassesConfig(
            sem_classes=tuple(t["sem_classes"]),
            sem_groups=tuple((k, tuple(v)) for k, v in t["sem_groups"].items()),
            sem_ignore_names=tuple(t["sem_ignore"]),
            det_classes=tuple(t["det_classes"]),
            det_groups=tuple((k, tuple(v)) for k, v in t["det_groups"].items()),
            det_ignore_names=tuple(t["det_ignore"]),
        )

    @property
    def n_sem(self) -> int:
        return len(self.sem_classes)

    @property
    def n_det(self) -> int:
        return len(self.det_classes)

    def a2d2_name_to_sem_id(self) -> dict[str, int]:
        """A2D2 semantic class name (e.g. 'Car 2') -> training id (ignore -> ignore_index)."""
        out = {n: self.ignore_index for n in self.sem_ignore_names}
        for i, (cls, members) in enumerate(self.sem_groups):
            assert cls == self.sem_classes[i], "sem_groups must follow sem_classes order"
            out.update({m: i for m in members})
        return out

    def a2d2_name_to_det_id(self) -> dict[str, int]:
        """A2D2 3D box class (e.g. 'VanSUV') -> detection id (ignored classes -> -1)."""
        out = {n: -1 for n in self.det_ignore_names}
        for i, (cls, members) in enumerate(self.det_groups):
            out.update({m: i for m in members})
        return out


@dataclass(frozen=True)
class ModelConfig:
    cam_channels: tuple[int, ...] = (16, 32, 48, 64)   # camera encoder widths, strides 2,4,8,16
    cam_depth: int = 2                                # convs per camera stage (first one strided)
    bev_channels: tuple[int, ...] = (32, 64, 96)      # BEV encoder widths, strides 2 (= head), 4, 8
    bev_depth: int = 2                                # convs per BEV stage (first one strided)
    bev_decoder_channels: int = 32                    # BEV top-down path width (at the head resolution)
    fuse_channels: int = 32                           # camera features lifted into BEV
    head_channels: int = 32
    sem_decoder_channels: int = 32
    fusion_height: float = -1.7                       # z (m) of the plane image features are sampled at
    heatmap_prior: float = 0.1                        # bias init = -log(1/prior - 1)
    max_detections: int = 100                         # top-K in decode


@dataclass(frozen=True)
class LossConfig:
    lambda_hm: float = 1.0
    lambda_reg: float = 2.0
    lambda_sem: float = 2.0           # > 1: segmentation learns slower than detection (milestone report)
    focal_alpha: float = 2.0
    focal_beta: float = 4.0
    sem_loss: str = "ce"              # "ce" | "focal"
    sem_focal_gamma: float = 2.0
    sem_class_weights: str = "median_freq"   # "none" | "enet" | "median_freq" (thin classes: poles, signs)
    sem_weight_clip: float = 10.0
    sem_weights: tuple[float, ...] = ()   # resolved weights (filled by training from the train chunks)
    gaussian_overlap: float = 0.1
    min_radius: int = 2


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10                  # ~11 min on 2 CPU cores for 400 frames (synthetic learning bar)
    batch_size: int = 4
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    grad_clip: float = 5.0
    seed: int = 0
    num_workers: int = 0
    amp: bool = True                  # only used on CUDA
    augment: bool = True
    viz_every: int = 1                # epochs between debug images; 0 disables
    deterministic: bool = False
    min_lr_ratio: float = 0.01        # cosine schedule floor (fraction of lr)
    ckpt_every_steps: int = 0         # also write last.pt every N steps mid-epoch (0: at epoch ends only)
    skip_bad: bool = False            # log + count corrupt chunks / frames instead of stopping


@dataclass(frozen=True)
class DecodeConfig:
    """Peak decode of the heatmap. The runtime keeps peaks scoring > ``score_threshold``; every mAP (``mtl
    eval``, validation, the export metric gate, ``mtl bench``) keeps peaks scoring > ``eval_score_threshold``
    instead, lower because AP integrates precision over recall and a cut at the deployment threshold would
    end every class's curve early. Both keep at most ``max_detections`` per frame."""

    score_threshold: float = 0.1
    max_detections: int = 100
    nms_kernel: int = 3
    eval_score_threshold: float = 0.05


@dataclass(frozen=True)
class Config:
    version: int = CONFIG_VERSION
    grid: GridConfig = field(default_factory=GridConfig)
    camera: CameraConfig = field(default_factory=CameraConfig.a2d2_front_center)
    classes: ClassesConfig = field(default_factory=ClassesConfig.a2d2_default)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def to_dict(self) -> dict:
        return _to_jsonable(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False)

    @staticmethod
    def from_dict(d: dict) -> "Config":
        return _from_dict(Config, _upgrade(d))

    @staticmethod
    def load(path: str | Path) -> "Config":
        """Read a config JSON (a full tree or a partial one: missing keys keep their defaults)."""
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read config: {e}") from e
        return Config.from_dict(d)

    def override(self, **dotted: Any) -> "Config":
        """Return a copy with ``section.key=value`` overrides, e.g. ``override(**{"loss.lambda_sem": 2})``."""
        cfg = self
        for key, value in dotted.items():
            if value is None:
                continue
            section, _, name = key.partition(".")
            sub = getattr(cfg, section)
            if name not in {f.name for f in fields(sub)}:
                raise KeyError(f"unknown config key {key!r}")
            cfg = replace(cfg, **{section: replace(sub, **{name: value})})
        return cfg


# keys that moved: (old section, old key) -> (new section, new key). Checkpoints, ONNX metadata and sidecars
# written before the move still load; the new key wins when a dict has both.
_MOVED_KEYS = {("train", "eval_score_threshold"): ("decode", "eval_score_threshold")}


def _upgrade(d: Any) -> Any:
    """A config dict with moved keys put where they live now (the input is not modified)."""
    if not isinstance(d, dict):
        return d
    out = dict(d)
    for (old_sec, old_key), (new_sec, new_key) in _MOVED_KEYS.items():
        old = out.get(old_sec)
        if isinstance(old, dict) and old_key in old:
            out[old_sec] = {k: v for k, v in old.items() if k != old_key}
            new = out.get(new_sec, {})
            if isinstance(new, dict) and new_key not in new:
                out[new_sec] = {**new, new_key: old[old_key]}
    return out


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def _to_jsonable(obj: Any) -> Any:
    if is_dataclass(obj):
        return {f.name: _to_jsonable(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    return obj


def _from_dict(cls: type, d: dict) -> Any:
    if not isinstance(d, dict):
        raise ValueError(f"config section {cls.__name__} must be an object, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = set(d) - set(known)
    if unknown:
        raise ValueError(f"unknown config keys in {cls.__name__}: {sorted(unknown)}")
    kwargs = {}
    for name, value in d.items():
        t = hints[name]
        if is_dataclass(t):
            kwargs[name] = _from_dict(t, value)
        else:
            kwargs[name] = _tuplify(value)
    return cls(**kwargs)


def sha256_file(path: str | Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


__all__ = [
    "Config", "GridConfig", "CameraConfig", "ClassesConfig", "ModelConfig", "LossConfig", "TrainConfig",
    "DecodeConfig", "a2d2_classes", "front_center_calib", "sha256_file", "dataclasses",
]
