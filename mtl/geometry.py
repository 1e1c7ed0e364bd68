"""Torch-free numpy geometry shared by training AND the runtime (one implementation, so the runtime
matches training by construction).

Conventions (used everywhere in mtl):
- Frame: A2D2 cam_front_center view frame, metres, x forward, y left, z up; yaw about +z, CCW from +x.
- BEV grid: row index follows x, column index follows y. Cell (r, c) covers
  x in [x_min + r*cell, ...), y in [y_min + c*cell, ...). Row 0 is nearest the car, column 0 is the
  rightmost (most negative y). Head maps use the same convention with cell * head_stride.
- Image: OpenCV optical frame X = -y, Y = -z, Z = x; pixel u = fx*X/Z + cx (column), v = fy*Y/Z + cy (row).
"""
from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable

import numpy as np

from .config import CameraConfig, GridConfig

# ----------------------------------------------------------------------------------------- BEV raster

BEV_CHANNEL_NAMES = ("occupancy", "max_height", "mean_height", "mean_reflectance", "log_density")


def bev_channel_names(grid: GridConfig) -> tuple[str, ...]:
    return BEV_CHANNEL_NAMES + tuple(f"slice_{i}" for i in range(grid.n_height_slices))


def point_cells(points: np.ndarray, grid: GridConfig) -> tuple[np.ndarray, np.ndarray]:
    """Flat BEV cell index (row * W + col) of each point inside the grid, and the in-grid mask.

    points: (N, >=3) float. Non-finite points are outside by construction (comparisons with NaN fail).
    """
    h, w = grid.shape
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    inside = (x >= grid.x_min) & (x < grid.x_max) & (y >= grid.y_min) & (y < grid.y_max)
    inside &= (z >= grid.z_min) & (z <= grid.z_max)
    r = ((x[inside] - grid.x_min) * (1.0 / grid.cell)).astype(np.int64)
    c = ((y[inside] - grid.y_min) * (1.0 / grid.cell)).astype(np.int64)
    # float rounding at the upper edge can give index == size
    np.minimum(r, h - 1, out=r)
    np.minimum(c, w - 1, out=c)
    return r * w + c, inside


class _Scratch(threading.local):
    """Per-thread reusable work buffers for ``bev_raster``.

    Why: each fresh multi-100-kB numpy temporary is a new mapping whose pages fault in on first touch, and
    in VMs those faults cost more than the arithmetic (about 2/3 of bev_raster's time on the dev VM).
    Buffers above ``max_elems`` are not kept, so a one-off huge cloud does not pin memory."""

    max_elems = 1 << 21

    def __init__(self) -> None:
        self.bufs: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        size = math.prod(shape)
        buf = self.bufs.get(name)
        if buf is None or buf.size < size or buf.dtype != dtype:
            buf = np.empty(max(size, 1), dtype)
            if size <= self.max_elems:
                self.bufs[name] = buf
        return buf[:size].reshape(shape)


_SCRATCH = _Scratch()


