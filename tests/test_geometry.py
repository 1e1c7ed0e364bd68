"""mtl.geometry against CenterPoint's gaussian_radius / box codec and hand-worked numbers."""
from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from mtl.config import CameraConfig, GridConfig
from mtl.geometry import (
    bev_raster,
    decode_boxes,
    decode_detections,
    distort_normalised,
    draw_gaussian,
    encode_boxes,
    gaussian_kernel,
    gaussian_radius_centerpoint,
    heatmap_targets,
    limit_period,
    max_pool3x3_peaks,
    point_cells,
    points_in_boxes,
    project_points,
    scale_cam_matrix,
    undistort_normalised,
)

E2, E4 = math.exp(-2), math.exp(-4)            # r = 1 kernel: edge, corner

# ------------------------------------------------------------------------------------- gaussian targets


@pytest.mark.parametrize("h, w, overlap, radius, final", [
    (10, 10, 0.7, 2.73320, 2),
    (20, 40, 0.7, 7.35585, 7),
    (10, 10, 0.1, 4.32456, 4),
    (5.625, 2.375, 0.1, 1.53439, 2),           # nuScenes car on the PointPillars grid: min_radius decides
    (2, 2, 0.1, 0.86491, 2),
])
def test_gaussian_radius_centerpoint_table(h, w, overlap, radius, final):
    r = gaussian_radius_centerpoint(h, w, overlap)
    assert r == pytest.approx(radius, abs=1e-4)
    assert max(2, int(r)) == final


def test_gaussian_kernel_r1_and_r2():
    assert gaussian_kernel(1) == pytest.approx(np.array([[E4, E2, E4], [E2, 1, E2], [E4, E2, E4]]), abs=1e-6)
    k2 = gaussian_kernel(2)
    assert k2.shape == (5, 5)
    assert k2[2] == pytest.approx([0.056135, 0.486752, 1, 0.486752, 0.056135], abs=1e-6)
    assert k2[1] == pytest.approx([0.027324, 0.236928, 0.486752, 0.236928, 0.027324], abs=1e-6)
    assert k2[0, 0] == pytest.approx(0.003151, abs=1e-6)
    assert np.array_equal(k2, k2.T) and k2[2, 2] == 1.0


def test_draw_gaussian_clips_at_the_border():
    hm = np.zeros((4, 5), np.float32)
    draw_gaussian(hm, 0, 0, 1)
    expected = np.zeros((4, 5))
    expected[:2, :2] = [[1, E2], [E2, E4]]
    assert hm == pytest.approx(expected, abs=1e-6)


def test_draw_gaussian_merges_overlaps_by_max():
    hm = np.zeros((5, 5), np.float32)
    draw_gaussian(hm, 1, 1, 1)
    draw_gaussian(hm, 1, 2, 1)
    assert hm[1] == pytest.approx([E2, 1, 1, E2, 0], abs=1e-6)
    assert hm[0] == pytest.approx([E4, E2, E2, E4, 0], abs=1e-6)     # max, not sum (a sum would give E2+E4)


def test_draw_gaussian_off_map_centre_draws_nothing():
    hm = np.zeros((4, 4), np.float32)
    draw_gaussian(hm, 6, 1, 1)
    draw_gaussian(hm, 1, -3, 1)
    assert not hm.any()


@pytest.mark.parametrize("yaw, wrapped", [(4.0, -2.283185), (-3.5, 2.783185), (0.5, 0.5), (math.pi, -math.pi)])
def test_limit_period(yaw, wrapped):
    assert float(limit_period(yaw)) == pytest.approx(wrapped, abs=1e-6)


# -------------------------------------------------------------------------------------------- box codec

# CenterPoint's PointPillars nuScenes grid, cell 0.2 m, stride 4 -> 0.8 m head cells, 128 x 128
NUSC = GridConfig(x_min=-51.2, x_max=51.2, y_min=-51.2, y_max=51.2, cell=0.2, head_stride=4)
CAR = np.array([[10.3, -5.1, -1.0, 4.5, 1.9, 1.6, 0.5]])      # x, y, z, l, w, h, yaw


