"""mtl export: fp32 ONNX (names, metadata, checker, parity on real frames), in-graph decode vs numpy decode,
fp16 / int8 variants with metric gates, the static TensorRT check, the TensorRT error path and ParityError."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from click.testing import CliRunner
from conftest import tiny_cfg, write_tiny_chunks

from mtl.errors import BackendUnavailableError, ModelMismatchError


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny checkpoint, val + calib chunks and one full CLI export (fp32 + decode + fp16 + int8 + int8-cpu)."""
    from mtl.cli import main
    from mtl.model import build_model

    root = tmp_path_factory.mktemp("export")
    cfg = tiny_cfg()
    val = write_tiny_chunks(root / "val", cfg, n_frames=4, per_chunk=2, seed=1)
    calib = write_tiny_chunks(root / "calib", cfg, n_frames=4, per_chunk=2, seed=2)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    ckpt = root / "ckpt.pt"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "metrics": {}, "epoch": 0}, ckpt)
    out = root / "out"
    res = CliRunner().invoke(main, ["export", str(ckpt), "--out", str(out), "--decode", "--fp16", "--int8",
                                    "--int8-cpu", "--calib-data", str(calib), "--calib-frames", "4",
                                    "--val-data", str(val), "--parity-frames", "3", "--gate-frames", "4"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    report = json.loads((out / "export_report.json").read_text())
    return {"cfg": cfg, "model": model, "ckpt": ckpt, "val": val, "calib": calib, "out": out, "report": report,
            "output": res.output, "root": root}


def _frame_feeds(setup):
    from mtl.export.parity import FrameSource, batched

    frames = list(FrameSource(setup["val"], setup["cfg"], max_frames=2))
    return [f for f, _ in batched(frames, 1)]


def test_fp32_export_names_metadata_checker_parity(setup):
    from mtl.config import Config
    from mtl.contract import read_onnx_metadata

    path = setup["out"] / "model.onnx"
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    assert [i.name for i in m.graph.input] == ["image", "bev"]
    assert [o.name for o in m.graph.output] == ["bbox_heatmap", "bbox_reg", "sem_logits",
                                                "det_scores", "det_labels", "det_boxes"]
    assert not list(setup["out"].glob("*.data"))       # single file
    meta = read_onnx_metadata(path)
    assert Config.from_dict(meta["config"]) == setup["cfg"]
    assert meta["precision"] == "fp32" and meta["decode"] is True and meta["opset"] >= 18
    assert meta["heatmap_activation"] == "sigmoid" and meta["format"] == 1
    h, w = setup["cfg"].camera.image_hw
    assert meta["inputs"] == {"image": [1, 3, h, w], "bev": [1, setup["cfg"].grid.n_channels, 64, 64]}
    from mtl.config import sha256_file

    assert meta["source_checkpoint_sha256"] == sha256_file(setup["ckpt"])

    rep = setup["report"]
    assert rep["passed"] is True
    par = rep["variants"]["fp32"]["parity"]
    assert par["frames"] == 3 and par["passed"]
    for name in ("bbox_heatmap", "bbox_reg", "sem_logits"):
        assert par["outputs"][name]["max_abs"] <= 1e-4
        assert "max_rel" in par["outputs"][name]
    det = par["decoded"]
    assert det["n_ref"] == det["n_got"] == det["matched"] > 0 and det["unmatched"] == 0
    assert det["max_box_diff"] <= 1e-4
    assert par["semantic_argmax_agreement"] > 0.999
    assert (setup["out"] / "export_report.md").read_text().startswith("# mtl export report")
    assert "parity fp32 vs torch" in setup["output"]


def test_torch_and_ort_sigmoid_heatmap_match(setup):
    """The graph's bbox_heatmap is sigmoid(logits) of the torch model."""
    from mtl.export.onnx_io import ort_session

    sess = ort_session(setup["out"] / "model.onnx")
    feeds = _frame_feeds(setup)[0]
    heat = sess.run(["bbox_heatmap"], feeds)[0]
    with torch.no_grad():
        logits = setup["model"](torch.from_numpy(feeds["image"]), torch.from_numpy(feeds["bev"]))["bbox_heatmap"]
    np.testing.assert_allclose(heat, torch.sigmoid(logits).numpy(), atol=1e-5)


def test_in_graph_decode_equals_numpy_decode(setup):
    from mtl.export.onnx_io import ort_session
    from mtl.geometry import decode_detections

    cfg = setup["cfg"]
    sess = ort_session(setup["out"] / "model.onnx")
    names = [o.name for o in sess.get_outputs()]
    for feeds in _frame_feeds(setup):
        out = dict(zip(names, sess.run(names, feeds)))
        assert out["det_scores"].shape == (1, cfg.decode.max_detections)
        assert out["det_boxes"].shape == (1, cfg.decode.max_detections, 7)
        assert out["det_labels"].dtype == np.int64
        thr = float(np.median(out["det_scores"][0]))      # a threshold that keeps about half
        ref = decode_detections(out["bbox_heatmap"][0], out["bbox_reg"][0], cfg.grid, k=cfg.decode.max_detections,
                                score_threshold=thr, kernel=cfg.decode.nms_kernel)
        keep = out["det_scores"][0] > thr
        assert keep.sum() == len(ref["scores"]) > 0
        # same set of detections (ties in score may order differently)
        got = sorted(zip(out["det_labels"][0][keep].tolist(), np.round(out["det_boxes"][0][keep], 4).tolist()))
        exp = sorted(zip(ref["labels"].tolist(), np.round(ref["boxes"], 4).tolist()))
        assert [g[0] for g in got] == [e[0] for e in exp]
        np.testing.assert_allclose(np.array([g[1] for g in got]), np.array([e[1] for e in exp]), atol=2e-4)
        np.testing.assert_allclose(np.sort(out["det_scores"][0][keep]), np.sort(ref["scores"]), atol=1e-6)


def test_fp16_and_int8_variants_are_gated_and_recorded(setup):
    from onnx import numpy_helper

    from mtl.contract import read_onnx_metadata

    rep = setup["report"]
    for name, fname in (("fp16", "model_fp16.onnx"), ("int8", "model_int8.onnx")):
        v = rep["variants"][name]
        assert v["status"] == "ok" and v["path"] == fname and (setup["out"] / fname).is_file()
        assert read_onnx_metadata(setup["out"] / fname)["precision"] == name
        gate = v["gate"]
        assert gate["passed"] and gate["frames"] == 4
        for k in ("drop_miou", "drop_map", "max_drop_miou", "max_drop_map"):
            assert isinstance(gate[k], float)
        assert gate["fp32"]["miou"] == rep["variants"]["fp32"]["metrics"]["miou"]
        assert v["parity"]["gated"] is False and "bbox_heatmap" in v["parity"]["outputs"]
        assert v["trt_check"] and not any(f["level"] == "error" for f in v["trt_check"])
        onnx.checker.check_model(onnx.load(str(setup["out"] / fname)), full_check=True)
    # fp16 keeps float32 I/O and has fp16 weights; int8 is Q/DQ with zero points 0
    m16 = onnx.load(str(setup["out"] / "model_fp16.onnx"))
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in m16.graph.input)
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in m16.graph.initializer)
    m8 = onnx.load(str(setup["out"] / "model_int8.onnx"))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in m8.graph.node}
    assert rep["variants"]["int8"]["info"]["excluded_nodes"]          # final head convs stay float
    for n in m8.graph.node:                                           # TensorRT recipe: symmetric INT8
        if n.op_type == "QuantizeLinear":
            zp = next(i for i in m8.graph.initializer if i.name == n.input[2])
            assert zp.data_type == onnx.TensorProto.INT8 and not numpy_helper.to_array(zp).any()
    # the fp16 in-graph decode is computed in fp32: identical to the numpy decode of its own heatmap
    assert rep["variants"]["fp16"]["parity"]["in_graph_decode"]["passed"]


