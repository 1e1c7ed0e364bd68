"""`mtl bench`: one table (JSON + markdown) with per-stage latency, parity vs torch and honest skips."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from click.testing import CliRunner
from test_runtime import tiny_artifacts

from mtl.cli import main


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return tiny_artifacts(tmp_path_factory.mktemp("bench"))


def test_mtl_bench_writes_json_and_markdown_with_parity_and_skips(art, tmp_path):
    out = tmp_path / "results"
    r = CliRunner().invoke(main, ["bench", "--model", str(art["onnx"]), "--checkpoint", str(art["ckpt"]),
                                  "--data", str(art["chunks"]), "--iters", "3", "--warmup", "1", "--threads", "1",
                                  "--out", str(out), "--no-progress"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    (js,) = out.glob("bench_*_torch+ort+ort-fp16+ort-int8+ort-int8cpu+trt.json")
    (md,) = out.glob("bench_*_torch+ort+ort-fp16+ort-int8+ort-int8cpu+trt.md")
    rep = json.loads(js.read_text())
    rows = {row["backend"]: row for row in rep["rows"]}
    assert list(rows) == ["onnxruntime", "onnxruntime-fp16", "onnxruntime-int8", "onnxruntime-int8-cpu", "tensorrt",
                          "torch"]
    assert rows["onnxruntime-int8-cpu"]["status"] == ("skipped: no model_int8_cpu.onnx next to model.onnx "
                                                      "(mtl export --int8-cpu)")
    assert rows["tensorrt"]["status"].startswith("skipped: ") and "engine" in rows["tensorrt"]["status"]
    assert rows["onnxruntime-fp16"]["status"] == "skipped: no model_fp16.onnx next to model.onnx (mtl export --fp16)"
    for name in ("onnxruntime", "torch"):
        row = rows[name]
        assert row["status"] == "ok"
        for stage in ("decode_png", "bev_raster", "inference", "postprocess", "total"):
            assert set(row["stages"][stage]) == {"mean", "p50", "p90", "p99", "n"}
            assert row["stages"][stage]["n"] == 3
        assert row["throughput_fps"] > 0 and row["peak_rss_mb"] > 0
    par = rows["onnxruntime"]["parity"]
    assert max(par["max_abs_diff"].values()) <= 1e-4 and par["boxes_identical"] == "3/3"
    assert rows["onnxruntime"]["speedup_vs_torch"] > 0
    assert "miou_delta" in par and "map_delta" in par or rows["onnxruntime"]["metrics"].get("reason")
    assert rep["device"]["cpu_model"] and rep["device"]["threads"] == 1 and "onnxruntime" in rep["device"]["libraries"]
    assert rep["matches_model_source"] is True

    text = md.read_text()
    for col in ("backend", "decode_png ms", "bev_raster ms", "h2d ms", "inference ms", "d2h ms", "postprocess ms",
                "total mean", "p50", "p90", "p99", "frames/s", "peak RSS MB", "maxdiff heatmap", "boxes =", "dmIoU"):
        assert col in text, col
    assert "| tensorrt | skipped: " in text and "| tensorrt | skipped: " in r.output


def test_bench_without_checkpoint_marks_torch_skipped(art, tmp_path):
    from mtl.bench import run_bench

    rep = run_bench(art["onnx"], art["chunks"], ("onnxruntime", "torch", "onnxruntime-cuda"), iters=2, warmup=0,
                    threads=1, out_dir=None, progress=False)
    rows = {row["backend"]: row for row in rep["rows"]}
    assert rows["torch"]["status"] == "skipped: no --checkpoint given"
    assert rows["onnxruntime"]["status"] == "ok" and "parity" not in rows["onnxruntime"]
    assert rows["onnxruntime-cuda"]["status"].startswith("skipped: onnxruntime-cuda: ")
    assert rep["parity_note"].startswith("no --checkpoint") and "written" not in rep


def test_time_backends_interleaves_rounds_and_drops_a_failing_backend(art):
    """Rounds alternate the backends (drift hits every column alike); a backend that fails mid-run is
    reported with its error and skipped in later rounds while the others finish."""
    from mtl.bench import time_backends
    from mtl.errors import DataError
    from mtl.runtime import Pipeline, iter_frames

    class Recording(Pipeline):            # the real pipeline, with its calls logged (and an injected failure)
        def __init__(self, name, log, fail_at=None):
            p = Pipeline.open(art["onnx"], "onnxruntime", threads=1)
            super().__init__(p.spec, p.backend, overlap=False)
            self.name, self.log, self.fail_at = name, log, fail_at

        def run_frame(self, frame, **kw):
            self.log.append(self.name)
            if self.fail_at is not None and len([n for n in self.log if n == self.name]) == self.fail_at:
                raise DataError(frame.source, "injected backend failure")
            return super().run_frame(frame, **kw)

    frames = list(iter_frames(art["chunks"], None))
    log: list[str] = []
    pipes = {"a": Recording("a", log), "b": Recording("b", log), "c": Recording("c", log, fail_at=3)}
    res = time_backends(pipes, frames, iters=6, rounds=3)
    assert log == ["a", "a", "b", "b", "c", "c", "a", "a", "b", "b", "c", "a", "a", "b", "b"]
    assert res["a"]["stages"]["total"]["n"] == 6 and res["b"]["stages"]["total"]["n"] == 6
    assert "injected backend failure" in str(res["c"]["error"])
    # more rounds than frames: one frame per round
    log.clear()
    res = time_backends({"a": pipes["a"]}, frames, iters=2, rounds=9)
    assert log == ["a", "a"] and res["a"]["stages"]["total"]["n"] == 2
    for p in pipes.values():
        p.close()


def test_bench_rejects_zero_rounds(art):
    from mtl.bench import run_bench
    from mtl.errors import DataError

    with pytest.raises(DataError, match="--rounds must be >= 1"):
        run_bench(art["onnx"], art["chunks"], ("onnxruntime",), iters=2, rounds=0, out_dir=None, progress=False)


def test_onnx_conv_macs_hand_counted(tmp_path):
    """Conv, grouped strided Conv, ConvTranspose, MatMul and Gemm(transB) MACs from shape inference,
    against counts worked out by hand."""
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from mtl.bench import onnx_conv_macs

    def init(name, shape):
        return numpy_helper.from_array(np.zeros(shape, np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["y1"], pads=[1, 1, 1, 1]),                     # (1,8,10,10)
        helper.make_node("Conv", ["g", "w2"], ["y2"], group=2, strides=[2, 2], pads=[1, 1, 1, 1]),  # (1,4,3,3)
        helper.make_node("ConvTranspose", ["t", "w3"], ["y3"], strides=[2, 2]),              # (1,5,6,6)
        helper.make_node("MatMul", ["m", "w4"], ["y4"]),                                      # (5,3)
        helper.make_node("Gemm", ["q", "w5"], ["y5"], transB=1),                              # (2,6)
    ]
    vi = helper.make_tensor_value_info
    g = helper.make_graph(
        nodes, "macs",
        [vi("x", TensorProto.FLOAT, [1, 3, 10, 10]), vi("g", TensorProto.FLOAT, [1, 4, 6, 6]),
         vi("t", TensorProto.FLOAT, [1, 2, 3, 3]), vi("m", TensorProto.FLOAT, [5, 7]),
         vi("q", TensorProto.FLOAT, [2, 4])],
        [vi(f"y{i}", TensorProto.FLOAT, None) for i in range(1, 6)],
        [init("w1", (8, 3, 3, 3)), init("w2", (4, 2, 3, 3)), init("w3", (2, 5, 2, 2)), init("w4", (7, 3)),
         init("w5", (6, 4))])
    path = tmp_path / "macs.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), path)
    r = onnx_conv_macs(path)
    # Conv: 800 outputs x 27; grouped: 36 outputs x (2*3*3); ConvTranspose: 18 inputs x (5*2*2);
    # MatMul: 15 outputs x K=7; Gemm: 12 outputs x K=4
    assert [m for _, _, m in r["nodes"]] == [21600, 648, 360, 105, 48]
    assert r["by_op"] == {"Conv": 22248, "ConvTranspose": 360, "MatMul": 105, "Gemm": 48}
    assert r["total"] == 22761


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained a few steps on its own 3 frames (an untrained one scores mAP 0 whatever the score
    cut), exported to ONNX."""
    from conftest import write_tiny_chunks
    from test_runtime import export_tiny, runtime_cfg

    from mtl.train import train

    root = tmp_path_factory.mktemp("trained")
    cfg = runtime_cfg(**{"train.augment": False, "train.lr": 1e-2, "train.warmup_steps": 1, "train.epochs": 15,
                         "train.batch_size": 3, "loss.sem_class_weights": "none"})
    chunks = write_tiny_chunks(root / "chunks", cfg, n_frames=3, per_chunk=2, seed=3)
    train(cfg, chunks, root / "run", progress=False)
    ckpt = root / "run" / "last.pt"
    return {"cfg": cfg, "ckpt": ckpt, "onnx": export_tiny(ckpt, root / "export" / "model.onnx"), "chunks": chunks}


