"""Frame sources for ``mtl infer`` / ``mtl bench``: a directory of NPZ chunks (or one chunk file) or a raw
A2D2 tree, auto-detected. Torch-free.

A ``RuntimeFrame`` carries the camera image still PNG-encoded (``image_png``) so that the pipeline times
the decode, plus either the stored intrinsics (chunk frames: undistorted, at the stored size) or the raw
calibration (raw frames: original distorted image + ``CameraConfig`` from ``cams_lidars.json``).
Ground truth is attached only when asked for (``with_gt``), at model image size.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import CameraConfig, Config
from ..errors import ChunkError, DataError
from ..io import pending_commit

# on_bad(kind, error): told about a bad chunk ("bad chunk") or raw frame ("bad frame") that is then skipped
OnBad = Callable[[str, Exception], None]

KIND_CHUNK, KIND_RAW = "chunk", "raw"


@dataclass
class RuntimeFrame:
    frame_id: str
    kind: str                                  # "chunk" (undistorted, stored size) | "raw" (original)
    points: np.ndarray                         # (N, 4) float32 x, y, z, reflectance 0..1 (may be empty)
    image_png: bytes | None = None             # encoded RGB camera image (None: no image)
    image: np.ndarray | None = None            # already decoded (H, W, 3) uint8 (takes precedence)
    cam_matrix: np.ndarray | None = None       # chunk: intrinsics of the stored image
    camera: CameraConfig | None = None         # raw: calibration of the original image
    meta: dict = field(default_factory=dict)   # chunk meta (class names, camera) when known
    source: str = ""
    gt_boxes: np.ndarray | None = None         # (M, 7) metres
    gt_labels: np.ndarray | None = None        # (M,) detection ids, -1 ignore
    gt_semantic: np.ndarray | None = None      # (H, W) uint8 at model size, 255 ignore

    @property
    def has_image(self) -> bool:
        return self.image is not None or bool(self.image_png)

    def __repr__(self) -> str:
        # never the PNG bytes or whole arrays: shapes, dtypes and sizes only
        image = (f"image={describe_array(self.image)}" if self.image is not None else
                 f"image_png={describe_size(len(self.image_png))}" if self.image_png else "image=None")
        parts = [f"id={clip(self.frame_id)!r}", f"kind={self.kind!r}", f"points={describe_array(self.points)}", image]
        gt = []
        if self.gt_boxes is not None:
            gt.append(f"boxes {len(self.gt_boxes)}")
        if self.gt_semantic is not None:
            gt.append("semantic " + "x".join(str(d) for d in np.shape(self.gt_semantic)))
        if gt:
            parts.append("gt: " + ", ".join(gt))
        return f"RuntimeFrame({', '.join(parts)})"


def describe_array(a: object) -> str:
    """``(58213, 4) float32`` for an array, ``None`` / the type name for anything else (for reprs)."""
    if a is None:
        return "None"
    if not isinstance(a, np.ndarray):
        return type(a).__name__
    return f"{tuple(a.shape)} {a.dtype}"


def describe_size(n_bytes: int) -> str:
    """``412.3 kB`` (decimal units, for reprs)."""
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} B"


def clip(text: str, n: int = 80) -> str:
    """``text`` cut in the middle to at most ``n`` characters (keeps reprs bounded for long ids / paths)."""
    text = str(text)
    return text if len(text) <= n else text[: n // 2 - 2] + "..." + text[-(n - n // 2 - 1):]


def sanitise_frame_id(frame_id: str) -> str:
    """File-name-safe id: ``20180807_145028/000000091`` -> ``20180807_145028__000000091``."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", frame_id.replace("/", "__")).strip("._")
    return s or "frame"


def detect_source(path: str | Path) -> str:
    p = Path(path)
    if p.is_file() and p.suffix == ".npz":
        return KIND_CHUNK
    if not p.is_dir():
        raise DataError(p, "data path is neither a directory nor a .npz chunk")
    if any(q for q in p.glob("*.npz") if not q.name.startswith(".")):
        return KIND_CHUNK                      # list_chunks refuses it if a commit is pending or the set is mixed
    if pending_commit(p):                      # e.g. a raw tree whose `mtl data synth` was killed mid-commit
        from ..data.chunk import INTERRUPTED

        raise DataError(p, INTERRUPTED)
    if (p / "cams_lidars.json").is_file():
        return KIND_RAW
    raise DataError(p, "no *.npz chunks and no cams_lidars.json: not a chunk directory or a raw A2D2 tree")