def test_int8_cpu_variant_is_uint8_gated_and_not_sent_to_tensorrt(setup):
    """``--int8-cpu``: UINT8 activations, int32 biases, adds/concats/resizes quantized, metric-gated like the
    other variants, flagged (by design) by the TensorRT check, and summarised in one line, not listed."""
    from mtl.contract import read_onnx_metadata

    rep, path = setup["report"], setup["out"] / "model_int8_cpu.onnx"
    v = rep["variants"]["int8_cpu"]
    assert v["status"] == "ok" and v["path"] == path.name and v["gate"]["passed"] and v["gate"]["frames"] == 4
    meta = read_onnx_metadata(path)
    assert meta["precision"] == "int8" and meta["int8_target"] == "cpu"
    assert read_onnx_metadata(setup["out"] / "model_int8.onnx")["int8_target"] == "tensorrt"
    info = v["info"]
    assert info["target"] == "cpu" and info["quantize_bias"] is True and "Add" in info["op_types"]
    m = onnx.load(str(path))
    inits = {i.name: i for i in m.graph.initializer}
    q_types = {inits[n.input[2]].data_type for n in m.graph.node if n.op_type == "QuantizeLinear"}
    assert q_types == {onnx.TensorProto.UINT8}
    dq_inputs = {n.input[0] for n in m.graph.node if n.op_type == "DequantizeLinear"}
    assert any(inits[t].data_type == onnx.TensorProto.INT32 for t in dq_inputs if t in inits)   # int32 biases
    producers = {o: n.op_type for n in m.graph.node for o in n.output}
    int8_adds = [n for n in m.graph.node if n.op_type == "Add"
                 and all(producers.get(i) == "DequantizeLinear" for i in n.input)]
    assert len(int8_adds) >= 2                                        # the FPN skip-adds run between Q/DQ
    assert info["decode_tail_nodes_float"] > 0                       # ... but the in-graph decode stays float
    assert v["parity"]["in_graph_decode"]["passed"]
    assert any(f["level"] == "error" for f in v["trt_check"])        # UINT8: not a TensorRT model
    assert "TensorRT compatibility (int8_cpu): not a TensorRT model by design" in setup["output"]
    onnx.checker.check_model(m, full_check=True)
    # it runs in the torch-free runtime like any other variant
    from mtl.runtime import Pipeline, iter_frames

    with Pipeline.open(path, "onnxruntime", threads=1) as pipe:
        frame = next(iter(iter_frames(setup["val"], pipe.cfg)))
        r = pipe.run_frame(frame)
        assert pipe.spec.precision == "int8" and r.semantic.shape == tuple(setup["cfg"].camera.image_hw)


