"""Compiled twins of the runtime's per-frame numpy stages (optional: ``pip install "mtl[fast]"``, numba).

Each kernel repeats, for every element, the float32 / float64 operations of its numpy reference in the same
order, so its output is bit-identical (tests/test_kernels.py and tests/test_stream.py compare them with
tolerance 0, kernel by kernel and whole frames):

    remap_normalise   runtime.sensor.SensorRemap's numpy path (= prepare_image + normalise_image)
    bev_raster        geometry.bev_raster, after dropping the rows with a non-finite value
    argmax_channels   runtime.postprocess.argmax_channels (= np.argmax over channels, NaN rule included)
    peak_candidates   geometry.peak_candidates (the heatmap peaks above the score cut)

Why: on the 2-core dev VM a sensor frame spent 9.8 ms outside the network (19.3 ms) with the numpy stages and
3.3 ms with these loops, which read each input once, keep their temporaries in registers and prefetch what they
gather (``benchmarks/bench_kernels.py``, docs/BENCH.md). The kernels release the GIL, so ``Pipeline``'s helper thread
runs one (a row block of the remap after the raster, a row block of the argmax) while the calling thread runs
another.

``available()`` says whether they are used: numba importable, the kernels compiled here, and ``MTL_KERNELS``
not ``numpy``. Without numba the runtime uses the numpy stages, same results. The first ``Pipeline`` in a process
compiles them (about 2 s; numba caches them on disk, so later processes load them in under a second).
"""
from __future__ import annotations

import functools
import math
import os
import threading

import numpy as np

from ..config import GridConfig

ENV = "MTL_KERNELS"           # "numpy": never use the compiled kernels (A/B comparisons, debugging)


PREFETCH_AHEAD = 32           # pixels: ~0.5 us of work ahead, about one memory latency on the dev VM
_FAILED: list[str] = []       # why the kernels could not be compiled here (``mtl doctor``), when they could not


@functools.lru_cache(maxsize=1)
def _compiled() -> dict | None:
    """The jitted functions, compiled (or loaded from numba's on-disk cache) and run once on tiny inputs; None
    without numba, or when compiling fails here (the reason goes to ``failure()``; the numpy stages are used).
    numba is imported here only, so ``import mtl.runtime`` stays light."""
    try:
        import numba
    except ImportError:
        return None
    try:
        kernels = _define(numba)
        _exercise(kernels)
    except Exception as e:  # noqa: BLE001  any compiler failure: fall back to numpy, say why in `mtl doctor`
        _FAILED.append(f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}")
        return None
    return kernels


def failure() -> str | None:
    """Why numba is installed but its kernels are not used (a compile failure), else None."""
    _compiled()
    return _FAILED[-1] if _FAILED else None


def _prefetch_intrinsic(numba):
    """``prefetch(array, index)``: LLVM's prefetch-for-read of ``array[index]`` (a hint, never a fault)."""
    from llvmlite import ir
    from numba.extending import intrinsic

    @intrinsic
    def prefetch(typingctx, arr, idx):
        def codegen(context, builder, signature, args):
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            i8p = ir.IntType(8).as_pointer()
            ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), i8p)
            name = "llvm.prefetch.p0"        # LLVM's opaque-pointer name (numba >= 0.68); else compiling fails
            fn = builder.module.globals.get(name) or ir.Function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p] + [ir.IntType(32)] * 3), name=name)
            i32 = ir.IntType(32)
            builder.call(fn, [ptr, i32(0), i32(3), i32(1)])          # read, keep in all cache levels, data
            return context.get_dummy_value()

        return numba.types.void(arr, idx), codegen

    return prefetch


def _define(numba) -> dict:
    jit = functools.partial(numba.njit, cache=True, nogil=True, fastmath=False, error_model="numpy")
    return {"remap_normalise": _remap_kernel(jit, _prefetch_intrinsic(numba)), "bev_raster": _raster_kernel(jit),
            "argmax_channels": _argmax_kernel(jit), "peak_candidates": _peak_kernel(jit)}


