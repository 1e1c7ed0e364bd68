"""What ``mtl infer`` writes, as one set it can refuse, resume or replace. Torch-free.

Layout of ``--out`` (per-frame files live under ``frames/``, so no frame id, ``summary`` included, can collide
with the run's own files)::

    frames/<name>.json          detections, timing, frame_id, source, model_sha256 (the frame's commit marker)
    frames/<name>_sem.png       class ids at the model image size (for machines: looks black)
    frames/<name>_sem_color.png the same map in the class colours (for people)
    frames/<name>_overlay.png   with --overlay
    summary.json                the run: model, counts, skipped / bad frames, mean timings, frame names
    manifest.json               every file's name, size and sha256 and the model's sha256 (written last)
    .mtl.lock                   held while ``mtl infer`` writes here

``<name>`` is ``sanitise_frame_id(frame_id)`` (``_2``, ``_3``, ... when two ids sanitise alike). A frame's
images are written first and its JSON last: a frame without its JSON is not finished (``--resume`` redoes
it, and one that failed on a full disk has its images removed).

Modes: an absent or empty ``--out`` is written directly; anything else there is refused (``OutputError``,
exit 9) unless ``--resume`` (finished frames of the same model are kept, the others run; results of another
model are refused) or ``--overwrite`` (the new run is written into ``.infer-staging-<pid>/`` and replaces the
old results in one commit once complete: a killed run leaves the old results). ``--out`` equal to or
inside ``--data`` is refused.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, OutputError

FRAMES = "frames"
SUMMARY, MANIFEST = "summary.json", "manifest.json"
INFER_KIND = "mtl infer"
STAGING_PREFIX = ".infer-staging-"
IMAGE_SUFFIXES = ("_sem.png", "_sem_color.png", "_overlay.png")
MAX_FRAME_JSON = 16 << 20        # a frame's JSON is kilobytes (at most max_detections boxes)


def check_request(out: Path, data: str | Path, overwrite: bool, resume: bool) -> None:
    """Refusals that need no model and no lock: both modes at once, ``--out`` inside ``--data``, a non-empty
    ``--out`` without a mode (checked again under the lock)."""
    if overwrite and resume:
        raise ConfigError(None, "--overwrite and --resume exclude each other: replace the results, or continue them")
    root = Path(data).resolve()
    root = root.parent if root.is_file() else root
    o = out.resolve()
    if o == root or root in o.parents or (o / FRAMES) in (root, *root.parents):
        raise OutputError(out, f"lies inside the input data {data} (or holds it); choose an --out outside it")
    if not (overwrite or resume):
        refuse_existing(out)


def user_entries(out: Path) -> list[str]:
    """What ``out`` holds besides mtl's lock, temp files and staging folders."""
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if p.name != ".mtl.lock" and not p.name.startswith("."))


def refuse_existing(out: Path) -> None:
    entries = user_entries(out)
    if entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise OutputError(out, f"is not empty ({shown}); pass --resume to continue a run of the same model, "
                               "--overwrite to replace the results, or choose another --out")


def refuse_foreign(out: Path) -> None:
    """Another command's output (its manifest, chunks, a raw tree) is never resumed into or replaced."""
    man = out / MANIFEST
    kind = _json(man).get("kind") if man.is_file() else INFER_KIND
    if kind != INFER_KIND:
        raise OutputError(man, f"belongs to another command's output ({kind or 'unknown'}); choose another --out")
    for pattern in ("*.npz", "cams_lidars.json"):
        hit = next(out.glob(pattern), None)
        if hit is not None:
            raise OutputError(hit, "--out holds input data; choose another --out")