def _graph(nodes, inputs, outputs, inits=(), opset=18):
    from onnx import helper

    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_trt_check_flags_unsupported_ops_and_passes_the_export(setup):
    from onnx import TensorProto, helper, numpy_helper

    from mtl.export.trt_check import check_model, format_findings, has_errors

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    v = helper.make_tensor_value_info("v", TensorProto.FLOAT, None)
    i = helper.make_tensor_value_info("i", TensorProto.INT64, None)
    k = numpy_helper.from_array(np.array([5000], np.int64), "k")
    nodes = [helper.make_node("Det", ["x"], ["y"]),                      # not in TensorRT's list
             helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1)]    # K >= 3840
    f = check_model(_graph(nodes, [x], [y, v, i], [k]))
    codes = {(d["code"], d["level"]) for d in f}
    assert ("unsupported-op", "error") in codes
    assert any("Det" in d["message"] for d in f if d["code"] == "unsupported-op")
    assert any("3840" in d["message"] for d in f)
    assert ("dynamic-dim", "error") in codes
    assert has_errors(f) and "FAIL" in format_findings(f)

    # an opset outside TensorRT's range, a non-zero Q/DQ zero point and a contrib-domain op
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 4])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4])
    zp = numpy_helper.from_array(np.array(3, np.int8), "zp")
    sc = numpy_helper.from_array(np.array(0.1, np.float32), "sc")
    m = _graph([helper.make_node("QuantizeLinear", ["a", "sc", "zp"], ["q"]),
                helper.make_node("DequantizeLinear", ["q", "sc", "zp"], ["d"]),
                helper.make_node("Gelu", ["d"], ["b"], domain="com.microsoft")], [a], [b], [zp, sc], opset=8)
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    f = check_model(m)
    msgs = " | ".join(d["message"] for d in f)
    assert "opset 8" in msgs and "zero point must be 0" in msgs and "com.microsoft::Gelu" in msgs

    # the exported models pass; the report printed it
    for fname in ("model.onnx", "model_fp16.onnx", "model_int8.onnx"):
        assert not has_errors(check_model(setup["out"] / fname))
    assert "TensorRT compatibility (fp32): OK" in setup["output"]


