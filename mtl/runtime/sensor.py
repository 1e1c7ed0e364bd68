"""Sensor input: the camera driver's distorted full-resolution RGB pixels -> the model's image input in one
remap pass (undistort + resize + normalise fused). Torch-free.

Training prepares an image in two steps: ``mtl.data.a2d2.prepare_image`` (``geometry.RemapTable``: bilinear
undistort + resize, rounded to a uint8 image) and ``geometry.normalise_image`` ((x / 255 - mean) / std, a
table lookup). ``SensorRemap`` runs the same float32 operations in the same order for every output pixel,
so its output is bit-identical to those two steps (tests/test_stream.py: tolerance 0). With numba installed
the pass is ``runtime.kernels.remap_normalise`` (one compiled loop over the output pixels); the numpy path
below, used otherwise,

- reads each output pixel's two source pixel pairs (columns x0, x0 + 1 on rows y0 and y0 + 1) as two
  unaligned 8-byte loads from the interleaved RGB buffer, instead of twelve one-byte gathers;
- does the arithmetic on contiguous (channel, pixel) planes in reused per-thread buffers;
- never builds the intermediate uint8 image: the rounding is a float ``rint`` and the normalisation is
  computed directly (the same float32 values the lookup table holds);
- writes the (1, 3, H, W) float32 model input directly, and can do it in row blocks (``apply(rows=...)``)
  so a pipeline may split one frame over two threads.

In the numpy path, output pixels whose taps were clipped at the image border (there the pair layout does not
hold) are computed with ``RemapTable``'s per-channel formula. Pixels that fall outside the original image are
black (0 before normalisation) in both, as in training.
"""
from __future__ import annotations

import functools
import threading

import numpy as np

from ..config import CameraConfig
from ..geometry import normalise_lut, undistort_map
from . import kernels


class _Buffers(threading.local):
    """Per-thread scratch planes, grown on demand (fresh multi-MB temporaries page-fault on every frame)."""

    def __init__(self) -> None:
        self.bufs: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        size = int(np.prod(shape))
        buf = self.bufs.get(name)
        if buf is None or buf.size < size:
            buf = self.bufs[name] = np.empty(size, dtype)
        return buf[:size].reshape(shape)


