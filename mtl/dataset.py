"""Torch ``Dataset`` over a directory of NPZ chunks: one sample = the model inputs + dense targets of one frame.

Sample keys (docs/DEVELOPING.md, "Dataset sample"): ``image`` (3,H,W) float32 normalised, ``bev``
(C_bev,256,256) float32, ``heatmap`` (n_det,128,128), ``reg`` (8,128,128), ``reg_mask`` (128,128),
``semantic`` (H,W) int64 (255 = ignore), ``boxes`` (M,7) / ``box_class`` (M,) numpy ground truth and
``frame_id``. ``collate`` stacks the tensors and keeps lists for the rest.

Augmentation (training only) is one flip about the x axis (y -> -y), applied consistently to every
modality so the fixed camera->BEV fusion grid of the model stays valid:
- LiDAR points and boxes: y -> -y, yaw -> -yaw;
- camera image and semantic map: mirrored about the principal point column cx (u -> 2 cx - u), which is
  exactly what y -> -y does to the pinhole projection u = fx * (-y) / x + cx. cx is not the image centre,
  so this is a remap (bilinear for the image, nearest for labels); the few columns that come from outside
  the image are zero (image) / ignore (labels).
Global scaling / rotation of LiDAR would break the camera consistency (the image cannot follow a BEV
rotation), so there is none. The augmentation RNG is seeded by (seed, epoch, index): a run is reproducible
for any number of workers, and ``set_epoch`` changes the draw per epoch.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .config import Config
from .data.chunk import (
    HAS_ALL,
    HAS_BOXES,
    HAS_IMAGE,
    HAS_LIDAR,
    HAS_SEMANTIC,
    Chunk,
    check_class_names,
    list_chunks,
    load_npz,
    parse_meta,
    read_chunk,
)
from .errors import ChunkError
from .geometry import (
    NearestTable,
    RemapTable,
    bev_raster,
    heatmap_targets,
    mean_colour_image,
    normalise_image,
    scale_cam_matrix,
)

TENSOR_KEYS = ("image", "bev", "heatmap", "reg", "reg_mask", "semantic")
LIST_KEYS = ("boxes", "box_class", "frame_id", "modality_mask")


def scored_tasks(mask: int) -> tuple[bool, bool]:
    """(semantic, detection): what a frame with chunk ``modality_mask`` can be scored on. The semantic map
    needs the camera image and its label; the boxes need the LiDAR sweep and the 3D labels."""
    sem, det = HAS_IMAGE | HAS_SEMANTIC, HAS_LIDAR | HAS_BOXES
    return (int(mask) & sem) == sem, (int(mask) & det) == det


def _index_chunk(path: Path, cfg: Config) -> tuple[int, np.ndarray]:
    """(number of frames, modality mask) of a chunk, reading only its small members; a chunk whose recorded
    class names differ from ``cfg``'s is refused (``ModelMismatchError``), as ``mtl infer`` does."""
    arrays = load_npz(path, keys=("frame_id", "modality_mask", "meta"))
    if "frame_id" not in arrays:
        raise ChunkError(path, "missing keys ['frame_id']")
    n = len(arrays["frame_id"])
    if "meta" in arrays:
        check_class_names(parse_meta(path, arrays["meta"]), cfg.classes, path)
    mask = np.asarray(arrays.get("modality_mask", np.full(n, HAS_ALL, np.uint8)))
    if mask.shape != (n,):
        raise ChunkError(path, f"modality_mask has shape {mask.shape}, expected ({n},)")
    return n, mask


def resize_image(image: np.ndarray, out_hw: tuple[int, int], nearest: bool = False, fill: int = 0) -> np.ndarray:
    """Resize (H, W[, C]) to ``out_hw`` with the pixel-centre convention of ``geometry.scale_cam_matrix``."""
    return _resize_table(image.shape[:2], tuple(out_hw), nearest).apply(image, fill)


def flip_about_cx(image: np.ndarray, cx: float, nearest: bool = False, fill: int = 0) -> np.ndarray:
    """Mirror an image about column ``cx`` (u -> 2 cx - u): the image of the scene with y -> -y."""
    if abs(cx - (image.shape[1] - 1) / 2) < 1e-6:
        return np.ascontiguousarray(image[:, ::-1])
    h, w = image.shape[:2]
    return _flip_table(float(cx), h, w, nearest).apply(image, fill)   # every other training sample: cached