def test_trt_check_dynamic_batch_needs_a_profile(setup):
    from mtl.export.onnx_export import export_onnx_proto
    from mtl.export.trt_check import check_model, has_errors

    proto, info = export_onnx_proto(setup["model"], setup["cfg"], dynamic_batch=True)
    assert info["batch"] == "batch"
    assert [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim][:1] == ["batch"]
    assert has_errors(check_model(proto))
    assert not has_errors(check_model(proto, profile=(1, 2, 4)))


def _finding_rows(findings) -> list[tuple]:
    return [(f["level"], f["code"], f["message"], f.get("node")) for f in findings]


def _graph_level_model():
    """Opset 22, dynamic dims, a DOUBLE output, DOUBLE / UINT16 initializers, int64 constants beyond int32
    (one a Slice bound), an If whose branch holds an unsupported op, and a model-local function."""
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    vi = helper.make_tensor_value_info
    inits = [numpy_helper.from_array(np.array([1.5], np.float64), "dbl"),
             numpy_helper.from_array(np.array([7], np.uint16), "u16"),
             numpy_helper.from_array(np.array([2**40], np.int64), "huge"),
             numpy_helper.from_array(np.array([0], np.int64), "st"),
             numpy_helper.from_array(np.array([2**62], np.int64), "en")]       # "to the end": not flagged
    then_g = helper.make_graph([helper.make_node("Unique", ["x"], ["t0"]),
                                helper.make_node("Cast", ["x"], ["t1"], to=T.DOUBLE)], "then", [],
                               [vi("t1", T.DOUBLE, None)])
    else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["e1"])], "else", [], [vi("e1", T.FLOAT, None)])
    k = numpy_helper.from_array(np.array([-2**40], np.int64))
    nodes = [helper.make_node("Cast", ["x"], ["y"], to=T.DOUBLE),
             helper.make_node("Slice", ["x", "st", "en"], ["s"]),
             helper.make_node("If", ["c"], ["o"], then_branch=then_g, else_branch=else_g, name="branch"),
             helper.make_node("Twice", ["x"], ["f"], domain="local.fn"),
             helper.make_node("Constant", [], ["k"], value=k),
             helper.make_node("ReduceSum", ["x", "k"], ["r"])]
    fn = helper.make_function("local.fn", "Twice", ["a"], ["b2"], [helper.make_node("Add", ["a", "a"], ["b2"])],
                              [helper.make_opsetid("", 22)])
    g = helper.make_graph(nodes, "g", [vi("x", T.FLOAT, ["b", "h"]), vi("c", T.BOOL, [])],
                          [vi("y", T.DOUBLE, None), vi("s", T.FLOAT, None), vi("o", T.FLOAT, None),
                           vi("f", T.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 22), helper.make_opsetid("local.fn", 1)],
                             functions=[fn])