def _remap_kernel(jit, prefetch):
    @jit
    def remap_normalise(image, t00, fx, fy, flags, lut, out, r0, r1, ow, w):
        # image (H0 * W0 * 3,) uint8; t00 (P,) uint32 pixel index of the top-left tap; fx / fy (P,) float32
        # weights; flags (P,) uint8: bit 0 the right taps are one pixel on (0 where clipped at the border),
        # bit 1 the lower taps one row down, bit 2 the pixel is inside the image; lut (3, 256) float32
        # normalise_image's table; out (3, P) float32, output rows r0..r1 of width ow.
        # RemapTable's bilinear formula (1 - f in float32, as its weights), rounded like its np.rint (the
        # uint8 value it would store), then normalise_image's lookup.
        # Why it is shaped so: the image and the tables arrive cold on every frame, so memory decides the
        # time. The taps of the pixel PREFETCH_AHEAD on are prefetched (both source rows), 13 table bytes are
        # read per pixel instead of RemapTable's 33, and indices are unsigned (numba then skips the
        # negative-index test on every load).
        u3, one = np.uint64(3), np.float32(1.0)
        row_bytes = np.uint64(w * 3)
        end = r1 * ow
        for pi in range(r0 * ow, end):
            p = np.uint64(pi)
            if pi + PREFETCH_AHEAD < end:
                q = np.uint64(t00[p + np.uint64(PREFETCH_AHEAD)]) * u3
                prefetch(image, q)
                prefetch(image, q + row_bytes)
            f = flags[p]
            if not f & 4:
                for ch in range(3):
                    out[np.uint64(ch), p] = lut[np.uint64(ch), np.uint64(0)]
                continue
            a3 = np.uint64(t00[p]) * u3
            b3 = a3 + np.uint64(f & 1) * u3
            c3 = a3 + np.uint64((f >> 1) & 1) * row_bytes
            d3 = c3 + (b3 - a3)
            wx1, wy1 = fx[p], fy[p]
            wx0, wy0 = one - wx1, one - wy1
            for c in range(3):
                ch = np.uint64(c)
                top = np.float32(image[a3 + ch]) * wx0 + np.float32(image[b3 + ch]) * wx1
                bot = np.float32(image[c3 + ch]) * wx0 + np.float32(image[d3 + ch]) * wx1
                v = np.int32(np.rint(top * wy0 + bot * wy1))
                out[ch, p] = lut[ch, np.uint64(min(max(v, 0), 255))]

    return remap_normalise


def _raster_kernel(jit):
    @jit
    def bev_raster(points, lo, hi, inv_cell, inv_z, h, w, n_slices, density_lut, out, count, zsum, rsum):
        # points (N, 4) float32; lo / hi (3,) float32 grid bounds (x, y, z); out (C, H * W) float32 zeros;
        # count (H * W,) int64, zsum / rsum (H * W,) float64 scratch (reused: zeroed here, no page faults).
        # Returns the number of rows with a non-finite value (skipped, as if dropped before the raster).
        n_cells = h * w
        count[:] = 0
        zsum[:] = 0.0
        rsum[:] = 0.0
        dropped = 0
        for i in range(points.shape[0]):
            x, y, z, r = points[i, 0], points[i, 1], points[i, 2], points[i, 3]
            if not (np.isfinite(x) and np.isfinite(y) and np.isfinite(z) and np.isfinite(r)):
                dropped += 1
                continue
            if not (x >= lo[0] and x < hi[0] and y >= lo[1] and y < hi[1] and z >= lo[2] and z <= hi[2]):
                continue
            row = min(np.int32((x - lo[0]) * inv_cell), h - 1)
            col = min(np.int32((y - lo[1]) * inv_cell), w - 1)
            cell = row * w + col
            zn = (z - lo[2]) * inv_z
            if r < 0:
                r = np.float32(0.0)
            elif r > 1:
                r = np.float32(1.0)
            count[cell] += 1
            out[1, cell] = max(out[1, cell], zn)
            zsum[cell] += np.float64(zn)
            rsum[cell] += np.float64(r)
            if n_slices:
                s = min(max(np.int32(zn * np.float32(n_slices)), 0), n_slices - 1)
                out[5 + s, cell] = 1.0
        top = density_lut.shape[0] - 1
        for cell in range(n_cells):
            c = count[cell]
            if c:
                out[0, cell] = 1.0
                safe = np.float64(np.float32(c))
                out[2, cell] = np.float32(zsum[cell] / safe)
                out[3, cell] = np.float32(rsum[cell] / safe)
                out[4, cell] = density_lut[min(c, top)]
        return dropped

    return bev_raster


def _argmax_kernel(jit):
    @jit
    def argmax_channels(logits, out, r0, r1):
        # logits (C, H, W) float32 -> out (H, W) uint8 for rows r0..r1, over contiguous channel rows.
        # np.argmax's rules: the first maximum wins, and the first NaN wins over everything (a NaN is taken
        # when the best so far is not NaN; nothing compares greater than a NaN best afterwards).
        n_ch, h, w = logits.shape
        best = np.empty(w, logits.dtype)
        for i in range(r0, r1):
            for j in range(w):
                best[j] = logits[0, i, j]
                out[i, j] = 0
            for c in range(1, n_ch):
                for j in range(w):
                    v, b = logits[c, i, j], best[j]
                    if v > b or (v != v and b == b):
                        best[j] = v
                        out[i, j] = c

    return argmax_channels


