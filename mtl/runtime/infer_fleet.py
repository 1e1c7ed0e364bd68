"""``mtl infer --ray``: the frames of ``mtl infer`` run by Ray actors, written into the very set one machine
writes (``frames/`` layout, summary.json, manifest.json: ``mtl.runtime.results``). Torch-free; ``ray`` is imported
through ``mtl.fleet`` only when asked for.

1. **Plan** (driver): a shard per chunk file (a raw A2D2 tree: at most ``RAW_SHARD_FRAMES`` consecutive frames of
   one scene), planned from frame ids alone (a chunk's ``frame_id`` member; a raw tree's file names). Every frame
   gets its file name as on one machine (``results.unique_name`` in input order); ``--limit`` cuts the list.
   With ``--resume`` every frame an earlier run finished is kept (``ResultSet.finished``, the check one machine
   makes); a shard whose frames are all kept is not run at all.
2. **Run** (workers): ``workers`` actors (``InferWorker``) each open the model once (``--threads`` intra-op
   threads, default 1, and one Ray CPU each; one GPU each for the GPU backends, and for ``auto`` on a cluster
   with GPUs). An actor runs a shard's frames with ``infer_frame`` (the code one machine runs) and writes their
   files into the set (images first, JSON last); it returns, per frame in order, what the summary counts (name,
   modality, detections, ``--eval`` record, timings; or a skip and its reason) and the files' sizes and sha256.
3. **Merge** (driver): the shards' returns are added to one ``Tally`` strictly in shard order (a reorder buffer
   of the shards finished early), so frame list, counts, ``--skip-bad`` reasons and metrics are one machine's;
   then summary.json (plus ``fleet``: workers, shards run / kept) and manifest.json, as one machine.

Faults: an actor that dies (SIGKILL, OOM killer, a lost node) is restarted by Ray (the model loaded again) and
its shard retried, ``fleet.MAX_RETRIES`` times; a shard's frames are rewritten whole, so a retry leaves no
trace. A driver that dies leaves every finished frame: the same command with ``--resume`` runs only the rest.
``MTL_FAULT_SHARD=k`` (tests) makes the first attempt of shard ``k`` SIGKILL its actor (``fleet.fault_point``;
the marker ``.fault-k`` stays in the output folder, hidden).

One difference from one machine: the driver names frames before any is read, so a frame one machine never
names (in a chunk whose ids read but whose frames fail ``read_chunk``'s checks under ``--skip-bad``, a raw frame
whose files do not read, a frame with neither camera nor LiDAR) still holds its name, and (the first two) counts
toward ``--limit``. Visible only when two frame ids of the set sanitise alike (``_2`` suffixes), or with
``--limit`` over bad input.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import ChunkError, DataError, MtlError
from .frames import KIND_CHUNK, RuntimeFrame
from .infer_core import (
    NO_INPUT,
    InferJob,
    InferOptions,
    Log,
    Tally,
    frame_modality,
    infer_frame,
    keeps,
    write_results,
)
from .results import ResultSet

RAW_SHARD_FRAMES = 64                 # raw frames per shard: a few seconds of work, like a chunk
GPU_BACKENDS = ("onnxruntime-cuda", "onnxruntime-trt", "tensorrt")
SUMMARY_KEYS = ("frame_id", "n_detections", "modality", "eval")      # what Tally.add reads of a frame's JSON
CHANGED = "changed while the job ran (its frame ids differ from the plan); run the command again with --resume"


@dataclass(frozen=True)
class InferShard:
    index: int
    source: str                       # the chunk file, or the raw tree's root (as the user named them)
    names: tuple[str, ...]            # the frames' file stems, in order
    frame_ids: tuple[str, ...]
    raw: tuple = ()                   # raw tree: the frames' a2d2.RawFramePaths, in order
    listed: bool = True               # False: the chunk's frame ids did not read on the driver (a worker says why)
    todo: frozenset | None = None     # names to run (None: all); the others are kept from an earlier run

    def needs_run(self) -> bool:
        return not self.listed or not self.names or self.todo is None or bool(self.todo)


@dataclass(frozen=True)
class WorkerJob:
    """What every shard task shares."""

    dest: str                         # ResultSet.dest: the output folder, or its --overwrite staging folder
    model_sha256: str
    opts: InferOptions
    skip_bad: bool


# ------------------------------------------------------------------------------------------ planning


def chunk_ids(path: Path) -> list[str] | None:
    """A chunk's frame ids (its small ``frame_id`` member only), None when they do not read."""
    from ..data.chunk import load_npz

    try:
        ids = load_npz(path, ChunkError, keys=("frame_id",)).get("frame_id")
    except ChunkError:
        return None
    return [str(i) for i in ids] if ids is not None and ids.ndim == 1 and ids.dtype.kind == "U" else None


