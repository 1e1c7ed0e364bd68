"""Frames that carry only some labels are scored on what they have: `mtl.runtime.scoring.score_results`
(torch-free, what `mtl infer --eval` reports) and `mtl eval` on `--partial` chunks, with one accumulator."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny_cfg, write_tiny_chunks

from mtl import geometry as G
from mtl.data.chunk import HAS_ALL, HAS_BOXES, HAS_IMAGE, HAS_LIDAR, HAS_SEMANTIC
from mtl.errors import DataError
from mtl.runtime import Result, RuntimeFrame
from mtl.runtime.scoring import frame_tasks, score_results


def _frame(fid, image=True, points=0, gt_semantic=None, gt=None):
    f = RuntimeFrame(frame_id=fid, kind="chunk", points=np.ones((points, 4), np.float32),
                     image=np.zeros((2, 2, 3), np.uint8) if image else None)
    if gt_semantic is not None:
        f.gt_semantic = np.asarray(gt_semantic, np.uint8)
    if gt is not None:
        f.gt_boxes = np.array([[x, y, -1, 4, 2, 1.5, 0] for x, y, _ in gt], np.float32).reshape(-1, 7)
        f.gt_labels = np.array([c for _, _, c in gt], np.int64)
    return f


def _result(fid, semantic=((0, 0), (0, 0)), boxes=(), outputs=None):
    b = np.array([[x, y, -1, 4, 2, 1.5, 0] for x, y, _, _ in boxes], np.float32).reshape(-1, 7)
    return Result(frame_id=fid, boxes=b, scores=np.array([s for *_, s, _ in boxes], np.float32),
                  labels=np.array([c for *_, c in boxes], np.int64), label_names=[],
                  semantic=np.asarray(semantic, np.uint8), outputs=outputs or {})


def test_frame_tasks_follow_what_the_frame_has():
    assert frame_tasks(_frame("a", gt_semantic=[[0]])) == (True, False)            # camera + label
    assert frame_tasks(_frame("b", image=False, gt_semantic=[[0]])) == (False, False)   # label, no camera
    assert frame_tasks(_frame("c", image=False, points=5, gt=[(1, 0, 0)])) == (False, True)
    assert frame_tasks(_frame("d", points=0, gt=[(1, 0, 0)])) == (False, False)     # boxes, no LiDAR
    assert frame_tasks(_frame("e", points=3, gt_semantic=[[0]], gt=[])) == (True, True)


def test_score_results_hand_worked_partial_frames():
    cfg = tiny_cfg()
    pairs = [
        # camera + semantic label: gt [[0, 0], [1, ignore]] vs pred [[0, 1], [1, 2]] -> (0,0) (0,1) (1,1):
        # pixel acc 2/3, IoU 0 = 1/(2+1-1), IoU 1 = 1/(1+2-1), class 2 only predicted on an ignored pixel: None
        (_result("cam", semantic=[[0, 1], [1, 2]]), _frame("cam", gt_semantic=[[0, 0], [1, 255]])),
        # LiDAR + 3D boxes, no camera: one car found 0.3 m off (runtime boxes, score 0.9) -> AP 1 at every
        # threshold; its semantic prediction is not scored
        (_result("lidar", semantic=[[3, 3], [3, 3]], boxes=[(10.3, 0.0, 0.9, 0)]),
         _frame("lidar", image=False, points=100, gt=[(10.0, 0.0, 0)])),
        # a label without the camera it belongs to, and a camera without labels: nothing to score
        (_result("label_only"), _frame("label_only", image=False, gt_semantic=[[5, 5], [5, 5]])),
        (_result("no_labels"), _frame("no_labels")),
    ]
    m = score_results(pairs, cfg)
    assert m["frames"] == 2 and m["semantic_frames"] == 1 and m["detection_frames"] == 1
    assert m["unscored_frames"] == ["label_only", "no_labels"]
    assert m["pixel_acc"] == pytest.approx(2 / 3, abs=1e-12)
    iou = m["per_class_iou"]
    names = cfg.classes.sem_classes
    assert iou[names[0]] == pytest.approx(0.5) and iou[names[1]] == pytest.approx(0.5) and iou[names[2]] is None
    assert m["miou"] == pytest.approx(0.5, abs=1e-12)
    assert m["ap"]["car"] == pytest.approx(1.0) and m["ap"]["truck"] is None and m["map"] == pytest.approx(1.0)
    assert m["n_gt"]["car"] == 1
    assert m["per_frame"] == {"cam": {"pixel_acc": pytest.approx(2 / 3), "gt_boxes": None},
                              "lidar": {"pixel_acc": None, "gt_boxes": 1}}
    assert m["boxes_scored"] == [f"runtime boxes (score > {cfg.decode.score_threshold:g})"]


def test_score_results_decodes_kept_outputs_at_the_evaluation_cut():
    """With the raw outputs kept, boxes are decoded from the heatmap at decode.eval_score_threshold (as
    `mtl eval` does), not taken from the runtime's cut: a 0.2 peak counts although the runtime cut is 0.3."""
    cfg = tiny_cfg(**{"decode.score_threshold": 0.3})
    box = np.array([[6.0, 1.0, -1.0, 4.0, 2.0, 1.5, 0.3]], np.float32)
    t = G.heatmap_targets(box, np.array([0]), cfg.grid, cfg.classes.n_det)
    heat = t["heatmap"] * 0.2                                                  # peak 0.2 at the car centre
    frame = _frame("f", image=False, points=10, gt=[(6.0, 1.0, 0)])
    frame.gt_boxes = box
    runtime = _result("f")                                                     # the runtime kept no box (0.2 < 0.3)
    runtime.outputs = {"bbox_heatmap": heat[None], "bbox_reg": t["reg"][None]}
    m = score_results([(runtime, frame)], cfg)
    assert m["ap"]["car"] == pytest.approx(1.0) and m["boxes_scored"][0].startswith("heatmap decoded")
    logits = np.log(np.clip(heat, 1e-6, 1 - 1e-6) / (1 - np.clip(heat, 1e-6, 1 - 1e-6)))
    runtime.outputs = {"bbox_heatmap": logits[None], "bbox_reg": t["reg"][None]}
    assert score_results([(runtime, frame)], cfg, heatmap_activation="none")["ap"]["car"] == pytest.approx(1.0)
    runtime.outputs = {}                                                       # no outputs: the runtime's boxes
    assert score_results([(runtime, frame)], cfg)["ap"]["car"] == 0.0