def _peak_kernel(jit):
    @jit
    def peak_candidates(heat, score_threshold, kernel):
        # heat (C, H, W) float32 -> scores (n,) float32, flat indices (n,) int64 of the cells equal to the
        # max of their kernel x kernel window (a NaN in the window: no peak, as np.maximum's NaN spreads) and
        # scoring > score_threshold; max_pool3x3_peaks' window offsets (-pad .. kernel - 1 - pad).
        n_ch, h, w = heat.shape
        pad = kernel // 2
        scores = np.empty(n_ch * h * w, np.float32)
        idx = np.empty(n_ch * h * w, np.int64)
        n = 0
        for c in range(n_ch):
            for i in range(h):
                for j in range(w):
                    v = heat[c, i, j]
                    if not v > score_threshold:
                        continue
                    peak = True
                    for di in range(max(i - pad, 0), min(i - pad + kernel, h)):
                        for dj in range(max(j - pad, 0), min(j - pad + kernel, w)):
                            u = heat[c, di, dj]
                            if u != u or u > v:
                                peak = False
                    if peak:
                        scores[n] = v
                        idx[n] = (c * h + i) * w + j
                        n += 1
        return scores[:n].copy(), idx[:n].copy()

    return peak_candidates


def available() -> bool:
    """True when the compiled kernels are used (numba importable, ``MTL_KERNELS`` is not ``numpy``)."""
    return os.environ.get(ENV, "").strip().lower() != "numpy" and _compiled() is not None


def name() -> str:
    """``numba`` or ``numpy``: which implementation the runtime's per-frame stages use (bench / describe)."""
    return "numba" if available() else "numpy"


def kernel(fn: str):
    """The compiled function ``fn`` (call only when ``available()``)."""
    return _compiled()[fn]


def peak_candidates(heat: np.ndarray, score_threshold: float, kernel: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``geometry.peak_candidates``, compiled (for ``geometry.decode_detections(candidates=...)``). The threshold
    is compared in float32, as numpy compares a float32 array with a Python float."""
    return _compiled()["peak_candidates"](np.ascontiguousarray(heat, np.float32), np.float32(score_threshold),
                                          int(kernel))


def bev_raster(points: np.ndarray, grid: GridConfig) -> tuple[np.ndarray, int]:
    """``geometry.bev_raster`` of the rows of ``points`` (N, 4) whose values are all finite -> ((C, H, W)
    float32, number of rows left out), in one pass over the points (no finiteness mask, no compaction)."""
    h, w = grid.shape
    out = np.zeros((grid.n_channels, h * w), np.float32)
    lo = np.array([grid.x_min, grid.y_min, grid.z_min], np.float32)
    hi = np.array([grid.x_max, grid.y_max, grid.z_max], np.float32)
    # the numpy version multiplies float32 arrays by these Python floats, i.e. by their float32 roundings
    inv_cell, inv_z = np.float32(1.0 / grid.cell), np.float32(1.0 / (grid.z_max - grid.z_min))
    scratch = _SCRATCH.get(h * w)
    dropped = kernel("bev_raster")(np.ascontiguousarray(points, np.float32), lo, hi, inv_cell, inv_z, h, w,
                                   grid.n_height_slices, density_lut(), out, *scratch)
    return out.reshape(grid.n_channels, h, w), int(dropped)


class _Scratch(threading.local):
    """Per-thread count / height-sum / reflectance-sum cells for ``bev_raster`` (fresh multi-100-kB arrays
    page-fault on every frame; see ``geometry._Scratch``)."""

    def __init__(self) -> None:
        self.cells: tuple[np.ndarray, ...] = ()

    def get(self, n_cells: int) -> tuple[np.ndarray, ...]:
        if not self.cells or len(self.cells[0]) != n_cells:
            self.cells = (np.empty(n_cells, np.int64), np.empty(n_cells, np.float64), np.empty(n_cells, np.float64))
        return self.cells


_SCRATCH = _Scratch()


@functools.lru_cache(maxsize=8)
def density_lut(top: int = 65) -> np.ndarray:
    """(top + 1,) float32: ``bev_raster``'s log-density channel for point counts 0..top, computed with its
    numpy operations (numpy's float32 log1p decides every value); counts above 64 all clip to 1.0."""
    v = np.log1p(np.arange(top + 1, dtype=np.float32))
    np.divide(v, math.log1p(64.0), out=v)
    return np.minimum(v, 1.0, out=v)


def _exercise(k: dict) -> None:
    """Run every kernel once on tiny inputs: compiles them (or loads numba's cache) now, not on a frame."""
    k["remap_normalise"](np.zeros(12, np.uint8), np.zeros(1, np.uint32), np.zeros(1, np.float32),
                         np.zeros(1, np.float32), np.full(1, 4, np.uint8), np.zeros((3, 256), np.float32),
                         np.empty((3, 1), np.float32), 0, 1, 1, 4)
    lo = np.zeros(3, np.float32)
    k["bev_raster"](np.zeros((1, 4), np.float32), lo, lo + 1, np.float32(1.0), np.float32(1.0), 1, 1, 1,
                    np.zeros(66, np.float32), np.zeros((6, 1), np.float32), *_SCRATCH.get(1))
    k["argmax_channels"](np.zeros((2, 1, 1), np.float32), np.empty((1, 1), np.uint8), 0, 1)
    k["peak_candidates"](np.zeros((1, 1, 1), np.float32), np.float32(0.1), 3)
