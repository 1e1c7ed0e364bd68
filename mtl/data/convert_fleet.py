"""``mtl data convert --ray``: the conversion sharded over a Ray cluster, resumable, with the very chunks one
machine writes. Torch-free; ray is imported through ``mtl.fleet`` only when asked for.

Shards are the frames in convert's order ((scene, frame id)), cut at every scene (drive) and every ``chunk_size``
frames: many small tasks balance a cluster better than one task per drive, and none is larger than a chunk.

1. A task per shard converts its frames (``convert_frame.load_frame``, the code one machine runs) into
   ``STAGE/shards/shard_<i>.npz`` (chunk format) and records ``shard_<i>.json`` LAST: frame ids, bad files
   (``--skip-bad``), statistics, and the fingerprint of its raw files (path, size, mtime).
2. Chunk boundaries follow from the recorded frame counts exactly as one machine cuts them (``chunk_size``
   frames in order, whatever ``--skip-bad`` dropped); a task per chunk copies its frames out of the shard files
   into ``STAGE/chunk_<k>.npz`` (``write_chunk``: same arrays, same member order, fixed zip timestamps: the same
   bytes) and records ``chunks/chunk_<k>.json`` (size, sha256, the shard files it came from).
3. The driver writes summary.json and manifest.json (from the recorded sizes and hashes: it never reads the
   chunks) and switches the set in with one ``io.commit_files``, as one machine does.

``STAGE`` is ``OUT/.convert-fleet-<key>``, ``key`` a hash of everything that shapes the chunks (source, options,
classes, camera, versions). It survives a failed, interrupted or killed run: the same command again reuses every
recorded shard whose raw files are unchanged and every recorded chunk whose shard files are, and runs the rest.
A successful commit removes it, as does any later successful convert of OUT (then it is stale).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import ClassesConfig, sha256_file
from ..io import remove_stale_temps, write_json_atomic, write_point
from .chunk import read_chunk, write_chunk
from .convert_frame import Totals, bad_record, chunk_name, run_job

FLEET_PREFIX = ".convert-fleet-"
SHARDS, CHUNKS = "shards", "chunks"


@dataclass(frozen=True)
class Shard:
    index: int
    jobs: tuple                     # convert_frame.FrameJob, in convert's order
    fingerprint: str


@dataclass(frozen=True)
class ChunkPlan:
    index: int
    name: str
    slices: tuple                   # ((shard index, first frame, end frame, shard file sha256), ...)


# ------------------------------------------------------------------------------------------ planning


def staging_key(meta: dict, chunk_size: int, skip_bad: bool) -> str:
    doc = json.dumps({"meta": meta, "chunk_size": chunk_size, "skip_bad": skip_bad}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def plan_shards(jobs: list, chunk_size: int) -> list[Shard]:
    """Consecutive runs of at most ``chunk_size`` jobs of one scene, in order."""
    runs: list[list] = []
    for job in jobs:
        if not runs or len(runs[-1]) == chunk_size or runs[-1][-1].paths.scene != job.paths.scene:
            runs.append([])
        runs[-1].append(job)
    return [Shard(i, tuple(run), fingerprint(run)) for i, run in enumerate(runs)]


def fingerprint(jobs: list) -> str:
    """What a shard's result depends on besides the options: its frames and their files' sizes and mtimes."""
    h = hashlib.sha256()
    for job in jobs:
        files = []
        for kind in ("camera", "label", "lidar", "label3D"):
            p = getattr(job.paths, kind)
            if p is not None:
                st = p.stat()
                files.append([kind, str(p), st.st_size, st.st_mtime_ns])
        h.update(json.dumps([job.paths.key, files]).encode())
    return h.hexdigest()


def plan_chunks(records: list[dict], chunk_size: int) -> list[ChunkPlan]:
    """Chunk ``k`` holds frames ``k * chunk_size ...`` of the shards' frames in order (what one machine writes)."""
    plans: list[ChunkPlan] = []
    current: list[tuple] = []
    filled = 0
    for rec in records:
        n, start = len(rec["frames"]), 0
        while start < n:
            take = min(n - start, chunk_size - filled)
            current.append((rec["shard"], start, start + take, rec["partial"]["sha256"]))
            start, filled = start + take, filled + take
            if filled == chunk_size:
                plans.append(ChunkPlan(len(plans), chunk_name(len(plans)), tuple(current)))
                current, filled = [], 0
    if current:
        plans.append(ChunkPlan(len(plans), chunk_name(len(plans)), tuple(current)))
    return plans