def _pieces(job: InferJob) -> Iterator[tuple[str, list[str] | None, list]]:
    """(source, frame ids or None, raw frame paths) of every shard, in input order."""
    if job.source == KIND_CHUNK:
        from ..data.chunk import list_chunks

        for cf in list_chunks(job.data):          # the manifest checks one machine makes
            yield str(cf), chunk_ids(cf), []
        return
    from ..data.a2d2 import find_frames

    run: list = []
    for paths in find_frames(job.data):
        if run and (len(run) == RAW_SHARD_FRAMES or run[-1].scene != paths.scene):
            yield job.data, [p.key for p in run], run
            run = []
        run.append(paths)
    if run:
        yield job.data, [p.key for p in run], run


def plan_shards(job: InferJob) -> list[InferShard]:
    """The shards in input order, every frame named as one machine names it, cut at ``job.limit`` frames."""
    from .results import unique_name

    used: set[str] = set()
    left = job.limit
    shards: list[InferShard] = []
    for source, ids, raw in _pieces(job):
        if left is not None and left <= 0:
            break
        if ids is not None and left is not None:
            ids, raw, left = ids[:left], raw[:left], left - min(left, len(ids))
        names = tuple(unique_name(i, used) for i in ids or ())
        shards.append(InferShard(len(shards), source, names, tuple(ids or ()), tuple(raw), listed=ids is not None))
    return shards


def keep_finished(shards: list[InferShard], results: ResultSet, cfg: Config, opts: InferOptions
                  ) -> tuple[list[InferShard], dict[str, dict]]:
    """``--resume``: the frames an earlier run finished (their JSON by name) and the shards with what is left."""
    kept: dict[str, dict] = {}
    out = []
    for sh in shards:
        for name, fid in zip(sh.names, sh.frame_ids):
            doc = results.finished(name, fid, accept=lambda d: keeps(d, cfg, opts))
            if doc is not None:
                kept[name] = doc
        out.append(replace(sh, todo=frozenset(n for n in sh.names if n not in kept)))
    return out, kept


# ------------------------------------------------------------------------------------------ workers


class InferWorker:
    """A Ray actor: the model opened once, then shard after shard (``run``). Errors come back as
    ``fleet.call_safely`` tuples, so the driver raises mtl's own one-line errors."""

    def __init__(self, model: str, backend: str, threads: int, overrides: dict, cwd: str):
        from .pipeline import Pipeline

        if os.path.isdir(cwd):
            os.chdir(cwd)                 # the user's relative paths mean what they mean on the driver
        self.pipe, self.failure = None, None
        try:
            self.pipe = Pipeline.open(model, backend, threads)
            self.pipe.set_decode(**overrides)
        except MtlError as e:
            self.failure = ("error", type(e).__name__, e.path, e.reason)

    def info(self) -> tuple:
        if self.failure is not None:
            return self.failure
        p = self.pipe
        return ("ok", {"cfg": p.cfg, "describe": p.describe(), "fallback": p.fallback})

    def run(self, shard: InferShard, job: WorkerJob) -> tuple:
        from ..fleet import call_safely

        return call_safely(run_shard, self.pipe, shard, job)


def run_shard(pipe: Any, shard: InferShard, job: WorkerJob) -> dict:
    """Worker: the shard's frames in order -> ``{"events": [...], "files": {name: (size, sha256)}}``; an event
    is ``("kept", name)``, ``("frame", name, summary fields, timings)`` or ``("skip", kind, reason, log line)``."""
    from ..fleet import fault_point

    fault_point(shard.index, Path(job.dest))
    writer = ResultSet.writer(Path(job.dest), job.model_sha256, job.opts.overlay)
    events: list[tuple] = []
    for name, frame in shard_frames(pipe.cfg, shard, job, events):
        if frame is None:
            events.append(("kept", name))
        elif frame_modality(frame) is None:
            events.append(("skip", NO_INPUT, None, None))
        else:
            events.append(run_one(pipe, frame, name, job, writer))
    return {"events": events, "files": writer.files}