def test_score_results_refuses_a_label_of_another_size():
    with pytest.raises(DataError, match="frame f: semantic label \\(1, 2\\) and prediction \\(2, 2\\) differ"):
        score_results([(_result("f"), _frame("f", gt_semantic=[[0, 0]]))], tiny_cfg())


# ------------------------------------------------------------------------ mtl eval on partial chunks

PARTIAL_MASKS = {0: HAS_IMAGE | HAS_SEMANTIC,            # camera + label (the real A2D2 sample's kind)
                 1: HAS_LIDAR | HAS_BOXES,               # LiDAR + 3D boxes, no camera
                 3: HAS_SEMANTIC}                        # a label without its camera: nothing to score


def test_dataset_partial_keeps_scorable_frames_with_neutral_stand_ins(tmp_path):
    pytest.importorskip("torch")
    from mtl.dataset import ChunkDataset, scored_tasks
    from mtl.errors import ChunkError

    assert scored_tasks(HAS_ALL) == (True, True) and scored_tasks(HAS_IMAGE | HAS_SEMANTIC) == (True, False)
    assert scored_tasks(HAS_LIDAR | HAS_BOXES) == (False, True) and scored_tasks(HAS_SEMANTIC | HAS_LIDAR) == (False,
                                                                                                             False)
    cfg = tiny_cfg()
    d = write_tiny_chunks(tmp_path / "c", cfg, n_frames=4, masks=PARTIAL_MASKS)
    with pytest.warns(UserWarning, match="skipped 3 frame"):
        assert len(ChunkDataset(d, cfg)) == 1                                   # training: complete frames only
    with pytest.warns(UserWarning, match="skipped 1 frame"):
        ds = ChunkDataset(d, cfg, partial=True)
    assert len(ds) == 3 and ds.partial_frames == 2
    cam, lidar, full = ds[0], ds[1], ds[2]
    assert [s["frame_id"] for s in (cam, lidar, full)] == ["tiny/0_000", "tiny/0_001", "tiny/0_002"]
    assert [s["modality_mask"] for s in (cam, lidar, full)] == [PARTIAL_MASKS[0], PARTIAL_MASKS[1], HAS_ALL]
    assert float(lidar["image"].abs().max()) < 0.02                           # the mean colour: ~0 normalised
    assert int((lidar["semantic"] != 255).sum()) == 0                         # no label: all ignored
    assert float(cam["bev"].abs().sum()) == 0.0                               # no LiDAR: an empty raster
    assert int((cam["semantic"] != 255).sum()) > 0
    only_labels = write_tiny_chunks(tmp_path / "l", cfg, n_frames=2, masks={0: HAS_SEMANTIC, 1: HAS_BOXES})
    with pytest.raises(ChunkError, match="no camera \\+ semantic label, or LiDAR \\+ 3D boxes in the chunks"):
        with pytest.warns(UserWarning):
            ChunkDataset(only_labels, cfg, partial=True)