# ------------------------------------------------------------------------------------ tasks (workers)


def shard_name(index: int) -> str:
    return f"shard_{index:05d}"


def convert_shard(shard: Shard, stage: str, skip_bad: bool) -> dict:
    """Worker: convert one shard's frames into its shard file, then record it (last). A bad file raises its
    ``DataError`` unless ``skip_bad``; the record is what the driver and a rerun read."""
    from ..fleet import fault_point

    root = Path(stage) / SHARDS
    fault_point(shard.index, Path(stage))
    frames, bad = [], []
    totals = Totals(shard.jobs[0].classes)
    for job in shard.jobs:
        res = run_job(job)
        record = bad_record(job, res, skip_bad)
        if record:
            bad.append(record)
            continue
        totals.add(res[1], res[2])
        frames.append(res[1])
    partial = None
    if frames:
        path = root / f"{shard_name(shard.index)}.npz"
        write_chunk(path, frames, {"shard": shard.index})
        partial = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    record = {"shard": shard.index, "fingerprint": shard.fingerprint, "frames": [f.frame_id for f in frames],
              "partial": partial, "bad": bad, "totals": totals.state()}
    write_json_atomic(root / f"{shard_name(shard.index)}.json", record)
    return record


def assemble_chunk(plan: ChunkPlan, stage: str, meta: dict) -> dict:
    """Worker: copy the chunk's frames out of the shard files into ``STAGE/<chunk name>``, then record it."""
    from ..fleet import fault_point

    stage_dir = Path(stage)
    fault_point(100000 + plan.index, stage_dir)          # chunk tasks: MTL_FAULT_SHARD=100000+k
    frames, opened = [], {}
    for shard, start, end, _ in plan.slices:
        if shard not in opened:
            opened[shard] = read_chunk(stage_dir / SHARDS / f"{shard_name(shard)}.npz")
        frames += [opened[shard].frame(i) for i in range(start, end)]
    path = stage_dir / plan.name
    write_chunk(path, frames, {**meta, "chunk_index": plan.index})
    record = {"chunk": plan.index, "name": plan.name, "slices": [list(s) for s in plan.slices],
              "frames": len(frames), "size": path.stat().st_size, "sha256": sha256_file(path)}
    write_json_atomic(stage_dir / CHUNKS / f"{plan.name[:-4]}.json", record)
    return record


# ------------------------------------------------------------------------------------------- driver


