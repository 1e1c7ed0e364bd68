"""The data side of the bad-input corpus (tests/test_bad_inputs.py has the rest; its ``Case`` pattern and
helpers are reused here): chunk directories that are incomplete, mixed or mid-commit, resource caps
(docs/DATA.md "Resource caps"), class lists, occupied or locked outputs, environment failures, and the kill
tests of `mtl data convert` / `synth` (fault injection at every write point, real SIGINT / SIGTERM /
SIGKILL of the parent with workers running).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import tiny_cfg, write_tiny_chunks
from test_bad_inputs import FRAME, Case, _box_json, _chunk_case, _lidar, _raw, _raw_case, _replace_png, _set
from test_convert import ALL, COMPLETE, write_raw_tree

from mtl.cli import main
from mtl.data.chunk import list_chunks, read_chunk, write_chunk
from mtl.data.convert import convert
from mtl.errors import ChunkError, ConfigError, DataError, ModelMismatchError, OutputError, StorageError
from mtl.io import JOURNAL, OutputLock, pending_commit
from mtl.limits import ENV, Limits, limits

psutil = pytest.importorskip("psutil")


@dataclass
class DataCase(Case):
    env: dict = field(default_factory=dict)     # MTL_MAX_* caps lowered for this case


# ---------------------------------------------------------------------------------- helpers


def _converted(tmp: Path, name: str = "chunks", **kw) -> Path:
    """A tiny raw tree converted into 3 one-frame chunks + summary.json + manifest.json."""
    raw = tmp / "raw" if (tmp / "raw").is_dir() else write_raw_tree(tmp / "raw", COMPLETE)
    convert(raw, tmp / name, **{"chunk_size": 1, "image_size": "16x24", "workers": 1, "progress": False, **kw})
    return tmp / name


def _inspect(d: Path) -> list[str]:
    return ["data", "inspect", str(d)]


def _manifest_case(spoil, bad: str = "") -> callable:
    """A converted directory (with manifest) spoiled by ``spoil(dir)``; `mtl data inspect DIR` must refuse it
    naming the directory (or ``dir/bad``)."""
    def build(tmp: Path, art: dict) -> tuple[list[str], Path]:
        d = _converted(tmp)
        spoil(d)
        return _inspect(d), d / bad if bad else d
    return build


def _pending(d: Path) -> None:
    (d / ".convert-staging-1").mkdir()
    (d / JOURNAL).write_text(json.dumps({"staging": ".convert-staging-1", "files": ["chunk_00000.npz"],
                                         "remove": []}))


def _drop(name: str):
    return lambda d: (d / name).unlink()


def _truncate_chunk(d: Path) -> None:
    p = d / "chunk_00001.npz"
    p.write_bytes(p.read_bytes()[:-10])


def _flip_a_byte(d: Path) -> None:
    """Same size, other bytes: only the sha256 in the manifest tells."""
    p = d / "chunk_00002.npz"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))


def _mix_in_another_conversion(d: Path) -> None:
    other = write_tiny_chunks(d.parent / "other", tiny_cfg(), n_frames=1, per_chunk=1)
    shutil.copy(other / "chunk_00000.npz", d / "chunk_00007.npz")


def _manifest_edit(edit):
    def spoil(d: Path) -> None:
        doc = json.loads((d / "manifest.json").read_text())
        edit(doc)
        (d / "manifest.json").write_text(json.dumps(doc))
    return spoil


def _escape(doc: dict) -> None:
    doc["files"][0]["name"] = "../raw/cams_lidars.json"


def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header says w x h (RGB) followed by a few bytes of pixels: decoding it would allocate
    w * h * 3 bytes; a reader that checks the header first refuses it without allocating anything."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def _add_member(name: str, header: dict, payload: bytes):
    """A chunk with one more zip member ``name`` whose .npy header is ``header`` (no numpy allocation)."""
    def build(tmp: Path, art: dict) -> tuple[list[str], Path]:
        src = write_tiny_chunks(tmp / "good", tiny_cfg(), n_frames=2, per_chunk=2) / "chunk_00000.npz"
        bad = tmp / "bad.npz"
        shutil.copy(src, bad)
        with zipfile.ZipFile(bad, "a") as zf, zf.open(f"{name}.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.write(payload)
        return _inspect(bad), bad
    return build


def _replace_member(name: str, header: dict, payload: bytes):
    """A chunk whose member ``name`` is rewritten with ``header`` + ``payload`` (other members kept)."""
    def build(tmp: Path, art: dict) -> tuple[list[str], Path]:
        src = write_tiny_chunks(tmp / "good", tiny_cfg(), n_frames=2, per_chunk=2) / "chunk_00000.npz"
        bad = tmp / "bad.npz"
        with zipfile.ZipFile(src) as zin, zipfile.ZipFile(bad, "w") as zout:
            for info in zin.infolist():
                if info.filename != f"{name}.npy":
                    zout.writestr(info, zin.read(info))
            with zout.open(f"{name}.npy", "w") as f:
                np.lib.format.write_array_header_1_0(f, header)
                f.write(payload)
        return _inspect(bad), bad
    return build


def _camera_png(data: bytes):
    def spoil(root: Path, frame: tuple[str, str] = FRAME) -> Path:
        p = _raw(root, "camera", frame)
        p.write_bytes(data)
        return p
    return spoil


def _deep_json(root: Path, frame: tuple[str, str] = FRAME) -> Path:
    p = _raw(root, "label3D", frame)
    p.write_text('{"box_0": ' + "[" * 200_000 + "]" * 200_000 + "}")
    return p


def _raw_tree_mid_commit(tmp: Path, art: dict) -> tuple[list[str], Path]:
    args, _ = _raw_case(lambda root: root)(tmp, art)
    root = tmp / "raw"
    (root / JOURNAL).write_text(json.dumps({"staging": ".synth-staging-1", "files": [], "remove": []}))
    return args, root


def _classes_differ(command: str):
    """Chunks whose recorded det_classes differ from the model's (eval) / the config's (train)."""
    def build(tmp: Path, art: dict) -> tuple[list[str], Path]:
        cfg = art["cfg"]
        frames = list(read_chunk(write_tiny_chunks(tmp / "good", cfg, n_frames=2, per_chunk=2) / "chunk_00000.npz"))
        names = list(cfg.classes.det_classes)
        names[2] = "tractor"
        bad = write_chunk(tmp / "d" / "chunk_00000.npz", frames,
                          {"sem_classes": list(cfg.classes.sem_classes), "det_classes": names})
        if command == "eval":
            return ["eval", "--checkpoint", str(art["ckpt"]), "--data", str(bad.parent), "--no-progress"], bad
        (tmp / "config.json").write_text(cfg.to_json())
        return ["train", "--data", str(bad.parent), "--out", str(tmp / "out"), "--config", str(tmp / "config.json"),
                "--epochs", "1", "--no-progress"], bad
    return build


def _occupied(command: str):
    def build(tmp: Path, art: dict) -> tuple[list[str], Path]:
        if command == "convert":
            out = _converted(tmp, "out")
            return ["data", "convert", "--a2d2", str(tmp / "raw"), "--out", str(out), "--workers", "1",
                    "--no-progress"], out
        out = tmp / "out"
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        return ["data", "synth", "--out", str(out), "--frames", "1", "--workers", "1", "--no-progress"], out
    return build


def _unlisted_for_train(tmp: Path, art: dict) -> tuple[list[str], Path]:
    d = _converted(tmp)
    _mix_in_another_conversion(d)
    (tmp / "config.json").write_text(tiny_cfg().to_json())
    return ["train", "--data", str(d), "--out", str(tmp / "out"), "--config", str(tmp / "config.json"),
            "--epochs", "1", "--no-progress"], d


BIG = 20_000_000          # rows a crafted header claims
DATA_CASES = [
    # a chunk directory that is mid-commit, incomplete or mixed (checked by list_chunks for every reader)
    DataCase("chunks_dir_commit_pending", _manifest_case(_pending), ChunkError,
             "an interrupted write was not finished: run the same command again"),
    DataCase("chunks_dir_listed_chunk_missing", _manifest_case(_drop("chunk_00001.npz")), ChunkError,
             r"chunk_00001\.npz is listed in manifest\.json but missing"),
    DataCase("chunks_dir_chunk_truncated", _manifest_case(_truncate_chunk), ChunkError,
             r"chunk_00001\.npz is \d+ bytes but manifest\.json says \d+"),
    DataCase("chunks_dir_chunk_changed_same_size", _manifest_case(_flip_a_byte), ChunkError,
             r"chunk_00002\.npz sha256 differs from manifest\.json"),
    DataCase("chunks_dir_chunk_of_another_conversion", _manifest_case(_mix_in_another_conversion), ChunkError,
             r"chunk_00007\.npz is not listed in manifest\.json: files of another conversion are mixed in"),
    DataCase("chunks_dir_summary_missing", _manifest_case(_drop("summary.json")), ChunkError,
             r"summary\.json is listed in manifest\.json but missing"),
    DataCase("chunks_dir_manifest_not_json",
             _manifest_case(lambda d: (d / "manifest.json").write_text("{"), "manifest.json"), ChunkError,
             "not a readable manifest"),
    DataCase("chunks_dir_manifest_name_escapes", _manifest_case(_manifest_edit(_escape), "manifest.json"), ChunkError,
             r"files must be a list of \{name \(a file of this folder\)"),
    DataCase("train_on_mixed_chunks_dir", _unlisted_for_train, ChunkError, "is not listed in manifest.json"),
    # resource caps on chunks: sizes from the zip / .npy headers, per-frame counts, PNG headers
    DataCase("chunk_extra_member", _add_member("extra", {"descr": "<f4", "fortran_order": False, "shape": (4,)},
                                               bytes(16)), ChunkError, r"unexpected member\(s\) \['extra'\]"),
    DataCase("chunk_member_over_size_cap",
             _replace_member("points", {"descr": "<f4", "fortran_order": False, "shape": (BIG * 100, 4)}, b""),
             ChunkError, r"member 'points' \(2000000000, 4\) float32 would take 32000000000 bytes, over the limit "
                         r"of 2147483648 \(MTL_MAX_NPZ_MEMBER_BYTES\)"),
    DataCase("chunk_member_declares_more_than_it_holds",
             _replace_member("points", {"descr": "<f4", "fortran_order": False, "shape": (BIG, 4)}, bytes(64)),
             ChunkError, r"member 'points' declares 320000000 bytes of data but holds 64"),
    DataCase("chunk_object_member_from_header",
             _add_member("obj", {"descr": "|O", "fortran_order": False, "shape": (2,)}, b"\x80\x04N."),
             ChunkError, r"object arrays \(pickle is never loaded\)"),
    DataCase("chunk_frame_id_5000_chars", _chunk_case(_set("frame_id", lambda x: np.array(["x" * 5000, "y"]))),
             ChunkError, "frame 0: frame_id has 5000 characters, the chunk format allows 1..64"),
    DataCase("chunk_frame_id_empty", _chunk_case(_set("frame_id", lambda x: np.array(["", "y"]))),
             ChunkError, "frame 0: frame_id has 0 characters"),
    DataCase("chunk_points_per_frame_over_cap", _chunk_case(lambda a: None), ChunkError,
             r"frame tiny/5_00\d: \d+ points, over the limit of 100 \(MTL_MAX_POINTS\)", env={"MTL_MAX_POINTS": "100"}),
    DataCase("chunk_boxes_per_frame_over_cap", _chunk_case(lambda a: None), ChunkError,
             r"\d+ boxes, over the limit of 1 \(MTL_MAX_BOXES\)", env={"MTL_MAX_BOXES": "1"}),
    DataCase("chunk_png_header_13000x13000",
             _chunk_case(_replace_png("image_png", lambda b: png_header_only(13000, 13000))), ChunkError,
             r"image PNG is 13000x13000 = 169000000 pixels, over the limit of 40000000 \(MTL_MAX_IMAGE_PIXELS\)"),
    # resource caps and ranges on raw A2D2 files (named, and skippable with --skip-bad)
    DataCase("raw_camera_png_header_13000x13000", _raw_case(_camera_png(png_header_only(13000, 13000))), DataError,
             r"PNG is 13000x13000 = 169000000 pixels, over the limit"),
    DataCase("raw_lidar_points_over_cap", _raw_case(_lidar(points=np.zeros((30, 3)), reflectance=np.zeros(30))),
             DataError, r"points has 30 rows, over the limit of 20 \(MTL_MAX_POINTS\)", env={"MTL_MAX_POINTS": "20"}),
    DataCase("raw_lidar_overflows_float32",
             _raw_case(_lidar(points=np.array([[5.0, 1e300, 0.0], [6.0, 0.0, 0.0]]), reflectance=np.zeros(2))),
             DataError, r"1 of 2 points have coordinates that overflow float32"),
    DataCase("raw_box_center_1e300", _raw_case(_box_json(lambda b: b.update(center=[1e300, 0.0, 0.0]))), DataError,
             r"box_0\.center value 1e\+300 is out of range: \|value\| over the limit of 10000 \(MTL_MAX_COORDINATE\)"),
    DataCase("raw_box_center_10_pow_400", _raw_case(_box_json(lambda b: b.update(center=[10 ** 400, 0, 0]))),
             DataError, r"box_0\.center holds a number too large for float64"),
    DataCase("raw_box_count_over_cap", _raw_case(_box_json(lambda b: None)), DataError,
             r"2 boxes, over the limit of 1 \(MTL_MAX_BOXES\)", env={"MTL_MAX_BOXES": "1"}),
    DataCase("raw_label3d_nested_200k_deep", _raw_case(_deep_json), DataError, r"not readable JSON \(RecursionError"),
    DataCase("raw_json_over_size_cap", _raw_case(lambda root: root / "cams_lidars.json"), DataError,
             r"JSON file is \d+ bytes, over the limit of 100 \(MTL_MAX_JSON_BYTES\)",
             env={"MTL_MAX_JSON_BYTES": "100"}),
    DataCase("raw_tree_mid_commit", _raw_tree_mid_commit, DataError, "an interrupted write was not finished"),
    # class lists recorded in the chunks vs the model / config (the check mtl infer makes)
    DataCase("eval_chunk_classes_differ", _classes_differ("eval"), ModelMismatchError,
             r"data det_classes differ from the model's \(first difference at 2: 'tractor' vs model"),
    DataCase("train_chunk_classes_differ", _classes_differ("train"), ModelMismatchError,
             r"data det_classes differ from the model's \(first difference at 2: 'tractor'"),
    # occupied outputs
    DataCase("convert_out_holds_a_conversion", _occupied("convert"), OutputError,
             "already holds a conversion .*pass --overwrite"),
    DataCase("synth_out_not_empty", _occupied("synth"), OutputError, "is not empty .*pass --overwrite"),
]


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    from test_runtime import runtime_cfg, save_tiny_checkpoint

    cfg = runtime_cfg()
    return {"cfg": cfg, "ckpt": save_tiny_checkpoint(cfg, tmp_path_factory.mktemp("ckpt") / "ckpt.pt")}


def test_data_corpus_adds_enough_cases_with_unique_names():
    from test_bad_inputs import CORPUS

    assert len(DATA_CASES) >= 12
    names = [c.name for c in CORPUS + DATA_CASES]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("case", DATA_CASES, ids=lambda c: c.name)
def test_bad_data_is_refused_with_one_line_naming_it(case, tmp_path, art, monkeypatch):
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    args, bad = case.build(tmp_path, art)
    before = _tree(tmp_path / "out")
    r = CliRunner().invoke(main, args)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == case.error.exit_code, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    assert lines[0].startswith(f"error: {bad}: ") or lines[0].startswith(f"error: {bad.parent}: "), lines[0]
    assert re.search(case.reason, lines[0]), lines[0]
    if case.error is not OutputError:                          # nothing written ...
        assert not list((tmp_path / "out").rglob("*.npz")) and not list((tmp_path / "out").rglob("*.pt"))
    else:                                                      # ... or the earlier output left as it was
        assert _tree(tmp_path / "out") == before


def _tree(d: Path) -> dict[str, bytes]:
    """Every file under ``d`` but the lock (which each writer that tries rewrites)."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != OutputLock.NAME} if d.is_dir() else {}


