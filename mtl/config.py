"""One frozen, typed config tree for the whole project.

The same tree is dumped into ``RUN/config.json``, the checkpoint, ONNX ``metadata_props`` (key ``mtl``)
and the TensorRT sidecar; the runtime rebuilds it from that JSON alone (``Config.from_dict``), so every
stage agrees on grid geometry, classes, calibration and normalisation by construction.

Every value is checked where a config is built, in one place: each section's ``__post_init__`` checks the
field types against the type hints (lists become tuples, ints are accepted for floats, bools are not ints,
floats must be finite) and then the section's own ranges (``validate``); ``Config.__post_init__`` checks
what the model needs across sections (``Config.validate``). So ``Config.from_dict`` / ``load`` /
``override``, ``dataclasses.replace`` and the CLI flags all get the same checks, and a bad value raises
``ConfigError`` (exit code 2) naming the dotted key: ``train.lr: expected a number, got str '0.1'``.
See docs/FORMAT.md for the frames and grid conventions these fields describe.

Torch-free on purpose: the runtime imports it.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, is_dataclass, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from .errors import ConfigError

CONFIG_VERSION = 1

SEM_LOSSES = ("ce", "focal")
SEM_CLASS_WEIGHTS = ("none", "enet", "median_freq")
# size caps: a crafted config must not be able to ask for terabytes
MAX_WIDTH = 4096            # channels of any model layer
MAX_GRID_CELLS = 4096       # BEV cells per side
MAX_IMAGE_SIDE = 8192       # pixels per side of the model input and of the raw camera
MAX_CLASSES = 255           # class ids are stored as uint8 with 255 = ignore


@cache
def _resource(name: str) -> dict:
    return json.loads(resources.files("mtl.resources").joinpath(name).read_text())


def a2d2_classes() -> dict:
    """The packaged A2D2 colour table and default class grouping (see resources/a2d2_classes.json)."""
    return _resource("a2d2_classes.json")


def front_center_calib() -> dict:
    """The packaged A2D2 cam_front_center calibration (from A2D2's cams_lidars.json)."""
    return _resource("front_center_calib.json")


class _Section:
    """Base of every config section: type-check and normalise the fields, then the section's ranges."""

    SECTION: ClassVar[str] = ""
    # removed fields that old configs / checkpoints / ONNX metadata still carry: dropped by from_dict
    LEGACY: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        _check_types(self, self.SECTION)
        self.validate()

    def validate(self) -> None:
        """Ranges and choices of this section's own fields (cross-section rules: ``Config.validate``)."""

    def to_dict(self) -> dict:
        return _to_jsonable(self)


@dataclass(frozen=True)
class GridConfig(_Section):
    """BEV grid. Row index follows x (forward), column index follows y (left): cell (r, c) covers
    x in [x_min + r*cell, x_min + (r+1)*cell) and y in [y_min + c*cell, y_min + (c+1)*cell)."""

    SECTION = "grid"

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

    def validate(self) -> None:
        _bounds(self, "cell", 0, gt=True)
        for lo, hi in (("x_min", "x_max"), ("y_min", "y_max"), ("z_min", "z_max")):
            _require(self, hi, getattr(self, hi) > getattr(self, lo), f"must be > {lo} ({getattr(self, lo)})")
        for lo, hi in (("x_min", "x_max"), ("y_min", "y_max")):
            n = (getattr(self, hi) - getattr(self, lo)) / self.cell
            _require(self, hi, abs(n - round(n)) < 1e-6 * max(1.0, n),
                     f"{lo}..{hi} must span a whole number of {self.cell} m cells ({n:.4g})")
            _require(self, hi, round(n) <= MAX_GRID_CELLS,
                     f"{lo}..{hi} spans {n:.0f} cells, more than {MAX_GRID_CELLS}")
        _bounds(self, "head_stride", 1, 64)
        _require(self, "head_stride", all(s % self.head_stride == 0 for s in self.shape),
                 f"must divide the grid shape {self.shape[0]}x{self.shape[1]}")
        _bounds(self, "n_height_slices", 0, 64)


@dataclass(frozen=True)
class CameraConfig(_Section):
    """Front camera: calibration of the raw images and the model input size."""

    SECTION = "camera"

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
    def a2d2_front_center(**overrides: Any) -> CameraConfig:
        c = front_center_calib()
        return CameraConfig(
            name=c["name"], lens=c["lens"], resolution_wh=tuple(c["resolution_wh"]),
            cam_matrix=_tuplify(c["cam_matrix"]), cam_matrix_original=_tuplify(c["cam_matrix_original"]),
            distortion=tuple(c["distortion"]), **overrides,
        )

    def validate(self) -> None:
        _bounds(self, "resolution_wh", 1, MAX_IMAGE_SIDE)
        _bounds(self, "image_hw", 1, MAX_IMAGE_SIDE)
        for name in ("cam_matrix", "cam_matrix_original"):
            m = getattr(self, name)
            _require(self, name, m == () or (len(m) == 3 and all(len(row) == 3 for row in m)),
                     "must be a 3x3 matrix (or empty)")
        _require(self, "distortion", len(self.distortion) in (0, 4, 5),
                 "must hold 4 or 5 OpenCV coefficients k1, k2, p1, p2[, k3] (or none)")
        _bounds(self, "std", 0, gt=True)


@dataclass(frozen=True)
class ClassesConfig(_Section):
    """Semantic and detection classes; the colour->id mapping is the packaged A2D2 table grouped by
    ``sem_groups`` (A2D2 class name -> training class) unless overridden."""

    SECTION = "classes"

    sem_classes: tuple[str, ...] = ()
    sem_groups: tuple[tuple[str, tuple[str, ...]], ...] = ()
    sem_ignore_names: tuple[str, ...] = ()
    det_classes: tuple[str, ...] = ()
    det_groups: tuple[tuple[str, tuple[str, ...]], ...] = ()
    det_ignore_names: tuple[str, ...] = ()
    ignore_index: int = 255

    @staticmethod
    def a2d2_default() -> ClassesConfig:
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
        for i, (_cls, members) in enumerate(self.sem_groups):   # validate(): groups follow sem_classes
            out.update({m: i for m in members})
        return out

    def a2d2_name_to_det_id(self) -> dict[str, int]:
        """A2D2 3D box class (e.g. 'VanSUV') -> detection id (ignored classes -> -1)."""
        out = {n: -1 for n in self.det_ignore_names}
        for i, (_cls, members) in enumerate(self.det_groups):   # validate(): groups follow det_classes
            out.update({m: i for m in members})
        return out

    def validate(self) -> None:
        for kind in ("sem", "det"):
            names, groups = getattr(self, f"{kind}_classes"), getattr(self, f"{kind}_groups")
            _require(self, f"{kind}_classes", len(names) <= MAX_CLASSES, f"must hold at most {MAX_CLASSES} names")
            _require(self, f"{kind}_classes", len(set(names)) == len(names), "must not repeat a name")
            _require(self, f"{kind}_groups", not groups or tuple(g[0] for g in groups) == names,
                     f"must map each of {kind}_classes, in that order")
        _bounds(self, "ignore_index", 0, 255)
        _require(self, "ignore_index", self.ignore_index >= self.n_sem,
                 f"must not be a semantic class id (there are {self.n_sem} classes)")


@dataclass(frozen=True)
class ModelConfig(_Section):
    SECTION = "model"
    LEGACY = ("max_detections",)   # was never read (decode.max_detections is the top-K); mtl <= 0.1.0 wrote it

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

    def validate(self) -> None:
        # the semantic decoder reads strides 4.., the camera->BEV lift reads stride 8: at least 3 stages
        _require(self, "cam_channels", 3 <= len(self.cam_channels) <= 8, "must list 3 to 8 stage widths")
        _require(self, "bev_channels", 1 <= len(self.bev_channels) <= 8, "must list 1 to 8 stage widths")
        for name in ("cam_channels", "bev_channels", "bev_decoder_channels", "fuse_channels", "head_channels",
                     "sem_decoder_channels"):
            _bounds(self, name, 1, MAX_WIDTH)
        _bounds(self, "cam_depth", 1, 32)
        _bounds(self, "bev_depth", 1, 32)
        _bounds(self, "heatmap_prior", 0, 1, gt=True, lt=True)


@dataclass(frozen=True)
class LossConfig(_Section):
    SECTION = "loss"

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

    def validate(self) -> None:
        for name in ("lambda_hm", "lambda_reg", "lambda_sem", "focal_alpha", "focal_beta", "sem_focal_gamma",
                     "sem_weights"):
            _bounds(self, name, 0)
        _choice(self, "sem_loss", SEM_LOSSES)
        _choice(self, "sem_class_weights", SEM_CLASS_WEIGHTS)
        _bounds(self, "sem_weight_clip", 0, gt=True)
        _bounds(self, "gaussian_overlap", 0, 1, gt=True, lt=True)
        _bounds(self, "min_radius", 0, MAX_GRID_CELLS)


@dataclass(frozen=True)
class TrainConfig(_Section):
    SECTION = "train"

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

    def validate(self) -> None:
        _bounds(self, "epochs", 1, 1_000_000)
        _bounds(self, "batch_size", 1, 4096)
        _bounds(self, "lr", 0, gt=True)
        _bounds(self, "grad_clip", 0, gt=True)
        for name in ("weight_decay", "warmup_steps", "viz_every", "ckpt_every_steps"):
            _bounds(self, name, 0)
        _bounds(self, "seed", 0, 2**32 - 1)        # numpy seeds are uint32
        _bounds(self, "num_workers", 0, 256)
        _bounds(self, "min_lr_ratio", 0, 1)


@dataclass(frozen=True)
class DecodeConfig(_Section):
    """Peak decode of the heatmap. The runtime keeps peaks scoring > ``score_threshold``; every mAP (``mtl
    eval``, validation, the export metric gate, ``mtl bench``) keeps peaks scoring > ``eval_score_threshold``
    instead, lower because AP integrates precision over recall and a cut at the deployment threshold would
    end every class's curve early. Both keep at most ``max_detections`` per frame."""

    SECTION = "decode"
    score_threshold: float = 0.1
    max_detections: int = 100
    nms_kernel: int = 3
    eval_score_threshold: float = 0.05

    def validate(self) -> None:
        _bounds(self, "score_threshold", 0, 1, gt=True, lt=True)
        _bounds(self, "eval_score_threshold", 0, 1, lt=True)
        _bounds(self, "max_detections", 1, 4096)
        _bounds(self, "nms_kernel", 1, 15)
        _require(self, "nms_kernel", self.nms_kernel % 2 == 1, "must be odd (a centred max-pool window)")


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

    def __post_init__(self) -> None:
        _check_types(self, "")
        self.validate()

    def validate(self) -> None:
        """What the model needs across sections (each section checked its own fields already)."""
        if self.version != CONFIG_VERSION:
            raise ConfigError(None, f"version: config version {self.version} is not supported "
                                    f"(this mtl reads version {CONFIG_VERSION})")
        cam, grid, classes = self.camera, self.grid, self.classes
        _require(cam, "cam_matrix", len(cam.cam_matrix) == 3, "must be the 3x3 calibration of the camera")
        _require(classes, "sem_classes", classes.n_sem >= 1, "must name at least one class")
        _require(classes, "det_classes", classes.n_det >= 1, "must name at least one class")
        # strided stages: each must halve the map exactly, so the stride-s feature cell covers s x s pixels
        # (the camera->BEV sampling grid and the decoders' x2 upsampling assume it)
        cam_stride = 2 ** len(self.model.cam_channels)
        _require(cam, "image_hw", all(s % cam_stride == 0 for s in cam.image_hw),
                 f"must be divisible by {cam_stride} (2 ** len(model.cam_channels))")
        _require(grid, "head_stride", grid.head_stride == 2,
                 "must be 2: the BEV encoder's first (stride-2) stage is the head resolution")
        bev_stride = 2 ** len(self.model.bev_channels)
        _require(grid, "x_max", all(s % bev_stride == 0 for s in grid.shape),
                 f"the grid shape {grid.shape[0]}x{grid.shape[1]} must be divisible by {bev_stride} "
                 "(2 ** len(model.bev_channels))")
        _require(self.loss, "sem_weights", len(self.loss.sem_weights) in (0, classes.n_sem),
                 f"must hold one weight per semantic class ({classes.n_sem}) or none")

    def to_dict(self) -> dict:
        return _to_jsonable(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False)

    @staticmethod
    def from_dict(d: dict, base: Config | None = None) -> Config:
        """Config from a (full or partial) dict; missing keys keep their defaults (or ``base``'s values).
        ``ConfigError`` on an unknown key, a wrong type or an out-of-range value; legacy keys (``LEGACY``) are
        dropped."""
        return _from_dict(base if base is not None else Config(), _upgrade(d), "")

    @staticmethod
    def load(path: str | Path, base: Config | None = None) -> Config:
        """Read a config JSON (a full tree or a partial one: missing keys keep their defaults, or ``base``'s)."""
        try:
            d = json.loads(Path(path).read_text())
        except OSError as e:
            raise ConfigError(path, f"cannot read config ({e.strerror or e})") from None
        except ValueError as e:   # JSONDecodeError, UnicodeDecodeError
            raise ConfigError(path, f"config is not valid JSON ({e})") from None
        try:
            return Config.from_dict(d, base)
        except ConfigError as e:
            raise ConfigError(path, e.reason) from None

    def override(self, **dotted: Any) -> Config:
        """Return a copy with ``section.key=value`` overrides, e.g. ``override(**{"loss.lambda_sem": 2})``.
        ``None`` values are skipped (a flag that was not given). All overrides are applied at once, so
        their order does not matter (e.g. a new image size and a new number of camera stages)."""
        updates: dict[str, dict[str, Any]] = {}
        for key, value in dotted.items():
            if value is not None:
                section, name = _split_key(key)
                updates.setdefault(section, {})[name] = value
        return replace(self, **{s: replace(getattr(self, s), **kv) for s, kv in updates.items()})


# ------------------------------------------------------------------------------- building configs


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"section.key=value"`` (``mtl train --set``) -> (key, value): the value is parsed as JSON when it
    parses (numbers, true/false, null, [lists], "strings"), else kept as the string itself."""
    key, eq, raw = text.partition("=")
    if not eq or "." not in key:
        raise ConfigError(None, f"--set {text!r}: expected SECTION.KEY=VALUE (e.g. train.lr=0.001)")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def build_config(path: str | Path | None = None, assignments: Iterable[str] = (),
                 overrides: dict[str, Any] | None = None, base: Config | None = None) -> Config:
    """defaults (or ``base``, e.g. a resumed run's config) <- ``path`` (full or partial config JSON) <-
    ``assignments`` (``--set section.key=value``) <- ``overrides`` (dotted key -> value of a CLI flag; ``None``
    = flag not given). ``ConfigError`` names the file for a bad file and the dotted key for any bad value."""
    base = base if base is not None else Config()
    cfg = Config.load(path, base) if path else base
    dotted = dict(parse_assignment(a) for a in assignments)
    for key, value in (overrides or {}).items():
        if value is not None:
            dotted[key] = value
    return cfg.override(**dotted)


def _split_key(key: str) -> tuple[str, str]:
    section, _, name = key.partition(".")
    sub = _hints(Config).get(section)
    if not (sub and is_dataclass(sub)) or name not in _hints(sub):
        raise ConfigError(None, f"{key}: unknown config key")
    return section, name


# ----------------------------------------------------------------------------------- type checks


@cache
def _hints(cls: type) -> dict[str, Any]:
    """Field name -> resolved type hint (the annotations are strings: ``from __future__ import annotations``)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _check_types(obj: Any, prefix: str) -> None:
    """Check every field of a (frozen) section against its type hint and store the normalised value."""
    for name, hint in _hints(type(obj)).items():
        key = f"{prefix}.{name}" if prefix else name
        object.__setattr__(obj, name, _coerce(getattr(obj, name), hint, key))


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` checked against ``hint`` (int, float, bool, str, a config section, tuple[X, Y],
    tuple[X, ...], nested): lists -> tuples, integers -> float where a float is expected."""
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, "a list", value)
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        elif len(value) != len(args):
            raise ConfigError(None, f"{key}: expected a list of {len(args)} values, got {len(value)}: {_show(value)}")
        return tuple(_coerce(v, h, f"{key}[{i}]") for i, (v, h) in enumerate(zip(value, args)))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key, "true or false", value)
    if hint is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        raise _type_error(key, "an integer", value)
    if hint is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            try:
                x = float(value)
            except OverflowError:
                x = math.inf
            if not math.isfinite(x):
                raise ConfigError(None, f"{key}: expected a finite number, got {_show(value)}")
            return x
        raise _type_error(key, "a number", value)
    if hint is str:
        if isinstance(value, str):
            return value
        raise _type_error(key, "a string", value)
    if is_dataclass(hint):
        if isinstance(value, hint):
            return value
        raise _type_error(key, f"a {hint.__name__}", value)
    raise TypeError(f"{key}: config type {hint!r} has no check")   # a new field type: add it above


def _type_error(key: str, expected: str, value: Any) -> ConfigError:
    got = "null" if value is None else f"{type(value).__name__} {_show(value)}"
    return ConfigError(None, f"{key}: expected {expected}, got {got}")


def _show(value: Any, limit: int = 80) -> str:
    """A short one-line rendering of a value for an error message (JSON style for lists)."""
    try:
        text = json.dumps(_to_jsonable(value)) if isinstance(value, (list, tuple)) else repr(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------------- range checks


def _require(section: Any, name: str, ok: bool, reason: str) -> None:
    if not ok:
        raise ConfigError(None, f"{section.SECTION}.{name}: {reason}, got {_show(getattr(section, name))}")


def _bounds(section: Any, name: str, lo: float | None = None, hi: float | None = None, *,
            gt: bool = False, lt: bool = False) -> None:
    """Every number of the field (a number or a tuple of numbers) in [lo, hi] ((lo, .. with ``gt``, .., hi)
    with ``lt``; ``None`` = unbounded)."""
    value = getattr(section, name)
    values = value if isinstance(value, tuple) else (value,)
    ok = all((lo is None or (v > lo if gt else v >= lo)) and (hi is None or (v < hi if lt else v <= hi))
             for v in values)
    parts = ([f"{'>' if gt else '>='} {lo}"] if lo is not None else []) + \
            ([f"{'<' if lt else '<='} {hi}"] if hi is not None else [])
    _require(section, name, ok, "must be " + " and ".join(parts) + (" (each)" if isinstance(value, tuple) else ""))


def _choice(section: Any, name: str, choices: tuple[str, ...]) -> None:
    _require(section, name, getattr(section, name) in choices, f"must be one of {', '.join(choices)}")


# ------------------------------------------------------------------------------- (de)serialisation


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


def _from_dict(base: Any, d: Any, prefix: str) -> Any:
    """``base`` (a Config or a section) with the values of ``d``: keys ``d`` lacks keep ``base``'s values
    (for a section: the default tree's, e.g. the packaged calibration for a partial ``camera``)."""
    if not isinstance(d, dict):
        raise _type_error(prefix or "config", "an object", d)
    hints = _hints(type(base))
    unknown = [k for k in d if k not in hints and k not in getattr(base, "LEGACY", ())]
    if unknown:
        keys = ", ".join(f"{prefix}.{k}" if prefix else str(k) for k in unknown)
        raise ConfigError(None, f"{keys}: unknown config key{'s' if len(unknown) > 1 else ''}")
    kwargs = {}
    for name, value in d.items():
        if name in hints:     # else a legacy key: dropped
            kwargs[name] = _from_dict(getattr(base, name), value, name) if is_dataclass(hints[name]) else value
    return replace(base, **kwargs)


def sha256_file(path: str | Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


__all__ = [
    "Config", "GridConfig", "CameraConfig", "ClassesConfig", "ModelConfig", "LossConfig", "TrainConfig",
    "DecodeConfig", "SEM_LOSSES", "SEM_CLASS_WEIGHTS", "a2d2_classes", "build_config", "front_center_calib",
    "parse_assignment", "sha256_file", "dataclasses",
]