def test_trt_check_graph_level_findings():
    from onnx import TensorProto as T
    from onnx import helper

    from mtl.export.trt_check import check_model

    common_tail = [
        ("error", "io-dtype", "output 'y' has dtype DOUBLE, not a TensorRT I/O type", None),
        ("warning", "initializer-dtype", "initializer 'dbl' is DOUBLE: TensorRT casts it down to FLOAT", None),
        ("error", "initializer-dtype", "initializer 'u16' has dtype UINT16, unsupported", None),
        ("warning", "op-restriction", "Cast: cast to DOUBLE: TensorRT computes it in FLOAT", "Cast@main"),
        ("warning", "op-restriction", "Cast: cast to DOUBLE: TensorRT computes it in FLOAT", "Cast@branch/then_branch"),
        ("error", "unsupported-op", "Unique (1 node) is not supported by TensorRT's ONNX parser", None),
        ("warning", "int64-range",
         "2 int64 constant(s) outside the int32 range (e.g. 'huge'); older parsers clamp them", None),
    ]
    opset_info = ("info", "opset", "opset 22 needs a recent TensorRT 10 (10.0 parses up to 20)", None)
    assert _finding_rows(check_model(_graph_level_model())) == [
        opset_info,
        ("error", "dynamic-dim", ("input 'x' dim 0 ('b') is dynamic but no optimisation profile is given "
                                  "(--trt-profile min:opt:max)"), None),
        ("error", "dynamic-dim", ("input 'x' dim 1 ('h') is dynamic but no optimisation profile is given "
                                  "(--trt-profile min:opt:max)"), None),
        *common_tail]
    assert _finding_rows(check_model(_graph_level_model(), profile=(1, 2, 4))) == [
        opset_info,
        ("error", "dynamic-dim", "input 'x' dim 1 ('h') is dynamic; the profile only covers the batch dim", None),
        *common_tail]

    relu = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                             [helper.make_tensor_value_info("x", T.FLOAT, [1, 4])],
                             [helper.make_tensor_value_info("y", T.FLOAT, [1, 4])])
    plain = helper.make_model(relu, opset_imports=[helper.make_opsetid("", 18)])
    assert _finding_rows(check_model(plain)) == [
        ("info", "ok", "all 1 nodes / 1 op types are in TensorRT 10.15's ONNX operator list", None)]
    contrib_only = helper.make_model(relu, opset_imports=[helper.make_opsetid("com.microsoft", 1)])
    assert _finding_rows(check_model(contrib_only)) == [("error", "opset", "model imports no default ONNX opset", None)]


