"""``Pipeline``: frame -> preprocess -> backend -> postprocess, with per-stage timings. Torch-free.

    pipe = Pipeline.open("export/model.onnx", backend="onnxruntime", threads=2)
    for frame in iter_frames("data/chunks", pipe.cfg):
        res = pipe.run_frame(frame)          # Result: boxes (m), scores, labels, names, semantic ids, timings

    res = pipe.run_sensor(camera_pixels, lidar_points)   # a vehicle: distorted camera pixels + points
    for res in pipe.run_stream(frames):       # stages of consecutive frames overlapped (results identical)

Stages recorded in ``Result.timings_ms`` (absent when not run): decode_png, remap_normalise (raw frames and
sensor pixels: undistort + resize + normalise in one pass), undistort_resize (raw frames with ``keep_image``),
normalise (chunk frames, ``keep_image``), bev_raster, h2d / d2h (device backends), inference, postprocess,
total. With a second core the BEV raster runs on a helper thread while the image is prepared (and half of the
semantic argmax while the boxes decode), so ``total`` is less than the sum of the stages; ``overlap=False``
runs everything on the calling thread.

Before a frame is used it is checked against the model (``ModelMismatchError``, one line): camera
calibration (raw: cams_lidars.json vs the model's; chunk: stored cam_matrix vs the model's scaled
intrinsics), image size, class names recorded in the chunk meta. The model itself is checked at open:
metadata contract, declared input shapes vs the config's image size / grid / BEV channels, output channel
counts vs the classes, and (engines) the sidecar against its ONNX, the TensorRT version and the GPU.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config
from ..errors import DataError, ModelMismatchError
from . import kernels
from .backends import Backend, open_backend
from .frames import KIND_CHUNK, KIND_RAW, RuntimeFrame, clip
from .postprocess import Result, decode_outputs
from .preprocess import (
    ModelSpec,
    StageTimer,
    bev_input,
    check_api_image,
    check_cam_matrix,
    check_camera,
    check_classes,
    check_image,
    check_points,
    decode_image,
    image_input,
)
from .sensor import sensor_remap
from .split import RowSplit, finished_at


def _use_worker(threads: int | None) -> bool:
    """One helper thread overlaps independent numpy stages (PNG decode || BEV raster, semantic argmax ||
    box decode) when there is a second core for it; both stages release the GIL in their C loops."""
    return (os.cpu_count() or 1) >= 2 and (threads is None or threads >= 2)


class Pipeline:
    """One exported model ready to run frames; ``Pipeline.open(path)`` builds it, ``close()`` (or ``with``)
    releases the backend and the helper thread."""

    def __init__(self, spec: ModelSpec, backend: Backend, overlap: bool | None = None):
        self.spec, self.backend = spec, backend
        self.model_decode = spec.cfg.decode      # the exported model's own decode settings (set_decode changes cfg)
        # the worker only runs between inferences, so it never competes with the backend's threads
        use = _use_worker(None) if overlap is None else overlap
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mtl-runtime") if use else None
        self._extra: list[Backend] = []          # run_stream's additional inference sessions
        kernels.available()                       # compile / load the numba kernels now, not on the first frame
        self._split = RowSplit(0.25)          # remap rows of the helper (it rasterises first)
        self._post_split = RowSplit(0.5)      # semantic argmax rows of the helper

    @classmethod
    def open(cls, path: str | Path, backend: str = "auto", threads: int | None = None,
             overlap: bool | None = None) -> Pipeline:
        """Open an exported model; everything else (config, classes, calibration) comes from its metadata.

        Args:
            path: ``model*.onnx`` written by ``mtl export`` (metadata key ``mtl``), or a TensorRT ``.engine``
                with its ``.engine.json`` sidecar.
            backend: one of ``BACKENDS``: ``auto`` (engine -> tensorrt; ONNX -> TensorRT EP, CUDA EP, CPU, the
                first that initialises; ``pipe.fallback`` says why a step down happened), ``onnxruntime``
                (CPU), ``onnxruntime-cuda``, ``onnxruntime-trt``, ``tensorrt``.
            threads: onnxruntime intra-op threads (None: onnxruntime's default).
            overlap: run independent pre/post stages on a helper thread (default: when >= 2 cores and
                ``threads`` is None or >= 2). Results are identical either way.

        Raises:
            ModelMismatchError: no/invalid ``mtl`` metadata, declared inputs/outputs that disagree with the
                config or the graph, an engine sidecar for another ONNX / TensorRT version / GPU.
            BackendUnavailableError: the requested backend cannot run here (package, driver or EP missing).
        """
        b, spec = open_backend(path, backend, threads)
        return cls(spec, b, _use_worker(threads) if overlap is None else overlap)

    def __repr__(self) -> str:
        hw, bev = self.spec.image_hw, tuple(self.spec.bev_shape[1:])
        cls = self.cfg.classes
        return (f"Pipeline(model={clip(self.spec.path)!r}, backend={self.backend_name!r}, "
                f"precision={self.spec.precision!r}, image={hw[0]}x{hw[1]}, bev={bev}, "
                f"det_classes={len(cls.det_classes)}, sem_classes={len(cls.sem_classes)})")

    # ------------------------------------------------------------------------------------ properties
    @property
    def cfg(self) -> Config:
        return self.spec.cfg

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def fallback(self) -> str | None:
        return self.backend.fallback

    def describe(self) -> dict:
        return {"model": self.spec.path, "precision": self.spec.precision, "decode_in_graph": self.spec.decode,
                "stages": kernels.name(),
                "image_hw": list(self.spec.image_hw), "bev_shape": list(self.spec.bev_shape[1:]),
                **self.backend.describe()}

    def set_decode(self, score_threshold: float | None = None, max_detections: int | None = None) -> None:
        """Keep boxes scoring > ``score_threshold``, at most ``max_detections`` per frame, instead of the model's
        ``decode`` settings (None: keep the model's). The config's rules apply (``0 < score_threshold < 1``,
        ``1 <= max_detections <= 4096``; ``ConfigError`` naming the key otherwise); a model that decodes in its
        graph (``mtl export --decode``) returns at most its own ``decode.max_detections`` boxes, so more is
        refused. The evaluation cut (``decode.eval_score_threshold``) is never changed."""
        from dataclasses import replace

        from ..errors import ConfigError

        own = self.model_decode.max_detections
        if self.spec.decode and max_detections is not None and max_detections > own:
            raise ConfigError(self.spec.path, f"max_detections {max_detections}: this model decodes at most {own} "
                                              "boxes in its graph (exported with --decode); ask for at most that")
        cfg = self.cfg.override(**{"decode.score_threshold": score_threshold, "decode.max_detections": max_detections})
        self.spec = replace(self.spec, cfg=cfg)

    # ------------------------------------------------------------------------------------ stages
    def check_frame(self, frame: RuntimeFrame) -> None:
        """Refuse a frame whose calibration / classes do not match the model (before any work)."""
        src = frame.source or frame.frame_id
        if frame.meta:
            check_classes(frame.meta, self.spec, src)
        if frame.kind == KIND_RAW:
            if frame.camera is None:
                raise DataError(src, f"raw frame {frame.frame_id} has no camera calibration")
            check_camera(frame.camera, self.spec, src)
        elif frame.cam_matrix is not None:
            check_cam_matrix(frame.cam_matrix, self.spec, src, f"frame {frame.frame_id} cam_matrix")

    def preprocess(self, frame: RuntimeFrame, timer: StageTimer, keep_image: bool = False
                   ) -> tuple[dict[str, np.ndarray], dict[str, Any], np.ndarray | None]:
        src = frame.source or frame.frame_id
        if not frame.has_image:
            raise DataError(src, f"frame {frame.frame_id} has no camera image (the model needs one)")
        self.check_frame(frame)
        points = check_points(frame.points, src)
        bev_job = self._submit(bev_input, points, self.spec, timer)   # (1, C, Hg, Wg) while the image decodes
        try:
            image, img = self._image_input(frame, src, timer, keep_image)  # (1, 3, H, W), uint8 | None
        except BaseException:
            wait([bev_job])                                            # never leave it running on a failed frame
            raise
        bev, dropped = bev_job.result()
        info = {"points": len(points), "points_dropped_nonfinite": dropped}
        return {"image": image, "bev": bev}, info, (img if keep_image else None)

    def _image_input(self, frame: RuntimeFrame, src: str, timer: StageTimer, keep_image: bool
                     ) -> tuple[np.ndarray, np.ndarray | None]:
        """The (1, 3, H, W) model input and, for chunk frames or with ``keep_image``, the (H, W, 3) uint8
        model-size image. Raw frames (original distorted pixels) take the fused remap unless the uint8 image is
        wanted too: ``prepare_image`` + ``normalise_image`` then give the same input values (bit-identical)."""
        img = frame.image
        if img is None:
            with timer("decode_png"):
                img = decode_image(frame.image_png, src)
        if frame.kind != KIND_RAW:
            img = check_image(img, self.spec.image_hw, src, f"image of {frame.frame_id}")
            return image_input(img, self.spec, timer), img
        w0, h0 = self.cfg.camera.resolution_wh
        img = check_image(img, (h0, w0), src, f"raw camera image of {frame.frame_id}")
        if not keep_image:
            return self._remap(np.ascontiguousarray(img), timer), None
        from ..data.a2d2 import prepare_image

        with timer("undistort_resize"):
            small = prepare_image(img, self.cfg.camera, self.spec.image_hw, src)
        return image_input(small, self.spec, timer), small

    def _remap(self, img: np.ndarray, timer: StageTimer) -> np.ndarray:
        """The fused remap of a raw image into a fresh (1, 3, H, W) input. With the helper thread the rows are
        split: the helper, queued behind this frame's BEV raster, takes the bottom rows, as many as
        ``RowSplit`` has learned make both threads finish together. Row blocks are independent, so the values
        do not depend on the split. ``remap_normalise`` times this thread's share."""
        cam = self.cfg.camera
        remap = sensor_remap(cam, self.spec.image_hw, tuple(cam.mean), tuple(cam.std))
        h = self.spec.image_hw[0]
        out = np.empty((1, 3, *self.spec.image_hw), np.float32)
        split = self._split.rows(h) if self._pool is not None else 0
        job = self._submit(finished_at, remap.apply, img, out, (h - split, h)) if split else None
        t0 = time.perf_counter()
        try:
            remap.apply(img, out, (0, h - split))
        finally:
            t1 = time.perf_counter()
            if job is not None:
                wait([job])                    # the helper ran the raster first: its time is in the timer now
        helper_end = job.result() if job is not None else t1
        timer.add("remap_normalise", (t1 - t0) * 1e3)
        self._split.observe(h, h - split, (t1 - t0) * 1e3, (t1 - helper_end) * 1e3)
        return out

    def infer(self, feeds: dict[str, np.ndarray], timer: StageTimer | None = None, backend: Backend | None = None
              ) -> dict[str, np.ndarray]:
        """Run the backend (default: the pipeline's; ``run_stream`` passes its extra sessions) on model inputs;
        shapes and dtypes are checked against the model first."""
        timer = timer or StageTimer()
        want = {"image": self.spec.image_shape, "bev": self.spec.bev_shape}
        for name, shape in want.items():
            if name not in feeds:
                raise ModelMismatchError(self.spec.path, f"missing input {name!r}")
            a = feeds[name]
            if not isinstance(a, np.ndarray) or a.dtype.kind != "f":
                raise ModelMismatchError(self.spec.path, f"input {name!r} must be a float numpy array, got "
                                                         f"{getattr(a, 'dtype', type(a).__name__)}")
            ok = a.ndim == 4 and all(w is None or g == w for g, w in zip(a.shape, (1, *shape[1:])))
            if not ok:
                exp = "(1, " + ", ".join(str(d) for d in shape[1:]) + ")"
                raise ModelMismatchError(self.spec.path, f"input {name!r} has shape {tuple(a.shape)}, the model "
                                                         f"expects {exp}")
        return (backend or self.backend).run(feeds, timer)

    def postprocess(self, outputs: dict[str, np.ndarray], timer: StageTimer) -> dict[str, np.ndarray]:
        with timer("postprocess"):
            return decode_outputs(outputs, self.cfg, self.spec.heatmap_activation, self.spec.decode,
                                  submit=self._submit, split=self._post_split)

    def _submit(self, fn, *args) -> Future:
        """``fn(*args)`` on the helper thread, or right here (an already-finished future) without one."""
        if self._pool is not None:
            return self._pool.submit(fn, *args)
        f: Future = Future()
        try:
            f.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001  re-raised by .result(), like the threaded path
            f.set_exception(e)
        return f

    # ------------------------------------------------------------------------------------ one frame
    def run_frame(self, frame: RuntimeFrame, keep_image: bool = False, keep_outputs: bool = True) -> Result:
        """One frame through preprocess -> model -> postprocess.

        Args:
            frame: a ``RuntimeFrame`` from ``iter_frames`` (a chunk frame: undistorted image at the model size,
                stored ``cam_matrix``; a raw A2D2 frame: the original distorted image + ``camera``, undistorted
                and resized here) or built by hand. It needs a camera image (``image_png`` bytes or a decoded
                ``image``); ``points`` is (N, 4) x, y, z (metres, cam_front_center view frame: x forward, y
                left, z up), reflectance 0..1, and may be empty. Rows with a NaN/inf value are dropped and
                counted in ``info["points_dropped_nonfinite"]``.
            keep_image: keep the model-size uint8 RGB image in ``Result.image`` (``overlay`` needs it).
            keep_outputs: keep the raw model outputs (batch 1) in ``Result.outputs``.

        Returns:
            ``Result``: ``boxes`` (n, 7) float32 x, y, z, l, w, h (metres), yaw (rad); ``scores`` (n,) float32,
            descending, above ``cfg.decode.score_threshold``, n <= ``cfg.decode.max_detections``; ``labels``
            (n,) int64 into ``cfg.classes.det_classes`` and ``label_names``; ``semantic`` (H, W) uint8 ids into
            ``cfg.classes.sem_classes`` at the model image size; ``outputs`` {name: array (1, C, h, w)};
            ``timings_ms`` {stage: ms} (stages run, plus ``total``); ``info`` {``points``,
            ``points_dropped_nonfinite``}.

        Raises:
            DataError: no camera image, a PNG that does not decode, an image that is not uint8 (H, W, 3), points
                that are not (N, 4) numeric, a raw frame without calibration, a ``cam_matrix`` that is not 3x3.
            ModelMismatchError: calibration (``cam_matrix`` / ``camera``), image size or class names (chunk
                meta) different from the model's. Nothing is run for a refused frame.
        """
        timer = StageTimer()
        t0 = time.perf_counter()
        feeds, info, img = self.preprocess(frame, timer, keep_image)
        outputs = self.infer(feeds, timer)
        return self.finish(frame, outputs, timer, t0, info, img, keep_outputs)

    def finish(self, frame: RuntimeFrame, outputs: dict[str, np.ndarray], timer: StageTimer, t0: float,
               info: dict[str, Any], img: np.ndarray | None, keep_outputs: bool) -> Result:
        """Postprocess a frame's outputs into its ``Result``; ``total`` = from ``t0`` (its preprocess start)."""
        det = self.postprocess(outputs, timer)
        timer.add("total", (time.perf_counter() - t0) * 1e3)
        names = self.cfg.classes.det_classes
        return Result(frame_id=frame.frame_id, boxes=det["boxes"], scores=det["scores"], labels=det["labels"],
                      label_names=[names[i] if 0 <= i < len(names) else str(i) for i in det["labels"]],
                      semantic=det["semantic"], outputs=outputs if keep_outputs else {},
                      timings_ms=timer.ms, info=info, image=img)

    def run(self, image: np.ndarray, points: np.ndarray | None, frame_id: str = "frame",
            cam_matrix: np.ndarray | None = None, keep_image: bool = False) -> Result:
        """One frame from arrays in memory (no files): the direct entry for a vehicle with pixels and points.

        Args:
            image: the front-centre camera image, already undistorted and resized to the model's input size:
                numpy uint8 (H, W, 3) RGB with (H, W) == ``pipe.spec.image_hw`` (the model's
                ``camera.image_hw``). A raw distorted sensor image is not accepted here; make the model-size
                one with ``mtl.data.a2d2.prepare_image(raw_rgb, pipe.cfg.camera, pipe.spec.image_hw)``.
            points: LiDAR (N, 4) float array (float16/32/64; used as float32): x, y, z in metres in the
                cam_front_center view frame (x forward, y left, z up), reflectance 0..1. N may be 0; ``None``
                means no LiDAR. Rows with a NaN/inf value are dropped and counted in
                ``result.info["points_dropped_nonfinite"]``, as in ``run_frame``.
            frame_id: names the result, and the source in error messages.
            cam_matrix: optional (3, 3) intrinsics of ``image``; when given they must equal the model's
                (``pipe.spec.model_cam_matrix``): a guard that the image was prepared with its calibration.
            keep_image: keep ``image`` in ``Result.image`` (for ``overlay``).

        Returns:
            ``Result``, as ``run_frame`` (no ``decode_png`` / ``undistort_resize`` timings).

        Raises:
            DataError: ``image`` not a numpy uint8 (H, W, 3) array; ``points`` not an (N, 4) float array;
                ``cam_matrix`` not 3x3. One line, naming ``frame_id``.
            ModelMismatchError: ``image`` not at the model size; ``cam_matrix`` not the model's.
        """
        image = check_api_image(image, self.spec.image_hw, frame_id, sensor=False)
        points = check_points(points, frame_id, floats_only=True)
        frame = RuntimeFrame(frame_id=frame_id, kind=KIND_CHUNK, points=points, image=image, cam_matrix=cam_matrix,
                             source=frame_id)
        return self.run_frame(frame, keep_image=keep_image)

    def run_sensor(self, image: np.ndarray, points: np.ndarray | None, frame_id: str = "frame",
                   keep_image: bool = False) -> Result:
        """One frame as the drivers hand it over: the camera's original distorted pixels and the LiDAR points.

        Args:
            image: the front-centre camera image as the camera delivers it: numpy uint8 (H0, W0, 3) RGB at the
                camera resolution (``pipe.cfg.camera.resolution_wh`` = (W0, H0), 1920x1208 for A2D2), distorted
                (``CamMatrixOriginal`` + ``Distortion`` of the model's calibration). It is undistorted, resized
                to ``pipe.spec.image_hw`` and normalised in one remap pass (``runtime.sensor.SensorRemap``),
                bit-identical to training's ``prepare_image`` + ``normalise_image``.
            points: LiDAR (N, 4) float array, as ``run``: x, y, z in metres (cam_front_center view frame),
                reflectance 0..1; N may be 0, ``None`` means no LiDAR; NaN/inf rows are dropped and counted.
            frame_id: names the result, and the source in error messages.
            keep_image: keep the undistorted model-size uint8 image in ``Result.image`` (for ``overlay``;
                it then takes the two-step path, same model input).

        Returns:
            ``Result``, as ``run_frame``; ``timings_ms`` has ``remap_normalise`` (``undistort_resize`` and
            ``normalise`` with ``keep_image``).

        Raises:
            DataError: ``image`` not a numpy uint8 (H, W, 3) array; ``points`` not an (N, 4) float array.
            ModelMismatchError: ``image`` not at the camera resolution of the model's calibration.
        """
        w0, h0 = self.cfg.camera.resolution_wh
        image = check_api_image(image, (h0, w0), frame_id, sensor=True)
        points = check_points(points, frame_id, floats_only=True)
        frame = RuntimeFrame(frame_id=frame_id, kind=KIND_RAW, points=points, image=image, camera=self.cfg.camera,
                             source=frame_id)
        return self.run_frame(frame, keep_image=keep_image)

    def run_stream(self, frames: Iterable[RuntimeFrame], keep_image: bool = False, keep_outputs: bool = True,
                   sessions: int = 1) -> Iterator[Result]:
        """Frames through the pipeline with the stages of different frames overlapped: while one frame is in
        inference, the next one is preprocessed and the previous one postprocessed (on their own threads).

        Args:
            frames: any iterable of ``RuntimeFrame`` (``iter_frames``, a list, a generator that yields frames as
                they arrive: each is pulled when the preprocess thread is free).
            keep_image, keep_outputs: as ``run_frame``.
            sessions: inference sessions running frames concurrently (onnxruntime backends: the pipeline's own
                plus ``sessions - 1`` more of the same model with the same threads, created on first use and
                kept until ``close``). Other backends run 1.

        Yields:
            One ``Result`` per frame, in input order, each as soon as it is ready; equal to ``run_frame``'s for
            the same frame (``timings_ms["total"]`` is from its preprocess start to its postprocess end,
            waits between stages included).

        Raises:
            whatever ``run_frame`` raises for a frame (or the iterable raises), at that frame's position, after
            the results before it; the stage threads stop. ``BackendUnavailableError`` for ``sessions > 1`` on
            a backend that has a single session. Closing the generator early stops and joins the threads.
        """
        from .stream import stream_results

        return stream_results(self, frames, self._sessions(sessions), keep_image, keep_outputs)

    def _sessions(self, n: int) -> list[Backend]:
        if n < 1:
            raise DataError(None, f"sessions must be >= 1, got {n}")
        while len(self._extra) < n - 1:
            self._extra.append(self.backend.clone())
        return [self.backend, *self._extra[: n - 1]]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for b in self._extra:
            b.close()
        self._extra = []
        self.backend.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["Pipeline"]