# ------------------------------------------------------------------------- the same check for every reader


def test_every_reader_refuses_a_mid_commit_or_mixed_dir_and_accepts_a_legacy_one(tmp_path):
    """list_chunks is the one check: mtl infer's frames, the training dataset and inspect all go through it."""
    from mtl.dataset import ChunkDataset
    from mtl.runtime import iter_frames

    cfg = tiny_cfg()
    d = _converted(tmp_path, cfg=cfg)
    assert len(list(iter_frames(d))) == 3 and len(ChunkDataset(d, cfg)) == 3
    readers = {"frames": lambda p: list(iter_frames(p)), "dataset": lambda p: ChunkDataset(p, cfg),
               "list": list_chunks}
    _pending(d)
    for name, read in readers.items():
        with pytest.raises(ChunkError, match="an interrupted write was not finished") as e:
            read(d)
        assert str(e.value).startswith(f"{d}: "), name
    (d / JOURNAL).unlink()
    shutil.rmtree(d / ".convert-staging-1")
    _mix_in_another_conversion(d)
    for read in readers.values():
        with pytest.raises(ChunkError, match=r"chunk_00007\.npz is not listed in manifest\.json"):
            read(d)
    with pytest.raises(ChunkError, match=r"chunk_00007\.npz is not listed"):    # one file of the dir, too
        list(iter_frames(d / "chunk_00007.npz"))
    assert len(list(iter_frames(d / "chunk_00001.npz"))) == 1
    (d / "manifest.json").unlink()                     # legacy: no manifest, read as before (4 chunks)
    assert len(list_chunks(d)) == 4
    r = CliRunner().invoke(main, _inspect(d))
    assert r.exit_code == 0 and "no manifest.json" in r.stdout, r.output


