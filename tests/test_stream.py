"""Sensor input (fused undistort + resize + normalise, ``Pipeline.run_sensor``) and ``Pipeline.run_stream``:
parity with the training preprocessing and with ``run_frame``, ordering, errors, early close."""
from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from test_convert import COMPLETE, write_raw_tree
from test_runtime import export_tiny, runtime_cfg, save_tiny_checkpoint, tiny_artifacts

from mtl.config import Config
from mtl.data.a2d2 import prepare_image, read_camera_config
from mtl.errors import BackendUnavailableError, DataError, ModelMismatchError
from mtl.geometry import RemapTable, normalise_image
from mtl.runtime import Pipeline, iter_frames
from mtl.runtime.postprocess import argmax_channels
from mtl.runtime.sensor import SensorRemap, sensor_remap


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return tiny_artifacts(tmp_path_factory.mktemp("stream"))


@pytest.fixture(scope="module")
def raw_art(tmp_path_factory):
    """A raw A2D2 tree (tiny distorted 48x32 camera) and a tiny model exported for its calibration."""
    root = tmp_path_factory.mktemp("raw")
    raw = write_raw_tree(root / "raw", COMPLETE)
    base = runtime_cfg()
    cfg = replace(base, camera=read_camera_config(raw / "cams_lidars.json", base=base.camera))
    onnx_path = export_tiny(save_tiny_checkpoint(cfg, root / "ckpt.pt"), root / "model.onnx")
    return {"raw": raw, "cfg": cfg, "onnx": onnx_path}


def _same_results(a, b) -> None:
    assert a.frame_id == b.frame_id
    for k in ("bbox_heatmap", "bbox_reg", "sem_logits"):
        np.testing.assert_array_equal(a.outputs[k], b.outputs[k])
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.semantic, b.semantic)
    assert a.info == b.info


# ------------------------------------------------------------------------------------ sensor remap


@pytest.fixture(params=["numba", "numpy"])
def stages(request, monkeypatch):
    """Both implementations of the per-frame stages: the compiled kernels (skipped without numba) and numpy."""
    from mtl.runtime import kernels

    if request.param == "numpy":
        monkeypatch.setenv(kernels.ENV, "numpy")
    elif not kernels.available():
        pytest.skip(f"numba kernels not usable here ({kernels.failure() or 'numba not installed'})")
    assert kernels.name() == request.param
    return request.param


def test_fused_remap_is_bit_identical_to_the_training_preprocessing_at_full_resolution(stages):
    """Tolerance 0: the fused pass runs RemapTable's float32 operations in the same order, rounds like the
    uint8 image, and computes the values normalise_image's table holds; any difference would be a bug."""
    cam = Config().camera
    w0, h0 = cam.resolution_wh
    hw = tuple(cam.image_hw)
    image = np.random.default_rng(0).integers(0, 256, (h0, w0, 3), dtype=np.uint8)
    want = normalise_image(prepare_image(image, cam, hw), cam.mean, cam.std)[None]
    remap = sensor_remap(cam, hw, tuple(cam.mean), tuple(cam.std))
    got = remap.apply(image)
    assert got.shape == (1, 3, *hw) and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    split = np.full_like(got, np.nan)                      # row blocks, as two threads would fill it
    remap.apply(image, split, (0, 101))
    remap.apply(image, split, (101, hw[0]))
    np.testing.assert_array_equal(split, want)


