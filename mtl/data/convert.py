"""Raw A2D2 tree -> NPZ chunks (``mtl data convert``). Torch-free.

Frames are taken in (scene, frame id) order and written ``chunk_size`` at a time as
``DIR/chunk_00000.npz``, ... plus ``DIR/summary.json``. Images are stored undistorted and resized to
``camera.image_hw`` (or the original resolution) with the matching scaled intrinsics.

Modalities: by default a frame needs camera, label, lidar and label3D; others are skipped and counted per
reason ("missing lidar+label3D"). With ``partial`` a frame is kept when it has a camera image or LiDAR, and
the chunk ``modality_mask`` records what it has (a label PNG without its camera image is not stored: the
semantic map must align with a stored image).

Output safety: one convert per DIR at a time (``DIR/.mtl.lock``). Chunks, ``summary.json`` and
``manifest.json`` (names, sizes, sha256 of the set; written last) are written to a hidden staging folder
inside DIR and switched into place by one journaled commit (``io.commit_files``) only after the whole
conversion succeeded: a failed, interrupted (Ctrl-C, SIGTERM) or killed run leaves an existing DIR as it
was, or, killed during the commit itself, with a journal that readers refuse and the next convert rolls
forward. With ``overwrite`` old ``chunk_*.npz`` the new set lacks are removed by that commit, never before.
Staging folders of dead runs are removed when the next convert starts; worker processes die with the
parent (``output.die_with_parent``).
"""
from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

from .. import __version__
from ..config import CameraConfig, ClassesConfig, Config, a2d2_classes
from ..errors import ConfigError, DataError, OutputError
from ..io import OutputLock, commit_files, pending_commit, recover_commit, remove_stale_temps, write_json_atomic
from ..limits import limits
from .a2d2 import RawFramePaths, find_frames, read_camera_config, read_json
from .chunk import INTERRUPTED, MANIFEST, Frame, make_manifest, write_chunk
from .convert_fleet import FLEET_PREFIX
from .convert_frame import FrameJob, Totals, bad_record, chunk_name, run_job, select_frame
from .output import (
    cleanup_staging,
    die_with_parent,
    drop_if_only_lock,
    remove_stale_staging,
    signals_deferred,
    sigterm_as_interrupt,
)

# bump when the same raw input would produce different chunk contents
CONVERTER_VERSION = 1
CHUNK_PATTERN = "chunk_*.npz"


def _make_pool(workers: int, log: Callable[[str], None]) -> ProcessPoolExecutor | None:
    """A started worker pool, or None (convert in this process) when workers cannot start.

    fork is fast and needs no importable ``__main__`` (stdin, notebooks) but is only safe while this process
    has a single thread; otherwise spawn, which re-imports the caller's main module."""
    method = "fork" if threading.active_count() == 1 and "fork" in get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context(method), initializer=die_with_parent,
                               initargs=(os.getpid(),))
    try:
        pool.submit(int).result()      # with fork, the first submit forks every worker
    except BrokenProcessPool as e:
        pool.shutdown(wait=True, cancel_futures=True)
        log(f"warning: {workers} worker processes could not start ({method}: {e}); converting in this process")
        return None
    return pool


def _results(jobs: list[FrameJob], pool: ProcessPoolExecutor | None, window: int) -> Iterator[tuple]:
    """Results in job order (deterministic), at most ``window`` frames in flight."""
    if pool is None:
        yield from map(run_job, jobs)
        return
    for start in range(0, len(jobs), window):
        yield from pool.map(run_job, jobs[start: start + window])


# ------------------------------------------------------------------------------------ output dir