def test_inspect_says_ok_only_for_a_complete_unmixed_dir(tmp_path):
    d = _converted(tmp_path)
    r = CliRunner().invoke(main, _inspect(d))
    assert r.exit_code == 0 and "the set matches manifest.json (names, sizes, sha256)" in r.stdout, r.output
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["kind"] == "mtl chunks" and manifest["frames"] == 3
    assert [f["name"] for f in manifest["files"]] == ["chunk_00000.npz", "chunk_00001.npz", "chunk_00002.npz",
                                                      "summary.json"]


def test_limits_come_from_the_environment_and_a_bad_value_is_one_line(monkeypatch):
    assert limits() == Limits()
    monkeypatch.setenv("MTL_MAX_POINTS", "5")
    monkeypatch.setenv("MTL_MAX_COORDINATE", "2.5e3")
    assert limits().max_points == 5 and limits().max_coordinate == 2500.0
    for bad in ("abc", "0", "-3", "1.5"):
        monkeypatch.setenv("MTL_MAX_POINTS", bad)
        with pytest.raises(ConfigError, match=rf"MTL_MAX_POINTS='{re.escape(bad)}': expected a positive integer"):
            limits()
    monkeypatch.delenv("MTL_MAX_POINTS")
    monkeypatch.setenv("MTL_MAX_COORDINATE", "inf")
    r = CliRunner().invoke(main, ["data", "convert", "--a2d2", "nowhere", "--out", "nothing", "--skip-bad"])
    assert r.exit_code == ConfigError.exit_code
    assert r.stderr.strip().splitlines() == ["error: MTL_MAX_COORDINATE='inf': expected a positive number"]


