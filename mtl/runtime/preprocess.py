"""Model metadata and frame preprocessing for the torch-free runtime (numpy only).

``ModelSpec`` is what the runtime knows about a model: the ``Config`` rebuilt from the ONNX metadata key
``mtl`` (or the TensorRT sidecar), the declared input/output tensors and the derived calibration. Every
check that compares a frame with the model lives here and raises ``ModelMismatchError`` with one line.

Preprocess = the SAME numpy code as training (``mtl.geometry``, ``mtl.data.a2d2``):
  raw A2D2 frame: PNG decode (none for sensor pixels) -> undistort + resize + normalise in one remap pass
                  (``runtime.sensor.SensorRemap``: bit-identical to ``a2d2.prepare_image`` -> ``normalise_image``,
                  which run instead when the uint8 model-size image is kept)
  chunk frame:    PNG decode (image already undistorted at model size; size + cam_matrix verified)
                  -> ``normalise_image``
  LiDAR:          finite check (non-finite rows are DROPPED and counted) -> ``geometry.bev_raster``

Decision on non-finite points: a NaN/inf row is dropped and reported as ``points_dropped_nonfinite`` in ``Result.info``
(``bev_raster`` would ignore a NaN coordinate anyway, but a NaN reflectance inside the grid would poison
a cell mean). The raw A2D2 reader (``mtl.data.a2d2.read_lidar``) and the chunk reader refuse such files at
read time, so drops only happen for arrays handed to ``Pipeline.run`` directly.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import CameraConfig, Config
from ..contract import METADATA_FORMAT, METADATA_KEY, OUTPUTS, validate_metadata
from ..errors import ConfigError, DataError, ModelMismatchError
from ..geometry import bev_raster, cam_matrix, normalise_image, scale_cam_matrix
from . import kernels

STAGES = ("decode_png", "undistort_resize", "remap_normalise", "normalise", "bev_raster", "h2d", "inference",
          "d2h", "postprocess", "total")


# ------------------------------------------------------------------------------------------ timing


class StageTimer:
    """Collects wall-clock milliseconds per stage (``perf_counter``); stages not run stay absent."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, (time.perf_counter() - t0) * 1e3)

    def add(self, stage: str, ms: float) -> None:
        self.ms[stage] = self.ms.get(stage, 0.0) + float(ms)


# ---------------------------------------------------------------------------------------- metadata


def _dim(v: Any) -> int | None:
    """A declared tensor dim: an int, or None for a symbolic/dynamic one ("B", "batch", -1)."""
    return int(v) if isinstance(v, (int, np.integer)) and int(v) >= 0 else None