def test_encode_references_worked_box():
    rows, cols, reg = encode_boxes(CAR, NUSC)
    # mtl: row follows x, col follows y (CenterPoint's (cx, cy) = (76.875, 57.625) are (row, col) here)
    assert (int(rows[0]), int(cols[0])) == (76, 57)
    assert reg[0] == pytest.approx([0.875, 0.625, -1.0, 1.504077, 0.641854, 0.470004, 0.479426, 0.877583], abs=1e-6)
    assert NUSC.head_shape == (128, 128)
    flat = int(rows[0]) * NUSC.head_shape[1] + int(cols[0])
    assert flat == 9785 == np.ravel_multi_index((rows[0], cols[0]), NUSC.head_shape)


def test_decode_inverts_the_worked_box():
    rows, cols, reg = encode_boxes(CAR, NUSC)
    assert decode_boxes(rows, cols, reg, NUSC)[0] == pytest.approx(CAR[0], abs=1e-5)


def test_encode_decode_round_trip_random_boxes():
    rng = np.random.default_rng(0)
    n = 50
    boxes = np.column_stack([
        rng.uniform(-51, 51, n), rng.uniform(-51, 51, n), rng.uniform(-3, 1, n),
        rng.uniform(0.3, 12, n), rng.uniform(0.3, 3, n), rng.uniform(0.5, 4, n), rng.uniform(-np.pi, np.pi, n),
    ])
    rows, cols, reg = encode_boxes(boxes, NUSC)
    assert ((rows >= 0) & (rows < 128) & (cols >= 0) & (cols < 128)).all()
    assert ((reg[:, :2] >= 0) & (reg[:, :2] < 1)).all()
    assert decode_boxes(rows, cols, reg, NUSC) == pytest.approx(boxes, abs=2e-5)


def test_decode_wraps_yaw_modulo_2pi():
    box = CAR.copy()
    box[0, 6] = -3.5
    rows, cols, reg = encode_boxes(box, NUSC)
    assert decode_boxes(rows, cols, reg, NUSC)[0, 6] == pytest.approx(2.783185, abs=1e-5)


def test_heatmap_targets_peak_mask_and_regression():
    boxes = np.array([CAR[0], [-20.0, 30.0, -1.5, 0.8, 0.7, 1.8, 0.0], [5.0, 5.0, 0.0, 4.0, 2.0, 1.5, 0.0],
                      [80.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]])
    t = heatmap_targets(boxes, np.array([0, 1, -1, 0]), NUSC, n_classes=2)      # 3rd ignored, 4th off the map
    heat, reg, mask = t["heatmap"], t["reg"], t["reg_mask"]
    assert heat.shape == (2, 128, 128) and reg.shape == (8, 128, 128) and mask.shape == (128, 128)
    # second box: ((-20 + 51.2) / 0.8, (30 + 51.2) / 0.8) = (39, 101.5)
    assert np.argwhere(heat == 1.0).tolist() == [[0, 76, 57], [1, 39, 101]]
    assert np.argwhere(mask == 1.0).tolist() == [[39, 101], [76, 57]]
    assert reg[:, 76, 57] == pytest.approx(encode_boxes(CAR, NUSC)[2][0], abs=1e-6)     # boxes go via float32
    assert heat.max() == 1.0 and heat.min() == 0.0


def test_heatmap_targets_radius_is_max_of_min_radius_and_int_radius():
    def footprint(box: list[float]) -> int:
        heat = heatmap_targets(np.array([box]), np.array([0]), NUSC, 1, gaussian_overlap=0.1, min_radius=2)["heatmap"]
        return int((heat[0, 64] > 0).sum())                           # width of the Gaussian row through the peak
    # nuScenes car: 5.625 x 2.375 cells -> r 1.53 -> int 1 -> min_radius 2 -> 5 cells wide
    assert footprint([0.4, 0.4, 0, 4.5, 1.9, 1.6, 0]) == 5
    # 10 x 10 cells (8 m) -> r 4.32 -> 4 -> 9 cells wide
    assert footprint([0.4, 0.4, 0, 8.0, 8.0, 1.6, 0]) == 9