@pytest.mark.parametrize("page", ["README.md", "docs/DATA.md"])
def test_docs_list_every_cap_with_its_variable_and_default(page):
    text = (Path(__file__).resolve().parents[1] / page).read_text()
    for name, var in ENV.items():
        default = getattr(Limits(), name)
        row = next((ln for ln in text.splitlines() if ln.startswith("|") and f"`{var}`" in ln), None)
        assert row is not None, f"{page} has no caps row for {var}"
        assert f"{default:g}" in row.replace(",", "") or str(default) in row.replace(",", ""), row


def test_skip_bad_skips_values_that_overflow_and_names_the_raw_files(tmp_path):
    frames = [("20180807_145028", f"{i:09d}", ALL) for i in range(1, 5)]
    root = write_raw_tree(tmp_path / "raw", frames)
    spoiled = [_box_json(lambda b: b.update(center=[1e300, 0, 0]))(root, frames[0][:2]),
               _box_json(lambda b: b.update(size=[10 ** 400, 1, 1]))(root, frames[1][:2]),
               _lidar(points=np.array([[1e39, 0.0, 0.0]]), reflectance=np.zeros(1))(root, frames[2][:2])]
    r = CliRunner().invoke(main, ["data", "convert", "--a2d2", str(root), "--out", str(tmp_path / "out"),
                                  "--skip-bad", "--workers", "1", "--no-progress"])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["frames_written"] == 1
    assert [b["path"] for b in summary["bad_files"]] == [str(p) for p in spoiled]
    assert ".convert-staging" not in r.output


