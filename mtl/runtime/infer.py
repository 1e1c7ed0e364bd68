"""``mtl infer``: every frame of a chunk directory or raw A2D2 tree through an exported model, written as one
set (layout, fresh / ``--resume`` / ``--overwrite``: ``mtl.runtime.results``). Torch-free.

One frame (``infer_frame``; a worker running a shard of frames calls it the same way and feeds its ``Tally``):

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config
from ..errors import ChunkError, DataError
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


def infer_directory(model: str | Path, data: str | Path, out: str | Path, backend: str = "auto",
                    threads: int | None = None, overlay_images: bool = False, limit: int | None = None,
                    progress: bool = True, log: Log | None = None, overwrite: bool = False, resume: bool = False,
                    skip_bad: bool = False, evaluate: bool = False, score_threshold: float | None = None,
                    max_detections: int | None = None, note: Log | None = None, ray_address: str | None = None,
                    ray_workers: int | None = None) -> dict:
    """``mtl infer``: every frame of ``data`` (chunks or raw A2D2 tree) through the model, written as one set
    (``mtl.runtime.results``): ``OUT/frames/<id>.json``, ``<id>_sem.png``, ``<id>_sem_color.png``, optionally
    ``<id>_overlay.png``, then ``OUT/summary.json`` and ``OUT/manifest.json``. Returns the summary.

    ``evaluate`` scores every frame on the labels it carries with ``mtl eval``'s metric code (module docstring)
    into ``summary["metrics"]``; ``score_threshold`` / ``max_detections`` replace the model's decode settings
    for this run (``Pipeline.set_decode``; recorded in ``summary["decode"]``). ``log`` gets the skipped-frame
    lines, ``note`` the backend fallback. A non-empty ``out`` is refused unless ``overwrite`` or ``resume``;
    ``out`` inside ``data`` always; with ``skip_bad`` chunks / frames that do not read are skipped and counted;
    a calibration / class mismatch stops the run (ModelMismatchError). ``OUT/.mtl.lock`` is held while writing.

    ``ray_address`` (``"local"`` or a cluster address) runs the frames on Ray actors instead
    (``mtl.runtime.infer_fleet``: the same files and summary, plus ``summary["fleet"]``), ``ray_workers`` of
    them; ``BackendUnavailableError`` (exit 6) without the ``[fleet]`` extra."""
    from ..contract import MAX_ENGINE_BYTES, check_export_set, sha256_capped
    from ..errors import ConfigError
    from .frames import detect_source
    from .results import check_request

    if ray_address is not None:
        from ..fleet import import_ray

        import_ray()                       # without ray: one line, before anything is read or written
    elif ray_workers is not None:
        raise ConfigError(None, "--ray-workers needs --ray ADDRESS|local")
    out, t_start = Path(out), time.perf_counter()
    check_request(out, data, overwrite, resume)
    check_export_set([Path(model)])
    model_sha = sha256_capped(model, MAX_ENGINE_BYTES, "model")
    job = InferJob(model=str(model), data=str(data), out=out, model_sha256=model_sha, source=detect_source(data),
                   opts=InferOptions(overlay=overlay_images, evaluate=evaluate), backend=backend, threads=threads,
                   overrides={k: v for k, v in (("score_threshold", score_threshold),
                                                ("max_detections", max_detections)) if v is not None},
                   limit=limit, skip_bad=skip_bad, overwrite=overwrite, resume=resume, t_start=t_start)
    if ray_address is not None:
        from .infer_fleet import infer_on_ray

        return infer_on_ray(job, ray_address, ray_workers, progress, log, note)
    pipe = Pipeline.open(model, backend, threads)
    try:
        pipe.set_decode(**job.overrides)
        if pipe.fallback and note:
            note(f"note: {pipe.fallback}")
        return write_results(job, pipe.cfg, pipe.describe(), lambda results: (
            _run_frames(pipe, data, results, job.opts, limit, progress, log, skip_bad), {}))
    finally:
        pipe.close()


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


def _frames(pipe: Pipeline, data: str | Path, opts: InferOptions, limit: int | None, tally: Tally, log: Log | None,
            skip_bad: bool, progress: bool) -> Iterator[RuntimeFrame]:
    """The input frames (with ground truth for ``evaluate``), bad chunks / frames skipped under ``skip_bad``."""
    from .frames import iter_frames

    def on_bad(kind: str, err: Exception) -> None:
        tally.skip(kind, str(err))
        if log:
            log(f"skipped {kind}: {err}")

    frames = iter_frames(data, pipe.cfg, with_gt=opts.evaluate, limit=limit, on_bad=on_bad if skip_bad else None)
    if not progress:
        yield from frames
        return
    import sys

    from tqdm import tqdm

    with tqdm(frames, unit="frame", desc="infer", total=limit, file=sys.stderr) as bar:
        yield from bar


def _run_frames(pipe: Pipeline, data: str | Path, results: ResultSet, opts: InferOptions, limit: int | None,
                progress: bool, log: Log | None, skip_bad: bool) -> Tally:
    """The frame loop: keeps finished frames (resume), runs and writes the others."""
    from .results import unique_name

    tally, used = Tally(scorer=Scorer(pipe.cfg) if opts.evaluate else None), set()
    for frame in _frames(pipe, data, opts, limit, tally, log, skip_bad, progress):
        if frame_modality(frame) is None:
            tally.skip(NO_INPUT)
            continue
        name = unique_name(frame.frame_id, used)
        doc = results.finished(name, frame.frame_id, accept=lambda d: keeps(d, pipe.cfg, opts))
        if doc is not None:
            tally.add(name, doc, None)
            continue
        try:
            made = infer_frame(pipe, frame, name, results.model_sha256, opts)
        except (DataError, ChunkError) as e:
            if not skip_bad:
                raise
            tally.skip("bad frame", str(e))
            if log:
                log(f"skipped bad frame: {e}")
            continue
        results.write_frame(name, made.images, made.doc)
        tally.add(name, made.doc, made.timings_ms)
    return tally


__all__ = ["CAMERA_LIDAR", "CAMERA_ONLY", "LIDAR_ONLY", "NO_INPUT", "FrameOutput", "InferJob", "InferOptions", "Tally",
           "decode_settings", "frame_images", "frame_modality", "infer_directory", "infer_frame", "keeps",
           "run_modality", "write_results"]
