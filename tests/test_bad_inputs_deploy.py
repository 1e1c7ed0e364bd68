"""The deployment side of the bad-input corpus and of the fault campaign: ``mtl export``, ``mtl infer`` and
``mtl bench`` against crafted model metadata, mixed export folders, outputs they must not touch, full disks,
concurrent writers, and a SIGKILL at every durable write (``MTL_FAULT_AT_WRITE=k``).

Each refused case prints one line ``error: <file>: <reason>``, exits with its error type's code (README
"Troubleshooting") and leaves every file it was given as it was. The kill tests check that an export folder
always holds either the old complete set or the new one (one checkpoint, report matching the models), and that
an infer output is the old or the new complete result, or (``--resume``) finished frames of one model that a
``--resume`` completes to exactly the result of an uninterrupted run.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import tiny_frame, write_tiny_chunks
from test_bad_inputs import EXIT, Case, _infer, _replace_png
from test_runtime import _engine_with_sidecar, export_tiny, save_tiny_checkpoint, tiny_artifacts

from mtl.cli import main
from mtl.contract import METADATA_KEY, check_export_set, onnx_metadata_text, read_onnx_metadata, source_checkpoint
from mtl.data.chunk import write_chunk
from mtl.errors import ConfigError, ModelMismatchError, OutputError, StorageError
from mtl.io import OutputLock, pending_commit, recover_commit

EXIT_CODES = {**EXIT, OutputError: 9, StorageError: 10}
WORKERS = max(1, min(4, os.cpu_count() or 1))      # kill runs are independent: run a few at once
MTL = [sys.executable, "-m", "mtl.cli"]


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------- crafted models


def _with_metadata(art: dict, path: Path, text: str) -> Path:
    """The tiny exported model with its ``mtl`` metadata replaced by ``text`` (any bytes a hostile file may hold)."""
    proto = onnx.load(str(art["onnx"]))
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    for k, v in [*keep, (METADATA_KEY, text)]:
        proto.metadata_props.add(key=k, value=v)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path


def _edited(art: dict, path: Path, edit) -> Path:
    meta = read_onnx_metadata(art["onnx"])
    edit(meta)
    return _with_metadata(art, path, json.dumps(meta))           # NaN stays a NaN literal, as a hostile file has it


def _meta_case(edit=None, text=None):
    def build(tmp: Path, art: dict) -> tuple[list[str], Path]:
        bad = tmp / "m" / "model.onnx"
        _with_metadata(art, bad, text) if text is not None else _edited(art, bad, edit)
        return _infer(bad, art["chunks"], tmp), bad
    return build


def _set(path: str, value):
    """Edit ``a.b.c`` of the metadata dict."""
    def edit(meta: dict) -> None:
        *parents, key = path.split(".")
        d = meta
        for p in parents:
            d = d[p]
        d[key] = value
    return edit


METADATA_CASES = [
    Case("metadata_outputs_not_a_list", _meta_case(_set("outputs", 5)), ModelMismatchError,
         r"mtl metadata outputs: expected a list of output names, got int 5$"),
    Case("metadata_grid_x_min_1e308", _meta_case(_set("config.grid.x_min", 1e308)), ModelMismatchError,
         r"mtl metadata config is invalid \(grid\.x_max: must be > x_min \(1e\+308\)"),
    Case("metadata_score_threshold_nan", _meta_case(_set("config.decode.score_threshold", float("nan"))),
         ModelMismatchError, r"'mtl' metadata is not valid JSON \(NaN is not a finite number\)$"),
    Case("metadata_nested_200k_deep", _meta_case(text='{"a": ' + "[" * 200_000 + "]" * 200_000 + "}"),
         ModelMismatchError, "'mtl' metadata is nested deeper than 64 levels$"),
    Case("metadata_over_16_mib", _meta_case(text='{"pad": "' + "x" * (17 << 20) + '"}'), ModelMismatchError,
         r"an ONNX metadata entry is 17\.0 MiB, over the 16 MiB limit; refused unread$"),   # before a session
    Case("metadata_input_dim_1e308", _meta_case(_set("inputs.image", [1, 3, 1e308, 64])), ModelMismatchError,
         r"mtl metadata inputs\.image\[2\]: expected an integer in 1\.\.65536, got float 1e\+308$"),
    Case("metadata_opset_not_an_integer", _meta_case(_set("opset", 18.5)), ModelMismatchError,
         r"mtl metadata opset: expected an integer opset in 1\.\.1000, got float 18\.5$"),
    Case("metadata_checkpoint_sha_not_hex", _meta_case(_set("source_checkpoint_sha256", "../../etc")),
         ModelMismatchError, r"mtl metadata source_checkpoint_sha256: expected 64 lowercase hex digits"),
    Case("metadata_decode_not_bool", _meta_case(_set("decode", "yes")), ModelMismatchError,
         r"mtl metadata decode: expected true or false, got str 'yes'$"),
    Case("metadata_int8_target_unknown", _meta_case(_set("int8_target", "gpu")), ModelMismatchError,
         r"mtl metadata int8_target: expected one of \('tensorrt', 'cpu'\), got str 'gpu'$"),
    Case("metadata_format_true", _meta_case(_set("format", True)), ModelMismatchError,
         r"mtl metadata format bool True is not supported"),
    Case("metadata_version_not_a_string", _meta_case(_set("mtl_version", 1)), ModelMismatchError,
         r"mtl metadata mtl_version: expected a version string"),
]


def _engine(tmp: Path, art: dict, **side) -> tuple[list[str], Path]:
    engine = _engine_with_sidecar(art, tmp, **side)
    args = _infer(engine, art["chunks"], tmp)
    args[args.index("onnxruntime")] = "tensorrt"
    return args, engine


def _sidecar_engine_sha_not_hex(tmp: Path, art: dict) -> tuple[list[str], Path]:
    args, engine = _engine(tmp, art, engine_sha256="not-a-sha")
    return args, engine.with_name(engine.name + ".json")


# --------------------------------------------------------------------------------- mixed export folders


def _export_dir(tmp: Path, art: dict, **variants) -> Path:
    """An export folder: the fp32 model.onnx plus ``variants`` (file name -> metadata edit or None)."""
    d = tmp / "exp"
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(art["onnx"], d / "model.onnx")
    for name, edit in variants.items():
        _edited(art, d / name, edit or (lambda m: None))
    return d


def _manifest(d: Path, sizes: dict[str, int] | None = None) -> None:
    names = sizes or {p.name: p.stat().st_size for p in sorted(d.glob("*.onnx"))}
    (d / "manifest.json").write_text(json.dumps({"kind": "mtl export", "files": [
        {"name": n, "size": s, "sha256": "0" * 64} for n, s in names.items()]}))


def _variant_of_another_checkpoint(tmp: Path, art: dict) -> tuple[list[str], Path]:
    d = _export_dir(tmp, art, **{"model_fp16.onnx": _set("source_checkpoint_sha256", "1" * 64)})
    return _infer(d / "model_fp16.onnx", art["chunks"], tmp), d / "model_fp16.onnx"


def _bench_column_of_another_checkpoint(tmp: Path, art: dict) -> tuple[list[str], Path]:
    d = _export_dir(tmp, art, **{"model_fp16.onnx": _set("source_checkpoint_sha256", "1" * 64)})
    return ["bench", "--model", str(d / "model.onnx"), "--compare", "onnxruntime,onnxruntime-fp16", "--data",
            str(art["chunks"]), "--iters", "1", "--warmup", "0", "--out", str(tmp / "bench"),
            "--no-progress"], d / "model_fp16.onnx"


def _engine_of_another_checkpoint(tmp: Path, art: dict) -> tuple[list[str], Path]:
    return _engine(tmp, art, source_checkpoint_sha256="2" * 64)


def _pending_commit(tmp: Path, art: dict) -> tuple[list[str], Path]:
    d = _export_dir(tmp, art)
    (d / ".mtl-commit.json").write_text(json.dumps({"staging": ".export-staging-1", "files": ["model.onnx"],
                                                    "remove": []}))
    return _infer(d / "model.onnx", art["chunks"], tmp), d


def _manifest_lists_a_missing_file(tmp: Path, art: dict) -> tuple[list[str], Path]:
    d = _export_dir(tmp, art)
    _manifest(d, {"model.onnx": (d / "model.onnx").stat().st_size, "model_fp16.onnx": 1000})
    return _infer(d / "model.onnx", art["chunks"], tmp), d / "model_fp16.onnx"


def _manifest_misses_a_model(tmp: Path, art: dict) -> tuple[list[str], Path]:
    d = _export_dir(tmp, art)
    _manifest(d)
    _edited(art, d / "model_int8.onnx", lambda m: None)           # dropped in after the export
    return _infer(d / "model.onnx", art["chunks"], tmp), d / "model_int8.onnx"


def _manifest_size_differs(tmp: Path, art: dict) -> tuple[list[str], Path]:
    d = _export_dir(tmp, art)
    _manifest(d, {"model.onnx": (d / "model.onnx").stat().st_size + 1})
    return _infer(d / "model.onnx", art["chunks"], tmp), d / "model.onnx"


EXPORT_SET_CASES = [
    Case("sidecar_engine_sha_not_hex", _sidecar_engine_sha_not_hex, ModelMismatchError,
         "sidecar engine_sha256: expected 64 lowercase hex digits"),
    Case("infer_variant_of_another_checkpoint", _variant_of_another_checkpoint, ModelMismatchError,
         r"exported from checkpoint 111111111111\.\.\. but the fp32 model\.onnx beside it from [0-9a-f]{12}"),
    Case("bench_column_of_another_checkpoint", _bench_column_of_another_checkpoint, ModelMismatchError,
         "the folder mixes two exports"),
    Case("infer_engine_of_another_checkpoint", _engine_of_another_checkpoint, ModelMismatchError,
         r"exported from checkpoint 222222222222\.\.\."),
    Case("export_folder_with_pending_commit", _pending_commit, ModelMismatchError,
         "an interrupted write was not finished: run the same command again to finish it$"),
    Case("export_manifest_lists_a_missing_file", _manifest_lists_a_missing_file, ModelMismatchError,
         "listed in manifest.json but missing: the export set is incomplete"),
    Case("export_manifest_misses_a_model", _manifest_misses_a_model, ModelMismatchError,
         "is not part of the export recorded in manifest.json"),
    Case("export_manifest_size_differs", _manifest_size_differs, ModelMismatchError,
         r"bytes but manifest\.json records \d+: replaced after the export"),
]


# ------------------------------------------------------------------------------ outputs not to touch


def _out_is_data(tmp: Path, art: dict) -> tuple[list[str], Path]:
    data = write_tiny_chunks(tmp / "out", art["cfg"], n_frames=2, per_chunk=2, seed=3)
    return _infer(art["onnx"], data, tmp), data


def _out_inside_data(tmp: Path, art: dict) -> tuple[list[str], Path]:
    data = write_tiny_chunks(tmp / "data", art["cfg"], n_frames=2, per_chunk=2, seed=3)
    args = _infer(art["onnx"], data, tmp)
    args[args.index("--out") + 1] = str(data / "preds")
    return args, data / "preds"


def _out_not_empty(tmp: Path, art: dict) -> tuple[list[str], Path]:
    (tmp / "out").mkdir()
    (tmp / "out" / "notes.txt").write_text("mine")
    return _infer(art["onnx"], art["chunks"], tmp), tmp / "out"


def _resume_results_of_another_model(tmp: Path, art: dict) -> tuple[list[str], Path]:
    frames = tmp / "out" / "frames"
    frames.mkdir(parents=True)
    (frames / "tiny__3_000_sem.png").write_bytes(b"png")
    (frames / "tiny__3_000.json").write_text(json.dumps({"frame_id": "tiny/3_000", "model_sha256": "0" * 64}))
    return _infer(art["onnx"], art["chunks"], tmp) + ["--resume"], frames / "tiny__3_000.json"


def _resume_older_layout(tmp: Path, art: dict) -> tuple[list[str], Path]:
    (tmp / "out").mkdir()
    (tmp / "out" / "a.json").write_text("{}")
    (tmp / "out" / "a_sem.png").write_bytes(b"png")
    return _infer(art["onnx"], art["chunks"], tmp) + ["--resume"], tmp / "out"


def _overwrite_another_commands_output(tmp: Path, art: dict) -> tuple[list[str], Path]:
    (tmp / "out").mkdir()
    (tmp / "out" / "manifest.json").write_text(json.dumps({"kind": "mtl data convert", "files": []}))
    return _infer(art["onnx"], art["chunks"], tmp) + ["--overwrite"], tmp / "out" / "manifest.json"


def _export_args(art: dict, out: Path, *extra: str) -> list[str]:
    return ["export", str(art["ckpt"]), "--out", str(out), "--val-data", str(art["chunks"]), "--no-slim",
            "--parity-frames", "1", "--gate-frames", "2", *extra]


def _export_into_an_export(tmp: Path, art: dict) -> tuple[list[str], Path]:
    _export_dir(tmp, art)
    return _export_args(art, tmp / "exp"), tmp / "exp"


def _export_into_infer_output(tmp: Path, art: dict) -> tuple[list[str], Path]:
    (tmp / "o").mkdir()
    (tmp / "o" / "manifest.json").write_text(json.dumps({"kind": "mtl infer", "files": []}))
    return _export_args(art, tmp / "o", "--overwrite"), tmp / "o"


OUTPUT_CASES = [
    Case("infer_out_is_the_data", _out_is_data, OutputError, "lies inside the input data"),
    Case("infer_out_inside_the_data", _out_inside_data, OutputError, "lies inside the input data"),
    Case("infer_out_not_empty", _out_not_empty, OutputError,
         r"is not empty \(notes\.txt\); pass --resume to continue a run of the same model, --overwrite"),
    Case("infer_resume_results_of_another_model", _resume_results_of_another_model, OutputError,
         r"was written by model 000000000000\.\.\., not by this model"),
    Case("infer_resume_older_layout", _resume_older_layout, OutputError, "layout of an older mtl"),
    Case("infer_overwrite_another_commands_output", _overwrite_another_commands_output, OutputError,
         r"belongs to another command's output \(mtl data convert\)"),
    Case("export_into_an_existing_export", _export_into_an_export, OutputError,
         r"already holds an export \(model\.onnx\); pass --overwrite"),
    Case("export_into_another_commands_output", _export_into_infer_output, OutputError,
         r"holds another command's output \(manifest\.json of mtl infer\)"),
]

CORPUS = METADATA_CASES + EXPORT_SET_CASES + OUTPUT_CASES


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return tiny_artifacts(tmp_path_factory.mktemp("deploy_corpus"))


def _snapshot(root: Path, hidden: bool = True) -> dict[str, str]:
    """Every file under ``root`` (but mtl's lock files; hidden ones only if ``hidden``) -> its sha256."""
    return {str(p.relative_to(root)): _sha(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".mtl.lock"
            and (hidden or not any(part.startswith(".") for part in p.relative_to(root).parts))}


def test_deploy_corpus_size_and_unique_names():
    assert len(CORPUS) >= 12
    assert len({c.name for c in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("case", CORPUS, ids=lambda c: c.name)
def test_deploy_bad_input_is_refused_with_one_line_naming_the_file(case, tmp_path, art):
    args, bad = case.build(tmp_path, art)
    before = _snapshot(tmp_path)
    r = CliRunner().invoke(main, args)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == EXIT_CODES[case.error], r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith((f"error: {bad}: ", f"error: {bad.parent}: ")), lines[0]
    assert re.search(case.reason, lines[0]), lines[0]
    assert _snapshot(tmp_path) == before, "a refused command changed the files it was given"


def test_overwrite_and_resume_exclude_each_other(tmp_path, art):
    r = CliRunner().invoke(main, _infer(art["onnx"], art["chunks"], tmp_path) + ["--overwrite", "--resume"])
    assert r.exit_code == ConfigError.exit_code and "--overwrite and --resume exclude each other" in r.stderr


@pytest.mark.parametrize("command", ["export", "infer", "bench"])
def test_a_second_writer_of_the_same_folder_is_refused_naming_the_first(command, tmp_path, art):
    out = tmp_path / "out"
    args = {"export": _export_args(art, out),
            "infer": _infer(art["onnx"], art["chunks"], tmp_path),
            "bench": ["bench", "--model", str(art["onnx"]), "--data", str(art["chunks"]), "--compare", "onnxruntime",
                      "--iters", "1", "--warmup", "0", "--out", str(out), "--no-progress"]}[command]
    with OutputLock(out, "mtl holder"):
        r = CliRunner().invoke(main, args)
    assert r.exit_code == OutputError.exit_code, r.output
    since = json.loads((out / ".mtl.lock").read_text())["since"]
    assert r.stderr.strip() == (f"error: {out}: another mtl process is writing here (pid {os.getpid()}, `mtl holder` "
                                f"since {since} on {os.uname().nodename}); wait for it to finish or stop it, or choose "
                                "another output")
    assert [p.name for p in out.iterdir()] == [".mtl.lock"]


# ------------------------------------------------------------------------------------ metadata unit


def test_the_protobuf_walk_reads_the_same_metadata_as_onnx(tmp_path, art):
    """``onnx_metadata_text`` skips the graph: same text as ``onnx.load`` for real exports, None without it."""
    for path in (art["onnx"], export_tiny(art["ckpt"], tmp_path / "d.onnx", decode=True)):
        props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        assert onnx_metadata_text(path) == props[METADATA_KEY]
    bare = onnx.load(str(art["onnx"]))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    assert onnx_metadata_text(tmp_path / "bare.onnx") is None
    (tmp_path / "cut.onnx").write_bytes(art["onnx"].read_bytes()[:5000])
    with pytest.raises(ModelMismatchError, match="truncated protobuf"):
        onnx_metadata_text(tmp_path / "cut.onnx")
    (tmp_path / "zeros.onnx").write_bytes(b"\0" * 100_000)        # never walked byte by byte to its end
    with pytest.raises(ModelMismatchError, match=r"not a readable ONNX model \(not a ModelProto\)"):
        onnx_metadata_text(tmp_path / "zeros.onnx")


def test_metadata_text_is_bounded_before_and_while_parsing():
    """What a session hands over (``custom_metadata_map``) is bounded too: size before ``json.loads``, depth and
    NaN while parsing, each one line."""
    from mtl.contract import parse_metadata

    cases = {'{"pad": "' + "x" * (200 << 20) + '"}': r"is 200\.0 MiB, over the 16 MiB limit; refused without parsing",
             "[" * 200_000 + "]" * 200_000: "nested deeper than 64 levels",
             "[" * 65 + "]" * 65: "nested deeper than 64 levels",
             '{"decode": Infinity}': r"not valid JSON \(Infinity is not a finite number\)"}
    for text, reason in cases.items():
        with pytest.raises(ModelMismatchError, match=reason) as e:
            parse_metadata(text, "m.onnx")
        assert str(e.value).startswith("m.onnx: 'mtl' metadata ") and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------ infer results


def test_a_frame_id_summary_never_meets_the_run_summary(tmp_path, art):
    rng = np.random.default_rng(0)
    data = tmp_path / "d"
    write_chunk(data / "chunk_00000.npz", [tiny_frame(art["cfg"], rng, fid) for fid in ("summary", "manifest")],
                {"source": "test"})
    r = CliRunner().invoke(main, _infer(art["onnx"], data, tmp_path))
    assert r.exit_code == 0, r.output
    out = tmp_path / "out"
    assert json.loads((out / "summary.json").read_text())["frames_written"] == 2
    assert json.loads((out / "frames" / "summary.json").read_text())["frame_id"] == "summary"
    assert json.loads((out / "frames" / "manifest.json").read_text())["frame_id"] == "manifest"
    man = json.loads((out / "manifest.json").read_text())
    assert man["kind"] == "mtl infer" and man["model_sha256"] == _sha(art["onnx"])
    listed = {e["name"]: e for e in man["files"]}
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")}
    assert set(listed) | {"manifest.json"} == on_disk
    assert all(_sha(out / n) == e["sha256"] and (out / n).stat().st_size == e["size"] for n, e in listed.items())


def test_skip_bad_counts_a_truncated_chunk_and_a_bad_frame_into_the_summary(tmp_path, art):
    data = write_tiny_chunks(tmp_path / "d", art["cfg"], n_frames=12, per_chunk=1, seed=4)
    (data / "chunk_00005.npz").write_bytes((data / "chunk_00005.npz").read_bytes()[:300])
    with np.load(data / "chunk_00007.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    _replace_png("image_png", lambda b: b[:40])(arrays)
    with open(data / "chunk_00007.npz", "wb") as f:
        np.savez(f, **arrays)
    args = _infer(art["onnx"], data, tmp_path)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 3 and f"error: {data / 'chunk_00005.npz'}" in r.stderr, r.output
    assert not (tmp_path / "out" / "summary.json").exists()

    r = CliRunner().invoke(main, args + ["--skip-bad", "--resume"])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["frames_written"] == 10 and s["frames_resumed"] == 5
    # the truncated chunk is found when read; the broken PNG when decoded (or, by a reader that checks PNG
    # headers, when its chunk is read): two skipped, each named with its file
    assert sum(s["frames_skipped"].values()) == 2 and s["frames_skipped"]["bad chunk"] >= 1, s["frames_skipped"]
    assert s["bad"][0].startswith(f"bad chunk: {data / 'chunk_00005.npz'}: ")
    assert re.match(rf"bad (frame|chunk): {re.escape(str(data / 'chunk_00007.npz'))}: .*PNG", s["bad"][1]), s["bad"]
    assert "skipped bad chunk" in r.stderr
    assert len(list((tmp_path / "out" / "frames").glob("*.json"))) == 10


def test_overwrite_replaces_old_results_only_once_the_new_run_is_complete(tmp_path, art):
    out = tmp_path / "out"
    r = CliRunner().invoke(main, _infer(art["onnx"], art["chunks"], tmp_path) + ["--overlay"])
    assert r.exit_code == 0, r.output
    assert len(list((out / "frames").iterdir())) == 12                     # per frame: JSON, ids, colours, overlay
    r = CliRunner().invoke(main, _infer(art["onnx"], art["chunks"], tmp_path) + ["--overwrite", "--limit", "1"])
    assert r.exit_code == 0, r.output
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert files == ["frames/tiny__3_000.json", "frames/tiny__3_000_sem.png", "frames/tiny__3_000_sem_color.png",
                     "manifest.json", "summary.json"]
    assert not [p for p in out.iterdir() if p.name.startswith(".infer-staging")]


# ------------------------------------------------------------------------------------- full disks


def _limited(args: list[str], fsize: int, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The CLI with ``RLIMIT_FSIZE``: a write past ``fsize`` bytes fails with EFBIG, as on a full disk."""
    def limit() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run([*MTL, *args], capture_output=True, text=True, preexec_fn=limit, cwd=cwd, timeout=300)


def _own_lines(stderr: str) -> list[str]:
    """stderr without torch's own log lines (``W1201 23:37:03.709 ... torchvision is not installed``)."""
    assert "Traceback" not in stderr, stderr
    return [ln for ln in stderr.splitlines() if not re.match(r"[IWE]\d{4} \d\d:\d\d:", ln)]


def test_infer_on_a_full_disk_leaves_no_image_without_its_json(tmp_path, art):
    ref = tmp_path / "ref"
    assert CliRunner().invoke(main, _infer_args(art["onnx"], art["chunks"], ref)).exit_code == 0
    png = (ref / "frames" / "tiny__3_000_sem.png").stat().st_size
    js = (ref / "frames" / "tiny__3_000.json").stat().st_size
    assert png < js
    out = tmp_path / "out"
    r = _limited(_infer(art["onnx"], art["chunks"], tmp_path), (png + js) // 2)
    assert r.returncode == 10, r.stderr
    lines = _own_lines(r.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: {out / 'frames' / 'tiny__3_000.json'}: File too large")
    assert [p.name for p in (out / "frames").iterdir()] == []         # its _sem.png was removed with it


def test_export_on_a_full_disk_keeps_the_previous_set(tmp_path, exports):
    out = tmp_path / "exp"
    shutil.copytree(exports["old"], out)
    before = _snapshot(out)
    r = _limited(_export_args(exports["art_b"], out, "--overwrite"), 50_000)
    assert r.returncode == 10, r.stdout + r.stderr
    lines = _own_lines(r.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: {out / 'model.onnx'}: File too large"), lines
    assert _snapshot(out) == before and not [p for p in out.iterdir() if p.name.startswith(".export-staging")]


def test_a_report_that_cannot_be_written_never_hides_the_original_error(tmp_path, art):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["export", str(art["ckpt"]), "--out", str(tmp_path / "o"), "--val-data", str(empty), "--no-slim"]
    r = _limited(args, 1000)
    assert r.returncode == 3, r.stdout + r.stderr
    lines = _own_lines(r.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: {empty}: no *.npz chunks found"), lines
    assert "note: the export report could not be written" in r.stdout
    assert [p.name for p in (tmp_path / "o").iterdir()] == [".mtl.lock"]


def test_bench_on_a_full_disk_is_one_line(tmp_path, art):
    out = tmp_path / "b"
    r = _limited(["bench", "--model", str(art["onnx"]), "--data", str(art["chunks"]), "--compare", "onnxruntime",
                  "--iters", "2", "--warmup", "0", "--frames", "1", "--out", str(out), "--no-progress"], 300)
    assert r.returncode == 10, r.stderr
    lines = _own_lines(r.stderr)
    assert len(lines) == 1 and re.fullmatch(rf"error: {re.escape(str(out))}/[0-9-]+_single-stream/bench_ort\.json: "
                                            r"File too large.*", lines[0]), lines
    # nothing half-written: no result file, only what was complete before the write failed
    assert not [p for p in out.rglob("bench_*") if p.is_file()], sorted(out.rglob("*"))


def _unprivileged():
    """A ``preexec_fn`` that drops root to nobody (root ignores permission bits); None when not root."""
    if os.geteuid() != 0:
        return None

    def drop() -> None:
        os.setgid(65534)
        os.setuid(65534)

    try:
        subprocess.run([sys.executable, "-c", "import mtl"], preexec_fn=drop, check=True, capture_output=True)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"running as root, and this Python cannot run as nobody ({e}); a folder without write "
                    "permission would not stop root")
    return drop


@pytest.mark.parametrize("command", ["export", "infer", "bench"])
def test_an_output_folder_that_cannot_be_written_is_one_line_exit_10(command, art):
    """EACCES (a folder without write permission) is reported like a full disk: one line naming it, exit 10."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="mtl-ro-"))
    try:
        base.chmod(0o755)
        shutil.copy(art["onnx"], base / "model.onnx")
        shutil.copy(art["ckpt"], base / "ckpt.pt")
        shutil.copytree(art["chunks"], base / "chunks")
        (base / "home").mkdir(mode=0o777)
        (base / "home").chmod(0o777)
        ro = base / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        out = ro / "out"
        args = {"export": ["export", str(base / "ckpt.pt"), "--out", str(out), "--val-data", str(base / "chunks")],
                "infer": _infer_args(base / "model.onnx", base / "chunks", out),
                "bench": ["bench", "--model", str(base / "model.onnx"), "--data", str(base / "chunks"), "--compare",
                          "onnxruntime", "--iters", "1", "--warmup", "0", "--out", str(out), "--no-progress"]}[command]
        r = subprocess.run([*MTL, *args], capture_output=True, text=True, preexec_fn=_unprivileged(), cwd=base,
                           env={**os.environ, "HOME": str(base / "home")}, timeout=300)
        assert r.returncode == 10, r.stderr
        lines = _own_lines(r.stderr)
        assert len(lines) == 1 and lines[0].startswith(f"error: {out}: Permission denied"), lines
        assert not out.exists()
    finally:
        shutil.rmtree(base)


# ------------------------------------------------------------------------------------ export sets


@pytest.fixture(scope="module")
def exports(tmp_path_factory, art):
    """Checkpoints A (the corpus model) and B, and the set of a real export of A (fp32 + fp16)."""
    root = tmp_path_factory.mktemp("sets")
    ckpt_b = save_tiny_checkpoint(art["cfg"], root / "b.pt", seed=1)
    old = root / "old"
    r = CliRunner().invoke(main, _export_args(art, old, "--fp16"))
    assert r.exit_code == 0, r.output
    return {"old": old, "art_b": {**art, "ckpt": ckpt_b}, "sha_a": _sha(art["ckpt"]), "sha_b": _sha(ckpt_b)}


def _assert_one_set(d: Path, sha: str) -> list[str]:
    """``d`` holds exactly the files its manifest lists, each as listed, all naming checkpoint ``sha``, and a
    report that describes these very models. Returns the file names."""
    man = json.loads((d / "manifest.json").read_text())
    files = sorted(p.name for p in d.iterdir() if p.is_file() and not p.name.startswith("."))
    assert sorted([e["name"] for e in man["files"]] + ["manifest.json"]) == files
    for e in man["files"]:
        assert (d / e["name"]).stat().st_size == e["size"] and _sha(d / e["name"]) == e["sha256"], e["name"]
    rep = json.loads((d / "export_report.json").read_text())
    assert man["checkpoint_sha256"] == rep["checkpoint_sha256"] == sha and man["passed"] == rep["passed"]
    for v in rep["variants"].values():
        assert _sha(d / v["path"]) == v["sha256"], v["path"]
    for f in files:
        if f.endswith((".onnx", ".onnx.rejected")):
            assert source_checkpoint(d / f) == sha, f
    return files


def test_reexport_replaces_the_whole_set_and_rejected_files_belong_to_it(tmp_path, exports):
    out = tmp_path / "exp"
    shutil.copytree(exports["old"], out)
    assert _assert_one_set(out, exports["sha_a"]) == ["export_report.json", "export_report.md", "manifest.json",
                                                      "model.onnx", "model_fp16.onnx"]
    # the fp16 gate of B fails on purpose: a failed export is committed as a set too, with its *.rejected file
    r = CliRunner().invoke(main, _export_args(exports["art_b"], out, "--fp16", "--max-drop-miou", "-1", "--overwrite"))
    assert r.exit_code == 8, r.output
    assert _assert_one_set(out, exports["sha_b"]) == ["export_report.json", "export_report.md", "manifest.json",
                                                      "model.onnx", "model_fp16.onnx.rejected"]
    assert json.loads((out / "manifest.json").read_text())["passed"] is False
    check_export_set([out / "model.onnx"])                              # a set bench / infer accept


def _fault_log(args: list[str], log: Path) -> list[str]:
    """Run to completion with every write point logged; returns their labels."""
    env = {**os.environ, "MTL_FAULT_AT_WRITE": "1000000", "MTL_FAULT_LOG": str(log)}
    r = subprocess.run([*MTL, *args], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return [ln.split("\t", 1)[1] for ln in log.read_text().splitlines()]


def _killed(args: list[str], k: int) -> int:
    """The command's exit status when SIGKILLed at its k-th write point (k = 0: not killed)."""
    env = {**os.environ, "MTL_FAULT_AT_WRITE": str(k)} if k else dict(os.environ)
    return subprocess.run([*MTL, *args], env=env, capture_output=True, timeout=300).returncode


@pytest.mark.slow
def test_export_killed_at_every_write_point_leaves_the_old_set_or_the_new_one(tmp_path, exports):
    b = exports["art_b"]
    ref = tmp_path / "ref"
    shutil.copytree(exports["old"], ref)
    labels = _fault_log(_export_args(b, ref, "--fp16", "--overwrite"), tmp_path / "log")
    new = _assert_one_set(ref, exports["sha_b"])
    old = _snapshot(exports["old"], hidden=False)
    assert labels[-1] == "commit done" and len(labels) >= 10, labels

    def args(d: Path) -> list[str]:
        return _export_args(b, d, "--fp16", "--overwrite")

    def kill(k: int) -> tuple[int, int, Path]:
        d = tmp_path / f"k{k}"
        shutil.copytree(exports["old"], d)
        return k, _killed(args(d), k), d

    before_commit, in_commit = labels.index("write model.onnx") + 1, labels.index("commit journal") + 2
    outcomes, dirs = set(), {}
    with ThreadPoolExecutor(WORKERS) as pool:
        for k, rc, d in pool.map(kill, range(1, len(labels) + 1)):
            assert rc == -signal.SIGKILL, (k, labels[k - 1])
            dirs[k] = d
            if pending_commit(d):                       # readers refuse; the next writer finishes the commit
                with pytest.raises(ModelMismatchError, match="an interrupted write was not finished"):
                    check_export_set([d / "model.onnx"])
                if k == in_commit:                      # the same command again: it just finishes it
                    assert _killed(args(d), 0) == 0
                else:
                    assert recover_commit(d)
                outcomes.add("finished")
            if _snapshot(d, hidden=False) == old:          # (a dead export's staging folder is hidden)
                outcomes.add("old")
            else:
                assert _assert_one_set(d, exports["sha_b"]) == new, f"kill at {k} ({labels[k - 1]}) mixed the sets"
                outcomes.add("new")
    assert outcomes == {"old", "new", "finished"}
    # the same command again after a kill before the commit: a whole new export replaces the old set
    assert [p.name for p in dirs[before_commit].iterdir() if p.name.startswith(".export-staging-")]
    assert _killed(args(dirs[before_commit]), 0) == 0
    for k in (before_commit, in_commit):
        assert _assert_one_set(dirs[k], exports["sha_b"]) == new
        assert sorted(p.name for p in dirs[k].iterdir() if p.name.startswith(".")) == [".mtl.lock"]


# --------------------------------------------------------------------------------- infer under kills


def _infer_view(out: Path) -> dict[str, object]:
    """An infer output as comparable content: frame JSONs without their timings, image bytes, the summary's
    counts, the manifest's file names (hidden lock / staging / journal files left out)."""
    view: dict[str, object] = {}
    for p in sorted(out.rglob("*")):
        rel = str(p.relative_to(out))
        if not p.is_file() or any(part.startswith(".") for part in Path(rel).parts):
            continue
        if rel == "summary.json":
            s = json.loads(p.read_text())
            view[rel] = (s["model_sha256"], s["frames_written"], s["files"])
        elif rel == "manifest.json":
            view[rel] = sorted(e["name"] for e in json.loads(p.read_text())["files"])
        elif p.suffix == ".json":
            view[rel] = {k: v for k, v in json.loads(p.read_text()).items() if k != "timing_ms"}
        else:
            view[rel] = _sha(p)
    return view


@pytest.fixture(scope="module")
def second_model(tmp_path_factory, art):
    root = tmp_path_factory.mktemp("second")
    return export_tiny(save_tiny_checkpoint(art["cfg"], root / "b.pt", seed=1), root / "export" / "model.onnx")


def _infer_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["infer", "--model", str(model), "--data", str(data), "--out", str(out), "--backend", "onnxruntime",
            "--threads", "1", "--no-progress", *extra]


@pytest.mark.slow
def test_infer_overwrite_killed_at_every_write_point_leaves_old_or_new_results(tmp_path, art, second_model):
    old_dir = tmp_path / "old"
    assert _killed(_infer_args(art["onnx"], art["chunks"], old_dir, "--overlay"), 0) == 0
    ref = tmp_path / "ref"
    shutil.copytree(old_dir, ref)
    labels = _fault_log(_infer_args(second_model, art["chunks"], ref, "--overwrite"), tmp_path / "log")
    old, new = _infer_view(old_dir), _infer_view(ref)
    assert old != new and labels[-1] == "commit done"

    def kill(k: int) -> tuple[int, int, Path]:
        d = tmp_path / f"k{k}"
        shutil.copytree(old_dir, d)
        return k, _killed(_infer_args(second_model, art["chunks"], d, "--overwrite"), k), d

    outcomes = set()
    with ThreadPoolExecutor(WORKERS) as pool:
        for k, rc, d in pool.map(kill, range(1, len(labels) + 1)):
            assert rc == -signal.SIGKILL, (k, labels[k - 1])
            if pending_commit(d):
                assert recover_commit(d)
                outcomes.add("finished")
            view = _infer_view(d)
            assert view in (old, new), f"kill at {k} ({labels[k - 1]}) mixed old and new results"
            outcomes.add("old" if view == old else "new")
    assert outcomes == {"old", "new", "finished"}


@pytest.mark.slow
def test_infer_killed_at_every_write_point_resumes_to_the_uninterrupted_result(tmp_path, art, second_model):
    ref = tmp_path / "ref"
    labels = _fault_log(_infer_args(second_model, art["chunks"], ref), tmp_path / "log")
    want = _infer_view(ref)
    sha = _sha(second_model)

    def check_prefix(d: Path) -> None:
        """Finished frames only ever with every file, of this model, equal to the uninterrupted run's."""
        for j in (d / "frames").glob("*.json"):
            rel = f"frames/{j.name}"
            assert _infer_view(d)[rel] == want[rel] and json.loads(j.read_text())["model_sha256"] == sha
            assert (d / "frames" / j.name.replace(".json", "_sem.png")).is_file()

    def run(k: int) -> tuple[int, list[int]]:
        d = tmp_path / f"k{k}"
        args = _infer_args(second_model, art["chunks"], d, "--resume")
        rcs = [_killed(args, k)]                   # a first run killed at its k-th write
        check_prefix(d)
        rcs.append(_killed(args, k))               # the --resume killed at its own k-th write
        check_prefix(d)
        rcs.append(_killed(args, 0))               # then a --resume to the end
        assert _infer_view(d) == want, f"kill at {k} ({labels[k - 1]}) then --resume differs from one run"
        return k, rcs

    with ThreadPoolExecutor(WORKERS) as pool:
        for k, rcs in pool.map(run, range(1, len(labels) + 1)):
            assert rcs[0] == -signal.SIGKILL and rcs[1] in (0, -signal.SIGKILL) and rcs[2] == 0, (k, rcs)