def test_trt_check_per_op_restrictions():
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    from mtl.export.trt_check import check_model

    vi, n = helper.make_tensor_value_info, helper.make_node
    ins = [vi("v5", T.FLOAT, [1, 2, 3, 4, 5]), vi("g", T.FLOAT, [1, 3, 4, 2]), vi("x", T.FLOAT, [1, 2, 8, 8]),
           vi("zp_in", T.INT8, []), vi("kk", T.INT64, [1]), vi("ax", T.INT64, [1])]
    outs = [vi(o, T.FLOAT, None) for o in ("gs", "r1", "r2", "mp", "ap", "sn", "dq", "cs", "tv", "rm")]
    inits = [numpy_helper.from_array(np.array(0.5, np.float32), "sc"),
             numpy_helper.from_array(np.array(0, np.uint8), "zpu8"),
             numpy_helper.from_array(np.zeros((1, 1), np.int64), "idx")]
    nodes = [n("GridSample", ["v5", "g"], ["gs"], mode="area", padding_mode="wrap", name="gs"),
             n("Resize", ["x", "", "", "sz"], ["r1"], mode="cubic", coordinate_transformation_mode="tf_crop_and_resize",
               antialias=1, keep_aspect_ratio_policy="not_larger", name="r1"),
             n("Resize", ["x", "", "", "sz"], ["r2"], mode="nearest", nearest_mode="banker", name="r2"),
             n("MaxPool", ["x"], ["mp", "mpi"], kernel_shape=[3], dilations=[2], name="mp"),
             n("AveragePool", ["x"], ["ap"], kernel_shape=[2, 2], name="ap"),
             n("ScatterND", ["x", "idx", "x"], ["sn"], reduction="add", name="sn"),
             n("QuantizeLinear", ["x", "sc", "zp_in"], ["q"], name="q"),
             n("DequantizeLinear", ["q", "sc", "zpu8"], ["dq"], name="dq"),
             n("Cast", ["x"], ["cs"], to=T.STRING, name="cs"),
             n("TopK", ["x", "kk"], ["tv", "ti"], sorted=0, name="tk"),
             n("ReduceMean", ["x", "ax"], ["rm"], name="rm")]
    m = helper.make_model(helper.make_graph(nodes, "g", ins, outs, inits), opset_imports=[helper.make_opsetid("", 18)])
    e = "op-restriction"
    assert _finding_rows(check_model(m)) == [
        ("error", e, "GridSample: input must be 4-D (got rank 5)", "gs"),
        ("error", e, "GridSample: mode 'area' unsupported", "gs"),
        ("error", e, "GridSample: padding_mode 'wrap' unsupported", "gs"),
        ("error", e, "Resize: mode 'cubic' unsupported (nearest / linear only)", "r1"),
        ("error", e, "Resize: coordinate_transformation_mode 'tf_crop_and_resize' unsupported", "r1"),
        ("error", e, "Resize: antialiasing is not supported", "r1"),
        ("error", e, "Resize: keep_aspect_ratio_policy must be 'stretch'", "r1"),
        ("error", e, "Resize: nearest_mode 'banker' unsupported", "r2"),
        ("error", e, "MaxPool: only 2-D or 3-D pooling (kernel_shape [3])", "mp"),
        ("error", e, "MaxPool: dilations must be all ones", "mp"),
        ("error", e, "MaxPool: the `Indices` output is unsupported", "mp"),
        ("error", e, "ScatterND: reduction 'add' unsupported (none only)", "sn"),
        ("warning", e, "QuantizeLinear: zero point is not a constant; TensorRT needs it to be 0", "q"),
        ("error", e, "DequantizeLinear: UINT8 quantization is unsupported (UINT8 is only a network I/O type); use INT8",
         "dq"),
        ("error", e, "Cast: cast to STRING unsupported", "cs"),
        ("error", e, "TopK: `sorted` must be 1", "tk"),
        ("error", e, "TopK: `K` must be a build-time constant (initializer / Constant)", "tk"),
        ("error", e, "ReduceMean: input 1 (axes) must be a build-time constant", "rm"),
    ]


def test_metadata_errors_and_sidecar_roundtrip(setup, tmp_path):
    import mtl.contract as md

    bare = onnx.load(str(setup["out"] / "model.onnx"))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(ModelMismatchError, match="no 'mtl' entry"):
        md.read_onnx_metadata(tmp_path / "bare.onnx")
    bare.metadata_props.add(key="mtl", value="{not json")
    onnx.save(bare, str(tmp_path / "bad.onnx"))
    with pytest.raises(ModelMismatchError, match="not valid JSON"):
        md.read_onnx_metadata(tmp_path / "bad.onnx")

    meta = md.read_onnx_metadata(setup["out"] / "model.onnx")
    engine = tmp_path / "model.engine"
    assert md.sidecar_path(engine) == tmp_path / "model.engine.json"
    with pytest.raises(ModelMismatchError, match="lacks keys"):
        md.write_sidecar(engine, meta)
    side = dict(meta, tensorrt_version="10.9.0", gpu_name="X", compute_capability="9.0",
                precision_recipe="strongly typed", onnx_sha256="0" * 64, onnx_path="model.onnx",
                engine_sha256="1" * 64, profiles=[])
    md.write_sidecar(engine, side)
    assert md.read_sidecar(engine) == side
    with pytest.raises(ModelMismatchError, match="not found"):
        md.read_sidecar(tmp_path / "other.engine")


