"""The bad-input corpus: every kind of broken file a fleet of recorded drives produces, generated here
(no committed binaries), each with its defined behaviour through the user-facing command:

- refused: the command exits with the error type's code (docs/TROUBLESHOOTING.md) and prints exactly one
  line ``error: <file>: <reason>`` on stderr; nothing is written to the output (or an earlier output stays);
- skipped with ``--skip-bad`` (convert, train): counted and logged, the job finishes;
- accepted: inputs that are legal but degenerate (empty cloud, points outside the grid, huge or NaN
  coordinates at runtime) run, and what was dropped is reported.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from conftest import tiny_cfg, write_tiny_chunks
from test_convert import ALL, write_raw_tree
from test_runtime import tiny_artifacts

from mtl.cli import main
from mtl.data import a2d2
from mtl.data.chunk import read_chunk
from mtl.errors import ChunkError, ConfigError, DataError, ModelMismatchError, OutputError
from mtl.geometry import bev_raster

EXIT = {ConfigError: 2, ChunkError: 3, DataError: 4, ModelMismatchError: 5, OutputError: 9}


@dataclass
class Case:
    name: str
    build: Callable[[Path, dict], tuple[list[str], Path]]   # (tmp, artefacts) -> (CLI args, the bad file)
    error: type
    reason: str                                             # regex the one-line reason must match


# --------------------------------------------------------------------------------------------- chunks


def _good_chunk(tmp: Path) -> Path:
    d = write_tiny_chunks(tmp / "good", tiny_cfg(), n_frames=2, per_chunk=2, seed=5)
    return d / "chunk_00000.npz"


def _chunk_case(edit: Callable[[dict], None]) -> Callable[[Path, dict], tuple[list[str], Path]]:
    """A chunk whose arrays were edited after writing (np.savez directly, bypassing the validating writer)."""
    def build(tmp: Path, art: dict) -> tuple[list[str], Path]:
        with np.load(_good_chunk(tmp), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        edit(arrays)
        bad = tmp / "bad" / "chunk_00000.npz"
        bad.parent.mkdir()
        with open(bad, "wb") as f:
            np.savez(f, **arrays)
        return ["data", "inspect", str(bad)], bad
    return build


def _chunk_bytes(make: Callable[[bytes], bytes]) -> Callable[[Path, dict], tuple[list[str], Path]]:
    def build(tmp: Path, art: dict) -> tuple[list[str], Path]:
        data = _good_chunk(tmp).read_bytes()
        bad = tmp / "bad.npz"
        bad.write_bytes(make(data))
        return ["data", "inspect", str(bad)], bad
    return build


def _set(key: str, fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[dict], None]:
    def edit(a: dict) -> None:
        a[key] = fn(a[key])
    return edit


def _nan_row(col: int, value: float = np.nan) -> Callable[[np.ndarray], np.ndarray]:
    def fn(x: np.ndarray) -> np.ndarray:
        x = x.copy()
        x[len(x) // 2, col] = value
        return x
    return fn


def _replace_png(key: str, make: Callable[[bytes], bytes]) -> Callable[[dict], None]:
    """Replace frame 0's PNG in ``key`` (image_png / semantic_png) and fix the offsets to match."""
    def edit(a: dict) -> None:
        off = a[key.replace("_png", "_offsets")]
        first = a[key][off[0]: off[1]].tobytes()
        new = np.frombuffer(make(first), np.uint8)
        a[key] = np.concatenate([new, a[key][off[1]:]])
        a[key.replace("_png", "_offsets")] = np.concatenate([[0], off[1:] - off[1] + len(new)]).astype(np.int64)
    return edit


def _other_size_png(_: bytes) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