def run_one(pipe: Any, frame: RuntimeFrame, name: str, job: WorkerJob, writer: ResultSet) -> tuple:
    """One frame, as ``infer._run_frames`` runs it: written, or (``--skip-bad``) a bad frame skipped."""
    try:
        made = infer_frame(pipe, frame, name, job.model_sha256, job.opts)
    except (DataError, ChunkError) as e:
        if not job.skip_bad:
            raise
        return ("skip", "bad frame", str(e), f"skipped bad frame: {e}")
    writer.write_frame(name, made.images, made.doc)
    return ("frame", name, {k: made.doc[k] for k in SUMMARY_KEYS if k in made.doc}, made.timings_ms)


def shard_frames(cfg: Config, shard: InferShard, job: WorkerJob, events: list
                 ) -> Iterator[tuple[str, RuntimeFrame | None]]:
    """(name, frame) of the shard in order; frame None: kept from an earlier run (not read). A chunk / raw
    frame that does not read raises, or (``--skip-bad``) becomes a skip event, as on one machine."""
    from .frames import chunk_frames, raw_camera, raw_frame

    wanted = (lambda n: True) if shard.todo is None else shard.todo.__contains__
    if shard.raw:
        root = Path(shard.source)
        camera = raw_camera(root, cfg)
        for name, paths in zip(shard.names, shard.raw):
            if not wanted(name):
                yield name, None
                continue
            try:
                frame = raw_frame(root, paths, camera, cfg, job.opts.evaluate)
            except DataError as e:
                if not job.skip_bad:
                    raise
                events.append(("skip", "bad frame", str(e), f"skipped bad frame: {e}"))
                continue
            yield name, frame
        return
    from ..data.chunk import read_chunk

    try:
        chunk = read_chunk(shard.source)
    except ChunkError as e:
        if not job.skip_bad:
            raise
        events.append(("skip", "bad chunk", str(e), f"skipped bad chunk: {e}"))
        return
    if not shard.listed or [str(i) for i in chunk.frame_ids[:len(shard.names)]] != list(shard.frame_ids):
        raise ChunkError(shard.source, CHANGED)
    for name, frame in zip(shard.names, chunk_frames(chunk, shard.source, job.opts.evaluate)):
        yield name, (frame if wanted(name) else None)


# ------------------------------------------------------------------------------------------ driver


@dataclass
class WorkerPool:
    actors: list
    info: dict                        # cfg, describe, fallback of the first actor (all open the same model)
    threads: int
    gpus: int

    @classmethod
    def start(cls, job: InferJob, window: int) -> WorkerPool:
        """``window`` actors (fewer: one per GPU for the GPU backends), each with the model open."""
        from ..errors import BackendUnavailableError
        from ..fleet import MAX_RETRIES, import_ray, unwrap, worker_env

        ray = import_ray()
        from ray.exceptions import RayError

        have = int(ray.cluster_resources().get("GPU", 0))
        gpus = 1 if job.backend in GPU_BACKENDS or (job.backend == "auto" and have) else 0
        if gpus and not have:
            raise BackendUnavailableError(job.model, f"--backend {job.backend} needs a GPU; the Ray cluster has none "
                                                     "(use --backend onnxruntime, or a cluster with GPU nodes)")
        n = min(window, have) if gpus else window
        threads = job.threads or 1
        remote = ray.remote(InferWorker).options(num_cpus=1, num_gpus=gpus, max_restarts=MAX_RETRIES,
                                                 max_task_retries=MAX_RETRIES,
                                                 runtime_env={"env_vars": worker_env()})
        actors = [remote.remote(job.model, job.backend, threads, job.overrides, os.getcwd()) for _ in range(n)]
        pool = cls(actors, {}, threads, gpus)
        try:
            infos = [unwrap(r) for r in ray.get([a.info.remote() for a in actors])]
        except RayError as e:
            pool.stop()
            raise BackendUnavailableError(job.model, f"ray: a worker could not open the model ({e})") from None
        except BaseException:
            pool.stop()
            raise
        pool.info = infos[0]
        return pool

    def run(self, shards: list[InferShard], job: WorkerJob, on_done: Callable[[InferShard, dict], None]) -> None:
        """Every shard on a free actor (one shard per actor at a time); ``on_done`` in completion order."""
        from ..fleet import run_tasks

        free, busy = list(self.actors), {}

        def submit(shard: InferShard) -> Any:
            busy[shard.index] = actor = free.pop()
            return actor.run.remote(shard, job)

        def done(shard: InferShard, value: dict) -> None:
            free.append(busy.pop(shard.index))
            on_done(shard, value)

        run_tasks(submit, shards, len(self.actors), done, "shard")

    def stop(self) -> None:
        from ..fleet import import_ray

        ray = import_ray()
        for a in self.actors:
            ray.kill(a)