def test_export_trt_without_tensorrt_exits_with_clear_message(setup, tmp_path):
    from mtl.cli import main
    from mtl.export.tensorrt_build import check_available

    try:
        check_available()
    except BackendUnavailableError as e:
        expected = str(e)
    else:
        pytest.skip("TensorRT and a CUDA device are available: the error path cannot be exercised here")

    res = CliRunner().invoke(main, ["export", str(setup["ckpt"]), "--out", str(tmp_path / "o"), "--trt",
                                    "--val-data", str(setup["val"])])
    assert res.exit_code == BackendUnavailableError.exit_code != 0
    msg = res.output.strip().splitlines()
    assert msg == [f"error: {expected}"]
    assert "TensorRT is not available" in expected or "CUDA" in expected
    assert not (tmp_path / "o").exists()     # failed before doing any work


@pytest.mark.gpu
@pytest.mark.trt
def test_tensorrt_engine_build(setup, tmp_path):
    from conftest import tensorrt_or_skip

    from mtl.contract import read_sidecar
    from mtl.export.tensorrt_build import build_engine

    tensorrt_or_skip()
    side = build_engine(setup["out"] / "model.onnx", tmp_path / "model.engine", timing_cache=tmp_path / "t.cache")
    assert (tmp_path / "model.engine").stat().st_size > 0 and (tmp_path / "t.cache").is_file()
    assert read_sidecar(tmp_path / "model.engine")["onnx_sha256"] == side["onnx_sha256"]


def test_gate_failure_exits_nonzero_keeps_fp32_and_report(setup, tmp_path):
    from mtl.cli import main

    out = tmp_path / "o"
    res = CliRunner().invoke(main, ["export", str(setup["ckpt"]), "--out", str(out), "--fp16", "--no-slim",
                                    "--val-data", str(setup["val"]), "--parity-frames", "1", "--gate-frames", "2",
                                    "--max-drop-miou", "-1"])
    assert res.exit_code == 8, res.output
    assert "error:" in res.output and "fp16 gate: mIoU drop" in res.output
    rep = json.loads((out / "export_report.json").read_text())
    assert rep["passed"] is False and rep["variants"]["fp16"]["status"] == "rejected"
    assert rep["variants"]["fp16"]["gate"]["passed"] is False
    assert (out / "model.onnx").is_file() and (out / "model_fp16.onnx.rejected").is_file()
    assert not (out / "model_fp16.onnx").exists()
    assert "FAIL" in (out / "export_report.md").read_text()


def test_tampered_graph_fails_parity(setup):
    from onnx import numpy_helper

    from mtl.export.onnx_io import ort_session
    from mtl.export.parity import FrameSource, parity_report

    m = onnx.load(str(setup["out"] / "model.onnx"))
    bias = next(i for i in m.graph.initializer if i.name.endswith("sem_classifier.bias"))
    arr = numpy_helper.to_array(bias) + 1e-2
    bias.CopyFrom(numpy_helper.from_array(arr.astype(np.float32), bias.name))
    frames = list(FrameSource(setup["val"], setup["cfg"], max_frames=1))
    rep = parity_report(setup["model"], setup["cfg"], ort_session(m), frames, decode=True, batch=1, atol=1e-4)
    assert not rep["passed"] and any("sem_logits" in f for f in rep["failures"])
    assert rep["outputs"]["sem_logits"]["max_abs"] == pytest.approx(1e-2, rel=1e-2)