def test_a_second_convert_into_the_same_out_is_refused_naming_the_holder(tmp_path):
    root = write_raw_tree(tmp_path / "raw", COMPLETE)
    with OutputLock(tmp_path / "out", "mtl data convert"):
        r = CliRunner().invoke(main, ["data", "convert", "--a2d2", str(root), "--out", str(tmp_path / "out"),
                                      "--workers", "1", "--no-progress"])
    assert r.exit_code == OutputError.exit_code
    assert r.stderr.strip() == (f"error: {tmp_path / 'out'}: another mtl process is writing here (pid {os.getpid()}, "
                                f"`mtl data convert` since {_lock_since(tmp_path / 'out')} on {os.uname().nodename}); "
                                "wait for it to finish or stop it, or choose another output")
    assert not list((tmp_path / "out").glob("*.npz"))


def _lock_since(d: Path) -> str:
    return json.loads((d / OutputLock.NAME).read_text())["since"]


def test_stale_staging_of_dead_runs_is_removed_live_ones_kept(tmp_path):
    root = write_raw_tree(tmp_path / "raw", COMPLETE)
    out = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    for pid in (dead, str(os.getppid())):
        (out / f".convert-staging-{pid}").mkdir(parents=True)
        (out / f".convert-staging-{pid}" / "chunk_00000.npz").write_bytes(b"half")
    convert(root, out, workers=1, progress=False)
    assert sorted(p.name for p in out.glob(".convert-staging-*")) == [f".convert-staging-{os.getppid()}"]