class SensorRemap:
    """Fixed maps (output pixel -> source position) of one camera at one model size, with the normalisation.

    ``apply(image)``: (H0, W0, 3) uint8 RGB at the camera resolution -> (1, 3, H, W) float32 model input,
    equal to ``normalise_image(prepare_image(image, camera, (H, W)), mean, std)[None]``."""

    def __init__(self, map_x: np.ndarray, map_y: np.ndarray, src_hw: tuple[int, int], mean: tuple[float, ...],
                 std: tuple[float, ...]):
        h, w = src_hw
        n = h * w
        self.src_hw, self.out_hw = (h, w), tuple(map_x.shape)
        # exactly RemapTable's taps, weights and valid mask
        x0 = np.floor(map_x).astype(np.int64)
        y0 = np.floor(map_y).astype(np.int64)
        fx = (map_x - x0).astype(np.float32)
        fy = (map_y - y0).astype(np.float32)
        valid = (map_x >= -0.5) & (map_x <= w - 0.5) & (map_y >= -0.5) & (map_y <= h - 0.5)
        x0c, x1c = np.clip(x0, 0, w - 1), np.clip(x0 + 1, 0, w - 1)
        y0c, y1c = np.clip(y0, 0, h - 1), np.clip(y0 + 1, 0, h - 1)
        top, bot = (y0c * w + x0c).ravel(), (y1c * w + x0c).ravel()
        # an 8-byte load at pixel p reads pixels p and p + 1 (+ 2 bytes): valid for p <= n - 3
        pair = (x1c == x0c + 1).ravel() & (np.maximum(top, bot) <= n - 3)
        self.top = np.minimum(top, n - 3).astype(np.intp)
        self.bot = np.minimum(bot, n - 3).astype(np.intp)
        self.w = {"omfx": (1 - fx).ravel(), "fx": fx.ravel(), "omfy": (1 - fy).ravel(), "fy": fy.ravel()}
        self.outside = np.flatnonzero(~valid.ravel())
        self.patch = np.flatnonzero(~pair & valid.ravel())            # sorted flat output indices
        taps = ((y0c, x0c), (y0c, x1c), (y1c, x0c), (y1c, x1c))
        self.patch_taps = tuple((yc * w + xc).ravel()[self.patch].astype(np.intp) for yc, xc in taps)
        self.mean = np.asarray(mean, np.float32)[:, None]
        self.std = np.asarray(std, np.float32)[:, None]
        self._bufs = _Buffers()
        # the compiled kernel's tables (runtime.kernels.remap_normalise)
        self.t00 = (y0c * w + x0c).ravel().astype(np.uint32)
        self.flags = ((x1c - x0c) | (y1c - y0c) << 1 | valid.astype(np.int64) << 2).ravel().astype(np.uint8)
        self.lut = normalise_lut(tuple(float(m) for m in mean), tuple(float(s) for s in std))

    def apply(self, image: np.ndarray, out: np.ndarray | None = None, rows: tuple[int, int] | None = None
              ) -> np.ndarray:
        """Fill ``out`` ((1, 3, H, W) float32, allocated when None) for output rows ``rows`` = (r0, r1)
        (default: all); returns ``out``. ``image`` must be C-contiguous uint8 (H0, W0, 3)."""
        oh, ow = self.out_hw
        if out is None:
            out = np.empty((1, 3, oh, ow), np.float32)
        r0, r1 = rows or (0, oh)
        p0, p1 = r0 * ow, r1 * ow
        if p1 <= p0:
            return out
        if kernels.available():
            kernels.kernel("remap_normalise")(np.ascontiguousarray(image).reshape(-1), self.t00, self.w["fx"],
                                              self.w["fy"], self.flags, self.lut, out[0].reshape(3, -1), r0, r1,
                                              ow, self.src_hw[1])
            return out
        n = self.src_hw[0] * self.src_hw[1]
        # 8 bytes from every pixel start (3-byte stride): pixel p's RGB and pixel p + 1's RGB
        pairs = np.ndarray((n - 2,), dtype="<u8", buffer=image, offset=0, strides=(3,))
        value = self._bilinear(pairs, p0, p1)                             # (3, m) float32, rint'ed
        value[:, self.outside[np.searchsorted(self.outside, p0): np.searchsorted(self.outside, p1)] - p0] = 0
        self._patch(image, value, p0, p1)
        np.multiply(value, np.float32(1.0 / 255.0), out=value)            # normalise_image's table, computed
        np.subtract(value, self.mean, out=value)
        np.divide(value, self.std, out=out[0].reshape(3, -1)[:, p0:p1])
        return out

    def _bilinear(self, pairs: np.ndarray, p0: int, p1: int) -> np.ndarray:
        """Rows y0 / y0 + 1 interpolated along x, then along y, rounded: (3, p1 - p0) float32."""
        m = p1 - p0
        rows = []
        for name, starts in (("top", self.top), ("bot", self.bot)):
            gathered = pairs[starts[p0:p1]]                               # (m,) uint64 (faster than np.take)
            planes = self._bufs.get(name, (6, m), np.float32)             # R0 G0 B0 R1 G1 B1 planes
            np.copyto(planes, gathered.view(np.uint8).reshape(m, 8)[:, :6].T)
            np.multiply(planes[:3], self.w["omfx"][p0:p1], out=planes[:3])    # a * (1 - fx)
            np.multiply(planes[3:], self.w["fx"][p0:p1], out=planes[3:])      # b * fx
            np.add(planes[:3], planes[3:], out=planes[:3])
            rows.append(planes[:3])
        top, bot = rows
        np.multiply(top, self.w["omfy"][p0:p1], out=top)
        np.multiply(bot, self.w["fy"][p0:p1], out=bot)
        np.add(top, bot, out=top)
        return np.rint(top, out=top)

    def _patch(self, image: np.ndarray, value: np.ndarray, p0: int, p1: int) -> None:
        """Border pixels (clipped taps) with RemapTable's per-channel formula."""
        i0, i1 = np.searchsorted(self.patch, p0), np.searchsorted(self.patch, p1)
        if i1 == i0:
            return
        flat = image.reshape(-1, 3)
        a, b, c, d = (flat[t[i0:i1]].T.astype(np.float32) for t in self.patch_taps)     # (3, k) each
        idx = self.patch[i0:i1]
        fx, fy = self.w["fx"][idx], self.w["fy"][idx]
        top = a * (1 - fx) + b * fx
        bot = c * (1 - fx) + d * fx
        value[:, idx - p0] = np.rint(top * (1 - fy) + bot * fy)


@functools.lru_cache(maxsize=4)
def sensor_remap(camera: CameraConfig, out_hw: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...]
                 ) -> SensorRemap:
    """The ``SensorRemap`` of ``camera`` at the model size ``out_hw`` (built once: ~0.2 s at 1920x1208)."""
    map_x, map_y = undistort_map(camera, out_hw)
    w, h = camera.resolution_wh
    return SensorRemap(map_x, map_y, (h, w), mean, std)


__all__ = ["SensorRemap", "sensor_remap"]