STAGING_PREFIX = ".convert-staging-"


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Under the output lock: finish a commit an earlier run was killed in, drop what dead runs left and refuse
    to replace a conversion without ``overwrite``."""
    recover_commit(out)
    remove_stale_temps(out)
    remove_stale_staging(out, STAGING_PREFIX)
    old = sorted(out.glob(CHUNK_PATTERN))
    if (old or (out / "summary.json").exists() or (out / MANIFEST).exists()) and not overwrite:
        raise OutputError(out, f"already holds a conversion ({len(old)} chunks); pass --overwrite to replace it "
                               "(the old one stays until the new one is complete)")


def _local_staging(out: Path) -> Path:
    """This run's hidden staging folder (a local convert never resumes: a dead run's folder is removed)."""
    staging = out / f"{STAGING_PREFIX}{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def _commit(staging: Path, out: Path, chunk_names: list[str], summary: dict, about: dict,
            known: dict[str, dict] | None = None) -> None:
    """Switch ``out`` to the new set in one commit: chunks, summary.json, manifest.json last; old chunks the
    new set lacks are removed by the commit itself (never before it). ``known``: manifest entries of chunks
    whose size and sha256 the writer already recorded (a fleet convert's workers)."""
    write_json_atomic(staging / "summary.json", summary)
    names = [*chunk_names, "summary.json"]
    write_json_atomic(staging / MANIFEST, make_manifest(staging, names, known=known, **about))
    old = [p.name for p in out.glob(CHUNK_PATTERN)] + ["summary.json", MANIFEST]
    commit_files(staging, out, [*names, MANIFEST], remove=old)


def _check_class_list(root: Path) -> None:
    """A dataset whose class_list.json disagrees with the packaged colour table would be mislabelled."""
    path = root / "class_list.json"
    if not path.is_file():
        return
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise DataError(path, f"not a colour -> class JSON object (got {type(doc).__name__})")
    theirs = {k.lower(): v for k, v in doc.items()}
    ours = a2d2_classes()["a2d2_colours"]
    diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    if diff:
        raise DataError(path, f"differs from mtl's packaged A2D2 colour table at {len(diff)} colours "
                              f"(e.g. {diff[0]}: {theirs.get(diff[0])!r} vs {ours.get(diff[0])!r})")


# ------------------------------------------------------------------------------------------ main


def resolve_image_hw(image_size: str | tuple[int, int] | None, camera: CameraConfig) -> tuple[int, int]:
    """``None`` -> camera.image_hw, ``"original"`` -> calibration resolution, ``"HxW"`` or (H, W)."""
    if image_size is None:
        return tuple(camera.image_hw)
    if isinstance(image_size, str):
        if image_size.lower() == "original":
            return (camera.resolution_wh[1], camera.resolution_wh[0])
        try:
            h, w = (int(v) for v in image_size.lower().split("x"))
        except ValueError:
            reason = f"--image-size must be HxW (e.g. 320x512) or 'original', got {image_size!r}"
            raise ConfigError(None, reason) from None
        image_size = (h, w)
    h, w = image_size
    return (int(h), int(w))      # range-checked by CameraConfig


def _default_log(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)


def _plan(root: Path, camera: CameraConfig, classes: ClassesConfig, partial: bool
          ) -> tuple[list[RawFramePaths], list[FrameJob], dict[str, int]]:
    """(frames found, the jobs to convert, skip reason -> count); DataError when nothing can be converted."""
    found = find_frames(root)
    if not found:
        raise DataError(root, "no front-centre frames found (expected <scene>/<camera|label|lidar|label3D>/"
                              "cam_front_center/<scene14>_<kind>_frontcenter_<id9>.<ext>)")
    skipped: dict[str, int] = {}
    jobs: list[FrameJob] = []
    for paths in found:
        chosen, reason = select_frame(paths, partial)
        if chosen is None:
            skipped[reason] = skipped.get(reason, 0) + 1
        else:
            jobs.append(FrameJob(chosen, camera, classes))
    if not jobs:
        raise DataError(root, f"no frame could be converted: {len(found)} found, skipped {_fmt_counts(skipped)}"
                              + ("" if partial else "; --partial keeps frames that have a camera image or LiDAR"))
    return found, jobs, skipped


def _inputs(root: Path, cfg: Config, image_size: str | tuple[int, int] | None, partial: bool
            ) -> tuple[CameraConfig, list[RawFramePaths], list[FrameJob], dict[str, int], dict]:
    """Check the raw tree and plan the work: (camera, frames found, jobs, skip counts, chunk meta)."""
    limits()                               # a bad MTL_MAX_* value: refused here, not once per frame in a worker
    if not root.is_dir():
        raise DataError(root, "A2D2 root is not a directory")
    if pending_commit(root):               # e.g. an `mtl data synth` killed while it switched its tree
        raise DataError(root, INTERRUPTED)
    camera = read_camera_config(root / "cams_lidars.json", cfg.camera.name, cfg.camera)
    camera = replace(camera, image_hw=resolve_image_hw(image_size, camera))
    _check_class_list(root)
    found, jobs, skipped = _plan(root, camera, cfg.classes, partial)
    meta = {
        "source": "a2d2", "source_root": str(root.resolve()), "converter": "mtl.data.convert",
        "converter_version": CONVERTER_VERSION, "mtl_version": __version__, "partial": partial,
        "sem_classes": list(cfg.classes.sem_classes), "det_classes": list(cfg.classes.det_classes),
        "ignore_index": cfg.classes.ignore_index, "image_hw": list(camera.image_hw),
        "camera": camera.to_dict(),
        "classes": cfg.classes.to_dict(),
    }
    return camera, found, jobs, skipped, meta


def convert(
    root: str | Path, out: str | Path, cfg: Config | None = None, *, chunk_size: int = 64,
    image_size: str | tuple[int, int] | None = None, partial: bool = False, skip_bad: bool = False,
    overwrite: bool = False, workers: int | None = None, progress: bool = True,
    log: Callable[[str], None] = _default_log, ray_address: str | None = None, ray_workers: int | None = None,
) -> dict:
    """Convert the raw A2D2 tree ``root`` into chunks under ``out``; returns the summary (also written to
    ``out/summary.json``). Raises ``DataError`` on a bad file (unless ``skip_bad``) or when no frame could
    be converted, ``ConfigError`` on bad options, ``OutputError`` when ``out`` holds a conversion (without
    ``overwrite``) or another convert is writing it; in every case ``out`` is left as it was.

    ``ray_address`` (``"local"`` or a cluster address) converts on Ray instead of ``workers`` local processes
    (``mtl.data.convert_fleet``): the same chunks, ``ray_workers`` tasks in flight, and a failed or killed run
    leaves its finished shards for the same call to resume; ``BackendUnavailableError`` without ray."""
    t0 = time.perf_counter()
    cfg = cfg or Config()
    root, out = Path(root), Path(out)
    if chunk_size < 1:
        raise ConfigError(None, f"--chunk-size must be >= 1, got {chunk_size}")
    if ray_address is not None:
        from ..fleet import import_ray

        if workers is not None:
            raise ConfigError(None, "--workers sets local worker processes; with --ray use --ray-workers")
        import_ray()                       # without ray: one line, before anything is read or written
    elif ray_workers is not None:
        raise ConfigError(None, "--ray-workers needs --ray ADDRESS|local")
    workers = max(1, workers if workers is not None else min(2, os.cpu_count() or 1))
    camera, found, jobs, skipped, meta = _inputs(root, cfg, image_size, partial)
    if out.exists() and not out.is_dir():
        raise OutputError(out, "output exists and is not a directory")
    created = not out.exists()
    options = {"chunk_size": chunk_size, "image_hw": list(camera.image_hw), "partial": partial, "skip_bad": skip_bad,
               "workers": workers}
    with OutputLock(out, "mtl data convert"), sigterm_as_interrupt():
        staging, ok, fleet = None, False, None
        try:
            _prepare_out(out, overwrite)
            if ray_address is None:
                staging = _local_staging(out)
                names, bad_files, totals = _write_all(jobs, staging, meta, chunk_size, workers, skip_bad, skipped,
                                                      progress, log, cfg.classes)
                known = None
            else:
                staging, names, bad_files, totals, known, fleet = _write_on_ray(
                    ray_address, ray_workers, out, jobs, meta, chunk_size, skip_bad, skipped, progress, log,
                    cfg.classes)
                options.update(workers=fleet.pop("workers"), engine="ray", ray=ray_address)
            if not names:
                raise DataError(root, f"no frame could be converted: {len(found)} found, "
                                      f"skipped {_fmt_counts(skipped)}")
            summary = _summary(root, out, found, names, skipped, bad_files, totals, t0, len(jobs), options)
            if fleet is not None:
                summary["fleet"] = fleet
            about = {"written_by": "mtl data convert", "converter_version": CONVERTER_VERSION,
                     "source": summary["source"], "frames": summary["frames_written"]}
            with signals_deferred():
                _commit(staging, out, [name for name, _ in names], summary, about, known)
            ok = True
            for stale in out.glob(f"{FLEET_PREFIX}*"):     # a killed fleet run of other options: superseded now
                shutil.rmtree(stale, ignore_errors=True)
        finally:
            if ray_address is None:
                cleanup_staging(staging, out)   # a fleet stage stays: the same command resumes from it
            if not ok and created:
                drop_if_only_lock(out)
    for reason, n in sorted(skipped.items()):
        log(f"warning: skipped {n} frame(s): {reason}")
    return summary


def _write_on_ray(address: str, ray_workers: int | None, out: Path, jobs: list[FrameJob], meta: dict,
                  chunk_size: int, skip_bad: bool, skipped: dict[str, int], progress: bool,
                  log: Callable[[str], None], classes: ClassesConfig) -> tuple:
    """The fleet convert (``mtl.data.convert_fleet``): (stage, names, bad files, totals, manifest entries,
    fleet counts + the number of workers)."""
    from ..fleet import ray_cluster
    from .convert_fleet import merge_records, plan_shards, prepare_stage, run_fleet, staging_key

    shards = plan_shards(jobs, chunk_size)
    with ray_cluster(address, ray_workers) as window:
        stage = prepare_stage(out, staging_key(meta, chunk_size, skip_bad))
        res = run_fleet(shards, stage, meta, chunk_size, skip_bad, window, progress, log)
    bad_files, totals = merge_records(res.records, classes, skipped)
    return stage, res.names, bad_files, totals, res.entries, {**res.counts, "workers": window}


def _summary(root: Path, out: Path, found: list, names: list[tuple[str, int]], skipped: dict[str, int],
             bad_files: list[dict], totals: Totals, t0: float, n_jobs: int, options: dict) -> dict:
    elapsed = time.perf_counter() - t0
    written = sum(n for _, n in names)
    return {
        "source": str(root.resolve()), "out": str(out.resolve()), "converter_version": CONVERTER_VERSION,
        "mtl_version": __version__, "options": options,
        "frames_found": len(found), "frames_written": written, "frames_skipped": len(found) - written,
        "skipped": dict(sorted(skipped.items())), "bad_files": bad_files,
        "chunks": [{"file": name, "frames": n} for name, n in names],
        **totals.to_dict(),
        "elapsed_s": round(elapsed, 3), "seconds_per_frame": round(elapsed / max(1, n_jobs), 4),
    }


def _write_all(jobs: list[FrameJob], staging: Path, meta: dict, chunk_size: int, workers: int, skip_bad: bool,
               skipped: dict[str, int], progress: bool, log: Callable[[str], None],
               classes: ClassesConfig) -> tuple[list[tuple[str, int]], list[dict], Totals]:
    """Convert every job in order and write full chunks to ``staging``; bad files abort or are counted."""
    from tqdm import tqdm

    class Bar(tqdm):
        monitor_interval = 0       # no tqdm monitor thread: keeps this process forkable

    names: list[tuple[str, int]] = []
    bad_files: list[dict] = []
    totals = Totals(classes)
    buffer: list[Frame] = []

    def flush() -> None:
        name = chunk_name(len(names))
        write_chunk(staging / name, buffer, {**meta, "chunk_index": len(names)})
        names.append((name, len(buffer)))
        buffer.clear()

    window = max(chunk_size, 8 * workers)
    pool = _make_pool(workers, log) if workers > 1 and len(jobs) > 1 else None
    try:
        with Bar(total=len(jobs), unit="frame", desc="convert", disable=not progress, file=sys.stderr) as bar:
            for job, res in zip(jobs, _results(jobs, pool, window)):
                bar.update(1)
                bad = bad_record(job, res, skip_bad)
                if bad:
                    log(f"warning: skipping frame {job.paths.key}: {bad['path']}: {bad['reason']}")
                    kind = bad.pop("kind")
                    skipped[f"bad {kind}"] = skipped.get(f"bad {kind}", 0) + 1
                    bad_files.append(bad)
                    continue
                _, frame, stats = res
                totals.add(frame, stats)
                buffer.append(frame)
                if len(buffer) == chunk_size:
                    flush()
            if buffer:
                flush()
    finally:
        if pool is not None:
            # on an abort (bad file, Ctrl-C) do not wait for the queued rest of the window
            pool.shutdown(wait=True, cancel_futures=True)
    return names, bad_files, totals


def _fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items())) or "none"


def format_summary(summary: dict) -> str:
    """One readable line for the terminal."""
    s = summary
    skipped = f", skipped {s['frames_skipped']} ({_fmt_counts(s['skipped'])})" if s["frames_skipped"] else ""
    fleet = s.get("fleet")
    on = ""
    if fleet is not None:
        reused = f", {fleet['shards_reused']}/{fleet['shards']} shards kept from an earlier run" \
            if fleet["shards_reused"] else ""
        on = f" on Ray ({s['options']['workers']} workers{reused})"
    return (f"converted {s['frames_written']}/{s['frames_found']} frames into {len(s['chunks'])} chunk(s) "
            f"in {s['elapsed_s']:.1f} s{on}{skipped} -> {s['out']}")