def test_eval_gate_and_bench_give_the_same_metrics_for_the_same_model_and_frames(trained):
    """`mtl eval` (torch, dataset loader), the export metric gate (onnxruntime session, `evaluate_sessions`)
    and `mtl bench` (runtime pipelines, torch and onnxruntime) score the same frames with one accumulator and
    one score cut (`decode.eval_score_threshold`), so they report the same mIoU and mAP."""
    art = trained
    import onnxruntime as ort

    from mtl.bench import frame_outputs, load_frames, task_metrics, torch_pipeline
    from mtl.evaluate import evaluate_checkpoint
    from mtl.export.parity import FrameSource, evaluate_sessions
    from mtl.metrics import MetricsAccumulator
    from mtl.runtime import Pipeline

    cfg = art["cfg"]
    assert cfg.decode.eval_score_threshold < cfg.decode.score_threshold          # 0.05 vs the runtime's 0.3
    ev, _ = evaluate_checkpoint(str(art["ckpt"]), str(art["chunks"]), batch_size=2, progress=False)
    sess = ort.InferenceSession(str(art["onnx"]), providers=["CPUExecutionProvider"])
    gate = evaluate_sessions({"fp32": sess}, FrameSource(art["chunks"], cfg), cfg, batch=1)["fp32"]
    frames, _ = load_frames(art["chunks"], cfg, 10)
    outs = {"torch": frame_outputs(torch_pipeline(art["ckpt"], threads=1), frames),
            "onnxruntime": frame_outputs(Pipeline.open(art["onnx"], "onnxruntime", threads=1), frames)}
    bench = {name: task_metrics(o, frames, cfg) for name, o in outs.items()}
    assert ev["frames"] == gate["frames"] == len(frames) == 3
    assert ev["n_gt"] and sum(ev["n_gt"].values()) > 0 and ev["map"] > 0
    for got in (gate, *bench.values()):
        assert got["map"] == pytest.approx(ev["map"], abs=1e-9)
        assert got["miou"] == pytest.approx(ev["miou"], abs=1e-9)
    # the score cut matters for this model: the runtime's boxes (decoded at 0.3, what `mtl bench` used to
    # score) give another mAP
    at_runtime = MetricsAccumulator(cfg.classes.sem_classes, cfg.classes.det_classes,
                                    score_threshold=cfg.decode.score_threshold,
                                    max_detections=cfg.decode.max_detections)
    for r, f in zip(outs["torch"], frames):
        at_runtime.add_frame(f.frame_id, boxes=r["boxes"], scores=r["scores"], labels=r["labels"],
                             gt_boxes=f.gt_boxes, gt_labels=f.gt_labels)
    assert abs(at_runtime.compute()["map"] - ev["map"]) > 1e-3