# ------------------------------------------------------------------------------ environment failures

_CLI = textwrap.dedent("""
    import os, resource, signal, sys
    if os.environ.get("FSIZE"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(os.environ["FSIZE"]),) * 2)
    # load everything first: an unprivileged user cannot read the root-only interpreter tree afterwards
    import concurrent.futures, json, multiprocessing, zipfile, tqdm, numpy, PIL.Image
    PIL.Image.init()
    import mtl.cli, mtl.data.convert, mtl.data.inspect, mtl.data.synth
    if os.environ.get("AS_NOBODY") and os.getuid() == 0:
        import pwd
        nobody = pwd.getpwnam("nobody")
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)
    mtl.cli.main(sys.argv[1:])
""")


def _cli(args: list[str], **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _CLI, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **{k: str(v) for k, v in env.items()}})


def _one_line(r: subprocess.CompletedProcess, rc: int) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == rc and len(lines) == 1 and lines[0].startswith("error: "), (r.returncode, r.stderr)
    return lines[0]


def test_a_full_disk_during_convert_or_synth_is_one_line_exit_10_and_keeps_the_old_output(tmp_path):
    out = _converted(tmp_path, "out")
    before = _tree(out)
    r = _cli(["data", "convert", "--a2d2", str(tmp_path / "raw"), "--out", str(out), "--overwrite",
              "--image-size", "64x96", "--workers", "1", "--no-progress"], FSIZE=8000)
    line = _one_line(r, StorageError.exit_code)
    assert re.match(rf"error: {re.escape(str(out))}/\S+: File too large", line), line
    assert _tree(out) == before and not list(out.glob(".convert-staging-*"))

    synth_out = tmp_path / "synth"
    r = _cli(["data", "synth", "--out", str(synth_out), "--frames", "1", "--workers", "1", "--no-progress"],
             FSIZE=8000)
    assert "File too large" in _one_line(r, StorageError.exit_code)
    assert not synth_out.exists()


