"""NPZ chunk format (``format_version`` 1): K frames per ``.npz``, variable-length data concatenated with
(K+1,) int64 offsets. The key table is in docs/FORMAT.md. Torch-free.

Writers are atomic (temp file + rename). Readers never unpickle (``allow_pickle=False``) and validate
keys, dtypes, shapes, offsets and finiteness, raising ``ChunkError(path, reason)`` with one line.

Besides the required keys (``_REQUIRED``), an optional ``modality_mask`` uint8 (K,) with bits
1=image, 2=semantic, 4=lidar, 8=boxes for frames converted with ``--partial`` (a missing image/semantic
map is an empty byte range, missing LiDAR is 0 points, missing label3D is 0 boxes). Absent = all present.
"""
from __future__ import annotations

import json
import math
import zipfile
import zlib
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import sha256_file
from ..errors import ChunkError, DataError, MtlError
from ..io import atomic_path, decode_png, pending_commit, storage_error
from ..limits import Limits, limits, over_limit

FORMAT_VERSION = 1
HAS_IMAGE, HAS_SEMANTIC, HAS_LIDAR, HAS_BOXES = 1, 2, 4, 8
HAS_ALL = HAS_IMAGE | HAS_SEMANTIC | HAS_LIDAR | HAS_BOXES

# key -> (dtype kind check, ndim); offsets are checked separately
_REQUIRED = {
    "frame_id": ("U", 1),
    "image_png": (np.uint8, 1),
    "image_offsets": (np.int64, 1),
    "semantic_png": (np.uint8, 1),
    "semantic_offsets": (np.int64, 1),
    "points": (np.float32, 2),
    "point_offsets": (np.int64, 1),
    "boxes": (np.float32, 2),
    "box_offsets": (np.int64, 1),
    "box_class": (np.int16, 1),
    "cam_matrix": (np.float32, 3),
    "meta": ("U", 0),
}
_KEYS = (*_REQUIRED, "modality_mask")
MAX_FRAME_ID = 64           # characters; a format rule, the same on write and read


@dataclass
class Frame:
    """One frame as stored in a chunk (images still PNG-encoded)."""

    frame_id: str
    image_png: bytes
    semantic_png: bytes
    points: np.ndarray            # (N, 4) float32 x, y, z, reflectance 0..1
    boxes: np.ndarray             # (M, 7) float32 x, y, z, l, w, h, yaw
    box_class: np.ndarray         # (M,) int16, -1 = ignore
    cam_matrix: np.ndarray        # (3, 3) float32 intrinsics of the stored image
    modality_mask: int = HAS_ALL
    source: str = ""              # chunk path (for error messages)

    def image(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        if not self.modality_mask & HAS_IMAGE:
            raise ChunkError(self.source, f"frame {self.frame_id}: has no camera image")
        return self.decode(self.image_png, "image", "RGB")

    def semantic(self) -> np.ndarray:
        """(H, W) uint8 class ids (255 = ignore)."""
        if not self.modality_mask & HAS_SEMANTIC:
            raise ChunkError(self.source, f"frame {self.frame_id}: has no semantic map")
        return self.decode(self.semantic_png, "semantic", "L")

    def decode(self, data: bytes, what: str, mode: str | None = None) -> np.ndarray:
        """Decode one of this frame's PNGs (``mode`` None keeps the stored one). A PNG inside a chunk is
        chunk content: a bad one is a ChunkError (exit code 3) naming the frame, not a DataError."""
        try:
            return decode_png(data, self.source, mode)
        except DataError as e:
            raise ChunkError(self.source, f"frame {self.frame_id}: {what} {e.reason}") from None


@dataclass
class Chunk:
    path: str
    frame_ids: np.ndarray
    arrays: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frame_ids)

    def frame(self, i: int) -> Frame:
        a = self.arrays

        def sl(key: str, off: str) -> np.ndarray:
            return a[key][a[off][i]: a[off][i + 1]]

        mask = int(a["modality_mask"][i]) if "modality_mask" in a else HAS_ALL
        return Frame(
            frame_id=str(self.frame_ids[i]),
            image_png=sl("image_png", "image_offsets").tobytes(),
            semantic_png=sl("semantic_png", "semantic_offsets").tobytes(),
            points=sl("points", "point_offsets"),
            boxes=sl("boxes", "box_offsets"),
            box_class=sl("box_class", "box_offsets"),
            cam_matrix=a["cam_matrix"][i],
            modality_mask=mask,
            source=self.path,
        )

    def __iter__(self) -> Iterator[Frame]:
        return (self.frame(i) for i in range(len(self)))


