"""Validate and summarise NPZ chunks (``mtl data inspect``). Torch-free.

Beyond ``read_chunk``'s format checks this decodes every PNG and checks that images are 8-bit RGB,
semantic maps 8-bit single-channel of the image's size with ids < n_sem or the ignore index, box classes
in [-1, n_det), and that all chunks of a directory share the same class names. The first problem raises
``ChunkError(file, reason)``.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ..config import ClassesConfig
from ..errors import ChunkError
from .chunk import (
    HAS_BOXES,
    HAS_IMAGE,
    HAS_LIDAR,
    HAS_SEMANTIC,
    Chunk,
    Frame,
    has_manifest,
    list_chunks,
    read_chunk,
)


def chunk_files(path: str | Path) -> list[Path]:
    """The chunk files under ``path`` (a directory or one chunk), its manifest checked with sha256."""
    p = Path(path)
    if not p.exists():
        raise ChunkError(p, "not found")
    return list_chunks(p, sha256=True)


def _class_names(chunk: Chunk) -> tuple[list[str], list[str], int]:
    """(sem names, det names, ignore index) from the chunk meta; the packaged defaults when absent."""
    default = ClassesConfig.a2d2_default()
    sem = chunk.meta.get("sem_classes", list(default.sem_classes))
    det = chunk.meta.get("det_classes", list(default.det_classes))
    ignore = chunk.meta.get("ignore_index", default.ignore_index)
    if not (isinstance(sem, list) and isinstance(det, list) and isinstance(ignore, int)):
        raise ChunkError(chunk.path, "meta sem_classes/det_classes/ignore_index have the wrong types")
    return [str(s) for s in sem], [str(d) for d in det], ignore


class _Stats:
    def __init__(self, sem: list[str], det: list[str], ignore: int):
        self.sem, self.det, self.ignore = sem, det, ignore
        self.frames = 0
        self.modalities = {"image": 0, "semantic": 0, "lidar": 0, "boxes": 0}
        self.n_points: list[int] = []
        self.pmin = np.full(4, np.inf)
        self.pmax = np.full(4, -np.inf)
        self.box_hist = np.zeros(len(det) + 1, np.int64)          # last bin = ignore (-1)
        self.sem_hist = np.zeros(256, np.int64)
        self.image_sizes: Counter[str] = Counter()
        self.frame_ids: Counter[str] = Counter()

    def add_frame(self, f: Frame) -> None:
        """Validate one frame's payloads and add it to the totals."""
        def bad(reason: str) -> ChunkError:
            return ChunkError(f.source, f"frame {f.frame_id}: {reason}")

        self.frames += 1
        self.frame_ids[f.frame_id] += 1
        m = f.modality_mask
        for name, bit in (("image", HAS_IMAGE), ("semantic", HAS_SEMANTIC), ("lidar", HAS_LIDAR), ("boxes", HAS_BOXES)):
            self.modalities[name] += bool(m & bit)
        image_hw = None
        if m & HAS_IMAGE:
            img = f.decode(f.image_png, "image")
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                raise bad(f"image is {img.dtype} {img.shape}, expected 8-bit RGB")
            image_hw = img.shape[:2]
            self.image_sizes[f"{image_hw[0]}x{image_hw[1]}"] += 1
        if m & HAS_SEMANTIC:
            sem = f.decode(f.semantic_png, "semantic map")
            if sem.dtype != np.uint8 or sem.ndim != 2:
                raise bad(f"semantic map is {sem.dtype} {sem.shape}, expected 8-bit single-channel")
            if image_hw is not None and sem.shape != image_hw:
                raise bad(f"semantic map is {sem.shape[0]}x{sem.shape[1]} but the image is {image_hw[0]}x{image_hw[1]}")
            hist = np.bincount(sem.ravel(), minlength=256)
            wrong = np.flatnonzero(hist[len(self.sem):])
            wrong = wrong[wrong + len(self.sem) != self.ignore] + len(self.sem)
            if wrong.size:
                raise bad(f"semantic id {int(wrong[0])} is not < {len(self.sem)} classes nor ignore {self.ignore}")
            self.sem_hist += hist
        if m & HAS_LIDAR:
            self.n_points.append(len(f.points))
            if len(f.points):
                self.pmin = np.minimum(self.pmin, f.points.min(0))
                self.pmax = np.maximum(self.pmax, f.points.max(0))
        cls = f.box_class.astype(np.int64)
        if ((cls < -1) | (cls >= len(self.det))).any():
            raise bad(f"box class {int(cls[(cls < -1) | (cls >= len(self.det))][0])} outside [-1, {len(self.det)})")
        self.box_hist += np.bincount(np.where(cls < 0, len(self.det), cls), minlength=len(self.det) + 1)

    def to_dict(self) -> dict:
        n = np.asarray(self.n_points, np.int64)
        points: dict = {"frames": int(n.size), "total": int(n.sum())}
        if n.size:
            points.update(min=int(n.min()), mean=round(float(n.mean()), 1), max=int(n.max()))
        if np.isfinite(self.pmin).all():
            for i, axis in enumerate(("x", "y", "z", "reflectance")):
                points[axis] = [round(float(self.pmin[i]), 4), round(float(self.pmax[i]), 4)]
        boxes = {name: int(self.box_hist[i]) for i, name in enumerate(self.det)}
        boxes["ignore"] = int(self.box_hist[-1])
        sem = {name: int(self.sem_hist[i]) for i, name in enumerate(self.sem)}
        sem["ignore"] = int(self.sem_hist[self.ignore])
        return {
            "frames": self.frames, "modalities": dict(self.modalities), "points": points,
            "boxes_per_class": boxes, "semantic_pixels": sem, "image_sizes": dict(sorted(self.image_sizes.items())),
            "duplicate_frame_ids": sorted(k for k, v in self.frame_ids.items() if v > 1),
        }