@dataclass(frozen=True)
class ModelSpec:
    path: str
    cfg: Config
    meta: dict = field(repr=False)
    image_shape: tuple            # (B|None, 3, H, W)
    bev_shape: tuple              # (B|None, C, Hg, Wg)
    outputs: tuple[str, ...]
    decode: bool
    precision: str
    heatmap_activation: str       # "sigmoid" (probabilities in the graph) or "none" (logits)

    @property
    def image_hw(self) -> tuple[int, int]:
        return tuple(self.cfg.camera.image_hw)

    @property
    def model_cam_matrix(self) -> np.ndarray:
        """Intrinsics of the model-size undistorted image implied by the model's calibration."""
        cam = self.cfg.camera
        return scale_cam_matrix(cam_matrix(cam), tuple(cam.resolution_wh), self.image_hw)

    @staticmethod
    def from_metadata(meta: dict, path: str | Path) -> ModelSpec:
        """Validate the metadata contract (ONNX key ``mtl`` / engine sidecar) and rebuild the Config."""
        validate_metadata(meta, path)
        try:
            cfg = Config.from_dict(meta["config"])
        except ConfigError as e:
            raise ModelMismatchError(path, f"mtl metadata has no valid config ({e})") from None
        inputs = meta.get("inputs") or {}
        try:
            image_shape = tuple(_dim(v) for v in inputs["image"])
            bev_shape = tuple(_dim(v) for v in inputs["bev"])
        except (KeyError, TypeError):
            raise ModelMismatchError(path, "mtl metadata lacks inputs.image / inputs.bev shapes") from None
        outputs = tuple(meta.get("outputs") or OUTPUTS)
        spec = ModelSpec(path=str(path), cfg=cfg, meta=meta, image_shape=image_shape, bev_shape=bev_shape,
                         outputs=outputs, decode=bool(meta.get("decode", False)),
                         precision=str(meta.get("precision", "fp32")),
                         heatmap_activation=str(meta.get("heatmap_activation", "sigmoid")))
        spec.check_consistent()
        return spec

    @staticmethod
    def from_config(cfg: Config, path: str | Path, heatmap_activation: str = "sigmoid") -> ModelSpec:
        """Spec for a model known only by its config (the torch reference column in ``mtl bench``)."""
        h, w = cfg.camera.image_hw
        meta = {"format": METADATA_FORMAT, "config": cfg.to_dict(), "decode": False, "precision": "fp32"}
        return ModelSpec(path=str(path), cfg=cfg, meta=meta, image_shape=(1, 3, h, w),
                         bev_shape=(1, cfg.grid.n_channels, *cfg.grid.shape), outputs=OUTPUTS,
                         decode=False, precision="fp32", heatmap_activation=heatmap_activation)

    def check_consistent(self) -> None:
        """Declared inputs/outputs agree with the config (image size, grid, BEV channels, outputs)."""
        cfg, p = self.cfg, self.path
        if len(self.image_shape) != 4 or self.image_shape[1] != 3:
            raise ModelMismatchError(p, f"metadata image input {self.image_shape} is not (B, 3, H, W)")
        if tuple(self.image_shape[2:]) != tuple(cfg.camera.image_hw):
            raise ModelMismatchError(p, f"metadata image input is {self.image_shape[2]}x{self.image_shape[3]} but "
                                        f"its config says camera.image_hw "
                                        f"{cfg.camera.image_hw[0]}x{cfg.camera.image_hw[1]}")
        if len(self.bev_shape) != 4:
            raise ModelMismatchError(p, f"metadata bev input {self.bev_shape} is not (B, C, H, W)")
        if self.bev_shape[1] != cfg.grid.n_channels:
            raise ModelMismatchError(p, f"metadata bev input has {self.bev_shape[1]} channels but the config's grid "
                                        f"gives {cfg.grid.n_channels} (5 + {cfg.grid.n_height_slices} height slices)")
        if tuple(self.bev_shape[2:]) != tuple(cfg.grid.shape):
            raise ModelMismatchError(p, f"metadata bev input is {self.bev_shape[2]}x{self.bev_shape[3]} "
                                        f"but the config's grid is {cfg.grid.shape[0]}x{cfg.grid.shape[1]}")
        missing = [o for o in OUTPUTS if o not in self.outputs]
        if missing:
            raise ModelMismatchError(p, f"model lacks outputs {missing} (has {list(self.outputs)})")
        if self.heatmap_activation not in ("sigmoid", "none"):
            raise ModelMismatchError(p, f"unknown heatmap_activation {self.heatmap_activation!r}")

    def check_tensors(self, inputs: dict[str, tuple], outputs: dict[str, tuple]) -> None:
        """The backend's real tensor shapes (None/str = dynamic) agree with the metadata."""
        cfg, p = self.cfg, self.path
        for name, want in (("image", self.image_shape), ("bev", self.bev_shape)):
            if name not in inputs:
                raise ModelMismatchError(p, f"graph has no input {name!r} (inputs: {sorted(inputs)})")
            got = tuple(_dim(v) for v in inputs[name])
            if len(got) != 4 or any(g is not None and w is not None and g != w for g, w in zip(got[1:], want[1:])):
                raise ModelMismatchError(p, f"graph input {name!r} is {_fmt(got)} but metadata says {_fmt(want)}")
        expect = {"bbox_heatmap": cfg.classes.n_det, "bbox_reg": 8, "sem_logits": cfg.classes.n_sem}
        for name, ch in expect.items():
            if name not in outputs:
                raise ModelMismatchError(p, f"graph has no output {name!r} (outputs: {sorted(outputs)})")
            got = tuple(_dim(v) for v in outputs[name])
            if len(got) == 4 and got[1] is not None and got[1] != ch:
                what = {"bbox_heatmap": "detection classes", "sem_logits": "semantic classes"}.get(name, "channels")
                raise ModelMismatchError(p, f"graph output {name!r} has {got[1]} channels but the metadata config "
                                            f"has {ch} {what}")