CHUNK_CASES = [
    Case("chunk_zero_bytes", _chunk_bytes(lambda d: b""), ChunkError, "file is empty"),
    Case("chunk_truncated", _chunk_bytes(lambda d: d[: len(d) // 2]), ChunkError, "corrupt or truncated npz"),
    Case("chunk_not_a_zip", _chunk_bytes(lambda d: b"\x93NUMPY garbage" * 10), ChunkError, "not an npz"),
    Case("chunk_wrong_dtype", _chunk_case(_set("points", lambda x: x.astype(np.float64))), ChunkError,
         "points has dtype float64, expected float32"),
    Case("chunk_offsets_out_of_range", _chunk_case(_set("point_offsets", lambda o: o + np.r_[0, 0, 10_000])),
         ChunkError, "point_offsets must start at 0 and end at"),
    Case("chunk_offsets_not_monotonic",
         _chunk_case(_set("box_offsets", lambda o: np.array([0, o[-1] + 1, o[-1]], np.int64))), ChunkError,
         "box_offsets is not monotonic"),
    Case("chunk_missing_key", _chunk_case(lambda a: a.pop("cam_matrix")), ChunkError, r"missing keys \['cam_matrix'\]"),
    Case("chunk_object_array", _chunk_case(_set("frame_id", lambda x: x.astype(object))), ChunkError,
         r"object arrays \(pickle is never loaded\)"),
    Case("chunk_png_does_not_decode", _chunk_case(_replace_png("image_png", lambda b: b[:40])), ChunkError,
         "image PNG does not decode"),
    Case("chunk_image_semantic_size_mismatch", _chunk_case(_replace_png("semantic_png", _other_size_png)),
         ChunkError, "semantic map is 5x7 but the image is"),
    Case("chunk_nan_points", _chunk_case(_set("points", _nan_row(0))), ChunkError, "points contains NaN or inf"),
    Case("chunk_inf_points", _chunk_case(_set("points", _nan_row(2, np.inf))), ChunkError,
         "points contains NaN or inf"),
    Case("chunk_zero_size_box", _chunk_case(_set("boxes", _nan_row(3, 0.0))), ChunkError,
         "boxes have non-positive length/width/height"),
    Case("chunk_nan_yaw", _chunk_case(_set("boxes", _nan_row(6))), ChunkError, "boxes contains NaN or inf"),
]


# ---------------------------------------------------------------------------------------- raw A2D2


FRAME = ("20180807_145028", "000000091")


def _raw_case(spoil: Callable[[Path], Path]) -> Callable[[Path, dict], tuple[list[str], Path]]:
    """A tiny complete raw tree (2 frames) with one file spoiled by ``spoil(root) -> that file``."""
    def build(tmp: Path, art: dict) -> tuple[list[str], Path]:
        root = write_raw_tree(tmp / "raw", [(*FRAME, ALL), ("20180807_145028", "000000092", ALL)])
        bad = spoil(root)
        return ["data", "convert", "--a2d2", str(root), "--out", str(tmp / "out"), "--workers", "1",
                "--no-progress"], bad
    return build


def _raw(root: Path, kind: str, frame: tuple[str, str] = FRAME) -> Path:
    return a2d2.raw_file_path(root, frame[0], kind, frame[1])


def _truncate(kind: str) -> Callable[[Path], Path]:
    def spoil(root: Path, frame: tuple[str, str] = FRAME) -> Path:
        p = _raw(root, kind, frame)
        p.write_bytes(p.read_bytes()[:60])
        return p
    return spoil


def _lidar(**arrays) -> Callable[[Path], Path]:
    def spoil(root: Path, frame: tuple[str, str] = FRAME) -> Path:
        p = _raw(root, "lidar", frame)
        with open(p, "wb") as f:
            np.savez(f, **arrays)
        return p
    return spoil


def _box_json(edit: Callable[[dict], None]) -> Callable[[Path], Path]:
    def spoil(root: Path, frame: tuple[str, str] = FRAME) -> Path:
        p = _raw(root, "label3D", frame)
        doc = json.loads(p.read_text())
        edit(doc["box_0"])
        p.write_text(json.dumps(doc, allow_nan=True))
        return p
    return spoil


def _unknown_colour(root: Path, frame: tuple[str, str] = FRAME) -> Path:
    p = _raw(root, "label", frame)
    rgb = np.array(Image.open(p))
    rgb[0, :3] = (1, 2, 3)
    Image.fromarray(rgb).save(p)
    return p


def _no_front_camera(root: Path) -> Path:
    p = root / "cams_lidars.json"
    doc = json.loads(p.read_text())
    doc["cameras"]["side_left"] = doc["cameras"].pop("front_center")
    p.write_text(json.dumps(doc))
    return p


def _zero_bytes(kind: str) -> Callable[[Path], Path]:
    def spoil(root: Path, frame: tuple[str, str] = FRAME) -> Path:
        p = _raw(root, kind, frame)
        p.write_bytes(b"")
        return p
    return spoil


def _text(kind: str, text: str) -> Callable[[Path], Path]:
    def spoil(root: Path, frame: tuple[str, str] = FRAME) -> Path:
        p = _raw(root, kind, frame)
        p.write_text(text)
        return p
    return spoil


PTS = np.array([[5.0, 1.0, -1.0], [6.0, -1.0, -1.2]])
RAW_CASES = [
    Case("raw_camera_png_truncated", _raw_case(_truncate("camera")), DataError, "PNG does not decode"),
    Case("raw_label_png_zero_bytes", _raw_case(_zero_bytes("label")), DataError, r"PNG is empty \(0 bytes\)"),
    Case("raw_label_unknown_colour", _raw_case(_unknown_colour), DataError,
         "3 pixels have colours outside the A2D2 class table"),
    Case("raw_lidar_truncated", _raw_case(_truncate("lidar")), DataError, "corrupt or truncated npz"),
    Case("raw_lidar_nan_points", _raw_case(_lidar(points=PTS * [1, np.nan, 1], reflectance=np.array([1, 2]))),
         DataError, "2 of 2 points are NaN or inf"),
    Case("raw_lidar_object_array", _raw_case(_lidar(points=np.array([None, 1], dtype=object),
                                                    reflectance=np.zeros(2))), DataError, "object arrays"),
    Case("raw_lidar_wrong_dtype", _raw_case(_lidar(points=np.array([["a", "b", "c"]]), reflectance=np.zeros(1))),
         DataError, "must be numeric"),
    Case("raw_lidar_missing_key", _raw_case(_lidar(points=PTS)), DataError, "no 'reflectance' array"),
    Case("raw_box_zero_size", _raw_case(_box_json(lambda b: b.update(size=[4.2, 0.0, 1.6]))), DataError,
         "box_0.size must be positive"),
    Case("raw_box_negative_size", _raw_case(_box_json(lambda b: b.update(size=[-4.2, 1.9, 1.6]))), DataError,
         "box_0.size must be positive"),
    Case("raw_box_nan_yaw", _raw_case(_box_json(lambda b: b.update(rot_angle=float("nan")))), DataError,
         "box_0.rot_angle must be 1 finite numbers"),
    Case("raw_box_missing_field", _raw_case(_box_json(lambda b: b.pop("center"))), DataError,
         "box_0 has no 'center'"),
    Case("raw_label3d_not_json", _raw_case(_text("label3D", '{"box_0": {')), DataError, "not readable JSON"),
    Case("raw_cams_lidars_missing_camera", _raw_case(_no_front_camera), DataError,
         "camera 'front_center' missing"),
]


# --------------------------------------------------------------------------------- models / runtime


def _infer(model: Path, data: Path, tmp: Path) -> list[str]:
    return ["infer", "--model", str(model), "--data", str(data), "--out", str(tmp / "out"),
            "--backend", "onnxruntime", "--no-progress"]


def _classes_differ(tmp: Path, art: dict) -> tuple[list[str], Path]:
    from mtl.data.chunk import write_chunk

    chunk = read_chunk(min(art["chunks"].glob("*.npz")))
    names = list(art["cfg"].classes.det_classes)
    names[1] = "tractor"
    bad = write_chunk(tmp / "d" / "chunk_00000.npz", list(chunk),
                      {"sem_classes": list(art["cfg"].classes.sem_classes), "det_classes": names})
    return _infer(art["onnx"], bad.parent, tmp), bad


def _calibration_differs(tmp: Path, art: dict) -> tuple[list[str], Path]:
    from mtl.data.chunk import write_chunk

    frames = list(read_chunk(min(art["chunks"].glob("*.npz"))))
    for f in frames:
        f.cam_matrix = f.cam_matrix * np.array([[1.1, 1, 1], [1, 1, 1], [1, 1, 1]], np.float32)
    bad = write_chunk(tmp / "d" / "chunk_00000.npz", frames, {"source": "test"})
    return _infer(art["onnx"], bad.parent, tmp), bad


def _onnx_without_metadata(tmp: Path, art: dict) -> tuple[list[str], Path]:
    import onnx

    proto = onnx.load(str(art["onnx"]))
    del proto.metadata_props[:]
    bad = tmp / "plain.onnx"
    onnx.save(proto, str(bad))
    return _infer(bad, art["chunks"], tmp), bad


def _engine_sidecar_mismatch(tmp: Path, art: dict) -> tuple[list[str], Path]:
    from test_runtime import _engine_with_sidecar

    engine = _engine_with_sidecar(art, tmp, onnx_sha256="0" * 64)
    args = _infer(engine, art["chunks"], tmp)
    args[args.index("onnxruntime")] = "tensorrt"
    return args, engine


def _engine_case(spoil: Callable[[Path], Path], **side) -> Callable[[Path, dict], tuple[list[str], Path]]:
    """An engine folder (ONNX + engine + sidecar) that passes every pre-TensorRT check until ``spoil``s edit;
    ``spoil(engine) -> the path the error must name``."""
    def build(tmp: Path, art: dict) -> tuple[list[str], Path]:
        from test_runtime import _engine_with_sidecar

        engine = _engine_with_sidecar(art, tmp, **side)
        args = _infer(engine, art["chunks"], tmp)
        args[args.index("onnxruntime")] = "tensorrt"
        return args, spoil(engine)
    return build


def _sidecar(engine: Path) -> Path:
    return engine.with_name(engine.name + ".json")


def _swap_engine(engine: Path) -> Path:
    engine.write_bytes(b"another engine under the same sidecar")
    return engine


def _drop_onnx(engine: Path) -> Path:
    (engine.parent / "model.onnx").unlink()
    return _sidecar(engine)


def _huge_onnx(engine: Path) -> Path:
    with open(engine.parent / "model.onnx", "r+b") as f:      # sparse: 2 GiB + 1 byte, no disk used
        f.truncate((2 << 30) + 1)
    return engine.parent / "model.onnx"


def _drop_engine_hash(engine: Path) -> Path:
    meta = json.loads(_sidecar(engine).read_text())
    del meta["engine_sha256"]
    _sidecar(engine).write_text(json.dumps(meta))
    return _sidecar(engine)


def _truncated_checkpoint(tmp: Path, art: dict) -> tuple[list[str], Path]:
    bad = tmp / "best.pt"
    bad.write_bytes(art["ckpt"].read_bytes()[:1000])
    return ["eval", "--checkpoint", str(bad), "--data", str(art["chunks"]), "--no-progress"], bad


def _raw_frame_other_camera(tmp: Path, art: dict) -> tuple[list[str], Path]:
    root = write_raw_tree(tmp / "raw", [(*FRAME, ALL)])
    return _infer(art["onnx"], root, tmp), root / "cams_lidars.json"


def _config_file_wrong_type(tmp: Path, art: dict) -> tuple[list[str], Path]:
    bad = tmp / "config.json"
    d = art["cfg"].to_dict()
    d["train"]["lr"] = "0.001"
    bad.write_text(json.dumps(d))
    return ["train", "--data", str(art["chunks"]), "--out", str(tmp / "out"), "--config", str(bad)], bad


def _checkpoint_config_out_of_range(tmp: Path, art: dict) -> tuple[list[str], Path]:
    import torch

    ckpt = torch.load(art["ckpt"], weights_only=True)
    ckpt["config"]["model"]["cam_channels"] = [8, 8, 8, 1 << 30]      # would allocate terabytes
    bad = tmp / "big.pt"
    torch.save(ckpt, bad)
    return ["eval", "--checkpoint", str(bad), "--data", str(art["chunks"]), "--no-progress"], bad


def _onnx_metadata_config_wrong_type(tmp: Path, art: dict) -> tuple[list[str], Path]:
    from test_runtime import export_tiny

    def edit(meta: dict) -> None:
        meta["config"]["decode"]["score_threshold"] = "0.3"

    bad = export_tiny(art["ckpt"], tmp / "model.onnx", meta_edit=edit)
    return _infer(bad, art["chunks"], tmp), bad


def _bench_sensor_input_on_chunks(tmp: Path, art: dict) -> tuple[list[str], Path]:
    return ["bench", "--model", str(art["onnx"]), "--data", str(art["chunks"]), "--input", "sensor", "--compare",
            "onnxruntime", "--queries", "2", "--out", str(tmp / "out"), "--no-progress"], art["chunks"]


MODEL_CASES = [
    Case("bench_sensor_input_on_chunks", _bench_sensor_input_on_chunks, DataError,
         r"--input sensor needs raw A2D2 frames .*use --input png\)$"),
    Case("config_file_wrong_type", _config_file_wrong_type, ConfigError,
         r"train\.lr: expected a number, got str '0\.001'$"),
    Case("checkpoint_config_out_of_range", _checkpoint_config_out_of_range, ConfigError,
         r"checkpoint config is invalid \(model\.cam_channels: must be >= 1 and <= 4096"),
    Case("onnx_metadata_config_wrong_type", _onnx_metadata_config_wrong_type, ModelMismatchError,
         r"mtl metadata config is invalid \(decode\.score_threshold: expected a number, got str '0\.3'\)$"),
    Case("model_classes_differ_from_data", _classes_differ, ModelMismatchError,
         "data det_classes differ from the model's"),
    Case("model_calibration_differs_from_chunk", _calibration_differs, ModelMismatchError, "calibration mismatch"),
    Case("model_calibration_differs_from_raw_tree", _raw_frame_other_camera, ModelMismatchError,
         "calibration mismatch: camera"),
    Case("onnx_without_mtl_metadata", _onnx_without_metadata, ModelMismatchError, "metadata"),
    Case("engine_sidecar_mismatch", _engine_sidecar_mismatch, ModelMismatchError,
         "engine was built from another ONNX: sidecar onnx_sha256 0000"),
    Case("engine_bytes_differ_from_sidecar", _engine_case(_swap_engine), ModelMismatchError,
         "engine bytes do not match its sidecar"),
    Case("engine_onnx_path_escapes_folder", _engine_case(_sidecar, onnx_path="../model.onnx"), ModelMismatchError,
         "onnx_path '../model.onnx' leaves the engine's folder"),
    Case("engine_onnx_path_absolute", _engine_case(_sidecar, onnx_path="/etc/passwd"), ModelMismatchError,
         "onnx_path '/etc/passwd' is absolute"),
    Case("engine_onnx_missing", _engine_case(_drop_onnx), ModelMismatchError, "is missing next to it"),
    Case("engine_onnx_over_2_gib", _engine_case(_huge_onnx), ModelMismatchError, "over the 2 GiB limit"),
    Case("engine_sidecar_without_engine_hash", _engine_case(_drop_engine_hash), ModelMismatchError,
         r"lacks keys \['engine_sha256'\]"),
    Case("checkpoint_truncated", _truncated_checkpoint, ModelMismatchError, "not a readable checkpoint"),
]

# ------------------------------------------------------------------------------ report / viz inputs


def _report_input_not_a_result(tmp: Path, art: dict) -> tuple[list[str], Path]:
    bad = tmp / "notes"
    bad.mkdir()
    (bad / "readme.txt").write_text("not a result")
    return ["report", str(bad), "--out", str(tmp / "site")], bad


def _report_bench_json_truncated(tmp: Path, art: dict) -> tuple[list[str], Path]:
    bad = tmp / "bench_20260101-000000_ort.json"
    bad.write_text('{"mtl_bench": 1, "rows": [')
    return ["report", str(bad), "--out", str(tmp / "site")], bad


def _report_infer_frame_json_corrupt(tmp: Path, art: dict) -> tuple[list[str], Path]:
    d = tmp / "preds"
    d.mkdir()
    (d / "summary.json").write_text(json.dumps({"frames_written": 1, "files": ["f1"]}))
    (d / "f1.json").write_text('{"frame_id": "f1", "detections": [')
    return ["report", str(d), "--out", str(tmp / "site")], d / "f1.json"


def _report_infer_frame_missing(tmp: Path, art: dict) -> tuple[list[str], Path]:
    d = tmp / "preds"
    d.mkdir()
    (d / "summary.json").write_text(json.dumps({"frames_written": 1, "files": ["f1"]}))
    return ["report", str(d), "--out", str(tmp / "site")], d / "summary.json"


def _report_out_not_empty(tmp: Path, art: dict) -> tuple[list[str], Path]:
    run = tmp / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1, "train/total": 1.0}\n')
    out = tmp / "site"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    return ["report", str(run), "--out", str(out)], out


def _viz_frame_not_in_data(tmp: Path, art: dict) -> tuple[list[str], Path]:
    return ["viz", "--data", str(art["chunks"]), "--frame", "no/such_frame"], art["chunks"]


REPORT_CASES = [
    Case("report_input_not_a_result", _report_input_not_a_result, DataError,
         r"not a training run \(metrics\.jsonl\), an export folder"),
    Case("report_bench_json_truncated", _report_bench_json_truncated, DataError, "not readable JSON"),
    Case("report_infer_frame_json_corrupt", _report_infer_frame_json_corrupt, DataError, "not readable JSON"),
    Case("report_infer_frame_missing", _report_infer_frame_missing, DataError,
         r"lists frame 'f1' but f1\.json is not there"),
    Case("report_out_not_empty", _report_out_not_empty, OutputError,
         r"not empty \(1 entries\) and not an earlier mtl report; .* --overwrite"),
    Case("viz_frame_not_in_data", _viz_frame_not_in_data, DataError,
         r"no frame 'no/such_frame'; frames here: tiny/3_000"),
]

CORPUS = CHUNK_CASES + RAW_CASES + MODEL_CASES + REPORT_CASES


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return tiny_artifacts(tmp_path_factory.mktemp("corpus_model"))


def test_corpus_is_big_enough_and_names_are_unique():
    assert len(CORPUS) >= 20
    assert len({c.name for c in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("case", CORPUS, ids=lambda c: c.name)
def test_bad_input_is_refused_with_one_line_naming_the_file(case, tmp_path, art):
    args, bad = case.build(tmp_path, art)
    r = CliRunner().invoke(main, args)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == EXIT[case.error], r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, r.stderr
    line = lines[0]
    assert f"error: {bad}" in line or f"error: {bad.parent}" in line, line
    import re

    assert re.search(case.reason, line), line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*.npz")), "partial output written"


# ------------------------------------------------------------------------------------ --skip-bad


def test_convert_skip_bad_counts_and_logs_every_bad_file(tmp_path):
    frames = [("20180807_145028", f"{i:09d}", ALL) for i in range(1, 8)]
    root = write_raw_tree(tmp_path / "raw", frames)
    spoilers = [_truncate("camera"), _unknown_colour, _lidar(points=PTS * np.nan, reflectance=np.array([1, 2])),
                _box_json(lambda b: b.update(size=[0, 1, 1])), _text("label3D", "[")]
    for (scene, fid, _), spoil in zip(frames, spoilers):
        spoil(root, (scene, fid))
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["data", "convert", "--a2d2", str(root), "--out", str(out), "--skip-bad",
                                  "--workers", "1", "--no-progress"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_written"] == 2, summary
    assert sum(summary["bad_files"].values()) == 5 if isinstance(summary["bad_files"], dict) \
        else len(summary["bad_files"]) == 5, summary["bad_files"]
    chunks = [read_chunk(p) for p in sorted(out.glob("chunk_*.npz"))]
    assert sum(len(c) for c in chunks) == 2


def test_train_skip_bad_finishes_and_counts(tmp_path):
    cfg = tiny_cfg()
    (tmp_path / "config.json").write_text(cfg.to_json())
    data = write_tiny_chunks(tmp_path / "train", cfg, n_frames=6, per_chunk=2, seed=0)
    # chunk 1: frame 0's image PNG no longer decodes (found when the frame is loaded)
    path = data / "chunk_00001.npz"
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    _replace_png("image_png", lambda b: b[:40])(arrays)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    # chunk 2: truncated (found when the dataset indexes the directory)
    (data / "chunk_00002.npz").write_bytes((data / "chunk_00002.npz").read_bytes()[:300])
    args = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--config", str(tmp_path / "config.json"),
            "--epochs", "1", "--batch-size", "1", "--no-progress"]

    r = CliRunner().invoke(main, args)
    assert r.exit_code == 3 and "chunk_00002.npz" in r.stderr, r.output

    r = CliRunner().invoke(main, args + ["--skip-bad"])
    assert r.exit_code == 0, r.output
    assert "skipped bad chunk" in r.output and "chunk_00002.npz" in r.output
    assert "skipped bad frame" in r.output and "image PNG does not decode" in r.output
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["train/skipped_bad"] == 1 and row["train/frames"] == 3


# -------------------------------------------------------------------------- accepted degenerate input


def test_degenerate_clouds_run_and_report_what_was_dropped(art):
    from mtl.runtime import Pipeline

    cfg = art["cfg"]
    frame = next(iter(read_chunk(min(art["chunks"].glob("*.npz")))))
    image = frame.image()
    pipe = Pipeline.open(art["onnx"], "onnxruntime", threads=1)
    try:
        empty = pipe.run(image, np.zeros((0, 4), np.float32))
        assert empty.info["points"] == 0 and empty.semantic.shape == tuple(cfg.camera.image_hw)

        outside = np.array([[-5.0, 0, 0, 0.5], [0.5, 100.0, 0, 0.5], [1.0, 0.0, 50.0, 0.5]], np.float32)
        assert not bev_raster(outside, cfg.grid).any()
        res = pipe.run(image, outside)
        np.testing.assert_array_equal(res.outputs["bbox_heatmap"], empty.outputs["bbox_heatmap"])

        pts = np.asarray(frame.points, np.float32)
        huge = np.concatenate([pts, [[1e30, -1e30, 1e30, 0.5], [3e38, 0, 0, 1]]]).astype(np.float32)
        np.testing.assert_array_equal(bev_raster(huge, cfg.grid), bev_raster(pts, cfg.grid))
        nan = np.concatenate([pts, [[np.nan, 0, 0, 0.5], [1.0, np.inf, 0, 0.5], [1.0, 0, 0, np.nan]]])
        a, b = pipe.run(image, pts), pipe.run(image, nan.astype(np.float32))
        assert b.info["points_dropped_nonfinite"] == 3 and a.info["points_dropped_nonfinite"] == 0
        np.testing.assert_array_equal(a.outputs["bbox_heatmap"], b.outputs["bbox_heatmap"])
        np.testing.assert_array_equal(a.boxes, b.boxes)
    finally:
        pipe.close()


def test_wrong_input_shapes_to_the_runtime(art):
    from mtl.runtime import Pipeline

    pipe = Pipeline.open(art["onnx"], "onnxruntime", threads=1)
    h, w = art["cfg"].camera.image_hw
    try:
        with pytest.raises(ModelMismatchError, match=r"input 'image' has shape \(1, 3, 7, 9\)") as e:
            pipe.infer({"image": np.zeros((1, 3, 7, 9), np.float32), "bev": np.zeros((1, 8, 64, 64), np.float32)})
        assert str(e.value).startswith(str(art["onnx"])) and "\n" not in str(e.value)
        with pytest.raises(ModelMismatchError, match="image size mismatch"):
            pipe.run(np.zeros((h + 2, w, 3), np.uint8), None)
        with pytest.raises(DataError, match=r"points has shape \(5, 3\)"):
            pipe.run(np.zeros((h, w, 3), np.uint8), np.zeros((5, 3), np.float32))
        w0, h0 = art["cfg"].camera.resolution_wh              # run_sensor wants the camera's own resolution
        with pytest.raises(ModelMismatchError, match=f"image is {h}x{w} but the model's camera delivers {h0}x{w0}"):
            pipe.run_sensor(np.zeros((h, w, 3), np.uint8), None)
    finally:
        pipe.close()