def _concat(parts: Sequence[np.ndarray], dtype, width: int | None) -> tuple[np.ndarray, np.ndarray]:
    sizes = [len(p) for p in parts]
    offsets = np.zeros(len(parts) + 1, np.int64)
    np.cumsum(sizes, out=offsets[1:])
    shape = (0,) if width is None else (0, width)
    data = np.concatenate([np.asarray(p, dtype) for p in parts]) if parts else np.zeros(shape, dtype)
    if width is not None:
        data = data.reshape(-1, width)
    return data, offsets


def _check_frame(path: Path, f: Frame) -> None:
    """Refuse what ``read_chunk`` would reject, so a chunk that was written can always be read back."""
    def bad(reason: str) -> ChunkError:
        return ChunkError(path, f"frame {f.frame_id!r}: {reason}")

    if not isinstance(f.frame_id, str) or not 0 < len(f.frame_id) <= MAX_FRAME_ID:
        raise bad(f"frame_id must be a non-empty string of at most {MAX_FRAME_ID} characters")
    points, boxes = np.asarray(f.points), np.asarray(f.boxes)
    # explicit shapes: reshape(-1, 4) would silently scramble e.g. an (N, 3) array with N % 4 == 0
    if points.ndim != 2 or points.shape[1] != 4:
        raise bad(f"points has shape {points.shape}, expected (N, 4)")
    if boxes.ndim != 2 or boxes.shape[1] != 7:
        raise bad(f"boxes has shape {boxes.shape}, expected (M, 7)")
    if np.asarray(f.box_class).shape != (len(boxes),):
        raise bad(f"{len(boxes)} boxes but box_class has shape {np.asarray(f.box_class).shape}")
    if np.asarray(f.cam_matrix).shape != (3, 3):
        raise bad(f"cam_matrix has shape {np.asarray(f.cam_matrix).shape}, expected (3, 3)")
    for key, a in (("points", points), ("boxes", boxes), ("cam_matrix", f.cam_matrix)):
        if not np.isfinite(np.asarray(a, np.float32)).all():
            raise bad(f"{key} contains NaN or inf")
    if (boxes[:, 3:6] <= 0).any():
        raise bad("boxes have non-positive length/width/height")
    if not 0 <= f.modality_mask <= HAS_ALL:
        raise bad(f"modality_mask {f.modality_mask} is not a combination of the bits 1, 2, 4, 8")
    for bit, data, what in ((HAS_IMAGE, f.image_png, "image_png"), (HAS_SEMANTIC, f.semantic_png, "semantic_png")):
        flagged = bool(f.modality_mask & bit)
        if flagged != (len(data) > 0):
            raise bad(f"{what} is {len(data)} bytes but modality_mask says {'present' if flagged else 'absent'}")


def write_chunk(path: str | Path, frames: Sequence[Frame], meta: dict) -> Path:
    """Write frames to ``path`` atomically (np.savez, uncompressed: PNG payloads are already compressed)."""
    path = Path(path)
    if not frames:
        raise ChunkError(path, "refusing to write an empty chunk")
    for f in frames:
        _check_frame(path, f)
    arrays: dict[str, np.ndarray] = {}
    arrays["frame_id"] = np.array([f.frame_id for f in frames], dtype=f"<U{MAX_FRAME_ID}")
    img = [np.frombuffer(f.image_png, np.uint8) for f in frames]
    sem = [np.frombuffer(f.semantic_png, np.uint8) for f in frames]
    arrays["image_png"], arrays["image_offsets"] = _concat(img, np.uint8, None)
    arrays["semantic_png"], arrays["semantic_offsets"] = _concat(sem, np.uint8, None)
    arrays["points"], arrays["point_offsets"] = _concat([f.points.reshape(-1, 4) for f in frames], np.float32, 4)
    arrays["boxes"], arrays["box_offsets"] = _concat([f.boxes.reshape(-1, 7) for f in frames], np.float32, 7)
    arrays["box_class"], _ = _concat([f.box_class.reshape(-1) for f in frames], np.int16, None)
    arrays["cam_matrix"] = np.stack([np.asarray(f.cam_matrix, np.float32) for f in frames])
    masks = np.array([f.modality_mask for f in frames], np.uint8)
    if (masks != HAS_ALL).any():
        arrays["modality_mask"] = masks
    full_meta = {"format_version": FORMAT_VERSION, **meta}
    arrays["meta"] = np.array(json.dumps(full_meta))
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            try:
                np.savez(fh, **arrays)
            except ValueError as e:
                # Ctrl-C / SIGTERM inside zipfile's member write: numpy's cleanup then fails with "Can't close the
                # ZIP file while there is an open writing handle", which would hide the interrupt (exit 1)
                if e.__context__ is not None and not isinstance(e.__context__, Exception):
                    _drop_zip(e)
                    raise e.__context__ from None
                raise
    return path