def _raster_keys(points: np.ndarray, grid: GridConfig, ws: _Scratch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per point, for ``bev_raster``: flat cell index (N,) int64 -- ``n_cells`` (one spare bin) for points
    outside the grid, so no boolean compaction is needed -- normalised height (N,) float32 and clipped
    reflectance (N,) float32. Same float32 arithmetic as ``point_cells``, so identical cells."""
    h, w = grid.shape
    n = len(points)
    cols = ws.get("cols", (4, n), np.float32)
    np.copyto(cols, np.asarray(points)[:, :4].T, casting="unsafe")     # contiguous columns: SIMD ufuncs
    x, y, z, refl = cols
    inside, tmp = ws.get("inside", (n,), np.bool_), ws.get("tmp", (n,), np.bool_)
    np.greater_equal(x, grid.x_min, out=inside)
    for arr, op, bound in ((x, np.less, grid.x_max), (y, np.greater_equal, grid.y_min), (y, np.less, grid.y_max),
                           (z, np.greater_equal, grid.z_min), (z, np.less_equal, grid.z_max)):
        inside &= op(arr, bound, out=tmp)
    cell_f = ws.get("cell_f", (n,), np.float32)
    r, c = ws.get("row", (n,), np.int32), ws.get("col", (n,), np.int32)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN / huge coordinates: outside points, overwritten below
        for coord, lo, dst in ((x, grid.x_min, r), (y, grid.y_min, c)):
            np.subtract(coord, lo, out=cell_f)
            np.multiply(cell_f, 1.0 / grid.cell, out=cell_f)
            np.copyto(dst, cell_f, casting="unsafe")
    # float rounding at the upper edge can give index == size
    np.minimum(r, h - 1, out=r)
    np.minimum(c, w - 1, out=c)
    idx = ws.get("idx", (n,), np.int64)
    np.multiply(r, w, out=idx)
    idx += c
    np.copyto(idx, h * w, where=np.logical_not(inside, out=tmp))
    zn = ws.get("zn", (n,), np.float32)
    np.subtract(z, grid.z_min, out=zn)
    np.multiply(zn, 1.0 / (grid.z_max - grid.z_min), out=zn)
    np.clip(refl, 0.0, 1.0, out=refl)
    return idx, zn, refl


def bev_raster(points: np.ndarray, grid: GridConfig) -> np.ndarray:
    """Rasterise a point cloud into (C_bev, H, W) float32 features, all in [0, 1].

    points: (N, 4) x, y, z, reflectance (0..1). Channels: occupancy, max height, mean height,
    mean reflectance, log density, then ``n_height_slices`` slice occupancies (see bev_channel_names).
    Points outside the grid (``point_cells``) or non-finite are ignored. Vectorised (bincount / ufunc.at,
    no Python loop over points) into per-thread reused buffers; about 2 ms for 100k points on one core.
    """
    h, w = grid.shape
    n_cells = h * w
    out = np.zeros((grid.n_channels, n_cells), np.float32)
    if len(points) == 0:
        return out.reshape(grid.n_channels, h, w)
    ws = _SCRATCH
    n, n_bins = len(points), n_cells + 1                      # last bin collects the outside points
    idx, zn, refl = _raster_keys(points, grid, ws)

    count = np.bincount(idx, minlength=n_bins)[:n_cells]
    np.greater(count, 0, out=out[0])
    count_f = ws.get("count_f", (n_cells,), np.float32)
    np.copyto(count_f, count, casting="unsafe")
    zmax = ws.get("zmax", (n_bins,), np.float32)
    zmax.fill(0)
    with np.errstate(invalid="ignore"):                      # NaN heights only land in the spare bin
        np.maximum.at(zmax, idx, zn)
    out[1] = zmax[:n_cells]
    safe = np.maximum(count_f, 1.0, out=ws.get("safe", (n_cells,), np.float32))
    weights = ws.get("weights", (n,), np.float64)           # bincount sums in float64 anyway
    for channel, values in ((2, zn), (3, refl)):
        np.copyto(weights, values)
        np.divide(np.bincount(idx, weights=weights, minlength=n_bins)[:n_cells], safe, out=out[channel],
                  casting="unsafe")
    np.log1p(count_f, out=out[4])
    np.divide(out[4], math.log1p(64.0), out=out[4])
    np.minimum(out[4], 1.0, out=out[4])
    s = grid.n_height_slices
    if s:
        slice_f, slice_i = ws.get("slice_f", (n,), np.float32), ws.get("slice_i", (n,), np.int32)
        np.multiply(zn, s, out=slice_f)
        with np.errstate(invalid="ignore"):
            np.copyto(slice_i, slice_f, casting="unsafe")
        np.clip(slice_i, 0, s - 1, out=slice_i)
        key = np.multiply(slice_i, n_bins, out=ws.get("key", (n,), np.int64))
        key += idx
        hit = ws.get("hit", (s, n_bins), np.bool_)           # (slice, cell) occupancy
        hit.fill(False)
        hit.reshape(-1)[key] = True
        np.copyto(out[5:], hit[:, :n_cells])
    return out.reshape(grid.n_channels, h, w)


# ------------------------------------------------------------------------------- heatmap targets


def gaussian_radius_centerpoint(height: float, width: float, min_overlap: float = 0.5) -> float:
    """CenterPoint / CenterNet ``gaussian_radius`` reproduced *with its quirk*: every case uses the
    larger root ``(b + sqrt(b^2 - 4ac)) / 2`` without dividing by 2a (CenterNet issue #273). Kept for parity
    with published BEV results. Sizes in heatmap cells."""
    a1 = 1.0
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1 ** 2 - 4 * a1 * c1)) / 2
    a2 = 4.0
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def gaussian_kernel(radius: int) -> np.ndarray:
    """(2r+1, 2r+1) Gaussian with sigma = (2r+1)/6, peak exactly 1 (CenterNet ``gaussian2D``)."""
    sigma = (2 * radius + 1) / 6.0
    y, x = np.ogrid[-radius: radius + 1, -radius: radius + 1]
    g = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    g[g < np.finfo(g.dtype).eps * g.max()] = 0
    return g


def draw_gaussian(heatmap: np.ndarray, row: int, col: int, radius: int) -> None:
    """Max-merge a Gaussian of ``radius`` centred on integer (row, col) into ``heatmap`` (H, W), in place,
    clipped at the borders (CenterNet ``draw_umich_gaussian``)."""
    g = gaussian_kernel(radius)
    h, w = heatmap.shape
    top, bottom = min(row, radius), min(h - row, radius + 1)
    left, right = min(col, radius), min(w - col, radius + 1)
    if top + bottom <= 0 or left + right <= 0:
        return
    dst = heatmap[row - top: row + bottom, col - left: col + right]
    src = g[radius - top: radius + bottom, radius - left: radius + right]
    np.maximum(dst, src.astype(heatmap.dtype), out=dst)


def limit_period(yaw: np.ndarray | float, offset: float = 0.5, period: float = 2 * math.pi):
    """Wrap an angle to [-offset*period, (1-offset)*period), i.e. [-pi, pi) by default."""
    return yaw - np.floor(np.asarray(yaw) / period + offset) * period


# --------------------------------------------------------------------------------------- box codec

REG_CHANNELS = ("dx", "dy", "z", "log_l", "log_w", "log_h", "sin_yaw", "cos_yaw")


def box_centre_cells(boxes: np.ndarray, grid: GridConfig) -> tuple[np.ndarray, np.ndarray]:
    """Float (row, col) of box centres in head-map cells. boxes: (M, 7)."""
    fr = (boxes[:, 0] - grid.x_min) / grid.head_cell
    fc = (boxes[:, 1] - grid.y_min) / grid.head_cell
    return fr, fc


def encode_boxes(boxes: np.ndarray, grid: GridConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encode (M, 7) boxes to integer head cells and the 8-channel regression target.

    Returns rows (M,), cols (M,), reg (M, 8) = [row - floor(row), col - floor(col), z, ln l, ln w, ln h,
    sin yaw, cos yaw]. Boxes whose centre cell is off the head map get row/col outside [0, size).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 7)
    fr, fc = box_centre_cells(boxes, grid)
    rows, cols = np.floor(fr).astype(np.int64), np.floor(fc).astype(np.int64)
    reg = np.stack([
        fr - rows, fc - cols, boxes[:, 2],
        np.log(boxes[:, 3]), np.log(boxes[:, 4]), np.log(boxes[:, 5]),
        np.sin(boxes[:, 6]), np.cos(boxes[:, 6]),
    ], axis=1).astype(np.float32)
    return rows, cols, reg


def decode_boxes(rows: np.ndarray, cols: np.ndarray, reg: np.ndarray, grid: GridConfig) -> np.ndarray:
    """Inverse of ``encode_boxes``: integer head cells + (M, 8) regression -> (M, 7) boxes in metres."""
    reg = np.asarray(reg, np.float64).reshape(-1, 8)
    x = (rows + reg[:, 0]) * grid.head_cell + grid.x_min
    y = (cols + reg[:, 1]) * grid.head_cell + grid.y_min
    # clip log-sizes so an untrained head cannot overflow exp
    lwh = np.exp(np.clip(reg[:, 3:6], -5.0, 5.0))
    yaw = np.arctan2(reg[:, 6], reg[:, 7])
    return np.column_stack([x, y, reg[:, 2], lwh, yaw]).astype(np.float32)


def heatmap_targets(
    boxes: np.ndarray, classes: np.ndarray, grid: GridConfig, n_classes: int,
    gaussian_overlap: float = 0.1, min_radius: int = 2,
) -> dict[str, np.ndarray]:
    """CenterPoint-style dense targets for one frame.

    Returns ``heatmap`` (n_classes, Hh, Ww) float32 Gaussians (peak 1 at each centre cell),
    ``reg`` (8, Hh, Ww) float32 regression targets at centre cells, ``reg_mask`` (Hh, Ww) float32 1 at
    centre cells. Boxes with class -1 (ignore) or centres off the map are skipped.
    """
    hh, ww = grid.head_shape
    heat = np.zeros((n_classes, hh, ww), np.float32)
    reg_map = np.zeros((8, hh, ww), np.float32)
    mask = np.zeros((hh, ww), np.float32)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 7)
    classes = np.asarray(classes).reshape(-1)
    if len(boxes) == 0:
        return {"heatmap": heat, "reg": reg_map, "reg_mask": mask}
    rows, cols, reg = encode_boxes(boxes, grid)
    for i in range(len(boxes)):  # loop over objects (tens), never over points
        cls = int(classes[i])
        r, c = int(rows[i]), int(cols[i])
        if cls < 0 or cls >= n_classes or not (0 <= r < hh and 0 <= c < ww):
            continue
        length, width = boxes[i, 3] / grid.head_cell, boxes[i, 4] / grid.head_cell
        radius = max(min_radius, int(gaussian_radius_centerpoint(length, width, gaussian_overlap)))
        draw_gaussian(heat[cls], r, c, radius)
        reg_map[:, r, c] = reg[i]
        mask[r, c] = 1.0
    return {"heatmap": heat, "reg": reg_map, "reg_mask": mask}


# ---------------------------------------------------------------------------------------- decoding


def max_pool3x3_peaks(heat: np.ndarray, kernel: int = 3) -> np.ndarray:
    """Keep values equal to their k x k neighbourhood max (CenterNet ``_nms``); (C, H, W) -> same."""
    pad = kernel // 2
    c, h, w = heat.shape
    padded = np.full((c, h + 2 * pad, w + 2 * pad), -np.inf, heat.dtype)
    padded[:, pad: pad + h, pad: pad + w] = heat
    hmax = heat.copy()
    for dr in range(kernel):
        for dc in range(kernel):
            np.maximum(hmax, padded[:, dr: dr + h, dc: dc + w], out=hmax)
    return np.where(hmax == heat, heat, 0).astype(heat.dtype)


def peak_candidates(heat: np.ndarray, score_threshold: float, kernel: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The peaks of (C, H, W) ``heat`` (``max_pool3x3_peaks``) scoring > ``score_threshold``: their scores
    (n,) and flat indices into (C, H, W) (n,) int64, ascending. ``runtime.kernels`` has a compiled twin."""
    flat = max_pool3x3_peaks(heat, kernel).reshape(-1)
    idx = np.flatnonzero(flat > score_threshold)
    return flat[idx], idx


def select_peaks(scores: np.ndarray, idx: np.ndarray, k: int, shape: tuple[int, int, int]) -> tuple[np.ndarray, ...]:
    """The ``k`` best candidates, ordered by score descending, ties by lower flat index (deterministic, unlike a
    partial sort): scores, labels, rows, cols."""
    order = np.lexsort((idx, -scores))[:k]
    idx = idx[order]
    labels, rem = np.divmod(idx, shape[1] * shape[2])
    rows, cols = np.divmod(rem, shape[2])
    return scores[order], labels, rows, cols


def decode_detections(
    heat_prob: np.ndarray, reg: np.ndarray, grid: GridConfig,
    k: int = 100, score_threshold: float = 0.1, kernel: int = 3,
    candidates: Callable[[np.ndarray, float, int], tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, np.ndarray]:
    """Peak decode for one frame: heat_prob (C, Hh, Ww) probabilities, reg (8, Hh, Ww).

    Returns ``boxes`` (n, 7) in metres, ``scores`` (n,), ``labels`` (n,) int64, score-sorted (ties: lower
    flat index first), n <= k, scores > score_threshold, and the head-map ``rows`` / ``cols`` (n,) int64 of
    each peak. ``candidates`` replaces ``peak_candidates`` (the runtime passes its compiled twin).
    """
    heat = np.asarray(heat_prob, np.float32)
    scores, idx = (candidates or peak_candidates)(heat, score_threshold, kernel)
    scores, labels, rows, cols = select_peaks(scores, idx, k, heat.shape)
    boxes = decode_boxes(rows, cols, reg[:, rows, cols].T, grid)
    return {"boxes": boxes, "scores": scores.astype(np.float32), "labels": labels.astype(np.int64),
            "rows": rows.astype(np.int64), "cols": cols.astype(np.int64)}


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.asarray(x, np.float32)))).astype(np.float32)