def test_fused_remap_handles_border_and_outside_pixels_exactly(stages):
    """Maps that run past every edge: taps clipped at the border (patched with RemapTable's formula) and
    positions outside the image (black, as in training), still bit-identical."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    h, w = 40, 60
    mx, my = np.meshgrid(np.linspace(-2.0, w + 1.0, 37), np.linspace(-1.5, h + 0.7, 23))
    mx, my = mx.astype(np.float32), my.astype(np.float32)
    image = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
    remap = SensorRemap(mx, my, (h, w), mean, std)
    assert len(remap.patch) > 0 and len(remap.outside) > 0       # both special cases are exercised
    if stages == "numba":                                        # clipped right / lower taps, outside pixels
        flags = {int(f) for f in np.unique(remap.flags)}
        assert 0 in flags and 7 in flags and flags & {4, 5, 6}
    want = normalise_image(RemapTable(mx, my, (h, w)).apply(image, 0), mean, std)[None]
    np.testing.assert_array_equal(remap.apply(image), want)
    black = normalise_image(np.zeros((1, 1, 3), np.uint8), mean, std)[:, 0, 0]
    np.testing.assert_array_equal(remap.apply(image)[0].reshape(3, -1)[:, remap.outside[0]], black)


def test_run_sensor_equals_run_on_the_prepared_image_and_refuses_bad_input(raw_art):
    cfg = raw_art["cfg"]
    w0, h0 = cfg.camera.resolution_wh
    rng = np.random.default_rng(2)
    raw = rng.integers(0, 256, (h0, w0, 3), dtype=np.uint8)
    points = np.column_stack([rng.uniform(1, 12, 50), rng.uniform(-6, 6, 50), rng.uniform(-2, 1, 50),
                              rng.uniform(0, 1, 50)]).astype(np.float32)
    with Pipeline.open(raw_art["onnx"], "onnxruntime", threads=1) as pipe:
        a = pipe.run_sensor(raw, points, frame_id="cam/1")
        b = pipe.run(prepare_image(raw, cfg.camera, pipe.spec.image_hw), points, frame_id="cam/1")
        _same_results(a, b)
        assert "remap_normalise" in a.timings_ms and "undistort_resize" not in a.timings_ms
        kept = pipe.run_sensor(raw, points, frame_id="cam/1", keep_image=True)
        _same_results(kept, a)
        np.testing.assert_array_equal(kept.image, prepare_image(raw, cfg.camera, pipe.spec.image_hw))
        with pytest.raises(ModelMismatchError, match=r"cam/2: image size mismatch: image is 32x64 .*run_sensor"):
            pipe.run_sensor(np.zeros((32, 64, 3), np.uint8), points, frame_id="cam/2")
        with pytest.raises(DataError, match="expected uint8"):
            pipe.run_sensor(raw.astype(np.float32), points)
        with pytest.raises(DataError, match="expected a numpy uint8"):
            pipe.run_sensor(raw.tolist(), points)
        with pytest.raises(DataError, match=r"expected \(N, 4\)"):
            pipe.run_sensor(raw, points[:, :3])


def test_raw_frames_use_the_fused_path_with_the_same_outputs(raw_art):
    """Also with the helper thread, which takes a share of the remap rows that changes from frame to frame
    (learned from the two threads' finishing times): the values never depend on the split."""
    with Pipeline.open(raw_art["onnx"], "onnxruntime", threads=1) as pipe, \
            Pipeline.open(raw_art["onnx"], "onnxruntime", threads=2, overlap=True) as par:
        frames = list(iter_frames(raw_art["raw"], pipe.cfg)) * 3
        for frame in frames:
            fused, two_step, split = pipe.run_frame(frame), pipe.run_frame(frame, keep_image=True), par.run_frame(frame)
            assert "remap_normalise" in fused.timings_ms and "undistort_resize" in two_step.timings_ms
            _same_results(fused, two_step)
            _same_results(split, fused)
        assert par._split.ms_per_row is not None and 1 <= par._split.split <= par.spec.image_hw[0] - 1


def test_compiled_and_numpy_stages_give_identical_results(raw_art, art, monkeypatch):
    """The whole frame (raster, remap, argmax, peaks) through both implementations: same outputs, boxes and
    semantic maps, for raw (fused remap) and chunk frames, with and without the helper thread."""
    from mtl.runtime import kernels

    if not kernels.available():
        pytest.skip(f"numba kernels not usable here ({kernels.failure() or 'numba not installed'})")
    for model, data in ((raw_art["onnx"], raw_art["raw"]), (art["onnx"], art["chunks"])):
        for threads in (1, 2):
            with Pipeline.open(model, "onnxruntime", threads=threads) as pipe:
                frames = list(iter_frames(data, pipe.cfg))
                monkeypatch.delenv(kernels.ENV, raising=False)
                compiled = [pipe.run_frame(f) for f in frames]
                monkeypatch.setenv(kernels.ENV, "numpy")
                for a, f in zip(compiled, frames):
                    _same_results(a, pipe.run_frame(f))


def test_argmax_channels_matches_numpy_with_ties_infinities_and_nan():
    rng = np.random.default_rng(3)
    logits = rng.integers(-3, 3, (5, 6, 7)).astype(np.float32)          # many ties: the first max must win
    logits[2, 0, 0], logits[4, 0, 1], logits[:, 0, 2] = np.inf, -np.inf, -np.inf
    np.testing.assert_array_equal(argmax_channels(logits), np.argmax(logits, axis=0))
    logits[3, 1, 1], logits[1, 1, 1] = np.nan, np.nan                  # np.argmax: the first NaN wins
    out = np.full((6, 7), 99, np.uint8)
    assert argmax_channels(logits, out) is out
    np.testing.assert_array_equal(out, np.argmax(logits, axis=0))
    assert out[1, 1] == 1


# -------------------------------------------------------------------------------------- run_stream


@pytest.mark.parametrize("sessions", [1, 2])
def test_run_stream_results_equal_run_frame_in_input_order(art, sessions):
    frames = list(iter_frames(art["chunks"], art["cfg"]))
    frames = frames + frames[::-1]                                       # 6 frames, repeats in another order
    with Pipeline.open(art["onnx"], "onnxruntime", threads=1) as pipe:
        want = [pipe.run_frame(f) for f in frames]
        got = list(pipe.run_stream(iter(frames), sessions=sessions))
        assert [r.frame_id for r in got] == [f.frame_id for f in frames]
        for a, b in zip(got, want):
            _same_results(a, b)
            assert {"bev_raster", "inference", "postprocess", "total"} <= set(a.timings_ms)
        assert len(pipe._extra) == sessions - 1
        slim = list(pipe.run_stream(frames[:2], keep_outputs=False, keep_image=True))
        assert slim[0].outputs == {} and slim[0].image is not None
    assert pipe._extra == []                                             # close() released the extra sessions


def test_run_stream_raises_at_the_bad_frame_after_the_good_ones_and_stops(art):
    frames = list(iter_frames(art["chunks"], art["cfg"]))
    bad = replace(frames[1], image_png=frames[1].image_png[:200])
    before = threading.active_count()
    with Pipeline.open(art["onnx"], "onnxruntime", threads=1) as pipe:
        seen = []
        with pytest.raises(DataError, match="PNG does not decode"):
            for r in pipe.run_stream([frames[0], bad, frames[2]]):
                seen.append(r.frame_id)
        assert seen == [frames[0].frame_id]

        def source():
            yield frames[0]
            raise DataError("camera0", "driver lost the sensor")

        seen.clear()
        with pytest.raises(DataError, match="camera0: driver lost the sensor"):
            for r in pipe.run_stream(source()):
                seen.append(r.frame_id)
        assert seen == [frames[0].frame_id]
        stream = pipe.run_stream(frames * 5)                             # closed early: threads stop and join
        assert next(stream).frame_id == frames[0].frame_id
        stream.close()
        assert pipe.run_frame(frames[2]).frame_id == frames[2].frame_id  # still usable
        assert list(pipe.run_stream([])) == []
    assert threading.active_count() == before


def test_run_stream_sessions_need_a_backend_that_has_more(art):
    from mtl.bench import torch_pipeline

    tp = torch_pipeline(art["ckpt"], threads=1)
    with pytest.raises(BackendUnavailableError, match="torch: one inference session per pipeline"):
        tp.run_stream([], sessions=2)
    with Pipeline.open(art["onnx"], "onnxruntime", threads=1) as pipe, pytest.raises(DataError, match="sessions"):
        pipe.run_stream([], sessions=0)


def test_row_split_moves_by_half_the_imbalance_and_stays_in_range():
    """Hand-worked: 240 rows here in 2.4 ms is 0.01 ms a row; finishing 0.5 ms after the helper moves the split
    by 0.5 * 0.5 / (2 * 0.01) = 12.5 rows toward the helper; the split never leaves [1, h - 1]."""
    from mtl.runtime.split import RowSplit

    s = RowSplit(0.25)
    assert s.rows(320) == 80
    s.observe(320, 240, 2.4, 0.5)
    assert s.ms_per_row == pytest.approx(0.01) and s.split == pytest.approx(92.5)
    s.observe(320, 228, 2.28, -0.2)                  # the helper finished later now: rows move back
    assert s.split == pytest.approx(92.5 - 5.0)
    s.observe(320, 200, 2.0, -1000.0)
    assert s.rows(320) == 1
    s.observe(320, 319, 3.19, 1000.0)
    assert s.rows(320) == 319