def test_max_pool3x3_peaks_by_hand():
    heat = np.array([[[0.9, 0.1, 0.0, 0.0, 0.0],
                      [0.2, 0.3, 0.0, 0.0, 0.1],
                      [0.0, 0.0, 0.0, 0.6, 0.5],
                      [0.0, 0.0, 0.0, 0.4, 0.7]]], np.float32)
    expected = np.zeros_like(heat)
    expected[0, 0, 0], expected[0, 3, 4] = 0.9, 0.7
    assert np.array_equal(max_pool3x3_peaks(heat), expected)
    # equal neighbours are both kept (CenterNet hmax == heat); channels are independent
    plateau = np.array([[[0.5, 0.5, 0.0]], [[0.0, 0.2, 0.3]]], np.float32)
    assert np.array_equal(max_pool3x3_peaks(plateau), np.array([[[0.5, 0.5, 0.0]], [[0.0, 0.0, 0.3]]], np.float32))


def test_decode_detections_recovers_target_boxes():
    boxes = np.array([CAR[0], [-20.0, 30.0, -1.5, 0.8, 0.7, 1.8, -2.0]])
    t = heatmap_targets(boxes, np.array([0, 1]), NUSC, n_classes=2)
    det = decode_detections(t["heatmap"], t["reg"], NUSC, k=10, score_threshold=0.5)
    assert det["scores"].tolist() == [1.0, 1.0]
    order = np.argsort(det["labels"])
    assert det["labels"][order].tolist() == [0, 1]
    assert det["boxes"][order] == pytest.approx(boxes, abs=1e-5)


# ------------------------------------------------------------------------------------------------ raster

TINY = GridConfig(x_min=0.0, x_max=1.0, y_min=0.0, y_max=1.0, z_min=-1.0, z_max=1.0, cell=0.5, head_stride=1,
                  n_height_slices=2)


def test_bev_raster_hand_computed_cells():
    pts = np.array([
        [0.1, 0.1, -0.5, 0.2],     # cell (0,0), zn 0.25, slice 0
        [0.2, 0.3, 0.5, 0.6],      # cell (0,0), zn 0.75, slice 1
        [0.7, 0.2, 0.0, 1.5],      # cell (1,0), zn 0.5, slice 1, reflectance clipped to 1
        [0.3, 0.9, 1.0, 0.4],      # cell (0,1), z == z_max is inside, zn 1 -> last slice
        [1.0, 0.5, 0.0, 0.5],      # x == x_max: outside
        [0.5, 0.5, 1.5, 0.0],      # above z_max: outside
        [np.nan, 0.5, 0.0, 0.5],   # NaN: outside
        [-0.01, 0.5, 0.0, 0.5],    # x < x_min: outside
    ], np.float32)
    bev = bev_raster(pts, TINY)
    assert bev.shape == (7, 2, 2) and bev.dtype == np.float32
    occ, zmax, zmean, refl, dens, s0, s1 = bev
    assert occ.tolist() == [[1, 1], [1, 0]]
    assert zmax == pytest.approx(np.array([[0.75, 1.0], [0.5, 0.0]]))
    assert zmean == pytest.approx(np.array([[0.5, 1.0], [0.5, 0.0]]))
    assert refl == pytest.approx(np.array([[0.4, 0.4], [1.0, 0.0]]))
    l65 = math.log(65)
    assert dens == pytest.approx(np.array([[math.log(3) / l65, math.log(2) / l65], [math.log(2) / l65, 0]]), abs=1e-6)
    assert s0.tolist() == [[1, 0], [0, 0]]
    assert s1.tolist() == [[1, 1], [1, 0]]


def test_bev_raster_log_density_saturates_at_64_points():
    pts = np.tile(np.array([[0.1, 0.1, 0.0, 0.5]], np.float32), (100, 1))
    assert bev_raster(pts, TINY)[4, 0, 0] == 1.0
    assert bev_raster(pts[:63], TINY)[4, 0, 0] == pytest.approx(math.log(64) / math.log(65), abs=1e-6)


def test_bev_raster_empty_and_all_outside_are_zeros():
    grid = GridConfig()
    for pts in (np.zeros((0, 4), np.float32), np.array([[100.0, 0.0, 0.0, 1.0], [np.nan] * 4], np.float32)):
        bev = bev_raster(pts, grid)
        assert bev.shape == (grid.n_channels, 256, 256) and not bev.any()