def box_corners_bev(boxes: np.ndarray) -> np.ndarray:
    """(M, 7) boxes -> (M, 4, 2) BEV corner (x, y) in order front-left, front-right, rear-right, rear-left."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 7)
    hl, hw = boxes[:, 3] / 2, boxes[:, 4] / 2
    local = np.stack([np.stack([hl, hw], 1), np.stack([hl, -hw], 1),
                      np.stack([-hl, -hw], 1), np.stack([-hl, hw], 1)], 1)          # (M, 4, 2)
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    rot = np.stack([np.stack([c, -s], 1), np.stack([s, c], 1)], 1)                  # (M, 2, 2)
    return np.einsum("mij,mkj->mki", rot, local) + boxes[:, None, :2]


def points_in_boxes(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N, >=3) points, (M, 7) boxes -> (M, N) bool: point inside the (yaw-rotated) 3D box."""
    p = np.asarray(points, np.float64)[:, :3]
    b = np.asarray(boxes, np.float64).reshape(-1, 7)
    d = p[None, :, :] - b[:, None, :3]                                               # (M, N, 3)
    c, s = np.cos(b[:, 6])[:, None], np.sin(b[:, 6])[:, None]
    lx = d[..., 0] * c + d[..., 1] * s
    ly = -d[..., 0] * s + d[..., 1] * c
    return ((np.abs(lx) <= b[:, 3:4] / 2) & (np.abs(ly) <= b[:, 4:5] / 2)
            & (np.abs(d[..., 2]) <= b[:, 5:6] / 2))


