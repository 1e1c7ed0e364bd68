"""``mtl infer``: every frame of a chunk directory or raw A2D2 tree through an exported model, written as one
set (layout, fresh / ``--resume`` / ``--overwrite``: ``mtl.runtime.results``). Torch-free.

``infer_directory`` checks the request and runs it on this machine (``_run_frames``: frame after frame) or, with
``ray_address``, on a Ray cluster (``mtl.runtime.infer_fleet``). What a frame makes (modalities, images, JSON,
``--eval`` records), the run's counts and the set's commit are shared by both (``mtl.runtime.infer_core``, whose
names this module re-exports).
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import ChunkError, DataError
from .frames import RuntimeFrame
from .infer_core import (
    CAMERA_LIDAR,
    CAMERA_ONLY,
    LIDAR_ONLY,
    MODALITIES,
    NO_INPUT,
    FrameOutput,
    InferJob,
    InferOptions,
    Log,
    Tally,
    decode_settings,
    frame_images,
    frame_modality,
    infer_frame,
    keeps,
    run_modality,
    write_results,
)
from .pipeline import Pipeline
from .results import ResultSet
from .scoring import Scorer


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


__all__ = ["CAMERA_LIDAR", "CAMERA_ONLY", "LIDAR_ONLY", "MODALITIES", "NO_INPUT", "FrameOutput", "InferJob",
           "InferOptions", "Tally", "decode_settings", "frame_images", "frame_modality", "infer_directory",
           "infer_frame", "keeps", "run_modality", "write_results"]