@lru_cache(maxsize=8)
def _resize_table(src_hw: tuple[int, int], out_hw: tuple[int, int], nearest: bool) -> RemapTable | NearestTable:
    (h, w), (oh, ow) = src_hw, out_hw
    v, u = np.mgrid[0:oh, 0:ow].astype(np.float32)
    map_x = (u + 0.5) * (w / ow) - 0.5
    map_y = (v + 0.5) * (h / oh) - 0.5
    return (NearestTable if nearest else RemapTable)(map_x, map_y, (h, w))


@lru_cache(maxsize=8)
def _flip_table(cx: float, h: int, w: int, nearest: bool = False) -> RemapTable | NearestTable:
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    return (NearestTable if nearest else RemapTable)((2 * cx - u).astype(np.float32), v, (h, w))


def flip_lidar_boxes(points: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """y -> -y for points (N, 4) and boxes (M, 7) (yaw -> -yaw). Returns copies."""
    points = points.copy()
    boxes = boxes.copy()
    points[:, 1] *= -1
    boxes[:, 1] *= -1
    boxes[:, 6] *= -1
    return points, boxes


class ChunkDataset(Dataset):
    """All complete frames of the chunks in ``chunk_dir``, indexed globally as (chunk, frame).

    Chunks are read lazily and kept in a small per-process LRU cache (each DataLoader worker has its own).
    Frames lacking a modality (chunk ``modality_mask``) are skipped; their count is ``self.skipped``.
    ``partial`` (evaluation) keeps every frame that can be scored on at least one task (``scored_tasks``);
    ``self.partial_frames`` counts those that are not complete. A missing camera image is fed as the
    normalisation mean (zeros after normalising), a missing label map as all-ignore, missing LiDAR as no
    points; ``modality_mask`` in each sample says what the frame really has.

    ``skip_bad``: a chunk that cannot even be indexed is left out (``self.bad_files``: path -> reason), and a
    frame that fails later (corrupt PNG, NaN points found when its chunk is first read) becomes
    ``{"bad": reason}``, which ``collate`` drops and lists in ``batch["bad"]``; without it, both raise
    ``ChunkError``.
    """

    def __init__(self, chunk_dir: str | Path, cfg: Config, augment: bool = False, seed: int = 0,
                 max_cached_chunks: int = 16, skip_bad: bool = False, partial: bool = False):
        self.cfg = cfg
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.max_cached_chunks = max_cached_chunks
        self.skip_bad = skip_bad
        self.files = [str(p) for p in list_chunks(chunk_dir)]
        self.index: list[tuple[int, int]] = []
        self.skipped = 0
        self.partial_frames = 0
        self.bad_files: dict[str, str] = {}
        for ci, path in enumerate(self.files):
            try:
                n, mask = _index_chunk(Path(path), cfg)
            except ChunkError as e:
                if not skip_bad:
                    raise
                self.bad_files[path] = e.reason      # the caller logs these (mtl train / eval)
                continue
            for fi in range(n):
                complete = (int(mask[fi]) & HAS_ALL) == HAS_ALL
                if complete or (partial and any(scored_tasks(mask[fi]))):
                    self.index.append((ci, fi))
                    self.partial_frames += not complete
                else:
                    self.skipped += 1
        if self.skipped:
            warnings.warn(f"{chunk_dir}: skipped {self.skipped} frame(s) lacking a modality (modality_mask)",
                          stacklevel=2)
        if not self.index:
            bad = f" ({len(self.bad_files)} bad chunk(s) skipped)" if self.bad_files else ""
            need = ("camera + semantic label, or LiDAR + 3D boxes" if partial else
                    "complete frames (camera + semantic + LiDAR + boxes)")
            raise ChunkError(chunk_dir, f"no {need} in the chunks{bad}")
        self._cache: OrderedDict[int, Chunk] = OrderedDict()
        self._failed: dict[int, ChunkError] = {}

    def __len__(self) -> int:
        return len(self.index)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _chunk(self, ci: int) -> Chunk:
        if ci in self._cache:
            self._cache.move_to_end(ci)
            return self._cache[ci]
        if ci in self._failed:              # do not re-read a bad chunk once per frame
            raise self._failed[ci]
        try:
            chunk = read_chunk(self.files[ci])
        except ChunkError as e:
            self._failed[ci] = e
            raise
        self._cache[ci] = chunk
        while len(self._cache) > self.max_cached_chunks:
            self._cache.popitem(last=False)
        return chunk

    def __getstate__(self) -> dict:
        # workers start with an empty cache instead of pickling chunk arrays
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        state["_failed"] = {}
        return state

    def __getitem__(self, idx: int) -> dict[str, Any]:
        if not self.skip_bad:
            return self._sample(idx)
        try:
            return self._sample(idx)
        except ChunkError as e:
            return {"bad": str(e)}

    def _sample(self, idx: int) -> dict[str, Any]:
        cfg = self.cfg
        ci, fi = self.index[idx]
        frame = self._chunk(ci).frame(fi)
        image, semantic = self._camera(frame)
        if semantic.shape != image.shape[:2]:
            raise ChunkError(frame.source, f"frame {frame.frame_id}: semantic map {semantic.shape[0]}x"
                                           f"{semantic.shape[1]} and image {image.shape[0]}x{image.shape[1]} "
                                           "differ in size")
        k = np.asarray(frame.cam_matrix, np.float64)
        hw = tuple(cfg.camera.image_hw)
        if image.shape[:2] != hw:
            k = scale_cam_matrix(k, (image.shape[1], image.shape[0]), hw)
            image = resize_image(image, hw)
            semantic = resize_image(semantic, hw, nearest=True, fill=cfg.classes.ignore_index)
        points = np.asarray(frame.points, np.float32)
        boxes = np.asarray(frame.boxes, np.float32).reshape(-1, 7)
        box_class = np.asarray(frame.box_class, np.int64).reshape(-1)

        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, idx])
            if rng.random() < 0.5:
                points, boxes = flip_lidar_boxes(points, boxes)
                image = flip_about_cx(image, k[0, 2])
                semantic = flip_about_cx(semantic, k[0, 2], nearest=True, fill=cfg.classes.ignore_index)

        targets = heatmap_targets(boxes, box_class, cfg.grid, cfg.classes.n_det,
                                  gaussian_overlap=cfg.loss.gaussian_overlap, min_radius=cfg.loss.min_radius)
        return {
            "image": torch.from_numpy(normalise_image(image, cfg.camera.mean, cfg.camera.std)),
            "bev": torch.from_numpy(bev_raster(points, cfg.grid)),
            "heatmap": torch.from_numpy(targets["heatmap"]),
            "reg": torch.from_numpy(targets["reg"]),
            "reg_mask": torch.from_numpy(targets["reg_mask"]),
            "semantic": torch.from_numpy(semantic.astype(np.int64)),
            "boxes": boxes,
            "box_class": box_class,
            "frame_id": frame.frame_id,
            "modality_mask": int(frame.modality_mask),
        }

    def _camera(self, frame) -> tuple[np.ndarray, np.ndarray]:
        """(image (H, W, 3) uint8, semantic (H, W)); stand-ins for what a partial frame lacks (class docstring)."""
        if (frame.modality_mask & HAS_ALL) == HAS_ALL:
            return frame.image(), frame.semantic()
        cam = self.cfg.camera
        image = frame.image() if frame.modality_mask & HAS_IMAGE else None
        semantic = frame.semantic() if image is not None and frame.modality_mask & HAS_SEMANTIC else None
        if image is None:
            image = mean_colour_image(cam)
        if semantic is None:
            semantic = np.full(image.shape[:2], self.cfg.classes.ignore_index, np.uint8)
        return image, semantic


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors along a new batch dim; boxes / classes / frame ids stay per-frame lists.

    Samples that failed under ``skip_bad`` (``{"bad": reason}``) are dropped; their reasons are in
    ``batch["bad"]``. A batch with no good sample has only ``"bad"`` (the loops skip it)."""
    good = [s for s in samples if "bad" not in s]
    batch: dict[str, Any] = {"bad": [s["bad"] for s in samples if "bad" in s]}
    if not good:
        return batch
    batch.update({k: torch.stack([s[k] for s in good]) for k in TENSOR_KEYS})
    for k in LIST_KEYS:
        batch[k] = [s[k] for s in good]
    return batch


def semantic_class_counts(chunk_dir: str | Path, n_classes: int, ignore_index: int = 255, skip_bad: bool = False
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Pixel counts per class over all semantic maps of the chunks: (total (n_classes,), per image
    (n_images, n_classes)), int64; ignore pixels are not counted. Used for ENet / median-frequency weights.
    ``skip_bad``: bad chunks / undecodable maps are left out instead of raising ``ChunkError``."""
    per_image = []
    for path in list_chunks(chunk_dir):
        try:
            chunk = read_chunk(path)
        except ChunkError:
            if skip_bad:
                continue
            raise
        for frame in chunk:
            if not frame.semantic_png:
                continue
            try:
                ids = frame.semantic().reshape(-1)
            except ChunkError:
                if skip_bad:
                    continue
                raise
            ids = ids[ids != ignore_index]
            ids = ids[ids < n_classes]
            per_image.append(np.bincount(ids, minlength=n_classes)[:n_classes].astype(np.int64))
    per = np.stack(per_image) if per_image else np.zeros((0, n_classes), np.int64)
    return per.sum(0), per