def _read_record(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def finished_shard(stage: Path, shard: Shard) -> dict | None:
    """The shard's record when a run already converted it from the same raw files (its file still complete)."""
    rec = _read_record(stage / SHARDS / f"{shard_name(shard.index)}.json")
    if rec is None or rec.get("fingerprint") != shard.fingerprint or rec.get("shard") != shard.index:
        return None
    part = rec.get("partial")
    if part is None:
        return rec if not rec.get("frames") else None
    p = stage / SHARDS / f"{shard_name(shard.index)}.npz"
    return rec if p.is_file() and p.stat().st_size == part.get("size") else None


def finished_chunk(stage: Path, plan: ChunkPlan) -> dict | None:
    rec = _read_record(stage / CHUNKS / f"{plan.name[:-4]}.json")
    if rec is None or rec.get("slices") != [list(s) for s in plan.slices]:
        return None
    p = stage / plan.name
    return rec if p.is_file() and p.stat().st_size == rec.get("size") else None


def prepare_stage(out: Path, key: str) -> Path:
    """This job's staging folder (kept from an earlier run of the same job); other jobs' folders are stale."""
    stage = out / f"{FLEET_PREFIX}{key}"
    for other in out.glob(f"{FLEET_PREFIX}*"):
        if other != stage:
            shutil.rmtree(other, ignore_errors=True)
    for d in (stage, stage / SHARDS, stage / CHUNKS):
        d.mkdir(exist_ok=True)
        remove_stale_temps(d)
    return stage


@dataclass
class FleetResult:
    names: list[tuple[str, int]]     # (chunk name, frames) in order
    entries: dict[str, dict]         # chunk name -> manifest entry (name, size, sha256)
    records: list[dict]              # shard records in order
    counts: dict[str, int]


def run_fleet(shards: list[Shard], stage: Path, meta: dict, chunk_size: int, skip_bad: bool, window: int,
              progress: bool, log: Callable[[str], None]) -> FleetResult:
    """Phases 1 and 2 (module docstring) on the connected cluster; finished work of earlier runs is reused."""
    from ..fleet import progress_bar, remote, run_tasks

    task = remote()
    records: dict[int, dict] = {}
    todo = []
    for shard in shards:
        rec = finished_shard(stage, shard)
        if rec is None:
            todo.append(shard)
        else:
            records[shard.index] = rec
    counts = {"shards": len(shards), "shards_reused": len(records), "shards_run": len(todo)}

    with progress_bar(sum(len(s.jobs) for s in shards), "frame", "convert", progress) as bar:
        bar.update(sum(len(shards[i].jobs) for i in records))

        def shard_done(shard: Shard, rec: dict) -> None:
            records[shard.index] = rec
            for b in rec["bad"]:
                log(f"warning: skipping frame {b['frame']}: {b['path']}: {b['reason']}")
            write_point(f"shard {shard.index} recorded")
            bar.update(len(shard.jobs))

        run_tasks(lambda s: task.remote(convert_shard, s, str(stage), skip_bad), todo, window, shard_done, "shard")
    ordered = [records[s.index] for s in shards]

    plans = plan_chunks(ordered, chunk_size)
    done: dict[int, dict] = {}
    for plan in plans:
        rec = finished_chunk(stage, plan)
        if rec is not None:
            done[plan.index] = rec
    missing = [p for p in plans if p.index not in done]
    counts.update(chunks=len(plans), chunks_reused=len(done), chunks_run=len(missing))
    with progress_bar(len(plans), "chunk", "assemble", progress) as bar:
        bar.update(len(done))

        def chunk_done(plan: ChunkPlan, rec: dict) -> None:
            done[plan.index] = rec
            write_point(f"chunk {plan.index} assembled")
            bar.update(1)

        run_tasks(lambda p: task.remote(assemble_chunk, p, str(stage), meta), missing, window, chunk_done, "chunk")
    names = [(p.name, done[p.index]["frames"]) for p in plans]
    entries = {p.name: {"name": p.name, "size": done[p.index]["size"], "sha256": done[p.index]["sha256"]}
               for p in plans}
    return FleetResult(names, entries, ordered, counts)


def merge_records(records: list[dict], classes: ClassesConfig, skipped: dict[str, int]):
    """(bad files in frame order, summed statistics) of the shard records; bad kinds counted into ``skipped``."""
    totals = Totals(classes)
    bad_files = []
    for rec in records:
        totals.merge_state(rec["totals"])
        for b in rec["bad"]:
            skipped[f"bad {b['kind']}"] = skipped.get(f"bad {b['kind']}", 0) + 1
            bad_files.append({"frame": b["frame"], "path": b["path"], "reason": b["reason"]})
    return bad_files, totals


__all__ = ["FLEET_PREFIX", "FleetResult", "merge_records", "plan_chunks", "plan_shards", "prepare_stage",
           "run_fleet", "staging_key"]
