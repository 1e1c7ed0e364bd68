"""The runtime's compiled kernels (mtl/runtime/kernels.py) against their numpy references, tolerance 0, on
random inputs with the awkward cases forced in (grid edges, NaN / inf, ties, plateaus, borders), plus the
deterministic peak selection, the numpy fallback and the light import."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from test_geometry import GRIDS
from test_geometry import _cloud as geometry_cloud

from mtl.config import GridConfig
from mtl.geometry import bev_raster, peak_candidates, select_peaks
from mtl.runtime import kernels
from mtl.runtime.postprocess import argmax_channels, argmax_rows

needs_numba = pytest.mark.skipif(not kernels.available(),
                                 reason=f"numba kernels not usable here ({kernels.failure() or 'numba not installed'})")


def _cloud(rng: np.random.Generator, n: int, grid: GridConfig) -> np.ndarray:
    """test_geometry's cloud (points beyond the grid, exact edges, NaN / inf coordinates) plus 70 points in one
    cell (the log-density saturates at 64) and a row whose only non-finite value is its reflectance."""
    crowd = np.tile([[grid.x_min + 0.5 * grid.cell, grid.y_min + 0.5 * grid.cell, grid.z_min + 0.1, 0.3]], (70, 1))
    crowd[:, 2] += rng.uniform(0, grid.z_max - grid.z_min - 0.2, 70)
    return np.concatenate([geometry_cloud(rng, n, grid), crowd, [[1.0, 1.0, 0.0, np.nan]]]).astype(np.float32)


@needs_numba
@pytest.mark.parametrize("grid", GRIDS)
def test_raster_kernel_equals_bev_raster_of_the_finite_rows(grid):
    rng = np.random.default_rng(5)
    for n in (0, 1, 3000, 40000):
        pts = _cloud(rng, n, grid) if n else np.zeros((0, 4), np.float32)
        finite = np.isfinite(pts).all(axis=1)
        got, dropped = kernels.bev_raster(pts, grid)
        assert dropped == int((~finite).sum())
        assert got.dtype == np.float32 and got.shape == (grid.n_channels, *grid.shape)
        np.testing.assert_array_equal(got, bev_raster(pts[finite], grid))
    assert got[4].max() == 1.0                                   # the crowded cell saturated


@needs_numba
def test_argmax_kernel_follows_np_argmax_rules_for_ties_infinities_and_nan():
    rng = np.random.default_rng(6)
    logits = rng.integers(-3, 3, (7, 9, 11)).astype(np.float32)      # many ties: the first maximum wins
    logits[2, 0, 0], logits[4, 0, 1], logits[:, 0, 2] = np.inf, -np.inf, -np.inf
    logits[3, 1, 1], logits[5, 1, 1] = np.nan, np.nan                 # the first NaN wins
    logits[0, 2, 2] = np.nan                                          # a NaN in channel 0
    logits[6, 3, 3], logits[1, 3, 3] = np.nan, 99.0                   # a NaN after a larger value still wins
    out = np.full((9, 11), 255, np.uint8)
    kernels.kernel("argmax_channels")(logits, out, 0, 9)
    np.testing.assert_array_equal(out, np.argmax(logits, axis=0))
    assert (out[1, 1], out[2, 2], out[3, 3]) == (3, 0, 6)
    np.testing.assert_array_equal(out, argmax_channels(logits))       # the numpy reference agrees


@needs_numba
def test_argmax_rows_fills_only_its_rows_with_either_implementation(monkeypatch):
    logits = np.random.default_rng(7).standard_normal((18, 40, 64)).astype(np.float32)
    want = np.argmax(logits, axis=0)
    for impl in ("numba", "numpy"):
        monkeypatch.setenv(kernels.ENV, impl)
        out = np.full((40, 64), 255, np.uint8)
        argmax_rows(logits, out, 5, 23)
        np.testing.assert_array_equal(out[5:23], want[5:23])
        assert (out[:5] == 255).all() and (out[23:] == 255).all()
        argmax_rows(logits, out, 30, 30)                              # empty range: nothing written
        assert (out[30:] == 255).all()


@needs_numba
@pytest.mark.parametrize("nms_kernel", [1, 3, 5])
def test_peak_kernel_equals_the_numpy_candidates(nms_kernel):
    rng = np.random.default_rng(8)
    heat = rng.uniform(0, 1, (4, 33, 47)).astype(np.float32)
    heat[1, 8:15, 8:15] = 0.2
    heat[1, 10:13, 10:13] = 0.9                                      # a plateau: every cell equals its max
    heat[2, 0, 0], heat[2, 32, 46], heat[3, 0, 46] = 0.99, 0.98, 0.97  # corners
    heat[0, 20, 20] = np.nan                                         # no peak next to a NaN
    heat[0, 5, 5] = 0.1                                              # == threshold: cut
    for thr in (0.1, 0.5, 0.95):
        s_k, i_k = kernels.peak_candidates(heat, thr, nms_kernel)
        s_n, i_n = peak_candidates(heat, thr, nms_kernel)
        assert s_k.dtype == np.float32 and i_k.dtype == np.int64
        np.testing.assert_array_equal(i_k, i_n)
        np.testing.assert_array_equal(s_k, s_n)
    _, i = kernels.peak_candidates(heat, 0.1, 3)
    near_nan = [r * 47 + c for r in (19, 20, 21) for c in (19, 20, 21)]        # class 0, the NaN's window
    assert not np.isin(near_nan, i).any()
    plateau = [(1 * 33 + r) * 47 + c for r in (10, 11, 12) for c in (10, 11, 12)]
    assert np.isin(plateau, i).all()


def test_select_peaks_orders_by_score_then_lower_index_and_keeps_k():
    """Hand-worked: three candidates tie at 0.8; the lower flat indices win the last places."""
    shape = (2, 3, 4)                                                 # 12 cells per class
    scores = np.array([0.5, 0.8, 0.9, 0.8, 0.8], np.float32)
    idx = np.array([1, 4, 7, 13, 23])
    s, labels, rows, cols = select_peaks(scores, idx, 3, shape)
    np.testing.assert_array_equal(s, np.float32([0.9, 0.8, 0.8]))
    np.testing.assert_array_equal(labels, [0, 0, 1])                  # 7 -> class 0; 4 -> 0; 13 -> 1
    np.testing.assert_array_equal(rows, [1, 1, 0])                    # 7 = 1 * 4 + 3; 4 = 1 * 4 + 0; 13 - 12 = 1
    np.testing.assert_array_equal(cols, [3, 0, 1])


def test_numpy_fallback_is_chosen_by_the_environment(monkeypatch):
    monkeypatch.setenv(kernels.ENV, "numpy")
    assert not kernels.available() and kernels.name() == "numpy"


def test_import_runtime_does_not_import_numba():
    """numba costs ~0.5 s to import: only opening a Pipeline (or calling a kernel) loads it."""
    code = "import sys, mtl.runtime, mtl.runtime.kernels; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.stdout.strip() == "False"