def _reference_bev_raster(points: np.ndarray, grid: GridConfig) -> np.ndarray:
    """The straightforward implementation bev_raster was optimised from (boolean compaction + bincount)."""
    h, w = grid.shape
    n_cells = h * w
    out = np.zeros((grid.n_channels, n_cells), np.float32)
    if len(points) == 0:
        return out.reshape(grid.n_channels, h, w)
    pts = np.asarray(points, np.float32)
    idx, inside = point_cells(pts, grid)
    if idx.size == 0:
        return out.reshape(grid.n_channels, h, w)
    zn = (pts[inside, 2] - grid.z_min) * (1.0 / (grid.z_max - grid.z_min))
    refl = np.clip(pts[inside, 3], 0.0, 1.0)
    count = np.bincount(idx, minlength=n_cells).astype(np.float32)
    safe = np.maximum(count, 1.0)
    out[0] = count > 0
    zmax = np.zeros(n_cells, np.float32)
    np.maximum.at(zmax, idx, zn.astype(np.float32))
    out[1] = zmax
    out[2] = np.bincount(idx, weights=zn, minlength=n_cells) / safe
    out[3] = np.bincount(idx, weights=refl, minlength=n_cells) / safe
    out[4] = np.minimum(np.log1p(count) / math.log1p(64.0), 1.0)
    s = grid.n_height_slices
    if s:
        sl = np.minimum((zn * s).astype(np.int64), s - 1)
        out[5:] = np.bincount(sl * n_cells + idx, minlength=s * n_cells).reshape(s, n_cells) > 0
    return out.reshape(grid.n_channels, h, w)


def _cloud(rng: np.random.Generator, n: int, grid: GridConfig) -> np.ndarray:
    """Uniform points in a box slightly larger than the grid, plus exact edges, NaN and inf rows."""
    pts = np.column_stack([rng.uniform(grid.x_min - 2, grid.x_max + 2, n),
                           rng.uniform(grid.y_min - 2, grid.y_max + 2, n),
                           rng.uniform(grid.z_min - 0.5, grid.z_max + 0.5, n), rng.uniform(-0.1, 1.1, n)])
    edges = np.array([[grid.x_min, grid.y_min, grid.z_min, 0.5], [grid.x_max, 0.0, 0.0, 0.5],
                      [np.nextafter(np.float32(grid.x_max), np.float32(0)), grid.y_min, grid.z_max, 0.5],
                      [grid.x_min + grid.cell, grid.y_min + 3 * grid.cell, 0.0, 0.5],
                      [np.nan, 0.0, 0.0, 0.5], [0.0, np.inf, 0.0, 0.5], [1.0, 1.0, -np.inf, 0.5]])
    return np.concatenate([pts, edges]).astype(np.float32)


GRIDS = [  # raster test grids (tests/test_kernels.py uses them too)
    pytest.param(GridConfig(), id="default"),
    pytest.param(GridConfig(x_min=-10.0, x_max=20.0, y_min=-9.0, y_max=9.0, z_min=-2.5, z_max=1.0, cell=0.3,
                            n_height_slices=0), id="odd-cell-no-slices"),
    pytest.param(GridConfig(x_min=0.0, x_max=12.8, y_min=-6.4, y_max=6.4, cell=0.1, n_height_slices=5),
                 id="fine-5-slices"),
]


@pytest.mark.parametrize("grid", GRIDS)
def test_bev_raster_identical_to_reference(grid):
    rng = np.random.default_rng(3)
    for n in (1, 5000, 30000):
        pts = _cloud(rng, n, grid)
        assert np.array_equal(bev_raster(pts, grid), _reference_bev_raster(pts, grid))
    # float64 input with extra columns is cast and sliced the same way
    pts64 = np.column_stack([_cloud(rng, 2000, grid).astype(np.float64), np.ones(2007)])
    assert np.array_equal(bev_raster(pts64, grid), _reference_bev_raster(pts64[:, :4], grid))


def test_bev_raster_reused_buffers_are_safe_across_sizes_and_threads():
    grid = GridConfig()
    rng = np.random.default_rng(4)
    big, small = _cloud(rng, 40000, grid), _cloud(rng, 300, grid)
    first = bev_raster(big, grid)
    assert np.array_equal(bev_raster(small, grid), _reference_bev_raster(small, grid))
    assert np.array_equal(first, _reference_bev_raster(big, grid))          # earlier output is not aliased
    results: dict[int, bool] = {}

    def work(i: int) -> None:
        pts = _cloud(np.random.default_rng(10 + i), 8000, grid)
        results[i] = all(np.array_equal(bev_raster(pts, grid), _reference_bev_raster(pts, grid)) for _ in range(3))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {0: True, 1: True, 2: True}