def iter_frames(path: str | Path, cfg: Config | None = None, with_gt: bool = False,
                limit: int | None = None, on_bad: OnBad | None = None) -> Iterator[RuntimeFrame]:
    """``RuntimeFrame``s of ``path`` in a stable order, read lazily (one chunk / one raw frame at a time).

    ``path``: a directory of NPZ chunks, one ``.npz`` chunk, or a raw A2D2 tree (``cams_lidars.json`` +
    ``<scene>/{camera,lidar,label,label3D}/cam_front_center/``), detected by ``detect_source``. ``cfg`` (the
    model's, ``pipe.cfg``) names the camera of a raw tree and is needed for raw ground truth; ``with_gt``
    attaches ``gt_boxes`` (M, 7) metres, ``gt_labels`` (M,) and ``gt_semantic`` (H, W) uint8 at model size;
    ``limit`` stops after that many frames. Raises ``DataError`` for a path that is neither (and the chunk /
    raw readers' errors for a bad file); with ``on_bad`` a chunk that does not read (``ChunkError``) or a raw
    frame whose files do not (``DataError``) is passed to ``on_bad(kind, error)`` and skipped instead."""
    kind = detect_source(path)
    it = (_chunk_frames(Path(path), with_gt, on_bad) if kind == KIND_CHUNK else
          _raw_frames(Path(path), cfg, with_gt, on_bad))
    for i, f in enumerate(it):
        if limit is not None and i >= limit:
            return
        yield f


def _chunk_frames(path: Path, with_gt: bool, on_bad: OnBad | None = None) -> Iterator[RuntimeFrame]:
    from ..data.chunk import list_chunks, read_chunk

    files = list_chunks(path)          # checks the directory's manifest (pending, missing, mixed)
    for cf in files:
        try:
            chunk = read_chunk(cf)
        except ChunkError as e:
            if on_bad is None:
                raise
            on_bad("bad chunk", e)
            continue
        yield from chunk_frames(chunk, str(cf), with_gt)


def chunk_frames(chunk, source: str, with_gt: bool) -> Iterator[RuntimeFrame]:
    """The ``RuntimeFrame``s of a read chunk (``data.chunk.Chunk``), in its order."""
    from ..data.chunk import HAS_BOXES, HAS_IMAGE, HAS_LIDAR, HAS_SEMANTIC

    for f in chunk:
        fr = RuntimeFrame(
            frame_id=f.frame_id, kind=KIND_CHUNK,
            points=f.points if f.modality_mask & HAS_LIDAR else np.zeros((0, 4), np.float32),
            image_png=f.image_png if f.modality_mask & HAS_IMAGE else None,
            cam_matrix=np.asarray(f.cam_matrix, np.float64), meta=chunk.meta, source=source)
        if with_gt:
            if f.modality_mask & HAS_BOXES:
                fr.gt_boxes, fr.gt_labels = np.asarray(f.boxes), np.asarray(f.box_class, np.int64)
            if f.modality_mask & HAS_SEMANTIC:
                fr.gt_semantic = f.semantic()
        yield fr


def _raw_frames(root: Path, cfg: Config | None, with_gt: bool, on_bad: OnBad | None = None
                ) -> Iterator[RuntimeFrame]:
    from ..data import a2d2

    camera = raw_camera(root, cfg)
    for paths in a2d2.find_frames(root):
        try:
            fr = raw_frame(root, paths, camera, cfg, with_gt)
        except DataError as e:
            if on_bad is None:
                raise
            on_bad("bad frame", e)
            continue
        yield fr


def raw_camera(root: Path, cfg: Config | None) -> CameraConfig:
    """The calibration of the model's camera (default ``front_center``) from the tree's cams_lidars.json."""
    from ..data import a2d2

    return a2d2.read_camera_config(root / "cams_lidars.json", (cfg.camera.name if cfg else "front_center"),
                                   cfg.camera if cfg else None)


def raw_frame(root: Path, paths, camera: CameraConfig, cfg: Config | None, with_gt: bool) -> RuntimeFrame:
    """One raw A2D2 frame read from its files (``DataError`` naming a file that does not read)."""
    from ..data import a2d2

    png = None
    if paths.camera is not None:
        try:
            png = paths.camera.read_bytes()
        except OSError as e:
            raise DataError(paths.camera, f"cannot read ({e})") from None
    points = a2d2.read_lidar(paths.lidar) if paths.lidar is not None else np.zeros((0, 4), np.float32)
    fr = RuntimeFrame(frame_id=paths.key, kind=KIND_RAW, points=points, image_png=png, camera=camera,
                      source=str(paths.camera or paths.lidar or root))
    if with_gt and cfg is not None:
        if paths.label3D is not None:
            b, c = a2d2.read_boxes(paths.label3D, cfg.classes)
            fr.gt_boxes, fr.gt_labels = b, c.astype(np.int64)
        if paths.label is not None:
            ids = a2d2.read_label_png(paths.label, cfg.classes)
            fr.gt_semantic = a2d2.prepare_label(ids, camera, tuple(cfg.camera.image_hw),
                                                cfg.classes.ignore_index, paths.label)
    return fr


__all__ = ["KIND_CHUNK", "KIND_RAW", "RuntimeFrame", "chunk_frames", "clip", "describe_array", "describe_size",
           "detect_source", "iter_frames", "raw_camera", "raw_frame", "sanitise_frame_id"]
