"""INT8 that keeps its accuracy: calibration (frame sampling across scenes, minmax / percentile / entropy / mse
ranges, the cache), the two recipes' Q/DQ placement (TensorRT: fp16 model, Q/DQ on conv inputs and weights,
fp16 islands), per-unit sensitivity and the automatic mixed precision of ``mtl export`` (a failing gate made
to pass by keeping units in float; a variant with no passing mix rejected with its table)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from click.testing import CliRunner
from conftest import tiny_cfg, tiny_frame, write_tiny_chunks
from onnx import TensorProto, numpy_helper

from mtl.data.chunk import write_chunk
from mtl.export import calibration as cal
from mtl.export.quantize import build_int8, plan_int8, pre_process

# ------------------------------------------------------------------------------------ frame sampling


def test_calibration_frames_are_spread_across_scenes():
    """Hand-checked: 3 scenes of 6 / 3 / 1 frames (ids <scene>/<id>)."""
    ids = [f"a/{i}" for i in range(6)] + [f"b/{i}" for i in range(3)] + ["c/0"]
    # 3 frames: one per scene (the first frame of each, evenly spaced within a scene of one pick)
    assert cal.sample_across_scenes(ids, 3) == [0, 6, 9]
    # 5 frames: 1 each, then the remainder to the scenes with the most frames left (a: 2, b: 2, c: 1)
    assert cal.sample_across_scenes(ids, 5) == [0, 5, 6, 8, 9]
    # 8 frames: c has only one, its share goes to a and b (a: 4, b: 3, c: 1), evenly spaced within a scene
    assert cal.sample_across_scenes(ids, 8) == [0, 2, 3, 5, 6, 7, 8, 9]
    assert cal.sample_across_scenes(ids, 10) == list(range(10))
    assert cal.sample_across_scenes(ids, 99) == list(range(10))
    # the first N files would have taken scene a only
    assert {cal.scene_of(ids[i]) for i in cal.sample_across_scenes(ids, 3)} == {"a", "b", "c"}
    assert cal.scene_of("20180807_145028/000000091") == "20180807_145028" and cal.scene_of("x") == "x"


# ------------------------------------------------------------------------------------------ methods


def test_thresholds_hand_worked():
    """|x| histograms over [0, amax = 8] in 8 bins of width 1 (bin centres 0.5, 1.5, ..., 7.5)."""
    hist = np.array([50, 30, 15, 4, 0, 0, 0, 1])
    # percentile: cumulative 50, 80, 95, 99, 99, 99, 99, 100 -> 95% reached in bin 2 (upper edge 3)
    assert cal.percentile_threshold(hist, 8.0, 95.0) == 3.0
    assert cal.percentile_threshold(hist, 8.0, 99.0) == 4.0
    assert cal.percentile_threshold(hist, 8.0, 100.0) == 8.0
    # mse with 1 level (q in {0, t}): t = 8 costs 50*.25 + 30*2.25 + 15*6.25 + 4*12.25 + 1*.25 = 223 (every
    # centre below 4 rounds to 0); t = 2 costs 50*.25 + 30*.25 + 15*.25 + 4*2.25 + 1*30.25 = 63.0 (the outlier
    # clipped to 2), the minimum over t = 1..8 (t = 1 costs 121; all eight recomputed below)
    costs = {t: sum(h * (c - min(round(c / t), 1) * t) ** 2 for h, c in zip(hist, np.arange(8) + 0.5))
             for t in range(1, 9)}
    best = min(costs, key=costs.get)
    assert best == 2 and costs[2] == 63.0 and costs[8] == 223.0 and costs[1] == 121.0
    assert cal.mse_threshold(hist, 8.0, levels=1) == pytest.approx(2.0)
    # with many levels the rounding error vanishes and only clipping counts: keep everything
    assert cal.mse_threshold(hist, 8.0, levels=1000) == pytest.approx(8.0)
    # entropy: a lone far outlier is clipped (threshold below amax), a flat histogram is kept whole
    rng = np.random.default_rng(0)
    h = np.histogram(np.abs(rng.standard_normal(200_000)), bins=2048, range=(0, 40.0))[0]
    t = cal.entropy_threshold(h, 40.0, levels=127)
    assert 2.0 < t < 10.0
    assert cal.entropy_threshold(np.ones(2048, np.int64), 1.0, levels=127) == pytest.approx(1.0)
    # ranges: a non-negative tensor gets [0, hi], a signed one [-t, t] clipped to what was seen
    s = cal.TensorStats(min=-1.0, max=3.0, hist=np.array([10, 10, 10, 1]))
    r = cal.tensor_ranges({"x": s, "y": cal.TensorStats(min=0.5, max=2.0)}, "minmax")
    assert r["x"] == {"min": -1.0, "max": 3.0, "sym": 3.0, "lo": -1.0, "hi": 3.0}
    assert r["y"]["lo"] == 0.0 and r["y"]["hi"] == 2.0 and r["y"]["sym"] == 2.0
    rp = cal.tensor_ranges({"x": s}, "percentile", 90.0)["x"]
    assert rp["sym"] == 2.25 and rp["lo"] == -1.0 and rp["hi"] == 2.25


def test_mixed_precision_search_grows_bisects_and_prunes():
    """Hand-checked on a stand-in gate that passes iff units a and c are in float: grow 1 (a), 2 (a b),
    4 (a b c d: pass), bisect 3 (a b c: pass), prune c (a b: already known to fail, not re-run), b (a c: pass),
    a (c: fail) -> keep a, c after 6 evaluations."""
    from mtl.export.mixed import search

    calls = []

    def gate(keep):
        calls.append(keep)
        ok = {"a", "c"} <= set(keep)
        return {"passed": ok, "drop_miou": 0.0 if ok else 0.1, "drop_map": 0.0}

    full = gate(())
    calls.clear()
    res = search(list("abcde"), gate, full)
    assert res["passed"] and res["keep_float"] == ["a", "c"] and res["gate"]["passed"]
    assert calls == [("a",), ("a", "b"), ("a", "b", "c", "d"), ("a", "b", "c"), ("a", "c"), ("c",)]
    assert [(t["step"], t["kept_float"], t["unit"], t["passed"]) for t in res["trace"]] == [
        ("grow", 1, "a", False), ("grow", 2, "b", False), ("grow", 4, "d", True), ("bisect", 3, "c", True),
        ("prune", 2, "b", True), ("prune", 1, "a", False)]
    assert res["evaluations"] == 6
    # nothing passes: grow to every unit, then give up with the everything-float gate
    calls.clear()
    none = search(list("abcde"), lambda keep: calls.append(keep) or {"passed": False, "drop_miou": 1.0,
                                                                      "drop_map": 1.0}, full)
    assert not none["passed"] and none["keep_float"] is None and len(calls[-1]) == 5 and none["evaluations"] == 4
    # a full INT8 model that passes needs no search
    assert search(list("ab"), gate, {"passed": True, "drop_miou": 0, "drop_map": 0})["keep_float"] == []


# ------------------------------------------------------------------------------ a tiny fp32 model


@pytest.fixture(scope="module")
def tiny_fp32(tmp_path_factory):
    """An untrained tiny model exported to ONNX and pre-processed, its calibration frames (2 scenes) and feeds."""
    from mtl.export.onnx_export import export_onnx_proto
    from mtl.export.parity import FrameSource, batched
    from mtl.model import build_model

    root = tmp_path_factory.mktemp("int8_fp32")
    cfg = tiny_cfg()
    rng = np.random.default_rng(2)      # two drives: scene_a (4 frames, one chunk) and scene_b (2 frames)
    frames = [tiny_frame(cfg, rng, f"scene_{s}/{i:09d}") for s, n in (("a", 4), ("b", 2)) for i in range(n)]
    write_chunk(root / "calib" / "chunk_00000.npz", frames[:4], {"source": "test"})
    write_chunk(root / "calib" / "chunk_00001.npz", frames[4:], {"source": "test"})
    torch.manual_seed(0)
    proto, _ = export_onnx_proto(build_model(cfg).eval(), cfg)
    model, _ = pre_process(proto)
    frames = FrameSource(root / "calib", cfg, max_frames=4, select=cal.sample_across_scenes)
    return {"cfg": cfg, "model": model, "frames": frames, "feeds": [f for f, _ in batched(frames, 1)],
            "root": root}


def test_calibration_source_samples_scenes_of_real_chunks(tiny_fp32):
    frames = tiny_fp32["frames"]
    ids = frames.frame_ids()
    assert ids == [f"scene_a/{i:09d}" for i in range(4)] + [f"scene_b/{i:09d}" for i in range(2)]
    # 4 of 6: two per scene, evenly spaced within each (the first 4 files would all be scene_a)
    assert frames.indices == [0, 3, 4, 5] and frames.selected_ids == [ids[i] for i in (0, 3, 4, 5)]


@pytest.mark.parametrize("method", cal.CALIB_METHODS)
def test_calibration_methods_produce_valid_models(tiny_fp32, method):
    from mtl.export.onnx_io import ort_session
    from mtl.export.trt_check import check_model, has_errors

    c = cal.calibrate(tiny_fp32["model"], lambda: tiny_fp32["feeds"], ["s/0", "s/1", "t/0", "t/1"], "sha", method,
                      99.9, None, None)
    assert c.info["method"] == method and c.info["scenes"] == 2 and c.info["cache"] == "miss (no cache)"
    assert set(c.ranges) == set(cal.calibrated_tensors(tiny_fp32["model"])) and len(c.ranges) > 20
    for r in c.ranges.values():
        amax = max(abs(r["min"]), abs(r["max"]))
        assert 0 <= r["sym"] <= amax + 1e-6 and r["lo"] <= 0 <= r["hi"] and r["lo"] >= r["min"] - 1e-6
        if method == "minmax":
            assert r["sym"] == pytest.approx(amax) and (r["lo"], r["hi"]) == (min(r["min"], 0.0), max(r["max"], 0.0))
    if method != "minmax":      # a histogram method clips somewhere
        assert any(r["sym"] < max(abs(r["min"]), abs(r["max"])) * 0.999 for r in c.ranges.values())
    for target in ("tensorrt", "cpu"):
        proto, info = build_int8(plan_int8(c, target))
        onnx.checker.check_model(proto, full_check=True)
        outs = ort_session(proto).run(None, tiny_fp32["feeds"][0])
        assert all(np.isfinite(o).all() for o in outs)
        assert info["calibration"]["method"] == method and info["int8_nodes"] > 10
        assert has_errors(check_model(proto)) == (target == "cpu")      # UINT8 recipe is not for TensorRT


def test_calibration_cache_reuse_and_invalidation(tiny_fp32, tmp_path):
    model, feeds = tiny_fp32["model"], tiny_fp32["feeds"]
    ids = ["s/0", "s/1", "t/0", "t/1"]
    cache = tmp_path / cal.CACHE_FILE

    def no_frames():
        raise AssertionError("a cache hit must not load or run a frame")

    first = cal.calibrate(model, lambda: feeds, ids, "sha-1", "percentile", 99.9, cache, cache)
    assert first.info["cache"] == "miss (no cache)" and cache.is_file() and "collect_s" in first.info
    written = cache.read_bytes()
    again = cal.calibrate(model, no_frames, ids, "sha-1", "percentile", 99.9, cache, cache)
    assert again.info["cache"] == "hit" and again.ranges == first.ranges and cache.read_bytes() == written
    doc = json.loads(written)
    assert doc["key"]["frames"] == ids and doc["key"]["fp32_sha256"] == "sha-1" and doc["key"]["percentile"] == 99.9
    for change, why in (({"frame_ids": ids[:3] + ["t/2"]}, "frames changed"), ({"sha": "sha-2"}, "fp32 model changed"),
                        ({"method": "mse"}, "method changed"), ({"percentile": 99.0}, "percentile changed")):
        args = {"frame_ids": ids, "sha": "sha-1", "method": "percentile", "percentile": 99.9, **change}
        c = cal.calibrate(model, lambda: feeds, args["frame_ids"], args["sha"], args["method"], args["percentile"],
                          cache, tmp_path / "other.json")
        assert c.info["cache"] == f"miss ({why})", c.info["cache"]
    cache.write_text("{not json")
    c = cal.calibrate(model, lambda: feeds, ids, "sha-1", "percentile", 99.9, cache, cache)
    assert c.info["cache"] == "miss (unreadable cache, replaced)"
    assert json.loads(cache.read_text())["key"]["frames"] == ids


def test_trt_recipe_places_qdq_on_conv_inputs_only_and_keeps_fp16_islands(tiny_fp32):
    """TensorRT recipe: fp16 model (opset >= 19), INT8 pairs on conv inputs + weights, none on conv outputs
    (except an Add's residual input), dedicated per consumer, fp16 scales and zero points 0; a unit kept in
    float is a plain fp16 conv. The static TensorRT check passes."""
    from mtl.export.trt_check import check_model, has_errors

    c = cal.calibrate(tiny_fp32["model"], lambda: tiny_fp32["feeds"], ["a/0"], "sha", "minmax", 99.9, None, None)
    plan = plan_int8(c, "tensorrt")
    keep = [plan.units[0], plan.units[len(plan.units) // 2]]
    proto, info = build_int8(plan, keep)
    assert not has_errors(check_model(proto)), check_model(proto)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 19
    assert info["float_nodes"] == keep and info["int8_nodes"] == len(plan.units) - 2 and info["float_type"] == "fp16"
    assert 0 < info["int8_mac_share"] < build_int8(plan)[1]["int8_mac_share"]
    inits = {i.name: i for i in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in proto.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    for n in proto.graph.node:
        if n.op_type == "QuantizeLinear":
            assert inits[n.input[1]].data_type == TensorProto.FLOAT16            # scale of the fp16 tensor's type
            zp = inits[n.input[2]]
            assert zp.data_type == TensorProto.INT8 and not numpy_helper.to_array(zp).any()
            src = producer.get(n.input[0])
            assert src is None or src.op_type != "Conv", f"Q/DQ on the output of {src.name}"
            (dq,) = consumers[n.output[0]]
            assert dq.op_type == "DequantizeLinear" and len(consumers[dq.output[0]]) == 1   # dedicated pair
            assert consumers[dq.output[0]][0].op_type in ("Conv", "Add")
    convs = {n.name: n for n in proto.graph.node if n.op_type == "Conv"}
    for name in plan.units:
        conv = convs[name]
        if name in keep:      # fp16 island: fp16 weight initializer, float input
            assert inits[conv.input[1]].data_type == TensorProto.FLOAT16
            assert producer.get(conv.input[0]) is None or producer[conv.input[0]].op_type != "DequantizeLinear"
        else:
            wdq, xdq = producer[conv.input[1]], producer[conv.input[0]]
            assert wdq.op_type == xdq.op_type == "DequantizeLinear"
            assert inits[wdq.input[0]].data_type == TensorProto.INT8 and len(inits[wdq.input[1]].dims) == 1
    for name in plan.excluded:      # head convs: fp16, no Q/DQ
        assert inits[convs[name].input[1]].data_type == TensorProto.FLOAT16
    residual = [n for n in proto.graph.node if n.op_type == "Add" and any(
        producer.get(t) is not None and producer[t].op_type == "DequantizeLinear" for t in n.input)]
    n_q = sum(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    assert residual and n_q == info["int8_nodes"] + len(residual)


# ----------------------------------------------------------- mixed precision through `mtl export`


def _quick_train(cfg, data, steps: int = 60, seed: int = 0):
    """A few AdamW steps of the real model / losses on ``data`` (the tiny set is learnt enough to score)."""
    from mtl.dataset import ChunkDataset, collate
    from mtl.losses import compute_losses
    from mtl.model import build_model

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build_model(cfg).train()
        ds = ChunkDataset(data, cfg, augment=False)
        batches = [collate([ds[i] for i in range(j, j + 2)]) for j in range(0, len(ds), 2)]
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for step in range(steps):
            b = batches[step % len(batches)]
            terms = compute_losses(model(b["image"], b["bev"]), b, cfg.loss, ignore_index=cfg.classes.ignore_index)
            opt.zero_grad()
            sum(terms.values()).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def _give_one_channel_an_outlier_range(model, alpha: float = 1000.0) -> str:
    """Function-preserving rescale (ReLU is positively homogeneous): channel 0 after the first camera stage
    becomes ``alpha`` times larger and the next conv's weights for it ``alpha`` times smaller. The fp32
    outputs do not change; per-tensor INT8 of that activation (the next conv's input) crushes every other
    channel, so full INT8 fails and that conv is the unit to keep in float. Returns its weight's name."""
    with torch.no_grad():
        bn = model.cam_stages[0][0][1]
        conv = model.cam_stages[1][0][0]
        bn.weight[0] *= alpha
        bn.bias[0] *= alpha
        conv.weight[:, 0] /= alpha
    return "model.cam_stages.1.0.0.weight"


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    from mtl.cli import main

    root = tmp_path_factory.mktemp("int8_mixed")
    cfg = tiny_cfg(**{"train.augment": False})
    data = write_tiny_chunks(root / "data", cfg, n_frames=8, per_chunk=4, seed=3)
    model = _quick_train(cfg, data)
    weight = _give_one_channel_an_outlier_range(model)
    ckpt = root / "ckpt.pt"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "metrics": {}, "epoch": 0}, ckpt)
    out = root / "out"
    common = ["--calib-data", str(data), "--calib-frames", "4", "--val-data", str(data), "--parity-frames", "2"]
    res = CliRunner().invoke(main, ["export", str(ckpt), "--out", str(out), "--int8", "--int8-cpu", *common,
                                    "--sensitivity", "--sensitivity-top", "2", "--max-drop-miou", "0.02",
                                    "--max-drop-map", "0.02"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    fp32 = onnx.load(str(out / "model.onnx"))
    (consumer,) = [n.name for n in fp32.graph.node if n.op_type == "Conv" and n.input[1] == weight]
    return {"cfg": cfg, "data": data, "ckpt": ckpt, "out": out, "output": res.output, "common": common,
            "report": json.loads((out / "export_report.json").read_text()), "consumer": consumer, "root": root}


@pytest.mark.parametrize("name, fname", [("int8", "model_int8.onnx"), ("int8_cpu", "model_int8_cpu.onnx")])
def test_mixed_precision_makes_a_failing_gate_pass(mixed, name, fname):
    from mtl.contract import read_onnx_metadata
    from mtl.export.onnx_io import ort_session
    from mtl.export.parity import FrameSource, evaluate_sessions

    rep = mixed["report"]
    v = rep["variants"][name]
    mp = v["mixed_precision"]
    assert rep["passed"] and v["status"] == "ok" and (mixed["out"] / fname).is_file()
    assert not mp["full_int8_gate"]["passed"] and mp["full_int8_gate"]["drop_miou"] > 0.05   # the outlier bites
    assert mp["passed"] and v["gate"]["passed"] and v["gate"]["drop_miou"] <= 0.02 and v["gate"]["drop_map"] <= 0.02
    keep = mp["keep_float"]
    assert mixed["consumer"] in keep and 0 < len(keep) < v["sensitivity"]["units"]
    assert v["info"]["float_nodes"] == keep and v["info"]["int8_nodes"] == v["sensitivity"]["units"] - len(keep)
    assert 0 < mp["int8_mac_share"] < mp["int8_mac_share_full"] and mp["evaluations"] == len(mp["trace"]) >= 1
    assert mp["trace"][-1]["passed"] or any(t["passed"] and t["keep_float"] == keep for t in mp["trace"])
    meta = read_onnx_metadata(mixed["out"] / fname)
    assert meta["int8_float_nodes"] == keep and meta["int8_mac_share"] == mp["int8_mac_share"]
    assert meta["int8_calibration"] == "minmax" and meta["int8_target"] == ("tensorrt" if name == "int8" else "cpu")
    assert meta["opset"] == (19 if name == "int8" else 18)       # fp16 Q/DQ need opset 19
    # the file written is the one that was gated: scoring it again gives the recorded metrics
    frames = FrameSource(mixed["data"], mixed["cfg"], max_frames=128)
    m = evaluate_sessions({"f": ort_session(mixed["out"] / fname)}, frames, mixed["cfg"], 1)["f"]
    assert (m["miou"], m["map"]) == (v["metrics"]["miou"], v["metrics"]["map"])
    assert f"mixed precision {name}: {len(keep)} unit(s) kept in float" in mixed["output"]
    assert f"gate {name}: " in mixed["output"].split(f"mixed precision {name}:")[1]
    md = (mixed["out"] / "export_report.md").read_text()
    assert f"## Mixed precision ({name})" in md and "% of MACs still INT8" in md
    if name == "int8_cpu":      # measured latency of fp32, full INT8 and the mix, interleaved
        assert set(mp["latency"]) == {"fp32", "int8_full", "int8_mixed"}
        assert all(t["median_ms"] > 0 for t in mp["latency"].values())
    else:                       # fp16 islands in a TensorRT model that passes the static check
        assert v["info"]["float_type"] == "fp16" and not any(f["level"] == "error" for f in v["trt_check"])


@pytest.mark.parametrize("name", ["int8", "int8_cpu"])
def test_sensitivity_table_ranks_every_unit(mixed, name):
    s = mixed["report"]["variants"][name]["sensitivity"]
    rows = s["proxy"]["rows"]
    assert len(rows) == s["units"] and len({r["node"] for r in rows}) == s["units"]
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert rows[0]["node"] == mixed["consumer"]          # the outlier's consumer is the most sensitive unit
    assert rows[0]["sem_flip"] > 0.01 and rows[0]["score"] > 100 * rows[-1]["score"]
    assert s["proxy"]["all_int8"]["score"] > s["proxy"]["none_int8"]["score"] >= 0
    assert s["proxy"]["frames"] == 4 and s["proxy"]["seconds"] > 0
    top = s["keep_float"]["rows"]
    assert [r["node"] for r in top] == [r["node"] for r in rows[:2]] and s["keep_float"]["frames"] == 8
    assert all(set(r) >= {"drop_miou", "drop_map", "passes_gate"} for r in top)
    md = (mixed["out"] / "export_report.md").read_text()
    table = md.split(f"## INT8 sensitivity ({name})")[1].split("##")[0]
    assert f"| 1 | `{mixed['consumer']}` | Conv | model.cam_stages.1.0.0 |" in table
    assert table.count("\n| ") == s["units"] + 1 and rows[0]["layer"] == "model.cam_stages.1.0.0"


def test_no_passing_mix_rejects_the_variant_with_its_table_and_reuses_the_cache(mixed, tmp_path):
    """A gate nothing can pass (the mIoU must rise by 1.0): the search ends with every unit in float, the
    variant is renamed *.rejected (exit 8) and the report shows the table and the search. The export reuses
    the first export's calibration cache (same checkpoint, frames and method)."""
    from mtl.cli import main

    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(mixed["out"] / cal.CACHE_FILE, out / cal.CACHE_FILE)
    before = (out / cal.CACHE_FILE).read_bytes()
    res = CliRunner().invoke(main, ["export", str(mixed["ckpt"]), "--out", str(out), "--int8-cpu", *mixed["common"],
                                    "--max-drop-miou", "-1"])
    assert res.exit_code == 8, res.output
    assert "error:" in res.output and "int8_cpu gate: mIoU drop" in res.output
    assert (out / "model_int8_cpu.onnx.rejected").is_file() and not (out / "model_int8_cpu.onnx").exists()
    rep = json.loads((out / "export_report.json").read_text())
    assert rep["calibration"]["cache"] == "hit" and (out / cal.CACHE_FILE).read_bytes() == before
    v = rep["variants"]["int8_cpu"]
    mp = v["mixed_precision"]
    assert v["status"] == "rejected" and not mp["passed"] and mp["keep_float"] is None
    assert mp["trace"][-1]["kept_float"] == v["sensitivity"]["units"] and not mp["trace"][-1]["passed"]
    assert len(v["sensitivity"]["proxy"]["rows"]) == v["sensitivity"]["units"]
    md = (out / "export_report.md").read_text()
    assert "no mix passes" in md and "## INT8 sensitivity (int8_cpu)" in md
    assert "cache `calibration_cache.json`: hit" in md
    assert "mixed precision int8_cpu: no mix passes the gate" in res.output


def test_bench_reports_the_int8_columns_mixed_precision(mixed):
    from mtl.bench import run_bench

    rep = run_bench(mixed["out"] / "model.onnx", mixed["data"], ("onnxruntime", "onnxruntime-int8",
                                                                 "onnxruntime-int8-cpu"),
                    queries=2, warmup=1, threads=1, n_frames=2, out_dir=None, progress=False, rounds=1)
    rows = {r["backend"]: r for r in rep["rows"]}
    for col, name in (("onnxruntime-int8", "int8"), ("onnxruntime-int8-cpu", "int8_cpu")):
        mp = mixed["report"]["variants"][name]["mixed_precision"]
        q = rows[col]["int8"]
        assert q == {"calibration": "minmax", "mac_share": mp["int8_mac_share"], "float_nodes": mp["keep_float"]}
        assert (f"- {col}: calibration minmax, {100 * q['mac_share']:.1f}% of the MACs in INT8, "
                f"{len(q['float_nodes'])} unit(s) kept in float ({', '.join(q['float_nodes'])})") in rep["markdown"]
    assert "int8" not in rows["onnxruntime"]


def test_dynamic_batch_models_quantize_with_per_frame_macs(tiny_fp32):
    """A dynamic-batch export (``--dynamic-batch`` / ``--trt-profile``): its MACs per frame are the static
    model's, so the recipes and their MAC shares work the same."""
    from mtl.export.onnx_export import export_onnx_proto
    from mtl.export.onnx_io import conv_macs, ort_session
    from mtl.model import build_model

    cfg = tiny_fp32["cfg"]
    torch.manual_seed(0)
    proto, _ = export_onnx_proto(build_model(cfg).eval(), cfg, dynamic_batch=True)
    dyn, _ = pre_process(proto)
    assert conv_macs(dyn, dynamic_as=1)["total"] == conv_macs(tiny_fp32["model"])["total"] > 0
    feeds = [{k: np.concatenate([v, v]) for k, v in tiny_fp32["feeds"][0].items()}]      # batch 2
    c = cal.calibrate(dyn, lambda: feeds, ["a/0"], "sha", "minmax", 99.9, None, None)
    for target in ("tensorrt", "cpu"):
        static_share = build_int8(plan_int8(cal.calibrate(tiny_fp32["model"], lambda: tiny_fp32["feeds"], ["a/0"],
                                                          "sha", "minmax", 99.9, None, None), target))[1]
        proto8, info = build_int8(plan_int8(c, target))
        assert info["int8_mac_share"] == static_share["int8_mac_share"]
        assert ort_session(proto8).run(None, feeds[0])[0].shape[0] == 2
