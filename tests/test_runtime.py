"""Torch-free runtime: parity with torch on real exported tiny models, raw + chunk frames, refusals,
TensorRT unavailability / sidecar checks, `mtl infer`, and the no-torch guarantee (subprocess).

Also home of the tiny export helpers that test_bench.py imports."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from click.testing import CliRunner
from conftest import tiny_cfg, write_tiny_chunks

from mtl.cli import main
from mtl.data.chunk import read_chunk, write_chunk
from mtl.errors import BackendUnavailableError, DataError, ModelMismatchError
from mtl.runtime import Pipeline, RuntimeFrame, iter_frames

# ------------------------------------------------------------------------------------------ helpers


def runtime_cfg(**overrides):
    return tiny_cfg(**{"decode.max_detections": 20, "decode.score_threshold": 0.3, **overrides})


def save_tiny_checkpoint(cfg, path: Path, seed: int = 0) -> Path:
    """A randomly initialised tiny model whose heatmap varies strongly with the input (distinct peaks)."""
    from mtl.model import build_model

    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for m in model.modules():               # widen the (BN-free) heads' response to the input
            if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) and m.bias is not None:
                torch.nn.init.normal_(m.weight, std=0.5)
        torch.nn.init.normal_(model.heatmap_head.out.weight, std=2.0)
        model.heatmap_head.out.bias.fill_(-1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "epoch": 0, "step": 0, "metrics": {}}, path)
    return path


def export_tiny(ckpt: Path, onnx_path: Path, decode: bool = False, meta_edit=None) -> Path:
    """Real export (mtl.export.onnx_export + metadata) of a checkpoint; ``meta_edit(meta)`` may tamper."""
    from mtl.contract import build_metadata, write_onnx_metadata
    from mtl.export.onnx_export import export_onnx_proto
    from mtl.export.onnx_io import save_proto_atomic
    from mtl.model import load_checkpoint

    model, cfg, _ = load_checkpoint(ckpt)
    proto, info = export_onnx_proto(model, cfg, opset=18, decode=decode)
    meta = build_metadata(cfg.to_dict(), batch=1, decode=decode, precision="fp32", opset=info["opset"],
                          source_checkpoint_sha256=hashlib.sha256(ckpt.read_bytes()).hexdigest())
    if meta_edit is not None:
        meta_edit(meta)
        from mtl.contract import METADATA_KEY

        keep = [p for p in proto.metadata_props if p.key != METADATA_KEY]
        del proto.metadata_props[:]
        for p in keep:
            proto.metadata_props.add(key=p.key, value=p.value)
        proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta))
    else:
        write_onnx_metadata(proto, meta)
    save_proto_atomic(proto, onnx_path)
    return onnx_path


def tiny_artifacts(root: Path, cfg=None) -> dict:
    cfg = cfg or runtime_cfg()
    ckpt = save_tiny_checkpoint(cfg, root / "ckpt.pt")
    onnx_path = export_tiny(ckpt, root / "export" / "model.onnx")
    chunks = write_tiny_chunks(root / "chunks", cfg, n_frames=3, per_chunk=2, seed=3)
    return {"cfg": cfg, "ckpt": ckpt, "onnx": onnx_path, "chunks": chunks, "root": root}


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return tiny_artifacts(tmp_path_factory.mktemp("rt"))


@pytest.fixture(scope="module")
def pipe(art):
    return Pipeline.open(art["onnx"], "onnxruntime", threads=1)


# --------------------------------------------------------------------------------------- parity


def test_pipeline_reproduces_torch_outputs_and_boxes(art, pipe):
    from mtl.bench import boxes_identical, frame_outputs, torch_pipeline

    assert pipe.backend_name == "onnxruntime" and pipe.backend.providers == ["CPUExecutionProvider"]
    assert pipe.cfg.to_dict() == art["cfg"].to_dict()            # config rebuilt from metadata alone
    frames = list(iter_frames(art["chunks"], pipe.cfg))
    assert len(frames) == 3
    ours = frame_outputs(pipe, frames)
    ref = frame_outputs(torch_pipeline(art["ckpt"], threads=1), frames)
    n_boxes = 0
    for a, b in zip(ours, ref):
        for k in ("bbox_heatmap", "bbox_reg", "sem_logits"):
            assert a["outputs"][k].shape == b["outputs"][k].shape
            assert np.max(np.abs(a["outputs"][k] - b["outputs"][k])) <= 1e-4, k
        assert boxes_identical(a, b)
        np.testing.assert_array_equal(a["semantic"], b["semantic"])
        n_boxes += len(a["boxes"])
    assert n_boxes > 0

    r = pipe.run_frame(frames[0])
    assert set(r.timings_ms) >= {"decode_png", "normalise", "bev_raster", "inference", "postprocess", "total"}
    assert r.semantic.dtype == np.uint8 and r.semantic.shape == tuple(art["cfg"].camera.image_hw)
    assert all(n in art["cfg"].classes.det_classes for n in r.label_names) and r.boxes.shape[1] == 7
    assert np.all(r.scores > art["cfg"].decode.score_threshold)


def test_decode_in_graph_model_gives_the_same_boxes(art, pipe, tmp_path):
    onnx_dec = export_tiny(art["ckpt"], tmp_path / "model_decode.onnx", decode=True)
    pd = Pipeline.open(onnx_dec, "onnxruntime", threads=1)
    assert pd.spec.decode
    for f in iter_frames(art["chunks"], pipe.cfg):
        a, b = pipe.run_frame(f), pd.run_frame(f)
        assert np.array_equal(a.labels, b.labels) and np.allclose(a.boxes, b.boxes, atol=1e-4)
        assert np.allclose(a.scores, b.scores, atol=1e-6)


def _old_config_layout(cfg_dict: dict, value: float) -> None:
    """Edit a config dict in place into the layout of models exported before the metric score cut moved
    from ``train.eval_score_threshold`` to ``decode.eval_score_threshold``."""
    del cfg_dict["decode"]["eval_score_threshold"]
    cfg_dict["train"]["eval_score_threshold"] = value


def test_model_exported_with_the_old_config_layout_still_loads_and_runs(art, pipe, tmp_path):
    old = export_tiny(art["ckpt"], tmp_path / "old.onnx", meta_edit=lambda m: _old_config_layout(m["config"], 0.07))
    po = Pipeline.open(old, "onnxruntime", threads=1)
    assert po.cfg.decode.eval_score_threshold == 0.07
    assert po.cfg.to_dict() == art["cfg"].override(**{"decode.eval_score_threshold": 0.07}).to_dict()
    f = next(iter_frames(art["chunks"], po.cfg))
    a, b = pipe.run_frame(f), po.run_frame(f)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.boxes, b.boxes)


# ----------------------------------------------------------------------------- raw A2D2 frames


def test_raw_a2d2_frame_matches_the_converted_chunk_frame(tmp_path):
    from test_convert import COMPLETE, write_raw_tree

    from mtl.data.a2d2 import read_camera_config
    from mtl.data.convert import convert

    raw = write_raw_tree(tmp_path / "raw", COMPLETE[:2])
    base = runtime_cfg()
    cfg = replace(base, camera=read_camera_config(raw / "cams_lidars.json", base=base.camera))
    ckpt = save_tiny_checkpoint(cfg, tmp_path / "ckpt.pt")
    onnx_path = export_tiny(ckpt, tmp_path / "model.onnx")
    hw = cfg.camera.image_hw
    convert(raw, tmp_path / "chunks", cfg, image_size=f"{hw[0]}x{hw[1]}", workers=1, progress=False,
            log=lambda m: None)

    p = Pipeline.open(onnx_path, "onnxruntime", threads=1)
    raw_frames = list(iter_frames(raw, p.cfg, with_gt=True))
    chunk_frames = list(iter_frames(tmp_path / "chunks", p.cfg, with_gt=True))
    assert [f.kind for f in raw_frames] == ["raw", "raw"] and [f.kind for f in chunk_frames] == ["chunk", "chunk"]
    assert [f.frame_id for f in raw_frames] == [f.frame_id for f in chunk_frames]
    assert raw_frames[0].gt_semantic.shape == tuple(hw) and raw_frames[0].gt_boxes.shape == (2, 7)
    for fr, fc in zip(raw_frames, chunk_frames):
        a, b = p.run_frame(fr), p.run_frame(fc)
        kept = p.run_frame(fr, keep_image=True)       # the two-step path (the uint8 image is wanted too)
        assert "remap_normalise" in a.timings_ms and "remap_normalise" not in b.timings_ms
        assert "undistort_resize" in kept.timings_ms and "remap_normalise" not in kept.timings_ms
        for k in ("bbox_heatmap", "bbox_reg", "sem_logits"):
            np.testing.assert_array_equal(a.outputs[k], b.outputs[k])   # same numpy preprocess
            np.testing.assert_array_equal(kept.outputs[k], b.outputs[k])
        assert a.info["points"] == len(fc.points) > 0

    # the default tiny model was built for the packaged A2D2 calibration: refused with one line
    other = Pipeline.open(export_tiny(save_tiny_checkpoint(base, tmp_path / "b.pt"), tmp_path / "b.onnx"),
                          "onnxruntime", threads=1)
    with pytest.raises(ModelMismatchError, match="calibration mismatch: camera") as e:
        other.run_frame(raw_frames[0])
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------- refusals


def test_chunk_calibration_image_size_and_class_mismatch_refused(art, pipe, tmp_path):
    f = next(iter_frames(art["chunks"], pipe.cfg))
    bad_k = replace(f, cam_matrix=f.cam_matrix * np.array([[1.1, 1, 1], [1, 1.1, 1], [1, 1, 1]]))
    with pytest.raises(ModelMismatchError, match=r"calibration mismatch: frame .* cam_matrix fx=") as e:
        pipe.run_frame(bad_k)
    assert "\n" not in str(e.value)

    big = write_tiny_chunks(tmp_path / "big", art["cfg"], n_frames=1, per_chunk=1, hw=(40, 80))
    with pytest.raises(ModelMismatchError, match="calibration mismatch|image size mismatch"):
        pipe.run_frame(next(iter_frames(big)))
    # right intrinsics for the model but a different stored size -> image size refused
    fr = next(iter_frames(big))
    with pytest.raises(ModelMismatchError,
                       match="image size mismatch: image of .* is 40x80 but the model input is 32x64"):
        pipe.run_frame(replace(fr, cam_matrix=pipe.spec.model_cam_matrix))

    chunk = read_chunk(sorted(art["chunks"].glob("*.npz"))[0])
    names = list(art["cfg"].classes.sem_classes)
    names[2] = "banana"
    write_chunk(tmp_path / "cls" / "c.npz", [chunk.frame(0)], {"sem_classes": names})
    with pytest.raises(ModelMismatchError, match="sem_classes differ from the model's .*'banana'"):
        pipe.run_frame(next(iter_frames(tmp_path / "cls")))


def test_grid_and_classes_mismatch_between_metadata_and_graph_refused(art, tmp_path):
    def grid_edit(meta):
        meta["config"]["grid"]["x_max"] = 25.6
        meta["inputs"]["bev"] = [1, 8, 128, 64]

    onnx_grid = export_tiny(art["ckpt"], tmp_path / "grid.onnx", meta_edit=grid_edit)
    with pytest.raises(ModelMismatchError,
                       match=r"graph input 'bev' is \(1, 8, 64, 64\) but metadata says \(1, 8, 128, 64\)"):
        Pipeline.open(onnx_grid, "onnxruntime")

    def cls_edit(meta):
        meta["config"]["classes"]["det_classes"] = ["car", "truck", "pedestrian"]
        meta["config"]["classes"]["det_groups"] = meta["config"]["classes"]["det_groups"][:3]   # a valid config

    onnx_cls = export_tiny(art["ckpt"], tmp_path / "cls.onnx", meta_edit=cls_edit)
    with pytest.raises(ModelMismatchError,
                       match="'bbox_heatmap' has 4 channels but the metadata config has 3 detection"):
        Pipeline.open(onnx_cls, "onnxruntime")

    def chan_edit(meta):
        meta["inputs"]["bev"] = [1, 9, 64, 64]

    onnx_ch = export_tiny(art["ckpt"], tmp_path / "ch.onnx", meta_edit=chan_edit)
    with pytest.raises(ModelMismatchError, match="bev input has 9 channels but the config's grid gives 8"):
        Pipeline.open(onnx_ch, "onnxruntime")

    plain = tmp_path / "plain.onnx"
    import onnx

    m = onnx.load(str(art["onnx"]))
    del m.metadata_props[:]
    onnx.save(m, str(plain))
    with pytest.raises(ModelMismatchError, match="no 'mtl' entry"):
        Pipeline.open(plain, "onnxruntime")


def test_wrong_input_shapes_and_dtypes_refused(art, pipe):
    h, w = art["cfg"].camera.image_hw
    img = np.zeros((h, w, 3), np.uint8)
    good_bev = np.zeros((1, 8, 64, 64), np.float32)
    with pytest.raises(ModelMismatchError,
                       match=r"input 'bev' has shape \(1, 8, 32, 32\), the model expects \(1, 8, 64, 64\)"):
        pipe.infer({"image": np.zeros((1, 3, h, w), np.float32), "bev": np.zeros((1, 8, 32, 32), np.float32)})
    with pytest.raises(ModelMismatchError, match="input 'image' must be a float numpy array"):
        pipe.infer({"image": np.zeros((1, 3, h, w), np.uint8), "bev": good_bev})
    with pytest.raises(DataError, match=r"points has shape \(10, 3\), expected \(N, 4\)"):
        pipe.run(img, np.zeros((10, 3), np.float32))
    with pytest.raises(DataError, match="expected uint8 \\(H, W, 3\\)"):
        pipe.run(img.astype(np.float32), None)
    with pytest.raises(ModelMismatchError, match="image size mismatch"):
        pipe.run(np.zeros((h + 1, w, 3), np.uint8), None)
    with pytest.raises(DataError, match="has no camera image"):
        pipe.run_frame(RuntimeFrame(frame_id="x", kind="chunk", points=np.zeros((0, 4), np.float32)))


def test_empty_cloud_and_nonfinite_points(pipe, art):
    h, w = art["cfg"].camera.image_hw
    img = np.full((h, w, 3), 128, np.uint8)
    r = pipe.run(img, np.zeros((0, 4), np.float32))
    assert r.info == {"points": 0, "points_dropped_nonfinite": 0} and "bev_raster" in r.timings_ms
    pts = np.array([[5, 0, -1, 0.5], [np.nan, 1, 0, 0.2], [6, 1, -1, np.inf], [7, 2, -1, 0.1]], np.float32)
    r2 = pipe.run(img, pts)
    r3 = pipe.run(img, pts[[0, 3]])
    assert r2.info["points_dropped_nonfinite"] == 2 and r2.info["points"] == 4
    np.testing.assert_array_equal(r2.outputs["bbox_heatmap"], r3.outputs["bbox_heatmap"])


def test_pipeline_run_checks_its_inputs_with_one_line_errors(art, pipe):
    h, w = art["cfg"].camera.image_hw
    img = np.zeros((h, w, 3), np.uint8)
    cases = [
        (img.astype(np.float32), None, DataError,
         r"image is float32 \(32, 64, 3\), expected uint8 \(H, W, 3\) RGB at the model size 32x64$"),
        (img[..., 0], None, DataError, r"image is uint8 \(32, 64\), expected uint8 \(H, W, 3\)"),
        (np.zeros((h, w, 4), np.uint8), None, DataError, r"image is uint8 \(32, 64, 4\), expected uint8 \(H, W, 3\)"),
        (img.tolist(), None, DataError, "image is a list, expected a numpy uint8 \\(H, W, 3\\) RGB array"),
        (np.zeros((1208, 1920, 3), np.uint8), None, ModelMismatchError,
         r"image size mismatch: image is 1208x1920 but the model input is 32x64; Pipeline.run takes the undistorted"),
        (img, np.zeros((10, 3), np.float32), DataError, r"points has shape \(10, 3\), expected \(N, 4\)"),
        (img, np.zeros(4, np.float32), DataError, r"points has shape \(4,\), expected \(N, 4\)"),
        (img, np.zeros((5, 4), np.int64), DataError,
         r"points must be a float array \(x, y, z, reflectance\), got dtype int64"),
        (img, [[1, 2, 3, 4]], DataError, "points must be a float array .* got dtype int64"),
        (img, np.full((2, 4), "x"), DataError, "points must be a float array .* got dtype <U1"),
        (img, np.zeros((3, 4), bool), DataError, "points must be a float array .* got dtype bool"),
    ]
    for image, points, err, match in cases:
        with pytest.raises(err, match=match) as e:
            pipe.run(image, points, frame_id="cam0/7")
        assert str(e.value).startswith("cam0/7: ") and "\n" not in str(e.value), str(e.value)

    with pytest.raises(DataError, match=r"^cam0/7: frame cam0/7 cam_matrix is float64 \(2, 2\), expected \(3, 3\)"):
        pipe.run(img, None, frame_id="cam0/7", cam_matrix=np.eye(2))
    with pytest.raises(ModelMismatchError, match=r"calibration mismatch: frame cam0/7 cam_matrix fx=1.00"):
        pipe.run(img, None, frame_id="cam0/7", cam_matrix=np.eye(3))
    pipe.run(img, None, cam_matrix=pipe.spec.model_cam_matrix)      # the model's own intrinsics pass

    # accepted: float64 / float16 points are used as float32, NaN/inf rows dropped and counted, None = no LiDAR
    pts = np.array([[5, 0, -1, 0.5], [np.nan, 1, 0, 0.2], [6, 1, -1, np.inf], [7, 2, -1, 0.25]])
    r64, r16 = pipe.run(img, pts), pipe.run(img, pts.astype(np.float16))
    clean = pipe.run(img, pts[[0, 3]].astype(np.float32))
    assert r64.info == r16.info == {"points": 4, "points_dropped_nonfinite": 2}
    for r in (r64, r16):
        for k in ("bbox_heatmap", "bbox_reg", "sem_logits"):
            np.testing.assert_array_equal(r.outputs[k], clean.outputs[k])
    none = pipe.run(img, None, keep_image=True)
    assert none.info == {"points": 0, "points_dropped_nonfinite": 0} and np.array_equal(none.image, img)
    assert "decode_png" not in none.timings_ms and "undistort_resize" not in none.timings_ms


def test_reprs_show_shapes_and_sizes_never_bytes_or_arrays(art, pipe):
    f = next(iter_frames(art["chunks"], pipe.cfg, with_gt=True))
    n, kb = len(f.points), len(f.image_png) / 1e3
    assert repr(f) == (f"RuntimeFrame(id='tiny/3_000', kind='chunk', points=({n}, 4) float32, image_png={kb:.1f} kB, "
                       f"gt: boxes {len(f.gt_boxes)}, semantic 32x64)")
    big = replace(f, frame_id="scene/" + "9" * 500, points=np.ones((250_000, 4), np.float32),
                  image_png=b"\x89PNG" + bytes(3_100_000), gt_boxes=None, gt_semantic=None)
    assert repr(big).startswith("RuntimeFrame(id='scene/999") and "...9999" in repr(big)
    assert "points=(250000, 4) float32, image_png=3.1 MB)" in repr(big) and len(repr(big)) < 200
    decoded = replace(f, image=np.zeros((32, 64, 3), np.uint8), image_png=None, gt_boxes=None, gt_semantic=None)
    assert repr(decoded).endswith(f"points=({n}, 4) float32, image=(32, 64, 3) uint8)")
    assert repr(replace(decoded, image=None)).endswith("image=None)")

    res = pipe.run_frame(f, keep_image=True)
    text = repr(res)
    assert len(res.boxes) > 3 and len(text) < 400 and "\n" not in text
    head = ", ".join(f"{a} {b:.2f}" for a, b in zip(res.label_names[:3], res.scores[:3]))
    assert text.startswith(f"Result(id='tiny/3_000', detections={len(res.boxes)} [{head}, +{len(res.boxes) - 3} more], "
                           f"semantic=(32, 64) uint8, points={n}, outputs=[bbox_heatmap, bbox_reg, sem_logits], "
                           f"image=(32, 64, 3) uint8, total=")
    assert text.endswith(f"total={res.timings_ms['total']:.1f} ms)")
    nan = pipe.run(np.zeros((32, 64, 3), np.uint8), np.array([[5, 0, -1, 0.5], [np.nan, 0, 0, 0]], np.float32))
    assert "points=2 (1 non-finite dropped)" in repr(nan)

    assert repr(pipe) == (f"Pipeline(model={str(art['onnx'])!r}, backend='onnxruntime', precision='fp32', image=32x64, "
                          "bev=(8, 64, 64), det_classes=4, sem_classes=18)")
    for t in (repr(f), repr(big), text, repr(pipe)):
        assert "array(" not in t and "\\x" not in t and "b'" not in t and "[[" not in t


def test_overlapped_stages_match_the_sequential_pipeline_and_fail_the_same_way(art):
    """With a helper thread (raster || PNG decode, argmax || box decode) every output, box and class map
    equals the single-threaded pipeline's; a corrupt PNG or bad points still raise the same one-line error,
    and the pipeline keeps working afterwards."""
    frames = list(iter_frames(art["chunks"], art["cfg"]))
    with Pipeline.open(art["onnx"], "onnxruntime", threads=2, overlap=True) as par, \
            Pipeline.open(art["onnx"], "onnxruntime", threads=2, overlap=False) as seq:
        assert par._pool is not None and seq._pool is None
        first = None
        for f in frames:
            a, b = par.run_frame(f), seq.run_frame(f)
            for k in ("bbox_heatmap", "bbox_reg", "sem_logits"):
                np.testing.assert_array_equal(a.outputs[k], b.outputs[k])
            np.testing.assert_array_equal(a.boxes, b.boxes)
            np.testing.assert_array_equal(a.semantic, b.semantic)
            assert a.info == b.info and {"decode_png", "bev_raster", "postprocess"} <= set(a.timings_ms)
            first = first or a
        bad_png = replace(frames[0], image_png=frames[0].image_png[:200])
        bad_pts = replace(frames[0], points=np.zeros((5, 3), np.float32))
        for bad, match in ((bad_png, "PNG does not decode"), (bad_pts, r"expected \(N, 4\)")):
            errs = []
            for p in (par, seq):
                with pytest.raises(DataError, match=match) as e:
                    p.run_frame(bad)
                errs.append(str(e.value))
            assert errs[0] == errs[1]
        again = par.run_frame(frames[0])
        np.testing.assert_array_equal(again.semantic, first.semantic)
        np.testing.assert_array_equal(again.outputs["bbox_heatmap"], first.outputs["bbox_heatmap"])
    assert par._pool is None                          # close() shut the helper thread down


# ------------------------------------------------------------------------------------- TensorRT


def _tensorrt_loads() -> bool:
    try:
        import tensorrt  # noqa: F401
        return True
    except Exception:
        return False


def _engine_with_sidecar(art, tmp_path: Path, **changes) -> Path:
    from mtl.config import sha256_file
    from mtl.runtime import read_onnx_metadata

    d = tmp_path / "eng"
    d.mkdir(exist_ok=True)
    onnx_copy = d / "model.onnx"
    onnx_copy.write_bytes(art["onnx"].read_bytes())
    engine = d / "model.engine"
    engine.write_bytes(b"not a real engine")
    meta = read_onnx_metadata(onnx_copy)
    meta.update(tensorrt_version="10.0.0", gpu_name="NVIDIA H100", compute_capability="9.0",
                precision_recipe="fp32", onnx_sha256=sha256_file(onnx_copy), onnx_path="model.onnx",
                engine_sha256=sha256_file(engine), profiles=[])
    meta.update(changes)
    (d / "model.engine.json").write_text(json.dumps(meta))
    return engine


def test_tensorrt_unavailable_is_a_clear_error(art, tmp_path):
    if _tensorrt_loads():
        pytest.skip("tensorrt is importable here; the unavailable path cannot be exercised")
    engine = _engine_with_sidecar(art, tmp_path)
    with pytest.raises(BackendUnavailableError, match="tensorrt: TensorRT is not installed or does not load") as e:
        Pipeline.open(engine, "tensorrt")
    assert e.value.exit_code == 6 and "\n" not in str(e.value)
    with pytest.raises(BackendUnavailableError, match="needs a .engine file"):
        Pipeline.open(art["onnx"], "tensorrt")
    with pytest.raises(BackendUnavailableError, match="a TensorRT engine needs --backend tensorrt"):
        Pipeline.open(engine, "onnxruntime")


def test_engine_sidecar_mismatch_refused_before_tensorrt(art, tmp_path):
    engine = _engine_with_sidecar(art, tmp_path, onnx_sha256="0" * 64)
    with pytest.raises(ModelMismatchError,
                       match=r"engine was built from another ONNX: sidecar onnx_sha256 000000000000\.\.\."):
        Pipeline.open(engine, "tensorrt")
    cfg = art["cfg"].to_dict()
    cfg["decode"]["score_threshold"] = 0.9
    engine = _engine_with_sidecar(art, tmp_path, config=cfg)
    with pytest.raises(ModelMismatchError, match="sidecar config differs from model.onnx's \\(decode.score_threshold"):
        Pipeline.open(engine, "tensorrt")
    (tmp_path / "eng" / "model.engine.json").unlink()
    with pytest.raises(ModelMismatchError, match="sidecar model.engine.json not found"):
        Pipeline.open(engine, "tensorrt")


def test_cuda_backend_unavailable_and_auto_fallback_reported(art):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu installed: the CPU-only refusal path cannot be exercised")
    with pytest.raises(BackendUnavailableError,
                       match="onnxruntime-cuda: this onnxruntime has no CUDAExecutionProvider"):
        Pipeline.open(art["onnx"], "onnxruntime-cuda")
    p = Pipeline.open(art["onnx"], "auto", threads=1)
    assert p.backend_name == "onnxruntime" and p.fallback.startswith("auto -> onnxruntime (CPU)")


# -------------------------------------------------------------------------------------- mtl infer


def test_mtl_infer_writes_json_png_overlay_and_summary(art, tmp_path):
    from PIL import Image

    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["infer", "--model", str(art["onnx"]), "--data", str(art["chunks"]), "--out", str(out),
                                  "--backend", "onnxruntime", "--overlay", "--limit", "2", "--threads", "1",
                                  "--no-progress"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "2 frames (2 camera+lidar) ->" in r.output and "(score > 0.3, at most 20 per frame)" in r.output
    docs = sorted((out / "frames").glob("tiny__3_*.json"))
    assert [p.name for p in docs] == ["tiny__3_000.json", "tiny__3_001.json"]
    doc = json.loads(docs[0].read_text())
    assert doc["model_sha256"] == hashlib.sha256(art["onnx"].read_bytes()).hexdigest()
    assert doc["source"] == str(min(art["chunks"].glob("*.npz")))
    assert doc["frame_id"] == "tiny/3_000" and doc["n_detections"] == len(doc["detections"]) > 0
    det = doc["detections"][0]
    assert set(det) == {"class", "label", "score", "x", "y", "z", "l", "w", "h", "yaw"}
    assert det["class"] in art["cfg"].classes.det_classes
    assert {"decode_png", "bev_raster", "inference", "postprocess", "total"} <= set(doc["timing_ms"])
    sem = np.asarray(Image.open(out / "frames" / doc["semantic_png"]))
    assert sem.shape == tuple(art["cfg"].camera.image_hw) and sem.dtype == np.uint8
    assert sem.max() < art["cfg"].classes.n_sem
    # the coloured twin for people: each class id in its palette colour
    from mtl.draw import semantic_palette

    colour = np.asarray(Image.open(out / "frames" / doc["semantic_color_png"]))
    assert doc["semantic_color_png"] == "tiny__3_000_sem_color.png" and colour.shape == (*sem.shape, 3)
    assert np.array_equal(colour, semantic_palette(art["cfg"].classes)[sem])
    assert doc["modality"] == "camera+lidar" and doc["decode"] == {"score_threshold": 0.3, "max_detections": 20}
    assert "eval" not in doc
    ov = np.asarray(Image.open(out / "frames" / doc["overlay_png"]))
    h, w = art["cfg"].camera.image_hw                  # 32 x 64, drawn 8x (>= 512 px) under a title, legend below
    assert ov.shape[1] == w * 8 and ov.shape[0] > h * 8 and ov.shape[2] == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_written"] == 2 and summary["backend"] == "onnxruntime"
    assert summary["modalities"] == {"camera+lidar": 2, "camera-only": 0, "lidar-only": 0}
    assert summary["eval"] is False and "metrics" not in summary
    assert summary["decode"] == {"score_threshold": 0.3, "max_detections": 20, "eval_score_threshold": 0.05,
                                 "overrides": {}}
    assert not list(out.rglob(".*tmp*"))                                     # atomic writes left no temp files

    r = CliRunner().invoke(main, ["infer", "--model", str(art["onnx"]), "--data", str(art["chunks"]), "--out",
                                  str(tmp_path / "o2"), "--backend", "tensorrt", "--no-progress"])
    assert r.exit_code == 6 and "error:" in r.output and "needs a .engine file" in r.output


def test_infer_score_threshold_and_max_detections_override_the_models_decode(art, pipe, tmp_path):
    """--score-threshold / --max-detections cut this run's boxes (recorded per frame and in the summary);
    out-of-range values and more boxes than an in-graph decode returns are refused (exit 2)."""
    base = ["infer", "--model", str(art["onnx"]), "--data", str(art["chunks"]), "--backend", "onnxruntime",
            "--threads", "1"]
    out = tmp_path / "cut"
    r = CliRunner().invoke(main, base + ["--out", str(out), "--score-threshold", "0.35", "--max-detections", "3"])
    assert r.exit_code == 0 and "(score > 0.35, at most 3 per frame)" in r.output, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["decode"] == {"score_threshold": 0.35, "max_detections": 3, "eval_score_threshold": 0.05,
                                 "overrides": {"score_threshold": 0.35, "max_detections": 3}}
    docs = [json.loads((out / "frames" / f"{n}.json").read_text()) for n in summary["files"]]
    above = []
    for d, f in zip(docs, iter_frames(art["chunks"], pipe.cfg)):
        scores = pipe.run_frame(f).scores                    # the model's own cut: 0.3, at most 20
        above.append(int((scores > 0.35).sum()))
        assert [x["score"] for x in d["detections"]] == pytest.approx(list(scores[scores > 0.35][:3]), abs=1e-6)
        assert d["decode"] == {"score_threshold": 0.35, "max_detections": 3} and len(scores) == 20
    assert max(above) > 3 and min(above) >= 1                # both cuts at work
    for flag, value, msg in (("--score-threshold", "0", "0<x<1"), ("--score-threshold", "1", "0<x<1"),
                             ("--max-detections", "0", "1<=x<=4096")):
        r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "x"), flag, value])
        assert r.exit_code == 2 and msg in r.output and not (tmp_path / "x").exists(), r.output


def test_set_decode_on_a_model_that_decodes_in_its_graph(art, tmp_path):
    from mtl.errors import ConfigError

    onnx = export_tiny(art["ckpt"], tmp_path / "dec" / "model.onnx", decode=True)
    frame = next(iter_frames(art["chunks"], art["cfg"]))
    with Pipeline.open(onnx, "onnxruntime", threads=1) as p:
        full = p.run_frame(frame)
        p.set_decode(score_threshold=0.31, max_detections=2)
        cut = p.run_frame(frame)
        assert len(full.boxes) > 2 and len(cut.boxes) == 2 and p.cfg.decode.score_threshold == 0.31
        assert np.array_equal(cut.boxes, full.boxes[:2]) and p.cfg.decode.eval_score_threshold == 0.05
        with pytest.raises(ConfigError, match="max_detections 21: this model decodes at most 20 boxes in its graph"):
            p.set_decode(max_detections=21)
        with pytest.raises(ConfigError, match="decode.score_threshold: must be > 0 and < 1"):
            p.set_decode(score_threshold=1.0)
    r = CliRunner().invoke(main, ["infer", "--model", str(onnx), "--data", str(art["chunks"]), "--out",
                                  str(tmp_path / "o"), "--backend", "onnxruntime", "--max-detections", "50"])
    assert r.exit_code == 2 and r.output.startswith(f"error: {onnx}: max_detections 50: this model decodes at most")


# ------------------------------------------------------------------------------------- no torch


def test_runtime_never_imports_torch(art, tmp_path):
    code = f"""
import sys, json
from mtl.runtime import Pipeline, iter_frames
from mtl.runtime.infer import infer_directory
p = Pipeline.open({str(art['onnx'])!r}, "onnxruntime", threads=1)
n = 0
for f in iter_frames({str(art['chunks'])!r}, p.cfg, with_gt=True):
    r = p.run_frame(f, keep_image=True)
    n += 1
infer_directory({str(art['onnx'])!r}, {str(art['chunks'])!r}, {str(tmp_path / 'o')!r}, backend="onnxruntime",
                threads=1, overlay_images=True, progress=False)
print(json.dumps({{"n": n, "torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res == {"n": 3, "torch": []}