def merge_shard(value: dict, kept: dict[str, dict], tally: Tally, results: ResultSet, log: Log | None) -> None:
    """One shard's return into the run's tally and manifest, in its frames' order."""
    results.files.update(value["files"])
    for ev in value["events"]:
        if ev[0] == "kept":
            tally.add(ev[1], kept[ev[1]], None)
        elif ev[0] == "frame":
            tally.add(ev[1], ev[2], ev[3])
        else:
            _, kind, reason, line = ev
            tally.skip(kind, reason)
            if line and log:
                log(line)


def run_shards(job: InferJob, pool: WorkerPool, results: ResultSet, cfg: Config, address: str, progress: bool,
               log: Log | None) -> tuple[Tally, dict]:
    """Plan, keep what an earlier run finished, run the rest on the pool, merge in shard order."""
    from ..fleet import progress_bar
    from ..io import write_point
    from .scoring import Scorer

    shards, kept = keep_finished(plan_shards(job), results, cfg, job.opts)
    todo = [s for s in shards if s.needs_run()]
    tally = Tally(scorer=Scorer(cfg) if job.opts.evaluate else None)
    waiting: dict[int, dict] = {s.index: {"events": [("kept", n) for n in s.names], "files": {}}
                                for s in shards if not s.needs_run()}
    merged = 0

    def flush() -> None:
        nonlocal merged
        while merged in waiting:
            merge_shard(waiting.pop(merged), kept, tally, results, log)
            merged += 1

    with progress_bar(sum(len(s.names) for s in shards), "frame", "infer", progress) as bar:
        bar.update(sum(len(shards[i].names) for i in waiting))
        flush()

        def shard_done(shard: InferShard, value: dict) -> None:
            write_point(f"shard {shard.index} written")
            waiting[shard.index] = value
            flush()
            bar.update(len(shard.names))

        pool.run(todo, WorkerJob(str(results.dest), job.model_sha256, job.opts, job.skip_bad), shard_done)
    fleet = {"engine": "ray", "ray": address, "workers": len(pool.actors), "threads_per_worker": pool.threads,
             "gpus_per_worker": pool.gpus, "shards": len(shards), "shards_kept": len(shards) - len(todo),
             "shards_run": len(todo)}
    return tally, {"fleet": fleet}


def infer_on_ray(job: InferJob, address: str, workers: int | None, progress: bool, log: Log | None,
                 note: Log | None) -> dict:
    """``infer_directory`` on Ray (module docstring): connect, start the actors, write the set."""
    from ..fleet import ray_cluster

    with ray_cluster(address, workers) as window:
        pool = WorkerPool.start(job, window)
        try:
            info = pool.info
            if info["fallback"] and note:
                note(f"note: {info['fallback']}")
            described = {**info["describe"], "model": str(Path(job.model))}     # as one machine's spec.path
            summary = write_results(job, info["cfg"], described, lambda results: run_shards(
                job, pool, results, info["cfg"], address, progress, log))
        finally:
            pool.stop()
    return summary


__all__ = ["RAW_SHARD_FRAMES", "InferShard", "InferWorker", "WorkerPool", "infer_on_ray", "keep_finished",
           "plan_shards", "run_shard"]