def _drop_zip(err: BaseException) -> None:
    """Detach the ZipFile numpy left half-written (found in the traceback of ``err``) from its file, so that its
    ``__del__`` does not print a second error ("Exception ignored ...") after the one-line interrupt."""
    tb = err.__traceback__
    while tb is not None:
        z = tb.tb_frame.f_locals.get("zipf")
        if isinstance(z, zipfile.ZipFile):
            z._writing, z.fp = False, None
        tb = tb.tb_next


def _check_offsets(path: str, name: str, off: np.ndarray, k: int, total: int) -> None:
    if off.shape != (k + 1,):
        raise ChunkError(path, f"{name} has shape {off.shape}, expected ({k + 1},)")
    if off[0] != 0 or off[-1] != total:
        raise ChunkError(path, f"{name} must start at 0 and end at {total}, got {off[0]}..{off[-1]}")
    if (np.diff(off) < 0).any():
        raise ChunkError(path, f"{name} is not monotonic")


def npz_members(zf: zipfile.ZipFile, path: str | Path, error: type[MtlError], lim: Limits) -> dict:
    """{key: (zip member, shape, dtype)} of every array in an open ``.npz``, from the zip and ``.npy`` headers
    alone: nothing is decompressed beyond a header, and a member over the size cap, holding objects or
    declaring more bytes than it holds is refused before anything is allocated."""
    cap = lim.max_npz_member_bytes
    members = {}
    for info in zf.infolist():
        key = info.filename[:-4] if info.filename.endswith(".npy") else None
        if key is None:
            raise error(path, f"member {info.filename!r} is not an .npy array")
        if info.file_size > cap + 65536:           # 64 KiB: more than any .npy header
            raise error(path, f"member {key!r} is {info.file_size} bytes, {over_limit('max_npz_member_bytes', lim)}")
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise error(path, f"member {key!r} has .npy format version {version}, expected 1.0 or 2.0")
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
            header = f.tell()
        if dtype.hasobject:
            raise error(path, "contains object arrays (pickle is never loaded)")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > cap:
            raise error(path, f"member {key!r} {shape} {dtype} would take {nbytes} bytes, "
                              f"{over_limit('max_npz_member_bytes', lim)}")
        if nbytes > info.file_size - header:
            raise error(path, f"member {key!r} declares {nbytes} bytes of data but holds "
                              f"{info.file_size - header} (truncated or crafted npz)")
        members[key] = (info, shape, dtype)
    return members