# ------------------------------------------------------------------------------------------ boxes / camera


def test_points_in_rotated_box():
    box = np.array([[0.0, 0.0, 0.0, 4.0, 2.0, 2.0, math.pi / 2]])     # length now along y
    pts = np.array([[0.0, 1.9, 0.0], [1.9, 0.0, 0.0], [0.9, 0.0, 0.0], [0.0, 0.0, 1.1], [0.9, -1.9, 0.9]])
    assert points_in_boxes(pts, box)[0].tolist() == [True, False, True, False, True]
    diag = np.array([[10.0, 0.0, 0.0, 4.0, 2.0, 2.0, math.pi / 4]])
    # (1, 1) from the centre lies on the length axis (1.41 < 2); (1, -1) is 1.41 m sideways (> 1)
    assert points_in_boxes(np.array([[11.0, 1.0, 0.0], [11.0, -1.0, 0.0]]), diag)[0].tolist() == [True, False]


def test_project_points_by_hand():
    k = np.array([[1000.0, 0, 960], [0, 800.0, 604], [0, 0, 1]])
    u, v, depth = project_points(np.array([[10.0, 2.0, -1.0, 0.7]]), k)
    # optical frame: X = -y = -2, Y = -z = 1, Z = x = 10
    assert (u[0], v[0], depth[0]) == pytest.approx((760.0, 684.0, 10.0))


def test_distort_by_hand_and_undistort_inverts_it():
    xd, yd = distort_normalised(np.array([0.5]), np.array([0.0]), (0.1, 0, 0, 0, 0))
    assert (xd[0], yd[0]) == pytest.approx((0.5125, 0.0))
    xd, yd = distort_normalised(np.array([0.5]), np.array([0.5]), (0, 0, 0.01, 0, 0))
    assert (xd[0], yd[0]) == pytest.approx((0.505, 0.51))
    dist = CameraConfig.a2d2_front_center().distortion
    rng = np.random.default_rng(5)
    x, y = rng.uniform(-0.5, 0.5, 200), rng.uniform(-0.3, 0.3, 200)
    xu, yu = undistort_normalised(*distort_normalised(x, y, dist), dist)
    assert np.abs(xu - x).max() < 1e-9 and np.abs(yu - y).max() < 1e-9


def test_scale_cam_matrix_pixel_centre_convention():
    k = np.array([[1000.0, 0, 959.5], [0, 1000.0, 603.5], [0, 0, 1]])
    half = scale_cam_matrix(k, (1920, 1208), (604, 960))
    assert half == pytest.approx(np.array([[500.0, 0, 479.5], [0, 500.0, 301.5], [0, 0, 1]]))
    # the image centre maps to the image centre in any size
    s = scale_cam_matrix(k, (1920, 1208), (320, 512))
    assert (s[0, 2], s[1, 2]) == pytest.approx((255.5, 159.5))
    assert (s[0, 0], s[1, 1]) == pytest.approx((1000 * 512 / 1920, 1000 * 320 / 1208))


def test_normalise_image_table_lookup_equals_the_arithmetic():
    from mtl.geometry import normalise_image

    img = np.zeros((2, 3, 3), np.uint8)
    img[0, 0] = (0, 128, 255)
    img[1, 2] = (255, 0, 51)
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 2.0)
    out = normalise_image(img, mean, std)
    assert out.shape == (3, 2, 3) and out.dtype == np.float32
    # hand-worked: (v/255 - mean) / std
    assert out[:, 0, 0] == pytest.approx([-1.0, (128 / 255 - 0.25) / 0.25, 0.5], abs=1e-6)
    assert out[:, 1, 2] == pytest.approx([1.0, -1.0, 0.1], abs=1e-6)
    direct = ((img.astype(np.float32) * np.float32(1 / 255) - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1)
    np.testing.assert_array_equal(out, direct)
    np.testing.assert_allclose(normalise_image(img.astype(np.float32), mean, std), direct, atol=1e-6)