# ------------------------------------------------------------------------------------------ camera


def cam_matrix(camera: CameraConfig, original: bool = False) -> np.ndarray:
    return np.asarray(camera.cam_matrix_original if original else camera.cam_matrix, np.float64)


def scale_cam_matrix(k: np.ndarray, from_wh: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """Intrinsics of an image resized from (W, H) = from_wh to (H, W) = to_hw (pixel-centre convention)."""
    sx, sy = to_hw[1] / from_wh[0], to_hw[0] / from_wh[1]
    k = np.asarray(k, np.float64).copy()
    k[0, 0] *= sx
    k[0, 2] = (k[0, 2] + 0.5) * sx - 0.5
    k[1, 1] *= sy
    k[1, 2] = (k[1, 2] + 0.5) * sy - 0.5
    return k


def project_points(points: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pinhole projection of camera-view-frame points (N, >=3). Returns u (col), v (row), depth (= x)."""
    p = np.asarray(points, np.float64)
    depth = p[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = k[0, 0] * (-p[:, 1]) / depth + k[0, 2]
        v = k[1, 1] * (-p[:, 2]) / depth + k[1, 2]
    return u, v, depth


def distort_normalised(x: np.ndarray, y: np.ndarray, dist: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV radial-tangential distortion of normalised coords (k1, k2, p1, p2, k3)."""
    k1, k2, p1, p2, k3 = (tuple(dist) + (0.0,) * 5)[:5]
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 * r2 + k3 * r2 * r2 * r2
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return xd, yd


def undistort_normalised(xd: np.ndarray, yd: np.ndarray, dist: tuple[float, ...], iters: int = 20):
    """Inverse of ``distort_normalised`` by fixed-point iteration (OpenCV ``undistortPoints`` style)."""
    x, y = xd.copy(), yd.copy()
    for _ in range(iters):
        dx, dy = distort_normalised(x, y, dist)
        x, y = x - (dx - xd), y - (dy - yd)
    return x, y


def undistort_map(camera: CameraConfig, out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """For each pixel of the undistorted image resized to ``out_hw``, the (col, row) float position in the
    ORIGINAL distorted image. Equivalent of cv2.initUndistortRectifyMap(K_orig, D, newK=K) + resize."""
    k_out = scale_cam_matrix(cam_matrix(camera), camera.resolution_wh, out_hw)
    k_orig = cam_matrix(camera, original=True)
    v, u = np.mgrid[0: out_hw[0], 0: out_hw[1]].astype(np.float64)
    x = (u - k_out[0, 2]) / k_out[0, 0]
    y = (v - k_out[1, 2]) / k_out[1, 1]
    if camera.lens.lower() == "fisheye":
        raise NotImplementedError("fisheye cameras are not supported yet (front_center is Telecam)")
    xd, yd = distort_normalised(x, y, camera.distortion)
    return (xd * k_orig[0, 0] + k_orig[0, 2]).astype(np.float32), (yd * k_orig[1, 1] + k_orig[1, 2]).astype(np.float32)


class RemapTable:
    """The per-pixel work of a bilinear ``remap`` that depends only on the maps and the source size:
    the 4 flat source indices, the weights and the valid mask. Build it once for fixed maps (camera
    undistortion) and reuse it for every frame."""

    def __init__(self, map_x: np.ndarray, map_y: np.ndarray, src_hw: tuple[int, int]):
        h, w = src_hw
        x0 = np.floor(map_x).astype(np.int64)
        y0 = np.floor(map_y).astype(np.int64)
        self.fx = (map_x - x0).astype(np.float32)
        self.fy = (map_y - y0).astype(np.float32)
        self.valid = (map_x >= -0.5) & (map_x <= w - 0.5) & (map_y >= -0.5) & (map_y <= h - 0.5)
        x0c, x1c = np.clip(x0, 0, w - 1), np.clip(x0 + 1, 0, w - 1)
        y0c, y1c = np.clip(y0, 0, h - 1), np.clip(y0 + 1, 0, h - 1)
        self.taps = tuple((yc * w + xc).astype(np.intp) for yc, xc in ((y0c, x0c), (y0c, x1c), (y1c, x0c), (y1c, x1c)))
        self.src_hw = (h, w)
        self._cache: dict[int, tuple[np.ndarray, ...]] = {}

    def _byte_taps(self, channels: int) -> tuple[np.ndarray, ...]:
        """(C, H, W) int32 flat element indices of the 4 taps in a contiguous (H, W, C) image, cached."""
        if channels not in self._cache:
            offs = np.arange(channels, dtype=np.int64)[:, None, None]
            self._cache[channels] = tuple((t[None].astype(np.int64) * channels + offs).astype(np.int32)
                                          for t in self.taps)
        return self._cache[channels]

    def apply(self, image: np.ndarray, fill: int | float = 0) -> np.ndarray:
        h, w = self.src_hw
        if image.shape[:2] != (h, w):
            raise ValueError(f"remap table is for {h}x{w} images, got {image.shape[:2]}")
        channels = 1 if image.ndim == 2 else image.shape[2]
        # gather the 4 neighbours per channel plane in the input dtype and convert only those (converting
        # the whole 1920x1208 image to float32 first was most of the cost); planar (C, H, W) arithmetic
        # broadcasts the (H, W) weights cheaply. Same float32 operations, so the same values as ever.
        flat = np.ascontiguousarray(image).reshape(-1)
        a, b, c, d = (np.take(flat, t).astype(np.float32) for t in self._byte_taps(channels))
        fx, fy = self.fx, self.fy
        top = a * (1 - fx) + b * fx
        bot = c * (1 - fx) + d * fx
        out = np.where(self.valid, top * (1 - fy) + bot * fy, fill)           # (C, H, W)
        if image.dtype == np.uint8:
            out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        else:
            out = out.astype(image.dtype)
        return np.ascontiguousarray(np.moveaxis(out, 0, -1)) if image.ndim == 3 else out[0]


class NearestTable:
    """``RemapTable`` for nearest sampling (label maps): the rounded flat source index and the outside
    mask of every output pixel, computed once for fixed maps."""

    def __init__(self, map_x: np.ndarray, map_y: np.ndarray, src_hw: tuple[int, int]):
        h, w = src_hw
        c = np.rint(map_x).astype(np.int64)
        r = np.rint(map_y).astype(np.int64)
        self.outside = ~((c >= 0) & (c < w) & (r >= 0) & (r < h))
        self.index = (np.clip(r, 0, h - 1) * w + np.clip(c, 0, w - 1)).astype(np.intp)
        self.src_hw = (h, w)

    def apply(self, image: np.ndarray, fill: int | float = 0) -> np.ndarray:
        h, w = self.src_hw
        if image.shape[:2] != (h, w):
            raise ValueError(f"remap table is for {h}x{w} images, got {image.shape[:2]}")
        flat = np.ascontiguousarray(image).reshape(h * w, *image.shape[2:])
        out = np.take(flat, self.index, axis=0)                              # (H', W'[, C])
        out[self.outside] = fill
        return out


def remap(image: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, nearest: bool = False,
          fill: int | float = 0) -> np.ndarray:
    """Sample ``image`` (H, W[, C]) at float positions (like cv2.remap). Bilinear, or nearest for label
    maps; positions outside the image get ``fill``. For fixed maps, build a ``RemapTable`` /
    ``NearestTable`` once."""
    table = NearestTable if nearest else RemapTable
    return table(map_x, map_y, image.shape[:2]).apply(image, fill)


def bev_to_image_grid(grid: GridConfig, k: np.ndarray, image_hw: tuple[int, int],
                      height: float = 0.0) -> np.ndarray:
    """Fixed sampling grid for fusion: for each head-map BEV cell centre at z = ``height``, its position in
    the model image as ``grid_sample`` coords in [-1, 1] (align_corners=False). Cells behind the camera or
    outside the image get 2.0 (sampled as zeros). Returns (Hh, Wh, 2) float32 (x=col, y=row)."""
    hh, wh = grid.head_shape
    r, c = np.mgrid[0:hh, 0:wh].astype(np.float64)
    x = grid.x_min + (r + 0.5) * grid.head_cell
    y = grid.y_min + (c + 0.5) * grid.head_cell
    pts = np.stack([x.ravel(), y.ravel(), np.full(x.size, height)], 1)
    u, v, depth = project_points(pts, k)
    h, w = image_hw
    gx = (u + 0.5) / w * 2 - 1
    gy = (v + 0.5) / h * 2 - 1
    bad = (depth <= 0.1) | (gx < -1) | (gx > 1) | (gy < -1) | (gy > 1) | ~np.isfinite(gx) | ~np.isfinite(gy)
    gx[bad] = 2.0
    gy[bad] = 2.0
    return np.stack([gx, gy], -1).reshape(hh, wh, 2).astype(np.float32)


@functools.lru_cache(maxsize=8)
def normalise_lut(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: ((v / 255) - mean) / std for every uint8 value v, in the float32 arithmetic of a
    direct computation (x * float32(1/255) - mean) / std, so a lookup gives bit-identical values."""
    v = np.arange(256, dtype=np.float32) * np.float32(1.0 / 255.0)
    return ((v[None, :] - np.asarray(mean, np.float32)[:, None]) / np.asarray(std, np.float32)[:, None]).astype(
        np.float32)


def mean_colour_image(camera: CameraConfig) -> np.ndarray:
    """(H, W, 3) uint8 at ``camera.image_hw`` filled with the normalisation mean colour: the stand-in for a
    missing camera image (it normalises to ~0), fed by ``mtl eval`` on partial frames and ``mtl infer`` for
    LiDAR-only frames alike, so both score the same inputs."""
    img = np.empty((*camera.image_hw, 3), np.uint8)
    img[:] = np.round(np.asarray(camera.mean) * 255).astype(np.uint8)
    return img


def normalise_image(image: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32 normalised model input ``(x / 255 - mean) / std``.

    One table lookup per channel (3x faster than the arithmetic on a 320x512 image; same values)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        img = image.astype(np.float32) * np.float32(1.0 / 255.0)
        img = (img - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        return np.ascontiguousarray(img.transpose(2, 0, 1))
    lut = normalise_lut(tuple(float(m) for m in mean), tuple(float(s) for s in std))
    out = np.empty((3, *image.shape[:2]), np.float32)
    for c in range(3):
        np.take(lut[c], image[..., c], out=out[c])
    return out