def _json(path: Path) -> dict:
    """A small JSON object written by mtl ({} when it does not read as one)."""
    try:
        if path.stat().st_size > MAX_FRAME_JSON:
            return {}
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return {}
    return doc if isinstance(doc, dict) else {}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class ResultSet:
    """The output of one ``mtl infer`` run: where its files go, which frames are already done (resume) and
    what it wrote (for the manifest). ``open`` prepares ``out`` under the caller's ``OutputLock``."""

    out: Path
    model_sha256: str
    overlay: bool
    mode: str                                   # "fresh" | "resume" | "overwrite"
    dest: Path = field(init=False)              # out, or the staging folder of --overwrite
    files: dict[str, tuple[int, str]] = field(default_factory=dict)   # "frames/x.json" -> (size, sha256)

    def __post_init__(self) -> None:
        self.dest = self.out / f"{STAGING_PREFIX}{os.getpid()}" if self.mode == "overwrite" else self.out

    @classmethod
    def open(cls, out: Path, model_sha256: str, overlay: bool, overwrite: bool, resume: bool) -> ResultSet:
        """Finish an interrupted commit, remove what dead runs left, then refuse / prepare per mode."""
        from ..io import recover_commit, remove_stale_temps, write_point

        recover_commit(out)
        for d in out.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(d, ignore_errors=True)          # the lock is ours: their writers are dead
        for d in (out, out / FRAMES):
            if d.is_dir():
                remove_stale_temps(d)
        existing = user_entries(out)
        mode = "overwrite" if overwrite and existing else "resume" if resume and existing else "fresh"
        if mode == "fresh":
            refuse_existing(out)
        else:
            refuse_foreign(out)
        rs = cls(out, model_sha256, overlay, mode)
        if mode == "resume":
            rs.refuse_other_model()
            for name in (MANIFEST, SUMMARY):                  # the set is incomplete again until this run ends
                if (out / name).exists():
                    (out / name).unlink()
                    write_point(f"remove {name}")
            rs.remove_unfinished()
        (rs.dest / FRAMES).mkdir(parents=True, exist_ok=True)
        return rs

    @classmethod
    def writer(cls, dest: Path, model_sha256: str, overlay: bool) -> ResultSet:
        """A worker's view of a set another process opened (``mtl infer --ray``): frames go into ``dest``
        (``out`` or its ``--overwrite`` staging folder), ``files`` records what it wrote for the driver."""
        rs = cls(dest, model_sha256, overlay, "fresh")
        rs.dest = dest
        return rs

    # ---------------------------------------------------------------------------------------- resume
    def refuse_other_model(self) -> None:
        """--resume continues results of this model only (each frame's JSON names its model)."""
        legacy = [p.name for p in self.out.glob("*_sem.png")]
        if legacy:
            raise OutputError(self.out, f"holds results in the layout of an older mtl ({legacy[0]}, no model "
                                        "recorded); use --overwrite to replace them")
        for j in sorted((self.out / FRAMES).glob("*.json")):
            sha = _json(j).get("model_sha256")
            if sha != self.model_sha256:
                raise OutputError(j, f"was written by model {str(sha)[:12]}..., not by this model "
                                     f"{self.model_sha256[:12]}...: --resume continues a run of the same model; "
                                     "use --overwrite to replace the results")

    def remove_unfinished(self) -> None:
        """Images of a frame whose JSON was never written (a killed run): the frame runs again."""
        for p in (self.out / FRAMES).glob("*.png"):
            stem = next((p.name[: -len(s)] for s in IMAGE_SUFFIXES if p.name.endswith(s)), None)
            if stem is None or not (p.parent / f"{stem}.json").is_file():
                p.unlink()

    def finished(self, name: str, frame_id: str, accept: Callable[[dict], bool] | None = None) -> dict | None:
        """The frame's JSON when --resume finds it done by this model (with every image asked for) and
        ``accept(doc)`` agrees (e.g. cut with the same settings); None: the frame runs (again)."""
        if self.mode != "resume":
            return None
        d = self.out / FRAMES
        doc = _json(d / f"{name}.json")
        if doc.get("model_sha256") != self.model_sha256 or doc.get("frame_id") != frame_id:
            return None
        images = [f"{name}_sem.png", f"{name}_sem_color.png"] + ([f"{name}_overlay.png"] if self.overlay else [])
        if not all((d / i).is_file() for i in images) or (self.overlay and doc.get("overlay_png") != images[-1]):
            return None
        if accept is not None and not accept(doc):
            return None
        for f in [f"{name}.json", *images, *([] if self.overlay else [f"{name}_overlay.png"])]:
            if (d / f).is_file():
                data = (d / f).read_bytes()
                self.files[f"{FRAMES}/{f}"] = (len(data), sha256_bytes(data))
        return doc

    # ---------------------------------------------------------------------------------------- writing
    def write_frame(self, name: str, images: dict[str, bytes], doc: dict) -> None:
        """The frame's images, then its JSON (its commit marker). A write that fails removes the images it
        left, so no image is ever found without its JSON as a finished frame."""
        from ..io import write_bytes_atomic, write_point

        d = self.dest / FRAMES
        if (d / f"{name}.json").exists():          # redone on resume: unfinished until the new JSON lands
            (d / f"{name}.json").unlink()
            write_point(f"remove {name}.json")
        written: list[Path] = []
        payload = {**{f"{name}{s}": data for s, data in images.items()},
                   f"{name}.json": (json.dumps(doc, indent=1) + "\n").encode()}
        try:
            for fname, data in payload.items():
                write_bytes_atomic(d / fname, data)
                written.append(d / fname)
                self.files[f"{FRAMES}/{fname}"] = (len(data), sha256_bytes(data))
        except BaseException:
            for p in written:
                p.unlink(missing_ok=True)
            raise

    def commit(self, summary: dict) -> None:
        """summary.json, then manifest.json (last): directly, or (--overwrite) the whole staging folder in one
        commit that also removes the old results the new run does not have."""
        from ..io import commit_files, write_bytes_atomic

        data = (json.dumps(summary, indent=1) + "\n").encode()
        write_bytes_atomic(self.dest / SUMMARY, data)
        self.files[SUMMARY] = (len(data), sha256_bytes(data))
        manifest = {"kind": INFER_KIND, "model": summary.get("model"), "model_sha256": self.model_sha256,
                    "data": summary.get("data"), "frames": summary.get("frames_written"),
                    "files": [{"name": n, "size": s, "sha256": h} for n, (s, h) in sorted(self.files.items())]}
        write_bytes_atomic(self.dest / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
        if self.mode != "overwrite":
            return
        (self.out / FRAMES).mkdir(exist_ok=True)
        # images before JSONs (a frame's JSON marks it finished), summary and manifest last
        names = sorted((n for n in self.files if n != SUMMARY), key=lambda n: (n.endswith(".json"), n))
        names += [SUMMARY, MANIFEST]
        commit_files(self.dest, self.out, names, remove=self.old_results())

    def old_results(self) -> list[str]:
        """Everything an earlier ``mtl infer`` wrote in ``out`` (also the flat layout of older versions)."""
        old = [f"{FRAMES}/{p.name}" for p in (self.out / FRAMES).iterdir() if p.is_file()]
        old += [n for n in (SUMMARY, MANIFEST) if (self.out / n).is_file()]
        for png in self.out.glob("*_sem.png"):
            stem = png.name[: -len("_sem.png")]
            old += [f for f in (png.name, f"{stem}.json", f"{stem}_overlay.png") if (self.out / f).is_file()]
        return old

    def abandon(self) -> None:
        """A run that stopped: --overwrite drops its staging folder (the old results stay); otherwise the
        finished frames stay for --resume."""
        from ..io import pending_commit

        if self.mode == "overwrite" and not pending_commit(self.out):
            shutil.rmtree(self.dest, ignore_errors=True)


def unique_name(frame_id: str, used: set[str]) -> str:
    """The frame's file stem: ``sanitise_frame_id``, with ``_2``, ``_3``... when another id sanitised alike."""
    from .frames import sanitise_frame_id

    base = name = sanitise_frame_id(frame_id)
    i = 1
    while name in used:
        i += 1
        name = f"{base}_{i}"
    used.add(name)
    return name


__all__ = ["FRAMES", "INFER_KIND", "MANIFEST", "SUMMARY", "ResultSet", "check_request", "unique_name"]
