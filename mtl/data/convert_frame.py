"""One raw A2D2 frame -> one chunk ``Frame`` plus its statistics: what every ``mtl data convert`` worker runs, in
a local process pool (``mtl.data.convert``) or as a Ray task (``mtl.data.convert_fleet``). Torch-free."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..config import CameraConfig, ClassesConfig
from ..errors import DataError, MtlError, StorageError
from ..geometry import cam_matrix, scale_cam_matrix
from ..io import encode_png
from .a2d2 import RawFramePaths, prepare_image, prepare_label, read_boxes, read_camera_png, read_label_png, read_lidar
from .chunk import HAS_BOXES, HAS_IMAGE, HAS_LIDAR, HAS_SEMANTIC, Frame


def chunk_name(index: int) -> str:
    return f"chunk_{index:05d}.npz"


# ------------------------------------------------------------------------------------- selection


def select_frame(paths: RawFramePaths, partial: bool) -> tuple[RawFramePaths | None, str | None]:
    """Which files of a frame to convert, or (None, skip reason)."""
    missing = paths.missing()
    if not partial:
        return (paths, None) if not missing else (None, "missing " + "+".join(missing))
    if paths.camera is None and paths.lidar is None:
        return None, "no camera image or lidar"
    if paths.camera is None and paths.label is not None:
        paths = replace(paths, label=None)
    return paths, None

# ------------------------------------------------------------------------------ one frame (worker)


@dataclass(frozen=True)
class FrameJob:
    paths: RawFramePaths
    camera: CameraConfig          # calibration of the raw files; image_hw = stored size
    classes: ClassesConfig


@dataclass
class FrameStats:
    sem_hist: np.ndarray          # (256,) int64 pixels per stored semantic id
    n_points: int
    pmin: np.ndarray              # (4,) per-column min of the points (inf when none)
    pmax: np.ndarray              # (4,)


def load_frame(paths: RawFramePaths, camera: CameraConfig, classes: ClassesConfig) -> tuple[Frame, FrameStats]:
    """Read, undistort, resize and encode the present files of one frame. Raises ``DataError``."""
    out_hw = tuple(camera.image_hw)
    mask = 0
    image_png = semantic_png = b""
    sem_hist = np.zeros(256, np.int64)
    if paths.camera is not None:
        image = prepare_image(read_camera_png(paths.camera), camera, out_hw, paths.camera)   # (H, W, 3)
        image_png, mask = encode_png(image), mask | HAS_IMAGE
        if paths.label is not None:
            ids = read_label_png(paths.label, classes)
            sem = prepare_label(ids, camera, out_hw, classes.ignore_index, paths.label)      # (H, W)
            # label maps are flat: a higher zlib level costs little and shrinks them a lot
            semantic_png, mask = encode_png(sem, compress_level=6), mask | HAS_SEMANTIC
            sem_hist = np.bincount(sem.ravel(), minlength=256).astype(np.int64)
    points = np.zeros((0, 4), np.float32)
    if paths.lidar is not None:
        points, mask = read_lidar(paths.lidar), mask | HAS_LIDAR
    boxes, box_class = np.zeros((0, 7), np.float32), np.zeros(0, np.int16)
    if paths.label3D is not None:
        (boxes, box_class), mask = read_boxes(paths.label3D, classes), mask | HAS_BOXES
    k = scale_cam_matrix(cam_matrix(camera), camera.resolution_wh, out_hw).astype(np.float32)
    frame = Frame(frame_id=paths.key, image_png=image_png, semantic_png=semantic_png, points=points,
                  boxes=boxes, box_class=box_class, cam_matrix=k, modality_mask=mask)
    inf = np.full(4, np.inf, np.float32)
    stats = FrameStats(sem_hist, len(points), points.min(0) if len(points) else inf,
                       points.max(0) if len(points) else -inf)
    return frame, stats


def _bad_kind(paths: RawFramePaths, err: MtlError) -> str:
    for kind in ("camera", "label", "lidar", "label3D"):
        p = getattr(paths, kind)
        if p is not None and str(p) == err.path:
            return kind
    return "file"


def run_job(job: FrameJob) -> tuple:
    # errors travel back as plain tuples: MtlError(path, reason) does not survive pickling
    try:
        return ("ok", *load_frame(job.paths, job.camera, job.classes))
    except StorageError as e:              # the machine refused a read: not a bad file to skip
        return ("storage", "", e.path, e.reason)
    except MtlError as e:
        return ("bad", _bad_kind(job.paths, e), e.path, e.reason)


def bad_record(job: FrameJob, res: tuple, skip_bad: bool) -> dict | None:
    """``run_job``'s result checked: None for a frame that loaded, the bad file's record (frame, kind, path,
    reason) to skip under ``skip_bad``; a storage failure, or a bad file without ``skip_bad``, is raised."""
    if res[0] == "storage":
        raise StorageError(res[2], res[3])
    if res[0] != "bad":
        return None
    _, kind, path, reason = res
    if not skip_bad:
        raise DataError(path, reason)
    return {"frame": job.paths.key, "path": path, "reason": reason, "kind": kind}

# ------------------------------------------------------------------------------------ statistics


class Totals:
    """Running summary numbers (class histograms, modality counts, point stats)."""

    def __init__(self, classes: ClassesConfig):
        self.classes = classes
        self.sem_hist = np.zeros(256, np.int64)
        self.box_hist = np.zeros(classes.n_det + 1, np.int64)    # last bin = ignore (-1)
        self.modalities = {"image": 0, "semantic": 0, "lidar": 0, "boxes": 0}
        self.points: list[int] = []
        self.pmin = np.full(4, np.inf)
        self.pmax = np.full(4, -np.inf)

    def add(self, frame: Frame, stats: FrameStats) -> None:
        for name, bit in (("image", HAS_IMAGE), ("semantic", HAS_SEMANTIC), ("lidar", HAS_LIDAR),
                          ("boxes", HAS_BOXES)):
            self.modalities[name] += bool(frame.modality_mask & bit)
        self.sem_hist += stats.sem_hist
        cls = np.where(frame.box_class < 0, self.classes.n_det, frame.box_class)
        self.box_hist += np.bincount(cls, minlength=self.classes.n_det + 1)[: self.classes.n_det + 1]
        if frame.modality_mask & HAS_LIDAR:
            self.points.append(stats.n_points)
            self.pmin = np.minimum(self.pmin, stats.pmin)
            self.pmax = np.maximum(self.pmax, stats.pmax)

    def state(self) -> dict:
        """The running numbers as JSON (a fleet shard's record); ``merge_state`` adds them to another total."""
        return {"sem_hist": self.sem_hist.tolist(), "box_hist": self.box_hist.tolist(),
                "modalities": dict(self.modalities), "points": list(self.points), "pmin": self.pmin.tolist(),
                "pmax": self.pmax.tolist()}

    def merge_state(self, s: dict) -> None:
        self.sem_hist += np.asarray(s["sem_hist"], np.int64)
        self.box_hist += np.asarray(s["box_hist"], np.int64)
        for k, v in s["modalities"].items():
            self.modalities[k] += v
        self.points += s["points"]
        self.pmin = np.minimum(self.pmin, np.asarray(s["pmin"], np.float64))
        self.pmax = np.maximum(self.pmax, np.asarray(s["pmax"], np.float64))

    def to_dict(self) -> dict:
        c = self.classes
        sem = {name: int(self.sem_hist[i]) for i, name in enumerate(c.sem_classes)}
        sem["ignore"] = int(self.sem_hist[c.ignore_index])
        boxes = {name: int(self.box_hist[i]) for i, name in enumerate(c.det_classes)}
        boxes["ignore"] = int(self.box_hist[-1])
        n = np.asarray(self.points, np.int64)
        pts: dict = {"frames": int(n.size), "total": int(n.sum())}
        if n.size:
            pts.update(per_frame_min=int(n.min()), per_frame_mean=round(float(n.mean()), 1),
                       per_frame_max=int(n.max()))
            for i, axis in enumerate(("x", "y", "z", "reflectance")):
                pts[axis] = [round(float(self.pmin[i]), 4), round(float(self.pmax[i]), 4)]
        return {"modalities": dict(self.modalities), "boxes_per_class": boxes, "semantic_pixels": sem,
                "points": pts}


__all__ = ["FrameJob", "FrameStats", "Totals", "chunk_name", "load_frame", "run_job", "select_frame"]