def inspect_chunks(path: str | Path) -> dict:
    """Validate every chunk under ``path`` (a chunk file or a directory) and return a JSON-able report."""
    files = chunk_files(path)
    stats: _Stats | None = None
    names = None
    first: dict = {}
    chunks = []
    for file in files:
        chunk = read_chunk(file)
        these = _class_names(chunk)
        if names is None:
            names, stats, first = these, _Stats(*these), chunk.meta
        elif these != names:
            raise ChunkError(file, f"class names differ from {files[0].name} (chunks from different conversions?)")
        for frame in chunk:
            stats.add_frame(frame)
        chunks.append({"file": str(file), "frames": len(chunk)})
    return {
        "path": str(path), "chunks": chunks, "manifest": _manifest_scope(Path(path)),
        "format_version": first.get("format_version"),
        "source": first.get("source"), "converter_version": first.get("converter_version"),
        **stats.to_dict(),
    }


def _manifest_scope(path: Path) -> str | None:
    """What ``list_chunks`` checked against a manifest: the whole ``"set"``, one ``"file"`` of it, or nothing."""
    folder = path if path.is_dir() else path.parent
    if not has_manifest(folder):
        return None
    return "set" if path.is_dir() else "file"


def _percent(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    if not total:
        return "none"
    return ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in counts.items() if v)


def format_report(r: dict) -> str:
    """Human-readable multi-line report."""
    p = r["points"]
    mod = ", ".join(f"{k} {v}" for k, v in r["modalities"].items())
    lines = [
        (f"{r['path']}: {len(r['chunks'])} chunk(s), {r['frames']} frames "
        f"(format {r['format_version']}, source {r['source']}, converter {r['converter_version']})"),
        f"  modalities: {mod} (of {r['frames']})",
    ]
    if p["frames"]:
        ranges = "  ".join(f"{a} [{p[a][0]:.2f}, {p[a][1]:.2f}]" for a in ("x", "y", "z", "reflectance") if a in p)
        lines.append(f"  points/frame: min {p['min']} mean {p['mean']} max {p['max']} ({p['total']} total)")
        lines.append(f"  point ranges: {ranges}")
    else:
        lines.append("  points: no LiDAR")
    lines.append("  boxes: " + ", ".join(f"{k} {v}" for k, v in r["boxes_per_class"].items()))
    lines.append("  semantic pixels: " + _percent(r["semantic_pixels"]))
    lines.append("  image sizes: " + (", ".join(f"{k} x{v}" for k, v in r["image_sizes"].items()) or "none"))
    if r["duplicate_frame_ids"]:
        dup = r["duplicate_frame_ids"]
        lines.append(f"  warning: {len(dup)} duplicate frame ids, e.g. {dup[0]}")
    if r.get("manifest") == "set":
        lines.append("  OK: every chunk and PNG is valid; the set matches manifest.json (names, sizes, sha256)")
    elif r.get("manifest") == "file":
        lines.append("  OK: every chunk and PNG is valid; the file matches its folder's manifest.json (size, sha256)")
    else:
        lines.append("  OK: every chunk and PNG is valid (no manifest.json: a directory written before manifests "
                     "or by hand, so completeness is not checked)")
    return "\n".join(lines)
