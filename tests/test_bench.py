"""`mtl bench`: one table (JSON + markdown) with per-stage latency, parity vs torch and honest skips."""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
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
    compare = "torch,onnxruntime,onnxruntime-fp16,onnxruntime-int8,onnxruntime-int8-cpu,tensorrt"
    r = CliRunner().invoke(main, ["bench", "--model", str(art["onnx"]), "--checkpoint", str(art["ckpt"]),
                                  "--data", str(art["chunks"]), "--queries", "3", "--warmup", "1", "--threads", "1",
                                  "--compare", compare, "--out", str(out), "--no-progress"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    (run,) = [p for p in out.iterdir() if not p.name.startswith(".")]   # one new folder: <date-time>_<scenario>
    assert re.fullmatch(r"\d{8}-\d{6}_single-stream", run.name)
    # only the backends that ran name the files
    assert sorted(p.name for p in run.iterdir()) == ["bench_ort+torch.json", "bench_ort+torch.md", "system.json"]
    rep = json.loads((run / "bench_ort+torch.json").read_text())
    rows = {row["backend"]: row for row in rep["rows"]}
    assert list(rows) == ["onnxruntime", "onnxruntime-fp16", "onnxruntime-int8", "onnxruntime-int8-cpu", "tensorrt",
                          "torch"]
    assert rep["ran"] == ["onnxruntime", "torch"] and rep["scenario"] == "single-stream" and rep["input"] == "png"
    assert rows["onnxruntime-int8-cpu"]["status"] == ("skipped: no model_int8_cpu.onnx next to model.onnx "
                                                      "(mtl export --int8-cpu)")
    assert rows["tensorrt"]["status"].startswith("skipped: ") and "engine" in rows["tensorrt"]["status"]
    assert rows["onnxruntime-fp16"]["status"] == "skipped: no model_fp16.onnx next to model.onnx (mtl export --fp16)"
    for name in ("onnxruntime", "torch"):
        row = rows[name]
        assert row["status"] == "ok"
        for stage in ("decode_png", "bev_raster", "inference", "postprocess", "total"):
            assert set(row["stages"][stage]) == {"n", "min", "mean", "std", "p50", "p90", "p99", "p99.9", "max"}
            assert row["stages"][stage]["n"] == 3
        lat = row["latency"]
        assert lat["n"] == 3 and lat["min"] <= lat["p50"] <= lat["p99.9"] == lat["max"]
        assert lat["p99.9_upper95"] is None                     # 3 queries bound nothing
        # every query's latency (0.001 ms), for the report's CDF: the statistics are of these very values
        assert len(row["latencies_ms"]) == 3 and max(row["latencies_ms"]) == pytest.approx(lat["max"], abs=1e-3)
        assert sorted(row["latencies_ms"])[1] == pytest.approx(lat["p50"], abs=1e-3)
        assert all(v == round(v, 3) for v in row["latencies_ms"])
        assert lat["mean"] >= row["stages"]["total"]["mean"]     # the harness sees the whole call
        assert row["e2e_over_inference"] > 1 and row["throughput_fps"] > 0 and row["peak_rss_mb"] > 0
        cold = row["cold_start"]
        assert cold["open_ms"] > 0 and cold["first_frame_ms"] > 0 and "import_ms" in cold
    assert rows["onnxruntime"]["cold_start"]["session_create"] > 0
    assert rows["torch"]["cold_start"]["checkpoint_load"] > 0
    par = rows["onnxruntime"]["parity"]
    assert max(par["max_abs_diff"].values()) <= 1e-4 and par["boxes_identical"] == "3/3"
    assert rows["onnxruntime"]["speedup_vs_torch"] > 0
    assert "miou_delta" in par and "map_delta" in par or rows["onnxruntime"]["metrics"].get("reason")
    system = json.loads((run / "system.json").read_text())
    assert system == rep["system"] and system["threads_used"] == 1
    assert rep["matches_model_source"] is True

    text = (run / "bench_ort+torch.md").read_text()
    for col in ("backend", "decode_png ms", "bev_raster ms", "h2d ms", "inference ms", "d2h ms", "postprocess ms",
                "latency mean", "p50", "p90", "p99", "p99.9", "p99.9 95% upper", "max", "std", "e2e / inference",
                "frames/s", "open ms", "first frame ms", "peak RSS MB", "maxdiff heatmap", "boxes =", "dmIoU"):
        assert f"| {col} |" in text, col
    assert "| tensorrt | skipped: " in text and "tensorrt             skipped: " in r.output
    assert "\n- system: " in text and "\n- software: " in text              # the system in two lines
    summary = r.output.split("written: ")[0]                  # then the paths of the three files
    assert "single-stream" in summary and all(len(line) <= 120 for line in summary.splitlines()), summary


def test_bench_without_checkpoint_marks_torch_skipped(art, tmp_path):
    from mtl.bench import run_bench

    rep = run_bench(art["onnx"], art["chunks"], ("onnxruntime", "torch", "onnxruntime-cuda"), queries=2, warmup=0,
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
    assert res["a"]["latency"]["n"] == 6 and res["a"]["throughput_fps"] > 0
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
        run_bench(art["onnx"], art["chunks"], ("onnxruntime",), queries=2, rounds=0, out_dir=None, progress=False)


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


# ------------------------------------------------------------------------------------ statistics


def test_nearest_rank_percentiles_and_stats_on_a_hand_checked_list():
    from mtl.bench_stats import nearest_rank, stats

    values = [7.0, 1.0, 9.0, 3.0, 5.0, 2.0, 8.0, 4.0, 10.0, 6.0]         # 1..10 shuffled
    s = stats(values)
    # nearest rank: p-th percentile = the ceil(p/100 * n)-th smallest: ceil(5) = 5, ceil(9) = 9, ceil(9.9) = 10
    assert (s["p50"], s["p90"], s["p99"], s["p99.9"]) == (5.0, 9.0, 10.0, 10.0)
    assert (s["n"], s["min"], s["max"], s["mean"]) == (10, 1.0, 10.0, 5.5)
    assert s["std"] == pytest.approx(2.8723, abs=1e-4)                   # population std of 1..10: sqrt(8.25)
    thousand = list(range(1, 1001))                                      # ceil(999.0) = 999: no float drift
    assert nearest_rank(thousand, 99.9) == 999 and nearest_rank(thousand, 50) == 500
    assert nearest_rank([4.0], 99.9) == 4.0
    assert stats([]) == {"n": 0}


def test_upper_confidence_bound_rank_of_the_p999():
    from mtl.bench_stats import latency_stats, upper_bound_rank

    # Binomial(3, 0.5) counts samples below the median: P(<=0) = 1/8, P(<=1) = 4/8, P(<=2) = 7/8, P(<=3) = 1
    assert upper_bound_rank(3, 50, 0.8) == 3          # smallest k with P(B <= k) >= 0.8 is 2 -> rank 3 (the max)
    assert upper_bound_rank(3, 50, 0.5) == 2          # k = 1 -> rank 2
    assert upper_bound_rank(3, 50, 0.9) is None       # even the max bounds the median with only 7/8
    # the max bounds the p99.9 at 95% from n = 2,995 on (0.999 ** n <= 0.05); MLPerf's 6,636 gives rank 6,634
    assert upper_bound_rank(2994) is None and upper_bound_rank(2995) == 2995 and upper_bound_rank(3000) == 3000
    assert upper_bound_rank(6636) == 6634
    lat = latency_stats(np.arange(6636, 0, -1.0))
    assert lat["p99.9"] == 6630.0 and lat["p99.9_upper95"] == 6634.0


def test_search_max_rate_brackets_then_bisects():
    from mtl.bench_scenarios import search_max_rate

    probed = []

    def passes(rate):
        probed.append(rate)
        return rate <= 37.0

    lo, hi, rates = search_max_rate(passes, 20.0, steps=20, tolerance=0.01)
    assert rates == probed and rates[:4] == [20.0, 25.0, 31.25, 39.0625]     # grows x1.25 until one fails
    assert lo <= 37.0 < hi and (hi - lo) / hi <= 0.01
    lo, hi, rates = search_max_rate(lambda r: r <= 5.0, 20.0, steps=3)       # shrinks; too few steps to pass
    assert lo is None and rates == [20.0, 16.0, 12.8]


# ------------------------------------------------------------------------------------ scenarios


def test_constant_stream_schedule_and_latency_accounting(art):
    from mtl.bench_scenarios import arrival_schedule, constant_stream
    from mtl.runtime import Pipeline, iter_frames

    np.testing.assert_allclose(arrival_schedule(4, 20.0, 100.0), [100.0, 100.05, 100.1, 100.15])
    frames = list(iter_frames(art["chunks"], None))
    with Pipeline.open(art["onnx"], "onnxruntime", threads=1) as pipe:
        pipe.run_frame(frames[0])
        slow = constant_stream(pipe, frames, 6, rate_hz=5.0, deadline_ms=10_000.0)     # the tiny model keeps up
        flood = constant_stream(pipe, frames, 12, rate_hz=100_000.0, deadline_ms=1e-3)  # arrivals 10 us apart
    for r in (slow, flood):
        assert r["latency"]["n"] == r["queries"] and r["stages"]["total"]["n"] == r["queries"]
        # from the scheduled arrival, so never less than the frame's own processing
        assert r["latency"]["min"] >= r["stages"]["total"]["min"] - 1e-3
    assert slow["over_deadline"] == {"count": 0, "share": 0.0} and slow["achieved_rate_hz"] > 0
    # all 12 frames arrive within 0.1 ms: every one after the first waits for the runtime (late), the waits
    # accumulate into the latency, and all miss a 1 us deadline
    assert flood["late_frames"]["count"] >= 10 and flood["over_deadline"] == {"count": 12, "share": 1.0}
    assert flood["latency"]["max"] >= flood["latency"]["min"] + 5 * flood["stages"]["inference"]["min"]


def test_constant_stream_served_one_frame_at_a_time(art, tmp_path):
    """--serve frame: arrivals go through run_frame in turn; a frame that arrives while another runs waits for it
    (late, and its wait is in its latency), and the results equal run_frame's."""
    from mtl.bench import run_bench
    from mtl.bench_scenarios import constant_stream
    from mtl.errors import DataError
    from mtl.runtime import Pipeline, iter_frames

    frames = list(iter_frames(art["chunks"], None))
    with Pipeline.open(art["onnx"], "onnxruntime", threads=1) as pipe:
        pipe.run_frame(frames[0])
        slow = constant_stream(pipe, frames, 6, rate_hz=5.0, deadline_ms=10_000.0, serve="frame")
        flood = constant_stream(pipe, frames, 8, rate_hz=100_000.0, deadline_ms=1e-3, serve="frame")
    assert slow["serve"] == "frame" and slow["sessions"] == 1 and slow["latency"]["n"] == 6
    assert slow["over_deadline"]["count"] == 0 and slow["latency"]["min"] >= slow["stages"]["total"]["min"] - 1e-3
    # served strictly in turn: frame i starts after frame i-1 ended, so the waits add up to the frames before it
    assert flood["late_frames"]["count"] == 7 and flood["over_deadline"]["count"] == 8
    assert flood["latency"]["max"] >= 7 * flood["stages"]["total"]["min"]
    rep = run_bench(art["onnx"], art["chunks"], ("onnxruntime",), queries=3, warmup=1, threads=1, out_dir=None,
                    progress=False, scenario="constant-stream", rate_hz=50.0, serve="frame")
    assert rep["serve"] == "frame" and rep["rows"][0]["constant_stream"]["serve"] == "frame"
    assert "served by run_frame, one frame at a time" in rep["markdown"]
    assert "Pipeline.run_frame, one frame at a time" in rep["harness"]["latency"]
    with pytest.raises(DataError, match="--serve must be one of stream, frame"):
        run_bench(art["onnx"], art["chunks"], ("onnxruntime",), out_dir=None, scenario="constant-stream",
                  serve="frame", sessions=2)


def test_offline_compares_run_stream_with_back_to_back_frames(art):
    from mtl.bench_scenarios import offline
    from mtl.runtime import Pipeline, iter_frames

    frames = list(iter_frames(art["chunks"], None))
    with Pipeline.open(art["onnx"], "onnxruntime", threads=1) as pipe:
        r = offline(pipe, frames, 6, rounds=2, sessions=2)
    assert r["sessions"] == 2 and r["stream_fps"] > 0 and r["single_stream_fps"] > 0
    assert r["ratio"] == pytest.approx(r["stream_fps"] / r["single_stream_fps"], rel=1e-3)
    assert r["stream_latency"]["n"] == 6 and r["stages"]["inference"]["n"] == 6
    assert set(r["busy_cores"]) == {"stream", "single"} and all(v > 0 for v in r["busy_cores"].values())


@pytest.mark.parametrize("scenario", ["constant-stream", "offline"])
def test_bench_scenarios_end_to_end(art, tmp_path, scenario):
    from mtl.bench import run_bench

    rep = run_bench(art["onnx"], art["chunks"], ("onnxruntime", "torch"), checkpoint=art["ckpt"], queries=4,
                    warmup=1, threads=1, out_dir=tmp_path, progress=False, scenario=scenario, rate_hz=50.0,
                    find_rate=True, probe_queries=3, sessions=2)
    rows = {r["backend"]: r for r in rep["rows"]}
    assert rep["ran"] == ["onnxruntime", "torch"]
    if scenario == "offline":
        assert rows["onnxruntime"]["offline"]["sessions"] == 2 and rows["torch"]["offline"]["sessions"] == 1
        assert "1 session (torch" in rows["torch"]["sessions_note"]
        assert rows["onnxruntime"]["throughput_fps"] == rows["onnxruntime"]["offline"]["stream_fps"]
    else:
        cs = rows["onnxruntime"]["constant_stream"]
        assert cs["rate_hz"] == 50.0 and cs["queries"] == 4 and rows["onnxruntime"]["latency"]["n"] == 4
        probes = rows["onnxruntime"]["max_rate"]["probes"]
        assert probes and all(p["passed"] == (p["p99.9"] < 100.0) for p in probes)
    assert rows["onnxruntime"]["parity"]["boxes_identical"] == "3/3"
    for row in rows.values():                                   # the row's latencies, not inside the scenario block
        lat = row["latency"]
        assert len(row["latencies_ms"]) == lat["n"] == 4
        assert min(row["latencies_ms"]) == pytest.approx(lat["min"], abs=1e-3)
        assert "latencies_ms" not in row.get("constant_stream", row.get("offline"))
    (run,) = tmp_path.iterdir()
    assert run.name.endswith("_" + scenario) and (run / "bench_ort+torch.json").is_file()
    assert all(len(line) <= 120 for line in rep["summary"].splitlines())


def test_sensor_input_needs_raw_frames_and_runs_them(art, tmp_path):
    from test_convert import COMPLETE, write_raw_tree
    from test_runtime import export_tiny, runtime_cfg, save_tiny_checkpoint

    from mtl.bench import run_bench
    from mtl.data.a2d2 import read_camera_config

    r = CliRunner().invoke(main, ["bench", "--model", str(art["onnx"]), "--data", str(art["chunks"]), "--input",
                                  "sensor", "--compare", "onnxruntime", "--queries", "2", "--out", str(tmp_path / "o"),
                                  "--no-progress"])
    assert r.exit_code == 4 and r.output.count("\n") == 1
    assert r.output.startswith(f"error: {art['chunks']}: --input sensor needs raw A2D2 frames")
    raw = write_raw_tree(tmp_path / "raw", COMPLETE)
    base = runtime_cfg()
    cfg = replace(base, camera=read_camera_config(raw / "cams_lidars.json", base=base.camera))
    onnx_path = export_tiny(save_tiny_checkpoint(cfg, tmp_path / "ckpt.pt"), tmp_path / "model.onnx")
    rep = run_bench(onnx_path, raw, ("onnxruntime",), queries=3, warmup=1, threads=1, out_dir=None, progress=False,
                    input_kind="sensor")
    row = rep["rows"][0]
    assert rep["input"] == "sensor" and row["status"] == "ok"
    assert "remap_normalise" in row["stages"] and "decode_png" not in row["stages"]     # pixels, not PNGs
    assert rep["remap_table_build_ms"] > 0 and "fused remap table was built once" in rep["markdown"]


def test_run_folders_never_collide_and_name_the_backends_that_ran(tmp_path):
    from mtl.bench import new_run_dir, write_report

    a = new_run_dir(tmp_path / "bench", "offline", stamp="20260101-000000")
    b = new_run_dir(tmp_path / "bench", "offline", stamp="20260101-000000")
    c = new_run_dir(tmp_path / "bench", "single-stream", stamp="20260101-000000")
    assert [p.name for p in (a, b, c)] == ["20260101-000000_offline", "20260101-000000_offline_2",
                                           "20260101-000000_single-stream"]
    report = {"scenario": "offline", "markdown": "| t |\n", "system": {"cpu": "x"},
              "rows": [{"backend": "torch", "status": "ok"}, {"backend": "tensorrt", "status": "skipped: no engine"},
                       {"backend": "openvino", "status": "ok"}, {"backend": "onnxruntime", "status": "failed: x"}]}
    w1, w2 = write_report(report, tmp_path / "r"), write_report(report, tmp_path / "r")
    assert Path(w1["json"]).name == "bench_torch+ov.json" and w1["dir"] != w2["dir"]
    assert json.loads(Path(w1["system"]).read_text()) == {"cpu": "x"}
    assert "markdown" not in json.loads(Path(w1["json"]).read_text())


def test_system_description_has_the_keys_of_the_issue():
    from mtl.bench_system import summary_lines, system_description

    s = system_description(2)
    assert set(s) >= {"date", "cpu", "threads_used", "memory", "os", "python", "libraries", "gpu", "load_avg_before"}
    assert set(s["cpu"]) >= {"model", "logical_cores", "usable_cores", "governor", "scaling_driver", "cur_khz",
                             "max_khz", "virtualised", "features"}
    assert s["threads_used"] == 2 and s["cpu"]["logical_cores"] >= 1 and s["memory"]["total_mb"] > 0
    assert s["os"]["kernel"] and s["python"]["version"] and s["libraries"]["numpy"] == np.__version__
    s.update(load_avg_after=[0.1, 0.2, 0.3], models={"onnxruntime": {"precision": "fp32", "sha256": "ab" * 32}})
    lines = summary_lines(s)
    assert len(lines) == 2 and lines[0].startswith("system: ") and "[0.1, 0.2, 0.3] after" in lines[0]
    assert lines[1].startswith("software: ") and "onnxruntime fp32 sha256 abababababab" in lines[1]


# ------------------------------------------------------------------------------------------ peers


def test_openvino_column_runs_the_same_onnx_when_installed(art):
    """Skipped with the reason when openvino is absent (optional extra ``mtl[openvino]``)."""
    from mtl.bench import run_bench

    rep = run_bench(art["onnx"], art["chunks"], ("openvino", "openvino-auto"), checkpoint=art["ckpt"], queries=2,
                    warmup=1, threads=1, out_dir=None, progress=False)
    rows = {r["backend"]: r for r in rep["rows"]}
    try:
        import openvino  # noqa: F401
    except ImportError:
        assert rows["openvino"]["status"].startswith("skipped: openvino is not installed")
        assert "pip install 'mtl[openvino]'" in rows["openvino"]["status"]
        return
    ov = rows["openvino"]
    assert ov["status"] == "ok" and ov["precision"] == "fp32" and "OpenVINO" in ov["providers"][0]
    assert max(ov["parity"]["max_abs_diff"].values()) <= 1e-4 and ov["parity"]["boxes_identical"] == "3/3"
    assert ov["cold_start"]["compile_model"] > 0 and ov["cold_start"]["read_model"] > 0
    assert rows["openvino-auto"]["status"] == "ok" and rows["openvino-auto"]["precision"] in ("fp32", "bf16", "fp16")


def test_torch_compile_column_is_the_checkpoint_through_inductor(art):
    """The wiring only: compiling even the tiny model takes minutes on a loaded 2-core VM, so the first
    call (timed by the bench as ``compile_s``) is left to benchmarks/vehicle_bench.py."""
    from mtl.bench import open_bench_pipeline

    pipe = open_bench_pipeline("torch-compile", art["onnx"], art["ckpt"], 1)
    assert pipe.backend.name == "torch-compile" and "torch.compile (inductor)" in pipe.backend.providers[0]
    assert type(pipe.backend.model).__name__ == "OptimizedModule" and pipe._pool is None
    assert pipe.backend.open_ms["checkpoint_load"] > 0


def test_bench_modules_import_no_engine_until_a_column_asks_for_it():
    import subprocess
    import sys

    code = ("import json, sys\n"
            "import mtl.bench, mtl.bench_peers, mtl.bench_scenarios, mtl.bench_stats, mtl.bench_system\n"
            "import mtl.bench_report\n"
            "print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in "
            "('torch', 'openvino', 'onnxruntime', 'tensorrt', 'onnx'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
