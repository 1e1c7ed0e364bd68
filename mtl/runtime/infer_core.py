"""What both engines of ``mtl infer`` share (one machine: ``mtl.runtime.infer``; Ray: ``mtl.runtime.infer_fleet``):
one frame, the run's ``Tally``, the checked request (``InferJob``) and writing the set (``write_results``). Torch-free.

One frame (``infer_frame``; a worker running a shard of frames calls it the same way and feeds the ``Tally``):

- its *modality* (``frame_modality``): ``camera+lidar``, ``camera-only`` (no LiDAR sweep: an empty BEV raster) or
  ``lidar-only``; a frame with neither is skipped and counted. A LiDAR-only frame runs with the
  normalisation-mean stand-in image (``geometry.mean_colour_image``), exactly as ``mtl eval`` feeds such
  frames, so both score the same inputs; a semantic map made from that stand-in predicts nothing, so its
  ``_sem.png`` is all ignore (255) and its overlay is a bird's-eye view (points and predicted boxes);
- its images: ``_sem.png`` (class ids, for machines: looks black), ``_sem_color.png`` (the same map in the
  class colours, for people), ``_overlay.png`` (``--overlay``);
- its JSON: the result (``Result.to_json``) plus ``source``, ``model_sha256``, ``modality``, ``decode`` (the
  score threshold and top-K its boxes were cut at) and, with ``evaluate``, ``eval``: the frame's
  ``scoring.frame_record`` (its confusion-matrix cells and its detections at the evaluation cut with its
  ground truth). The metrics of a run are computed from these records (``scoring.Scorer``), so frames a
  ``--resume`` keeps count exactly as if they had just run, and nothing but the records' few numbers per frame
  is held in memory. A kept frame without a record (written without ``--eval``) or cut with other decode
  settings is run again.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config
from .frames import KIND_CHUNK, RuntimeFrame
from .pipeline import Pipeline
from .postprocess import Result
from .results import ResultSet
from .scoring import Scorer, check_record, frame_record

CAMERA_LIDAR, CAMERA_ONLY, LIDAR_ONLY = "camera+lidar", "camera-only", "lidar-only"
MODALITIES = (CAMERA_LIDAR, CAMERA_ONLY, LIDAR_ONLY)
NO_INPUT = "no camera image and no LiDAR"
Log = Callable[[str], None]


@dataclass(frozen=True)
class InferOptions:
    """What each frame makes: overlays, and the metric record (``evaluate``: ``mtl infer --eval``)."""

    overlay: bool = False
    evaluate: bool = False


@dataclass
class FrameOutput:
    """One frame's files: ``images`` {suffix (``_sem.png``, ...): PNG bytes} and its JSON ``doc``."""

    images: dict[str, bytes]
    doc: dict[str, Any]
    timings_ms: dict[str, float]


# ------------------------------------------------------------------------------------------ one frame


def frame_modality(frame: RuntimeFrame) -> str | None:
    """``camera+lidar`` / ``camera-only`` / ``lidar-only``, None for a frame with neither (skipped)."""
    lidar = frame.points is not None and len(frame.points) > 0
    if frame.has_image:
        return CAMERA_LIDAR if lidar else CAMERA_ONLY
    return LIDAR_ONLY if lidar else None


def decode_settings(pipe: Pipeline | Config) -> dict[str, Any]:
    """The cut the frame's boxes were made with (recorded in every frame's JSON and the summary)."""
    d = (pipe if isinstance(pipe, Config) else pipe.cfg).decode
    return {"score_threshold": d.score_threshold, "max_detections": d.max_detections}