def _fmt(shape: tuple) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


# ---------------------------------------------------------------------------------- frame checks


def check_classes(meta: dict, spec: ModelSpec, source: str) -> None:
    """Chunk meta class names (when recorded) must equal the model's classes (``data.chunk.check_class_names``,
    the check mtl eval / train use too)."""
    from ..data.chunk import check_class_names

    check_class_names(meta, spec.cfg.classes, source)


def check_cam_matrix(k_frame: np.ndarray, spec: ModelSpec, source: str, what: str = "frame cam_matrix") -> None:
    k_model = spec.model_cam_matrix
    k_frame = np.asarray(k_frame)
    if k_frame.shape != (3, 3) or k_frame.dtype.kind not in "fiu":
        raise DataError(source, f"{what} is {k_frame.dtype} {k_frame.shape}, expected (3, 3) intrinsics")
    k_frame = k_frame.astype(np.float64)
    if not np.allclose(k_frame, k_model, rtol=1e-4, atol=1e-3):
        def fmt(k):
            return f"fx={k[0, 0]:.2f} fy={k[1, 1]:.2f} cx={k[0, 2]:.2f} cy={k[1, 2]:.2f}"
        raise ModelMismatchError(source, f"calibration mismatch: {what} {fmt(k_frame)} but the model expects "
                                         f"{fmt(k_model)} at {spec.image_hw[0]}x{spec.image_hw[1]}")


def check_camera(camera: CameraConfig, spec: ModelSpec, source: str) -> None:
    """Raw-frame calibration (cams_lidars.json) vs the model's camera calibration."""
    m = spec.cfg.camera
    if camera is m or camera == m:           # every run_sensor frame: equal fields pass the tolerant test too
        return
    checks = (("resolution", tuple(camera.resolution_wh), tuple(m.resolution_wh)),
              ("CamMatrix", np.asarray(camera.cam_matrix, float), np.asarray(m.cam_matrix, float)),
              ("CamMatrixOriginal", np.asarray(camera.cam_matrix_original, float),
               np.asarray(m.cam_matrix_original, float)),
              ("Distortion", np.asarray(camera.distortion, float).ravel(), np.asarray(m.distortion, float).ravel()))
    for name, got, want in checks:
        if isinstance(got, tuple):
            ok = got == want
        else:
            ok = got.shape == want.shape and np.allclose(got, want, rtol=1e-6, atol=1e-9)
        if not ok:
            g = got if isinstance(got, tuple) else np.round(got, 4).ravel().tolist()
            w = want if isinstance(want, tuple) else np.round(want, 4).ravel().tolist()
            raise ModelMismatchError(source, f"calibration mismatch: camera {name} {g} but the model was "
                                             f"built for {w}")


# ------------------------------------------------------------------------------------ preprocess


def decode_image(png: bytes, source: str) -> np.ndarray:
    from ..io import decode_png

    return decode_png(png, source, "RGB")