def _stand_in(cfg) -> np.ndarray:
    """What ChunkDataset feeds for a missing camera image: the normalisation mean colour."""
    img = np.empty((*cfg.camera.image_hw, 3), np.uint8)
    img[:] = np.round(np.asarray(cfg.camera.mean) * 255).astype(np.uint8)
    return img


@pytest.fixture(scope="module")
def model_and_partial(tmp_path_factory):
    """A tiny exported model and partial chunks whose 3D labels are the model's own two best detections
    (at the evaluation cut) on each LiDAR frame: an untrained model finds nothing real, so this gives the
    detection scores something to agree on (mAP > 0) without training."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from conftest import tiny_frame
    from test_runtime import export_tiny, runtime_cfg, save_tiny_checkpoint

    from mtl.data.chunk import write_chunk
    from mtl.io import decode_png
    from mtl.metrics import metric_detections
    from mtl.runtime import Pipeline

    root = tmp_path_factory.mktemp("scoring")
    cfg = runtime_cfg()
    ckpt = save_tiny_checkpoint(cfg, root / "ckpt.pt")
    onnx = export_tiny(ckpt, root / "model.onnx")
    rng = np.random.default_rng(3)
    frames = [tiny_frame(cfg, rng, f"tiny/{i}", mask=PARTIAL_MASKS.get(i, HAS_ALL)) for i in range(4)]
    with Pipeline.open(onnx, "onnxruntime", threads=1) as pipe:
        for fr in frames:
            if fr.modality_mask & HAS_LIDAR:
                img = decode_png(fr.image_png, "test", "RGB") if fr.modality_mask & HAS_IMAGE else _stand_in(cfg)
                out = pipe.run(img, fr.points).outputs
                det = metric_detections(out["bbox_heatmap"][0], out["bbox_reg"][0], cfg)
                fr.boxes, fr.box_class = det["boxes"][:2].astype(np.float32), det["labels"][:2].astype(np.int16)
    write_chunk(root / "partial" / "chunk_00000.npz", frames, {"source": "test"})
    return {"cfg": cfg, "ckpt": ckpt, "onnx": onnx, "partial": root / "partial"}


def test_eval_and_runtime_scoring_agree_on_partial_frames(model_and_partial):
    """`mtl eval` (torch, ChunkDataset partial) and score_results over runtime results (onnxruntime) score the
    same partial frames on the same tasks with one accumulator: the same mIoU, pixel accuracy and mAP."""
    from mtl.evaluate import evaluate_checkpoint
    from mtl.runtime import Pipeline, iter_frames

    art, cfg = model_and_partial, model_and_partial["cfg"]
    with pytest.warns(UserWarning, match="skipped 1 frame"):
        ev, _ = evaluate_checkpoint(str(art["ckpt"]), str(art["partial"]), batch_size=2, progress=False)
    assert (ev["frames"], ev["semantic_frames"], ev["detection_frames"], ev["partial_frames"]) == (3, 2, 2, 2)
    assert "loss" not in ev and sum(ev["n_gt"].values()) == 4 and ev["map"] > 0.3
    pairs = []
    with Pipeline.open(art["onnx"], "onnxruntime", threads=1) as pipe:
        for f in iter_frames(art["partial"], pipe.cfg, with_gt=True):
            res = pipe.run_frame(f) if f.has_image else pipe.run(_stand_in(cfg), f.points, frame_id=f.frame_id)
            pairs.append((res, f))
        m = score_results(pairs, pipe.cfg, pipe.spec.heatmap_activation)
    assert m["unscored_frames"] == ["tiny/3"]
    assert (m["frames"], m["semantic_frames"], m["detection_frames"]) == (3, 2, 2)
    for key in ("miou", "pixel_acc", "map"):
        assert m[key] == pytest.approx(ev[key], abs=1e-9), key
    assert m["n_gt"] == ev["n_gt"] and m["per_class_iou"] == pytest.approx(ev["per_class_iou"], abs=1e-9)


def test_mtl_eval_scores_the_real_partial_a2d2_sample(a2d2_sample, tmp_path):
    """Real A2D2 sample converted with --partial: 3 frames with camera + semantic labels, 1 with LiDAR + 3D
    boxes. `mtl eval` scores each on what it has instead of refusing ("no complete frames")."""
    pytest.importorskip("torch")
    from click.testing import CliRunner
    from test_runtime import save_tiny_checkpoint

    from mtl.cli import main
    from mtl.config import Config
    from mtl.data.convert import convert

    cfg = Config().override(**{"model.cam_channels": (4, 8, 8, 8), "model.bev_channels": (8, 8, 8),
                               "model.cam_depth": 1, "model.bev_depth": 1, "model.bev_decoder_channels": 8,
                               "model.fuse_channels": 4, "model.head_channels": 8, "model.sem_decoder_channels": 8})
    chunks = tmp_path / "partial"
    convert(a2d2_sample, chunks, cfg, partial=True, workers=1, progress=False, log=lambda m: None)
    ckpt = save_tiny_checkpoint(cfg, tmp_path / "ckpt.pt")
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(ckpt), "--data", str(chunks), "--out",
                                  str(tmp_path / "eval.json"), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "(4 frames: 3 scored for semantics, 1 for detection" in r.output
    doc = json.loads((tmp_path / "eval.json").read_text())
    assert (doc["frames"], doc["semantic_frames"], doc["detection_frames"], doc["partial_frames"]) == (4, 3, 1, 4)
    assert 0.0 <= doc["pixel_acc"] <= 1.0 and "loss" not in doc
    assert doc["n_gt"] == {"car": 1, "truck": 1, "pedestrian": 0, "cyclist": 2}   # the LiDAR frame's 4 boxes


# ------------------------------------------------------------------------------ mtl infer --eval


def _infer_eval(art, out, *extra):
    from click.testing import CliRunner

    from mtl.cli import main

    r = CliRunner().invoke(main, ["infer", "--model", str(art["onnx"]), "--data", str(art["partial"]), "--out",
                                  str(out), "--backend", "onnxruntime", "--threads", "1", "--eval", *extra])
    assert r.exit_code == 0, r.output
    return r.output, json.loads((out / "summary.json").read_text())


def test_mtl_infer_eval_equals_mtl_eval_on_partial_chunks(model_and_partial, tmp_path):
    """`mtl infer --eval` (onnxruntime, per-frame records) and `mtl eval` (torch) on the same partial chunks: the
    same frames scored per task, the same mIoU / pixel accuracy / mAP. Frames are marked by modality; the
    LiDAR-only frame runs on the stand-in image and predicts no semantics (all 255)."""
    from PIL import Image

    from mtl.evaluate import evaluate_checkpoint

    art = model_and_partial
    with pytest.warns(UserWarning, match="skipped 1 frame"):
        ev, _ = evaluate_checkpoint(str(art["ckpt"]), str(art["partial"]), batch_size=2, progress=False)
    output, s = _infer_eval(art, tmp_path / "o")
    m = s["metrics"]
    assert s["eval"] is True and s["modalities"] == {"camera+lidar": 1, "camera-only": 1, "lidar-only": 1}
    assert s["frames_skipped"] == {"no camera image and no LiDAR": 1} and s["frames_written"] == 3
    assert (m["frames"], m["semantic_frames"], m["detection_frames"]) == (ev["frames"], 2, 2) == (3, 2, 2)
    for key in ("miou", "pixel_acc", "map"):
        assert m[key] == pytest.approx(ev[key], abs=1e-9), key
    assert m["n_gt"] == ev["n_gt"] and m["per_class_iou"] == pytest.approx(ev["per_class_iou"], abs=1e-9)
    assert m["ap"] == pytest.approx(ev["ap"], abs=1e-9) and m["map"] > 0.3
    assert m["boxes_scored"] == ["heatmap decoded at the evaluation cut (score > 0.05)"]
    assert set(m["per_frame"]) == {"tiny/0", "tiny/1", "tiny/2"}
    assert m["per_frame"]["tiny/1"] == {"pixel_acc": None, "gt_boxes": 2}       # LiDAR only: boxes, no pixels
    assert output.splitlines()[0].startswith("3 frames (1 camera+lidar, 1 camera-only, 1 lidar-only) -> ")
    assert f"eval: mIoU {m['miou']:.4f}, pixel accuracy {m['pixel_acc']:.4f} over 2 frames" in output
    assert f"mAP {m['map']:.4f} over 2 frames with LiDAR + 3D boxes" in output
    frames = tmp_path / "o" / "frames"
    docs = {p.stem: json.loads(p.read_text()) for p in frames.glob("*.json")}
    assert {k: d["modality"] for k, d in docs.items()} == {"tiny__0": "camera-only", "tiny__1": "lidar-only",
                                                            "tiny__2": "camera+lidar"}
    assert set(docs["tiny__0"]["eval"]) == {"semantic"} and set(docs["tiny__1"]["eval"]) == {"detection"}
    assert "timing_ms" in docs["tiny__1"] and "decode_png" not in docs["tiny__1"]["timing_ms"]
    assert (np.asarray(Image.open(frames / "tiny__1_sem.png")) == 255).all()
    assert docs["tiny__1"]["semantic"]["pixels_per_class"] == {}


def test_infer_eval_resume_counts_kept_frames_exactly(model_and_partial, tmp_path):
    """A run stopped after 2 frames and resumed gives exactly the metrics of one uninterrupted run: the kept
    frames count from the records in their JSONs. Frames written without --eval, or cut with another
    --max-detections, are run again."""
    art = model_and_partial
    _, full = _infer_eval(art, tmp_path / "full")
    _, part = _infer_eval(art, tmp_path / "part", "--limit", "2")
    assert part["frames_written"] == 2 and part["metrics"]["frames"] == 2
    _, resumed = _infer_eval(art, tmp_path / "part", "--resume")
    assert resumed["frames_resumed"] == 2 and resumed["frames_written"] == 3
    assert resumed["metrics"] == full["metrics"]                                  # bit for bit, per_frame included
    from click.testing import CliRunner

    from mtl.cli import main

    plain = tmp_path / "plain"
    r = CliRunner().invoke(main, ["infer", "--model", str(art["onnx"]), "--data", str(art["partial"]), "--out",
                                  str(plain), "--backend", "onnxruntime", "--threads", "1"])
    assert r.exit_code == 0 and "metrics" not in json.loads((plain / "summary.json").read_text()), r.output
    _, redone = _infer_eval(art, plain, "--resume")
    assert redone["frames_resumed"] == 0 and redone["metrics"] == full["metrics"]
    _, kept = _infer_eval(art, plain, "--resume")
    assert kept["frames_resumed"] == 3 and kept["metrics"] == full["metrics"]
    _, cut = _infer_eval(art, plain, "--resume", "--max-detections", "1")
    assert cut["frames_resumed"] == 0 and cut["decode"]["overrides"] == {"max_detections": 1}
    assert cut["metrics"]["n_gt"] == full["metrics"]["n_gt"] and cut["metrics"]["map"] <= full["metrics"]["map"]


def test_a_stored_record_scores_like_the_frame_itself():
    """frame_record -> JSON -> Scorer gives what MetricsAccumulator gives on the arrays (hand-worked frames of
    test_score_results_hand_worked_partial_frames), and check_record refuses malformed records."""
    from mtl.runtime.scoring import Scorer, check_record, frame_record

    cfg = tiny_cfg()
    res, frame = (_result("lidar", semantic=[[3, 3], [3, 3]], boxes=[(10.3, 0.0, 0.9, 0)]),
                  _frame("lidar", image=False, points=100, gt=[(10.0, 0.0, 0)]))
    rec = json.loads(json.dumps(frame_record(res, frame, cfg)))
    assert rec["detection"]["boxes"] == [[pytest.approx(10.3), 0.0, -1.0, 4.0, 2.0, 1.5, 0.0]]
    assert rec["detection"]["gt_labels"] == [0] and "semantic" not in rec
    cam = frame_record(_result("cam", semantic=[[0, 1], [1, 2]]), _frame("cam", gt_semantic=[[0, 0], [1, 255]]), cfg)
    assert sorted(cam["semantic"]["confusion"]) == [[0, 0, 1], [0, 1, 1], [1, 1, 1]]
    s = Scorer(cfg)
    s.add("cam", json.loads(json.dumps(cam)))
    s.add("lidar", rec)
    s.add("none", {})
    m = s.compute()
    assert m["pixel_acc"] == pytest.approx(2 / 3) and m["miou"] == pytest.approx(0.5) and m["map"] == pytest.approx(1)
    assert m["unscored_frames"] == ["none"] and m["per_frame"]["cam"]["pixel_acc"] == pytest.approx(2 / 3)
    assert check_record(rec, cfg) and check_record(cam, cfg) and check_record({}, cfg)
    bad = [None, [], {"semantic": {"confusion": [[0, 99, 1]]}}, {"semantic": {"confusion": [[0, 0, -1]]}},
           {"semantic": {}}, {"detection": {**rec["detection"], "labels": [7]}},
           {"detection": {**rec["detection"], "scores": []}},
           {"detection": {**rec["detection"], "boxes": [[float("nan")] * 7]}}]
    assert [check_record(b, cfg) for b in bad] == [False] * len(bad)


def test_accumulator_takes_a_frames_confusion_matrix():
    """add_frame(semantic_confmat=) adds what add_frame(semantic_pred=, semantic_gt=) adds; bad input refused."""
    from mtl.metrics import MetricsAccumulator, confusion_matrix

    cfg = tiny_cfg()
    gt, pred = np.array([[0, 0], [1, 255]]), np.array([[0, 1], [1, 2]])
    a, b = MetricsAccumulator.from_config(cfg), MetricsAccumulator.from_config(cfg)
    a.add_frame("f", semantic_pred=pred, semantic_gt=gt)
    b.add_frame("f", semantic_confmat=confusion_matrix(gt, pred, cfg.classes.n_sem))
    assert np.array_equal(a.confmat, b.confmat) and a.n_semantic_frames == b.n_semantic_frames == 1
    assert a.compute()["pixel_acc"] == b.compute()["pixel_acc"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="not both"):
        b.add_frame("g", semantic_pred=pred, semantic_gt=gt, semantic_confmat=b.confmat)
    with pytest.raises(ValueError, match="non-negative integers of shape"):
        b.add_frame("h", semantic_confmat=np.zeros((2, 2), np.int64))