def load_npz(path: str | Path, error: type[MtlError] = ChunkError, keys: Collection[str] | None = None,
             check: Callable[[dict], None] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` (only ``keys`` when given) without ever unpickling; any failure raises
    ``error(path, reason)``. Member sizes are checked from the headers first (``npz_members``), then
    ``check({key: (info, shape, dtype)})`` may refuse more (e.g. too many points) before anything is loaded."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except FileNotFoundError:
        raise error(path, "file not found") from None
    except OSError as e:
        raise storage_error(e, path) or error(path, f"cannot read ({e})") from None
    if not magic:
        raise error(path, "file is empty (0 bytes)")
    # np.load treats unknown bytes as a pickle and then blames allow_pickle, which would be misleading
    if magic != b"PK\x03\x04":
        raise error(path, "not an npz (zip) file")
    lim = limits()
    try:
        with zipfile.ZipFile(path) as zf:
            members = npz_members(zf, path, error, lim)
            if check is not None:
                check(members)
            out = {}
            for key, (info, _, _) in members.items():
                if keys is None or key in keys:
                    with zf.open(info) as f:
                        out[key] = np.lib.format.read_array(f, allow_pickle=False)
            return out
    except MtlError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e) or "pickled" in str(e):
            raise error(path, "contains object arrays (pickle is never loaded)") from None
        raise error(path, f"not a readable npz ({e})") from None
    except OSError as e:
        raise storage_error(e, path) or error(path, f"corrupt or truncated npz ({type(e).__name__}: {e})") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, KeyError, NotImplementedError, RuntimeError) as e:
        raise error(path, f"corrupt or truncated npz ({type(e).__name__}: {e})") from None


def _check_per_frame(path: str, arrays: dict[str, np.ndarray], lim: Limits) -> None:
    """Points and boxes of each frame within the caps (the runtime rasterises one frame at a time)."""
    for key, off, cap in (("points", "point_offsets", "max_points"), ("boxes", "box_offsets", "max_boxes")):
        n = np.diff(arrays[off])
        if n.size and n.max() > getattr(lim, cap):
            i = int(np.argmax(n))
            raise ChunkError(path, f"frame {arrays['frame_id'][i]!s}: {int(n[i])} {key}, {over_limit(cap, lim)}")


def read_chunk(path: str | Path, check_finite: bool = True) -> Chunk:
    """Load and validate a chunk. Raises ``ChunkError`` naming the file and the first problem found."""
    path = str(path)
    members: set[str] = set()          # every member's name, from the headers (unknown ones are refused below)
    arrays = load_npz(path, ChunkError, keys=_KEYS, check=members.update)

    missing = [k for k in _REQUIRED if k not in arrays]
    if missing:
        raise ChunkError(path, f"missing keys {missing}")
    for key, (dtype, ndim) in _REQUIRED.items():
        a = arrays[key]
        if dtype == "U":
            if a.dtype.kind != "U":
                raise ChunkError(path, f"{key} has dtype {a.dtype}, expected a unicode string array")
        elif a.dtype != np.dtype(dtype):
            raise ChunkError(path, f"{key} has dtype {a.dtype}, expected {np.dtype(dtype)}")
        if a.ndim != ndim:
            raise ChunkError(path, f"{key} has {a.ndim} dims, expected {ndim}")
    meta = parse_meta(path, arrays["meta"])
    if meta.get("format_version") != FORMAT_VERSION:
        raise ChunkError(path, f"format_version {meta.get('format_version')!r}, this mtl reads {FORMAT_VERSION}")
    unknown = sorted(members - set(_KEYS))      # never loaded; refused so a chunk is exactly what it says
    if unknown:
        raise ChunkError(path, f"unexpected member(s) {unknown} (not keys of chunk format {FORMAT_VERSION})")

    k = len(arrays["frame_id"])
    if k == 0:
        raise ChunkError(path, "chunk holds no frames")
    id_len = np.char.str_len(arrays["frame_id"])
    if id_len.min() == 0 or id_len.max() > MAX_FRAME_ID:
        i = int(np.argmax((id_len == 0) | (id_len > MAX_FRAME_ID)))
        raise ChunkError(path, f"frame {i}: frame_id has {int(id_len[i])} characters, the chunk format allows "
                               f"1..{MAX_FRAME_ID}")
    if arrays["points"].shape[1:] != (4,):
        raise ChunkError(path, f"points has shape {arrays['points'].shape}, expected (N, 4)")
    if arrays["boxes"].shape[1:] != (7,):
        raise ChunkError(path, f"boxes has shape {arrays['boxes'].shape}, expected (M, 7)")
    if arrays["cam_matrix"].shape != (k, 3, 3):
        raise ChunkError(path, f"cam_matrix has shape {arrays['cam_matrix'].shape}, expected ({k}, 3, 3)")
    if len(arrays["box_class"]) != len(arrays["boxes"]):
        raise ChunkError(path, "box_class and boxes have different lengths")
    _check_offsets(path, "image_offsets", arrays["image_offsets"], k, len(arrays["image_png"]))
    _check_offsets(path, "semantic_offsets", arrays["semantic_offsets"], k, len(arrays["semantic_png"]))
    _check_offsets(path, "point_offsets", arrays["point_offsets"], k, len(arrays["points"]))
    _check_offsets(path, "box_offsets", arrays["box_offsets"], k, len(arrays["boxes"]))
    _check_per_frame(path, arrays, limits())
    mask = np.full(k, HAS_ALL, np.uint8)
    if "modality_mask" in arrays:
        m = arrays["modality_mask"]
        if m.dtype != np.uint8 or m.shape != (k,):
            raise ChunkError(path, f"modality_mask has dtype {m.dtype} shape {m.shape}, expected uint8 ({k},)")
        if (m > HAS_ALL).any():
            raise ChunkError(path, f"modality_mask has unknown bits (max {int(m.max())}, allowed 0..{HAS_ALL})")
        mask = m
    # a frame whose mask says "image present" must have bytes, and vice versa (Frame.image() relies on it)
    for bit, off_key in ((HAS_IMAGE, "image_offsets"), (HAS_SEMANTIC, "semantic_offsets")):
        has_bytes = np.diff(arrays[off_key]) > 0
        wrong = np.flatnonzero(has_bytes != ((mask & bit) > 0))
        if wrong.size:
            i = int(wrong[0])
            raise ChunkError(path, f"frame {arrays['frame_id'][i]!s}: {off_key[:-8]} is "
                                   f"{'present' if has_bytes[i] else 'empty'} but modality_mask says otherwise")
    if check_finite:
        ids = arrays["frame_id"]
        for key, off in (("points", "point_offsets"), ("boxes", "box_offsets"), ("cam_matrix", None)):
            a = arrays[key]
            bad_rows = ~np.isfinite(a.reshape(len(a), -1)).all(axis=1) if a.size else np.zeros(0, bool)
            if bad_rows.any():
                row = int(np.argmax(bad_rows))
                i = row if off is None else int(np.searchsorted(arrays[off], row, side="right") - 1)
                raise ChunkError(path, f"frame {ids[i]!s}: {key} contains NaN or inf ({int(bad_rows.sum())} row(s))")
        bad_size = (arrays["boxes"][:, 3:6] <= 0).any(axis=1)
        if bad_size.any():
            i = int(np.searchsorted(arrays["box_offsets"], int(np.argmax(bad_size)), side="right") - 1)
            raise ChunkError(path, f"frame {ids[i]!s}: boxes have non-positive length/width/height")
    return Chunk(path=path, frame_ids=arrays["frame_id"], arrays=arrays, meta=meta)


# ------------------------------------------------------------------------------------------ manifest

MANIFEST = "manifest.json"
MANIFEST_KIND = "mtl chunks"
INTERRUPTED = "an interrupted write was not finished: run the same command again to finish it"


def make_manifest(directory: Path, names: Sequence[str], known: dict[str, dict] | None = None, **about) -> dict:
    """The manifest of the files ``directory/<name>`` (name, size, sha256) plus what the set is (``about``);
    ``known`` entries (name -> {name, size, sha256}) are taken as they are instead of hashing the file again."""
    known = known or {}
    files = [known[n] if n in known else
             {"name": n, "size": (directory / n).stat().st_size, "sha256": sha256_file(directory / n)} for n in names]
    return {"kind": MANIFEST_KIND, "format_version": FORMAT_VERSION, **about, "files": files}


def _read_manifest(directory: Path) -> dict[str, dict] | None:
    """{name: entry} of ``directory/manifest.json``, None when there is none (a legacy directory)."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        if path.stat().st_size > 16 << 20:
            raise ValueError("over 16 MiB")
        doc = json.loads(path.read_bytes())
    except OSError as e:
        raise storage_error(e, path) or ChunkError(path, f"cannot read ({e})") from None
    except (ValueError, RecursionError) as e:
        raise ChunkError(path, f"not a readable manifest ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict) or doc.get("kind") != MANIFEST_KIND:
        kind = doc.get("kind") if isinstance(doc, dict) else None
        raise ChunkError(path, f"is not a chunk manifest (kind {kind!r}, expected {MANIFEST_KIND!r})")
    entries = doc.get("files")
    ok = isinstance(entries, list) and all(
        isinstance(e, dict) and isinstance(e.get("name"), str) and e["name"] == Path(e["name"]).name
        and e["name"] not in ("", ".", "..") and type(e.get("size")) is int and e["size"] >= 0
        and isinstance(e.get("sha256"), str) and len(e["sha256"]) == 64 for e in entries)
    if not ok:
        raise ChunkError(path, "files must be a list of {name (a file of this folder), size, sha256}")
    return {e["name"]: e for e in entries}


def _check_listed(directory: Path, entry: dict, sha256: bool) -> None:
    p = directory / entry["name"]
    if not p.is_file():
        raise ChunkError(directory, f"{entry['name']} is listed in {MANIFEST} but missing (incomplete output: "
                                    "convert again)")
    size = p.stat().st_size
    if size != entry["size"]:
        raise ChunkError(directory, f"{entry['name']} is {size} bytes but {MANIFEST} says {entry['size']} "
                                    "(changed or truncated after it was written)")
    if sha256 and sha256_file(p) != entry["sha256"]:
        raise ChunkError(directory, f"{entry['name']} sha256 differs from {MANIFEST} (changed after it was written)")


def list_chunks(path: str | Path, sha256: bool = False) -> list[Path]:
    """The chunk files every reader reads: a directory's sorted ``*.npz`` (temp files excluded) or the one
    chunk file ``path``, after checking the directory's manifest.

    Refused (``ChunkError`` naming the directory): a pending commit (an interrupted convert), a file the
    manifest lists that is missing or has another size (``sha256``: or other bytes), a ``*.npz`` the manifest
    does not list (chunks of two conversions mixed). A directory without a manifest (written before manifests
    or by hand with ``write_chunk``) is accepted as it is."""
    p = Path(path)
    d = p.parent if p.is_file() else p
    if not d.is_dir():
        raise ChunkError(d, "not a directory of chunks")
    # iterdir, unlike glob, reports an unreadable folder (PermissionError naming it) instead of listing nothing
    files = [p] if p.is_file() else sorted(q for q in d.iterdir() if q.suffix == ".npz" and not q.name.startswith("."))
    if pending_commit(d):
        raise ChunkError(d, INTERRUPTED)
    listed = _read_manifest(d)
    if listed is not None:
        for f in files:
            if f.name not in listed:
                raise ChunkError(d, f"{f.name} is not listed in {MANIFEST}: files of another conversion are mixed "
                                    "in (convert again with --overwrite, or move it out)")
        for entry in listed.values() if not p.is_file() else [listed[p.name]]:
            _check_listed(d, entry, sha256)
    if not files:
        raise ChunkError(d, "no *.npz chunks found (make them with `mtl data convert --a2d2 RAW --out DIR`)")
    return files


def has_manifest(directory: str | Path) -> bool:
    return (Path(directory) / MANIFEST).is_file()


# ------------------------------------------------------------------------------------------ class lists


def _first_diff(a: tuple, b: tuple) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"first difference at {i}: {x!r} vs model {y!r}"
    return f"{len(a)} vs model {len(b)} classes"


def check_class_names(meta: dict, classes, source: str | Path) -> None:
    """Class names recorded in a chunk's meta (when there are) must equal ``classes`` (a ``ClassesConfig``:
    the model's, or the config a model is trained with); else ``ModelMismatchError`` naming ``source``.
    The one check ``mtl infer``, ``mtl eval``, ``mtl train`` and ``mtl export`` apply to their data."""
    from ..errors import ModelMismatchError

    for key, model_names in (("sem_classes", classes.sem_classes), ("det_classes", classes.det_classes)):
        names = meta.get(key)
        if names is None:
            continue
        if not isinstance(names, list) or tuple(names) != tuple(model_names):
            got = tuple(names) if isinstance(names, list) else (names,)
            raise ModelMismatchError(source, f"data {key} differ from the model's "
                                             f"({_first_diff(got, tuple(model_names))})")


def parse_meta(path: str | Path, raw: np.ndarray) -> dict:
    """The chunk ``meta`` member (a JSON object) as a dict; ``ChunkError`` otherwise."""
    try:
        meta = json.loads(str(raw))
    except (json.JSONDecodeError, RecursionError) as e:
        raise ChunkError(path, f"meta is not JSON ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict):
        raise ChunkError(path, f"meta must be a JSON object, got {type(meta).__name__}")
    return meta