@pytest.fixture
def shared_tmp():
    """A folder an unprivileged user can traverse (pytest's tmp_path is root-only)."""
    d = Path(tempfile.mkdtemp(prefix="mtl-perm-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _deny(path: Path) -> dict:
    """Env for ``_cli`` so that the command may not write ``path`` (root: run as nobody; else: chmod)."""
    if os.getuid() == 0:
        return {"AS_NOBODY": "1"}
    for p in [path, *path.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    return {}


def test_permission_denied_is_one_line_exit_10_and_keeps_everything(shared_tmp):
    if os.getuid() == 0:
        import pwd

        try:
            pwd.getpwnam("nobody")
        except KeyError:
            pytest.skip("running as root and there is no user 'nobody' to drop to")
    out = _converted(shared_tmp, "out")
    OutputLock(out, "mtl data convert").acquire().release()          # the lock file exists, root-owned
    before = _tree(out)
    env = _deny(out)
    r = _cli(["data", "convert", "--a2d2", str(shared_tmp / "raw"), "--out", str(out), "--overwrite",
              "--workers", "1", "--no-progress"], **env)
    line = _one_line(r, StorageError.exit_code)
    assert line.startswith(f"error: {out}") and "Permission denied" in line, line
    assert _tree(out) == before

    (out / "chunk_00001.npz").chmod(0o600)                             # unreadable for nobody
    r = _cli(["data", "inspect", str(out)], **env)
    if os.getuid() == 0:
        line = _one_line(r, StorageError.exit_code)
        assert line.startswith(f"error: {out / 'chunk_00001.npz'}: Permission denied"), line
        out.chmod(0o700)                                               # a folder nobody may list
        line = _one_line(_cli(["data", "inspect", str(out)], **env), StorageError.exit_code)
        assert line.startswith(f"error: {out}: Permission denied"), line
        out.chmod(0o755)

    synth_out = shared_tmp / "synth"
    synth_out.mkdir()
    r = _cli(["data", "synth", "--out", str(synth_out), "--frames", "1", "--workers", "1", "--no-progress"],
             **_deny(synth_out))
    assert "Permission denied" in _one_line(r, StorageError.exit_code)
    assert list(synth_out.iterdir()) == []


# --------------------------------------------------------------------------------- kills and workers

SYNTH_FRAMES = 3


@pytest.fixture(scope="module")
def synth_raw(tmp_path_factory) -> Path:
    """A small raw tree made by `mtl data synth` (full-size PNGs, coarse ray-casting for speed)."""
    from mtl.data import synth

    root = tmp_path_factory.mktemp("synth") / "raw"
    synth.generate(root, SYNTH_FRAMES, seed=4, workers=1, scene_size=2, _render_scale=0.08)
    return root


def _convert_args(raw: Path, out: Path, image: str, chunk: int) -> list[str]:
    return [sys.executable, "-m", "mtl.cli", "data", "convert", "--a2d2", str(raw), "--out", str(out),
            "--image-size", image, "--chunk-size", str(chunk), "--workers", "2", "--overwrite", "--no-progress"]


OLD, NEW = ("16x24", 1), ("24x40", 2)          # (image size, chunk size): different chunk names and bytes


def _chunk_set(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.glob("*.npz"))}


def _tagged(tag: str) -> list:
    """Processes (other than zombies) whose environment carries ``MTL_TEST_TAG=tag``."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and p.environ().get("MTL_TEST_TAG") == tag:
                found.append(p)
        except psutil.Error:
            pass
    return found


def _assert_no_orphans(tag: str) -> None:
    deadline = time.monotonic() + 5
    while _tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = _tagged(tag)
    for p in left:                     # never leave them behind, then fail
        p.kill()
    assert not left, f"orphaned worker processes survived their parent: {[p.pid for p in left]}"


@pytest.fixture(scope="module")
def reference_sets(synth_raw, tmp_path_factory) -> tuple[dict, dict]:
    base = tmp_path_factory.mktemp("ref")
    sets = []
    for image, chunk in (OLD, NEW):
        out = base / image
        subprocess.run(_convert_args(synth_raw, out, image, chunk), check=True, capture_output=True)
        sets.append(_chunk_set(out))
    assert sets[0].keys() != sets[1].keys()
    return sets[0], sets[1]


def test_convert_overwrite_killed_at_every_write_point_leaves_old_or_new_then_finishes(
        synth_raw, reference_sets, tmp_path):
    old, new = reference_sets
    pristine = tmp_path / "pristine"
    subprocess.run(_convert_args(synth_raw, pristine, *OLD), check=True, capture_output=True)
    tag = uuid.uuid4().hex
    k, outcomes = 0, set()
    while True:
        k += 1
        out = tmp_path / f"k{k}"
        shutil.copytree(pristine, out)
        env = {**os.environ, "MTL_FAULT_AT_WRITE": str(k), "MTL_TEST_TAG": tag}
        rc = subprocess.run(_convert_args(synth_raw, out, *NEW), env=env, capture_output=True).returncode
        _assert_no_orphans(tag)
        r = CliRunner().invoke(main, _inspect(out))
        if pending_commit(out):
            outcomes.add("pending")
            assert r.exit_code == ChunkError.exit_code and "an interrupted write was not finished" in r.stderr
        else:
            assert r.exit_code == 0 and "the set matches manifest.json" in r.stdout, (k, r.output)
            got = _chunk_set(out)
            assert got in (old, new), f"a kill at write point {k} left a mixed set: {sorted(got)}"
            outcomes.add("new" if got == new else "old")
        if rc == 0:
            break
        assert rc == -signal.SIGKILL, (k, rc)
        # the same command again (here in-process, one worker: same bytes) finishes the job: the new set,
        # nothing of the dead run left
        args = _convert_args(synth_raw, out, *NEW)[3:]
        args[args.index("--workers") + 1] = "1"
        again = CliRunner().invoke(main, args)
        assert again.exit_code == 0, again.output
        assert _chunk_set(out) == new and not pending_commit(out)
        assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [OutputLock.NAME], k
        shutil.rmtree(out)
    assert k > 8 and outcomes == {"old", "new", "pending"}, (k, outcomes)


def _many_frames(synth_raw: Path, root: Path, n: int) -> Path:
    """``n`` frames made of the synthetic ones (copies under new ids): a convert that runs a few seconds."""
    from mtl.data.a2d2 import find_frames, raw_file_path

    shutil.copytree(synth_raw, root)
    found = find_frames(synth_raw)
    for i in range(n - len(found)):
        src = found[i % len(found)]
        for kind in ("camera", "label", "lidar", "label3D"):
            shutil.copy(getattr(src, kind), raw_file_path(root, src.scene, kind, f"{900 + i:09d}"))
    return root


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_a_signal_to_the_parent_mid_convert_leaves_no_worker_and_no_half_output(sig, synth_raw, tmp_path):
    raw = _many_frames(synth_raw, tmp_path / "raw", 40)
    out = tmp_path / "out"
    subprocess.run(_convert_args(synth_raw, out, *OLD), check=True, capture_output=True)
    before = _chunk_set(out)
    tag = uuid.uuid4().hex
    proc = subprocess.Popen(_convert_args(raw, out, *OLD), env={**os.environ, "MTL_TEST_TAG": tag},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (len(psutil.Process(proc.pid).children()) >= 2 and list(out.glob(".convert-staging-*/*.npz"))):
            assert proc.poll() is None and time.monotonic() < deadline, "convert ended before the signal"
            time.sleep(0.02)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    _assert_no_orphans(tag)
    assert _chunk_set(out) == before and not pending_commit(out)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
        assert list(out.glob(".convert-staging-*")), "SIGKILL cannot clean up: the next run must"
        subprocess.run(_convert_args(synth_raw, out, *NEW), check=True, capture_output=True)
        assert not list(out.glob(".convert-staging-*"))
    else:
        assert proc.returncode == 130, stderr
        assert stderr.strip().splitlines() == [
            "error: interrupted (Ctrl-C); finished outputs are intact, nothing half-written was kept"], stderr
        assert not list(out.glob(".convert-staging-*"))


def test_synth_killed_mid_commit_is_refused_by_convert_then_finished_by_the_same_command(tmp_path, monkeypatch):
    import functools

    import mtl.io
    from mtl.data import synth

    # the camera model costs seconds and is the same for every run here: compute it once in this process
    monkeypatch.setattr(synth, "camera_model", functools.lru_cache(synth.camera_model))
    out = tmp_path / "raw"

    def generate(frames: int, seed: int) -> None:
        synth.generate(out, frames, seed=seed, workers=1, scene_size=1, overwrite=True, _render_scale=0.06)

    def data(tree: dict) -> dict:
        return {k: v for k, v in tree.items() if not k.startswith(".") and k != "synth_summary.json"}

    generate(1, 2)                                   # the new dataset, its write points logged
    new = data(_tree(out))
    log = tmp_path / "points.log"
    monkeypatch.setattr(mtl.io, "_write_points", 0)
    monkeypatch.setenv("MTL_FAULT_AT_WRITE", "100000")
    monkeypatch.setenv("MTL_FAULT_LOG", str(log))
    generate(1, 2)
    monkeypatch.delenv("MTL_FAULT_AT_WRITE")
    labels = [ln.split("\t")[1] for ln in log.read_text().splitlines()]
    k = labels.index("commit journal") + 3                            # inside the moves
    shutil.rmtree(out)
    generate(2, 1)                                   # the old dataset
    old = data(_tree(out))
    code = ("import sys; from mtl.data.synth import generate; "
            "generate(sys.argv[1], 1, seed=2, workers=1, scene_size=1, overwrite=True, _render_scale=0.06)")
    rc = subprocess.run([sys.executable, "-c", code, str(out)], env={**os.environ, "MTL_FAULT_AT_WRITE": str(k)},
                        capture_output=True).returncode
    assert rc == -signal.SIGKILL and pending_commit(out)
    r = CliRunner().invoke(main, ["data", "convert", "--a2d2", str(out), "--out", str(tmp_path / "c"),
                                  "--no-progress", "--workers", "1"])
    assert r.exit_code == DataError.exit_code and "an interrupted write was not finished" in r.stderr
    from mtl.runtime import iter_frames

    with pytest.raises(DataError, match="an interrupted write was not finished"):     # mtl infer on the raw tree
        list(iter_frames(out))
    generate(1, 2)                                   # the same command again finishes it
    assert data(_tree(out)) == new != old
    assert not pending_commit(out) and not list(out.glob(".synth-staging-*"))
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["20990101_000000"]