def run_modality(pipe: Pipeline, frame: RuntimeFrame, modality: str, opts: InferOptions) -> Result:
    """The frame through the pipeline; a LiDAR-only frame with the stand-in image (module docstring)."""
    if modality != LIDAR_ONLY:
        return pipe.run_frame(frame, keep_image=opts.overlay, keep_outputs=opts.evaluate)
    from ..geometry import mean_colour_image

    pipe.check_frame(frame)                      # calibration / classes of the real frame, before the stand-in
    stand_in = replace(frame, kind=KIND_CHUNK, image=mean_colour_image(pipe.cfg.camera), image_png=None,
                       cam_matrix=None, camera=None)
    res = pipe.run_frame(stand_in, keep_outputs=opts.evaluate)
    res.semantic = np.full_like(res.semantic, pipe.cfg.classes.ignore_index)   # no camera: no semantic prediction
    return res


def frame_images(pipe: Pipeline, res: Result, frame: RuntimeFrame, modality: str, overlay: bool) -> dict[str, bytes]:
    """``_sem.png`` (ids), ``_sem_color.png`` (colours) and with ``overlay`` ``_overlay.png``: the camera
    overlay, or for a LiDAR-only frame its bird's-eye view."""
    from .. import draw
    from ..io import encode_png
    from .postprocess import overlay as camera_overlay

    c = pipe.cfg.classes
    images = {"_sem.png": encode_png(res.semantic),
              "_sem_color.png": encode_png(draw.colorize_semantic(res.semantic, draw.semantic_palette(c)))}
    if overlay and modality == LIDAR_ONLY:
        title = (f"{res.frame_id} \u00b7 LiDAR only (no camera image) \u00b7 {len(res.boxes)} boxes, score > "
                 f"{pipe.cfg.decode.score_threshold:g}")
        images["_overlay.png"] = encode_png(draw.bev_view(
            pipe.cfg.grid, points=frame.points, boxes=res.boxes, labels=res.labels, scores=res.scores,
            det_names=c.det_classes, title=title))
    elif overlay:
        images["_overlay.png"] = encode_png(camera_overlay(res, pipe.cfg))
    return images


def infer_frame(pipe: Pipeline, frame: RuntimeFrame, name: str, model_sha256: str, opts: InferOptions
                ) -> FrameOutput | None:
    """Everything ``mtl infer`` writes for one frame (None: a frame with neither camera nor LiDAR). ``frame``
    comes from ``iter_frames(..., with_gt=opts.evaluate)``; raises what ``run_frame`` / ``frame_record`` raise."""
    modality = frame_modality(frame)
    if modality is None:
        return None
    res = run_modality(pipe, frame, modality, opts)
    doc = res.to_json(tuple(pipe.cfg.classes.sem_classes))
    doc.update(source=frame.source, model_sha256=model_sha256, modality=modality, decode=decode_settings(pipe),
               semantic_png=f"{name}_sem.png", semantic_color_png=f"{name}_sem_color.png")
    images = frame_images(pipe, res, frame, modality, opts.overlay)
    if opts.overlay:
        doc["overlay_png"] = f"{name}_overlay.png"
    if opts.evaluate:
        doc["eval"] = frame_record(res, frame, pipe.cfg, pipe.spec.heatmap_activation)
    return FrameOutput(images, doc, res.timings_ms)


def keeps(doc: dict, cfg: Config, opts: InferOptions) -> bool:
    """Whether a finished frame from an earlier run can stay (``--resume``): cut with these decode settings
    (``cfg``: the model's, after ``set_decode``) and, with ``evaluate``, carrying a well-formed metric record."""
    if doc.get("decode") != decode_settings(cfg) or doc.get("modality") not in MODALITIES:
        return False
    return not opts.evaluate or check_record(doc.get("eval"), cfg)


# ------------------------------------------------------------------------------------------ the run