def check_points(points: Any, source: str, floats_only: bool = False) -> np.ndarray:
    """(N, 4) points (x, y, z metres, reflectance 0..1) as float32; None or an empty array -> (0, 4).
    Other shapes / dtypes -> DataError; ``floats_only`` (``Pipeline.run``) refuses integer arrays too."""
    if points is None:
        return np.zeros((0, 4), np.float32)
    a = np.asarray(points)
    if a.dtype.kind not in ("f" if floats_only else "fiu"):
        kind = "a float array" if floats_only else "numeric"
        raise DataError(source, f"points must be {kind} (x, y, z, reflectance), got dtype {a.dtype}")
    if a.size == 0:
        return np.zeros((0, 4), np.float32)
    if a.ndim != 2 or a.shape[1] != 4:
        raise DataError(source, f"points has shape {a.shape}, expected (N, 4) x, y, z, reflectance")
    return a.astype(np.float32, copy=False)


def check_image(image: Any, hw: tuple[int, int], source: str, what: str) -> np.ndarray:
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise DataError(source, f"{what} is {a.dtype} {a.shape}, expected uint8 (H, W, 3) RGB")
    if tuple(a.shape[:2]) != tuple(hw):
        raise ModelMismatchError(source, f"image size mismatch: {what} is {a.shape[0]}x{a.shape[1]} but the model "
                                         f"input is {hw[0]}x{hw[1]} (convert the data with --image-size "
                                         f"{hw[0]}x{hw[1]} or export a model for this size)")
    return a


def check_api_image(image: Any, hw: tuple[int, int], source: str, *, sensor: bool) -> np.ndarray:
    """``Pipeline.run_sensor``'s image (``sensor``: the original distorted uint8 (H0, W0, 3) RGB array at the
    camera resolution ``hw``) or ``Pipeline.run``'s (uint8 (H, W, 3) RGB, already at the model size ``hw``)."""
    size = f"the camera resolution {hw[0]}x{hw[1]}" if sensor else f"the model size {hw[0]}x{hw[1]}"
    if not isinstance(image, np.ndarray):
        raise DataError(source, f"image is a {type(image).__name__}, expected a numpy uint8 (H, W, 3) RGB array")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DataError(source, f"image is {image.dtype} {image.shape}, expected uint8 (H, W, 3) RGB at {size}")
    if tuple(image.shape[:2]) != tuple(hw):
        got = f"image size mismatch: image is {image.shape[0]}x{image.shape[1]} but the "
        raise ModelMismatchError(source, got + (
            f"model's camera delivers {hw[0]}x{hw[1]}; Pipeline.run_sensor takes the original distorted image "
            f"(Pipeline.run the undistorted model-size one)" if sensor else
            f"model input is {hw[0]}x{hw[1]}; Pipeline.run takes the undistorted image at the model size "
            f"(mtl.data.a2d2.prepare_image makes it from a raw one)"))
    return image


def bev_input(points: np.ndarray, spec: ModelSpec, timer: StageTimer) -> tuple[np.ndarray, int]:
    """(1, C, Hg, Wg) float32 raster and the number of non-finite rows dropped."""
    if kernels.available():
        with timer("bev_raster"):
            bev, dropped = kernels.bev_raster(points, spec.cfg.grid)
        return bev[None], dropped
    finite = np.isfinite(points).all(axis=1) if len(points) else np.ones(0, bool)
    dropped = int(len(points) - int(finite.sum()))
    if dropped:
        points = points[finite]
    with timer("bev_raster"):
        bev = bev_raster(points, spec.cfg.grid)[None]
    return bev, dropped


def image_input(image: np.ndarray, spec: ModelSpec, timer: StageTimer) -> np.ndarray:
    cam = spec.cfg.camera
    with timer("normalise"):
        return normalise_image(image, cam.mean, cam.std)[None]


__all__ = [
    "METADATA_KEY",
    "STAGES",
    "ModelSpec",
    "StageTimer",
    "bev_input",
    "check_api_image",
    "check_cam_matrix",
    "check_camera",
    "check_classes",
    "check_image",
    "check_points",
    "decode_image",
    "image_input",
]