def test_parity_needs_data(setup, tmp_path):
    from mtl.cli import main

    res = CliRunner().invoke(main, ["export", str(setup["ckpt"]), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--val-data" in res.output and "--no-parity" in res.output


def test_decoded_box_comparison_tolerates_tied_peaks_only():
    from mtl.config import GridConfig
    from mtl.export.parity import compare_detections
    from mtl.geometry import decode_detections

    grid = GridConfig(x_max=3.2, y_min=-1.6, y_max=1.6)             # 16x16 raster, 8x8 head map
    reg = np.zeros((8, 8, 8), np.float32)
    reg[3:6] = 0.5
    reg[7] = 1.0
    ref = np.full((1, 8, 8), 0.05, np.float32)
    ref[0, :5] = 0.3                                                # a plateau: each of its 40 cells is a peak
    ref[0, 7, 7] = 0.15                                             # one ordinary peak, the lowest score kept
    got = ref.copy()
    got[0, 2, 2] += 1e-7                                            # one cell tips: its 8 neighbours stop being peaks
    dec = [decode_detections(h, reg, grid, k=100, score_threshold=0.1) for h in (ref, got)]
    assert len(dec[0]["boxes"]) == 41 and len(dec[1]["boxes"]) == 33
    strict = compare_detections(dec[0], dec[1], 1e-4, 0.1)
    assert not strict["passed"] and strict["unmatched"] == 8
    tied = compare_detections(dec[0], dec[1], 1e-4, 0.1, ref_heat=ref, got_heat=got)
    assert tied["passed"] and tied["unmatched"] == 0 and tied["unmatched_borderline"] == 8

    real = ref.copy()
    real[0, 2, 2] = 0.9                                             # a genuine extra peak, far above its neighbours
    dec_real = decode_detections(real, reg, grid, k=100, score_threshold=0.1)
    c = compare_detections(dec[0], dec_real, 1e-4, 0.1, ref_heat=ref, got_heat=real)
    assert not c["passed"] and c["unmatched"] > 0


def test_every_table_row_is_written_checked_and_reported_as_its_row_says(setup):
    """The exporter reads ``VARIANTS``: file, metadata, parity (gated or not), metric gate, build timing and
    TensorRT-check line of every row follow from the row."""
    from mtl.contract import read_onnx_metadata
    from mtl.export.variants import VARIANTS

    rep = setup["report"]
    assert list(rep["variants"]) == [v.name for v in VARIANTS]
    for v in VARIANTS:
        entry = rep["variants"][v.name]
        assert entry["path"] == v.file and entry["status"] == "ok", v.name
        meta = read_onnx_metadata(setup["out"] / v.file)
        assert meta["precision"] == v.precision and all(meta[k] == x for k, x in v.extra_metadata)
        assert entry["parity"]["gated"] is (v.check == "parity")
        assert ("gate" in entry and entry["gate"]["passed"]) is (v.check == "metrics")
        assert (v.timing_key in rep["timings_s"]) is (v.build is not None)
        check = "not a TensorRT model by design" if v.target == "cpu" else "OK ("
        assert f"TensorRT compatibility ({v.name}): {check}" in setup["output"]


def test_an_error_mid_export_keeps_the_report_and_exits_with_its_own_code(setup, tmp_path):
    """Not a parity failure: the report is still written (with the error), the files made so far stay, and
    the original error reaches the CLI (its exit code, its one line)."""
    from mtl.cli import main
    from mtl.errors import ChunkError

    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "o"
    res = CliRunner().invoke(main, ["export", str(setup["ckpt"]), "--out", str(out), "--int8", "--no-slim",
                                    "--calib-data", str(empty), "--val-data", str(setup["val"]),
                                    "--parity-frames", "1"])
    assert res.exit_code == ChunkError.exit_code, res.output
    assert res.output.strip().splitlines()[-1].startswith(f"error: {empty}: no *.npz chunks found")
    rep = json.loads((out / "export_report.json").read_text())
    assert rep["passed"] is False and rep["error"].startswith("ChunkError: ") and list(rep["variants"]) == ["fp32"]
    assert rep["variants"]["fp32"]["parity"]["passed"] and "total" in rep["timings_s"]
    assert (out / "model.onnx").is_file() and not list(out.glob("model_int8*"))
    assert "**error:** ChunkError" in (out / "export_report.md").read_text()