@dataclass
class Tally:
    """What the summary counts, fed one frame at a time (``merge`` adds another worker's)."""

    scorer: Scorer | None = None
    written: list[str] = field(default_factory=list)
    resumed: int = 0
    detections: int = 0
    modalities: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODALITIES, 0))
    skipped: dict[str, int] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)
    timing_sum: dict[str, float] = field(default_factory=dict)
    timing_n: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, doc: dict, timings_ms: dict[str, float] | None) -> None:
        """A written frame (``timings_ms`` None: kept from an earlier run)."""
        self.written.append(name)
        self.detections += int(doc.get("n_detections", 0))
        self.modalities[doc["modality"]] += 1
        if timings_ms is None:
            self.resumed += 1
        for k, v in (timings_ms or {}).items():
            self.timing_sum[k] = self.timing_sum.get(k, 0.0) + v
            self.timing_n[k] = self.timing_n.get(k, 0) + 1
        if self.scorer is not None:
            self.scorer.add(str(doc.get("frame_id", name)), doc["eval"], key=name)

    def skip(self, kind: str, reason: str | None = None) -> None:
        self.skipped[kind] = self.skipped.get(kind, 0) + 1
        if reason is not None and len(self.bad) < 1000:   # the count is exact; the first 1000 reasons are kept
            self.bad.append(f"{kind}: {reason}")

    def merge(self, other: Tally) -> None:
        self.written += other.written
        self.resumed += other.resumed
        self.detections += other.detections
        for mine, theirs in ((self.modalities, other.modalities), (self.skipped, other.skipped),
                             (self.timing_sum, other.timing_sum), (self.timing_n, other.timing_n)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        self.bad = (self.bad + other.bad)[:1000]
        if self.scorer is not None and other.scorer is not None:
            self.scorer.merge(other.scorer)

    def summary(self) -> dict[str, Any]:
        out = {"frames_written": len(self.written), "frames_resumed": self.resumed, "modalities": self.modalities,
               "frames_skipped": self.skipped, "bad": self.bad, "detections": self.detections,
               "mean_timing_ms": {k: round(self.timing_sum[k] / self.timing_n[k], 4) for k in self.timing_sum},
               "files": self.written}
        if self.scorer is not None:
            out["metrics"] = self.scorer.compute()
        return out


@dataclass(frozen=True)
class InferJob:
    """One ``mtl infer`` request, checked (``infer_directory``): what both engines (one machine, Ray) run."""

    model: str
    data: str
    out: Path
    model_sha256: str
    source: str                          # frames.KIND_CHUNK | KIND_RAW
    opts: InferOptions
    backend: str
    threads: int | None
    overrides: dict                      # decode settings replaced for this run
    limit: int | None
    skip_bad: bool
    overwrite: bool
    resume: bool
    t_start: float


def write_results(job: InferJob, cfg: Config, described: dict,
                  run: Callable[[ResultSet], tuple[Tally, dict]]) -> dict:
    """Open the result set under the output lock, ``run(results)`` -> (tally, extra summary keys), then write
    summary.json + manifest.json (``ResultSet.commit``); a run that stops leaves what ``abandon`` keeps."""
    from ..io import OutputLock

    with OutputLock(job.out, "mtl infer"):
        results = ResultSet.open(job.out, job.model_sha256, job.opts.overlay, job.overwrite, job.resume)
        try:
            tally, extra = run(results)
            summary = {"model": job.model, "model_sha256": job.model_sha256, "data": job.data, "source": job.source,
                       "out": str(job.out), **described, "eval": job.opts.evaluate,
                       "decode": {**decode_settings(cfg), "eval_score_threshold": cfg.decode.eval_score_threshold,
                                  "overrides": job.overrides},
                       **tally.summary(), **extra, "wall_s": round(time.perf_counter() - job.t_start, 3)}
            results.commit(summary)
        except BaseException:
            results.abandon()
            raise
    return summary


__all__ = ["CAMERA_LIDAR", "CAMERA_ONLY", "LIDAR_ONLY", "MODALITIES", "NO_INPUT", "FrameOutput", "InferJob",
           "InferOptions", "Log", "Tally", "decode_settings", "frame_images", "frame_modality", "infer_frame", "keeps",
           "run_modality", "write_results"]
