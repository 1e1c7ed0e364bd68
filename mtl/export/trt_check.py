"""Static TensorRT-compatibility check of an ONNX model: runs WITHOUT TensorRT (only ``onnx``).

The operator table below is data transcribed from onnx-tensorrt ``docs/operators.md`` for TensorRT 10.15
("supports operators in the inclusive range of opset 9 to opset 24"); TensorRT 11 parses the same set.
Per-op restrictions that are checked (others are listed in ``RESTRICTIONS`` for the message only):

- ``TopK``: ``K`` must be a build-time constant and < 3840, ``sorted`` must be 1.
- ``GridSample``: 4-D input only; modes linear/bilinear/nearest/cubic/bicubic, padding zeros/border/reflection.
- ``Resize``: modes nearest/linear; coordinate modes half_pixel, pytorch_half_pixel, tf_half_pixel_for_nn,
  asymmetric, align_corners; no antialias; aspect-ratio policy stretch.
- ``MaxPool`` / ``AveragePool`` / ``LpPool``: 2-D or 3-D, dilations all ones, no ``Indices`` output.
- ``ScatterND``: reduction ``none`` only.
- ``QuantizeLinear`` / ``DequantizeLinear``: zero point must be 0 (symmetric INT8), quantized type INT8/FP8/INT4
  (UINT8 is only allowed as a network I/O type).
- ``Reduce*`` / ``Slice`` / ``Squeeze`` / ``Unsqueeze`` / ``CumSum``: axes must be build-time constants.
- ``Cast``: DOUBLE is cast down to FLOAT by TensorRT (warning); string types are unsupported.
- int64: supported natively by TensorRT 10 (INT64 tensors); int64 constants outside the int32 range are
  reported as a warning (older parsers clamp them) unless they are Slice bounds (INT64_MAX "to the end").
- Graph: opset in [9, 24]; non-ONNX domains (e.g. ``com.microsoft`` contrib ops) are unsupported; dynamic
  input dims need an optimisation profile (only the batch dim is covered by ``mtl export --trt-profile``);
  initializer and I/O dtypes must be TensorRT types.

``check_model(model_or_path, profile=None) -> list[Finding dicts]`` with ``level`` in error/warning/info.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRT_TABLE_VERSION = "10.15"
OPSET_MIN, OPSET_MAX = 9, 24
TOPK_MAX_K = 3840          # "K input must be less than 3840"

# op -> supported types (from operators.md; "Y" rows)
SUPPORTED_OPS: dict[str, str] = {
    "Abs": "FP32 FP16 BF16 INT32 INT64", "Acos": "FP32 FP16 BF16", "Acosh": "FP32 FP16 BF16",
    "Add": "FP32 FP16 BF16 INT32 INT64", "And": "BOOL", "ArgMax": "FP32 FP16 BF16 INT32 INT64",
    "ArgMin": "FP32 FP16 BF16 INT32 INT64", "Asin": "FP32 FP16 BF16", "Asinh": "FP32 FP16 BF16",
    "Atan": "FP32 FP16 BF16", "Atanh": "FP32 FP16 BF16", "Attention": "FP32 FP16 BF16 INT8 FP8",
    "AveragePool": "FP32 FP16 BF16", "BatchNormalization": "FP32 FP16 BF16", "BlackmanWindow": "FP32 FP16",
    "Cast": "FP32 FP16 BF16 INT32 INT64 UINT8 BOOL", "CastLike": "FP32 FP16 BF16 INT32 INT64 UINT8 BOOL",
    "Ceil": "FP32 FP16 BF16", "Celu": "FP32 FP16 BF16", "Clip": "FP32 FP16 BF16",
    "Concat": "FP32 FP16 BF16 INT32 INT64 BOOL", "Constant": "FP32 FP16 BF16 FP8 FP4 INT4 INT32 INT64 BOOL",
    "ConstantOfShape": "FP32 FP16 BF16 FP8 FP4 INT4 INT32 INT64 BOOL", "Conv": "FP32 FP16 BF16",
    "ConvTranspose": "FP32 FP16 BF16", "Cos": "FP32 FP16 BF16", "Cosh": "FP32 FP16 BF16",
    "CumSum": "FP32 FP16 BF16", "DeformConv": "FP32 FP16", "DepthToSpace": "FP32 FP16 BF16 INT32 INT64",
    "DequantizeLinear": "INT8 FP8 FP4 INT4", "Div": "FP32 FP16 BF16 INT32 INT64", "Dropout": "FP32 FP16 BF16",
    "Einsum": "FP32 FP16 BF16", "Elu": "FP32 FP16 BF16", "Equal": "FP32 FP16 BF16 INT32 INT64",
    "Erf": "FP32 FP16 BF16", "Exp": "FP32 FP16 BF16", "Expand": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "EyeLike": "FP32 FP16 BF16 INT32 INT64 BOOL", "Flatten": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Floor": "FP32 FP16 BF16", "Gather": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "GatherElements": "FP32 FP16 BF16 INT32 INT64 BOOL", "GatherND": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Gelu": "FP32 FP16 BF16 INT8 INT32 INT64", "Gemm": "FP32 FP16 BF16", "GlobalAveragePool": "FP32 FP16 BF16",
    "GlobalLpPool": "FP32 FP16 BF16", "GlobalMaxPool": "FP32 FP16 BF16", "Greater": "FP32 FP16 BF16 INT32 INT64",
    "GreaterOrEqual": "FP32 FP16 BF16 INT32 INT64", "GridSample": "FP32 FP16", "GroupNormalization": "FP32 FP16 BF16",
    "GRU": "FP32 FP16 BF16", "HammingWindow": "FP32 FP16", "HannWindow": "FP32 FP16",
    "HardSigmoid": "FP32 FP16 BF16", "HardSwish": "FP32 FP16 BF16", "Hardmax": "FP32 FP16 BF16",
    "Identity": "FP32 FP16 BF16 INT32 INT64 BOOL", "If": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "ImageScaler": "FP32 FP16 BF16", "InstanceNormalization": "FP32 FP16 BF16", "IsInf": "FP32 FP16 BF16",
    "IsNaN": "FP32 FP16 BF16 INT32 INT64", "LayerNormalization": "FP32 FP16 BF16", "LeakyRelu": "FP32 FP16 BF16",
    "Less": "FP32 FP16 BF16 INT32 INT64", "LessOrEqual": "FP32 FP16 BF16 INT32 INT64", "Log": "FP32 FP16 BF16",
    "LogSoftmax": "FP32 FP16 BF16", "Loop": "FP32 FP16 BF16 INT32 INT64 BOOL", "LRN": "FP32 FP16 BF16",
    "LSTM": "FP32 FP16 BF16", "LpNormalization": "FP32 FP16 BF16", "LpPool": "FP32 FP16 BF16",
    "MatMul": "FP32 FP16 BF16", "Max": "FP32 FP16 BF16 INT32 INT64", "MaxPool": "FP32 FP16 BF16",
    "Mean": "FP32 FP16 BF16 FP8 INT32 INT64", "MeanVarianceNormalization": "FP32 FP16 BF16",
    "Min": "FP32 FP16 BF16 INT32 INT64", "Mish": "FP32 FP16", "Mod": "FP32 FP16 BF16 INT32 INT64",
    "Mul": "FP32 FP16 BF16 INT32 INT64", "Neg": "FP32 FP16 BF16 INT32 INT64", "NonMaxSuppression": "FP32 FP16",
    "NonZero": "FP32 FP16", "Not": "BOOL", "OneHot": "FP32 FP16 BF16 INT32 INT64 BOOL", "Or": "BOOL",
    "Pad": "FP32 FP16 BF16 INT32 INT64", "ParametricSoftplus": "FP32 FP16 BF16", "Pow": "FP32 FP16 BF16 INT32 INT64",
    "PRelu": "FP32 FP16 BF16", "QuantizeLinear": "FP32 FP16 BF16", "RandomNormal": "FP32 FP16 BF16",
    "RandomNormalLike": "FP32 FP16 BF16", "RandomUniform": "FP32 FP16 BF16", "RandomUniformLike": "FP32 FP16 BF16",
    "Range": "FP32 FP16 BF16 INT32 INT64", "Reciprocal": "FP32 FP16 BF16",
    "ReduceL1": "FP32 FP16 BF16 INT32 INT64", "ReduceL2": "FP32 FP16 BF16 INT32 INT64",
    "ReduceLogSum": "FP32 FP16 BF16 INT32 INT64", "ReduceLogSumExp": "FP32 FP16 BF16 INT32 INT64",
    "ReduceMax": "FP32 FP16 BF16 INT32 INT64", "ReduceMean": "FP32 FP16 BF16 INT32 INT64",
    "ReduceMin": "FP32 FP16 BF16 INT32 INT64", "ReduceProd": "FP32 FP16 BF16 INT32 INT64",
    "ReduceSum": "FP32 FP16 BF16 INT32 INT64", "ReduceSumSquare": "FP32 FP16 BF16 INT32 INT64",
    "Relu": "FP32 FP16 BF16 INT32 INT64", "Reshape": "FP32 FP16 BF16 INT32 INT64 BOOL", "Resize": "FP32 FP16 BF16",
    "ReverseSequence": "FP32 FP16 BF16 INT32 INT64 BOOL", "RMSNormalization": "FP32 FP16 BF16",
    "RNN": "FP32 FP16 BF16", "RoiAlign": "FP32 FP16", "RotaryEmbedding": "FP32 FP16 BF16",
    "Round": "FP32 FP16 BF16", "STFT": "FP32", "ScaledTanh": "FP32 FP16 BF16", "Scan": "FP32 FP16 BF16",
    "Scatter": "FP32 FP16 BF16 INT32 INT64", "ScatterElements": "FP32 FP16 BF16 INT32 INT64",
    "ScatterND": "FP32 FP16 BF16 INT32 INT64", "Selu": "FP32 FP16 BF16", "Shape": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Shrink": "FP32 FP16 BF16 INT32 INT64", "Sigmoid": "FP32 FP16 BF16", "Sign": "FP32 FP16 BF16 INT32 INT64",
    "Sin": "FP32 FP16 BF16", "Sinh": "FP32 FP16 BF16", "Size": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Slice": "FP32 FP16 BF16 INT32 INT64 BOOL", "Softmax": "FP32 FP16 BF16", "Softplus": "FP32 FP16 BF16",
    "Softsign": "FP32 FP16 BF16", "SpaceToDepth": "FP32 FP16 BF16 INT32 INT64",
    "Split": "FP32 FP16 BF16 INT32 INT64 BOOL", "Sqrt": "FP32 FP16 BF16", "Squeeze": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Sub": "FP32 FP16 BF16 INT32 INT64", "Sum": "FP32 FP16 BF16 INT32 INT64", "Tan": "FP32 FP16 BF16",
    "Tanh": "FP32 FP16 BF16", "TensorScatter": "FP32 FP16 BF16 INT32", "ThresholdedRelu": "FP32 FP16 BF16",
    "Tile": "FP32 FP16 BF16 INT32 INT64 BOOL", "TopK": "FP32 FP16 BF16 INT32 INT64",
    "Transpose": "FP32 FP16 BF16 INT32 INT64 BOOL", "Trilu": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Unsqueeze": "FP32 FP16 BF16 INT32 INT64 BOOL", "Upsample": "FP32 FP16 BF16",
    "Where": "FP32 FP16 BF16 INT32 INT64 BOOL", "Xor": "BOOL",
}
# "N" rows of operators.md (explicitly unsupported)
UNSUPPORTED_OPS = frozenset({
    "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "Col2Im",
    "CenterCropPad", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det", "DynamicQuantizeLinear",
    "ImageDecoder", "MatMulInteger", "MaxRoiPool", "MaxUnpool", "MelWeightMatrix", "Multinomial",
    "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement", "OptionalHasElement", "QLinearConv",
    "QLinearMatMul", "RegexFullMatch", "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase",
    "SequenceInsert", "SequenceLength", "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence",
    "StringConcat", "StringNormalizer", "StringSplit", "TfIdfVectorizer", "Unique",
})
RESTRICTIONS: dict[str, str] = {
    "TopK": "`sorted` must be 1; `K` must be a build-time constant less than 3840",
    "GridSample": "input must be 4-D",
    "Resize": "modes nearest/linear; coordinate modes half_pixel, pytorch_half_pixel, tf_half_pixel_for_nn, "
              "asymmetric, align_corners; aspect-ratio policy stretch; no antialiasing",
    "MaxPool": "2-D or 3-D only; `Indices` output unsupported; dilations all ones",
    "AveragePool": "2-D or 3-D only; dilations all ones",
    "ScatterND": "`reduction` other than `none` is not supported",
    "QuantizeLinear": "`y_zero_point` must be 0", "DequantizeLinear": "`x_zero_point` must be 0",
    "CumSum": "`axis` must be a build-time constant",
    "Dropout": "`is_training` must be an initializer and evaluate to False",
    "LayerNormalization": "only the first output `Y` is supported",
    "Loop": "scan output length cannot be dynamic",
    "If": "branch outputs must have the same rank and different names",
}

_RESIZE_COORD = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
_AXES_INPUT = {  # op -> index of the `axes` input that must be constant (opset >= 13/18 forms)
    "ReduceL1": 1, "ReduceL2": 1, "ReduceLogSum": 1, "ReduceLogSumExp": 1, "ReduceMax": 1, "ReduceMean": 1,
    "ReduceMin": 1, "ReduceProd": 1, "ReduceSum": 1, "ReduceSumSquare": 1, "Squeeze": 1, "Unsqueeze": 1,
    "Slice": 3, "CumSum": 1,
}


def _finding(level: str, code: str, message: str, node: str | None = None) -> dict[str, Any]:
    f = {"level": level, "code": code, "message": message}
    if node:
        f["node"] = node
    return f


def _dtype_names():
    from onnx import TensorProto as T

    ok = {T.FLOAT: "FLOAT", T.FLOAT16: "FLOAT16", T.BFLOAT16: "BFLOAT16", T.INT32: "INT32", T.INT64: "INT64",
          T.INT8: "INT8", T.UINT8: "UINT8", T.BOOL: "BOOL"}
    for name in ("FLOAT8E4M3FN", "INT4", "FLOAT4E2M1"):
        if hasattr(T, name):
            ok[getattr(T, name)] = name
    return ok, {T.DOUBLE: "DOUBLE"}


def check_model(model: Any, profile: tuple[int, int, int] | None = None) -> list[dict[str, Any]]:
    """Findings for an ONNX model (path or ModelProto). ``profile`` = (min, opt, max) batch: allows a dynamic
    batch dim. Never raises on an unsupported model; raises only if the file cannot be read.

    Order of the findings: opset, dynamic input dims, I/O dtypes, initializers, per-node restrictions (graph
    order, subgraphs depth first), unsupported ops, int64 range; ``ok`` (info) when nothing else was found."""
    import onnx

    if isinstance(model, (str, Path)):
        model = onnx.load(str(model))
    tname = {v: k for k, v in onnx.TensorProto.DataType.items()}
    findings = _opset_findings(model) + _dynamic_dim_findings(model, profile) + _io_dtype_findings(model, tname)
    init_findings, constants = _initializer_findings(model, tname)
    walk = _Walk(constants=constants, ranks=_tensor_ranks(model), tname=tname,
                 local_funcs={(f.domain, f.name) for f in model.functions}, findings=findings + init_findings)
    _visit(model.graph, "main", walk)
    findings = walk.findings
    for op, n in sorted(walk.unsupported.items()):
        findings.append(_finding("error", "unsupported-op",
                                 f"{op} ({n} node{'s' if n > 1 else ''}) is not supported by TensorRT's ONNX parser"))
    findings += _int64_range_findings(walk.constants, walk.slice_bounds)
    if not any(f["level"] in ("error", "warning") for f in findings):
        findings.append(_finding("info", "ok", f"all {sum(1 for _ in model.graph.node)} nodes / "
                                               f"{len({n.op_type for n in model.graph.node})} op types are in "
                                               f"TensorRT {TRT_TABLE_VERSION}'s ONNX operator list"))
    return findings


# ------------------------------------------------------------------------------------ graph level


def _opset_findings(model) -> list[dict[str, Any]]:
    opset = None
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            opset = int(imp.version)
    if opset is None:
        return [_finding("error", "opset", "model imports no default ONNX opset")]
    if not OPSET_MIN <= opset <= OPSET_MAX:
        return [_finding("error", "opset", f"opset {opset} outside TensorRT's supported range "
                                           f"[{OPSET_MIN}, {OPSET_MAX}] (onnx-tensorrt {TRT_TABLE_VERSION})")]
    if opset > 20:
        return [_finding("info", "opset", f"opset {opset} needs a recent TensorRT 10 (10.0 parses up to 20)")]
    return []


def _graph_inputs(model) -> list:
    """The graph's real inputs (older exporters also list initializers as inputs)."""
    inits = {i.name for i in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def _dynamic_dim_findings(model, profile: tuple[int, int, int] | None) -> list[dict[str, Any]]:
    out = []
    for vi in _graph_inputs(model):
        for d_i, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                continue
            label = d.dim_param or "?"
            if profile is None:
                out.append(_finding("error", "dynamic-dim",
                                    f"input {vi.name!r} dim {d_i} ({label!r}) is dynamic but no optimisation "
                                    "profile is given (--trt-profile min:opt:max)"))
            elif d_i != 0:
                out.append(_finding("error", "dynamic-dim",
                                    f"input {vi.name!r} dim {d_i} ({label!r}) is dynamic; the profile only "
                                    "covers the batch dim"))
    return out


def _io_dtype_findings(model, tname: dict[int, str]) -> list[dict[str, Any]]:
    ok_types, down_types = _dtype_names()
    out = []
    for kind, vis in (("input", _graph_inputs(model)), ("output", model.graph.output)):
        for vi in vis:
            et = vi.type.tensor_type.elem_type
            if et in down_types or et not in ok_types:
                out.append(_finding("error", "io-dtype", f"{kind} {vi.name!r} has dtype "
                                                         f"{tname.get(et, et)}, not a TensorRT I/O type"))
    return out


def _initializer_findings(model, tname: dict[int, str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Dtype findings for the initializers, and the small integer ones as numpy constants (TopK K, axes,
    zero points, Slice bounds, int64 range)."""
    import numpy as np
    from onnx import TensorProto as T
    from onnx import numpy_helper

    ok_types, down_types = _dtype_names()
    out, constants = [], {}
    for init in model.graph.initializer:
        et = init.data_type
        if et in down_types:
            out.append(_finding("warning", "initializer-dtype",
                                f"initializer {init.name!r} is DOUBLE: TensorRT casts it down to FLOAT"))
        elif et not in ok_types:
            out.append(_finding("error", "initializer-dtype",
                                f"initializer {init.name!r} has dtype {tname.get(et, et)}, unsupported"))
        size = np.prod(init.dims, dtype=np.int64)
        if (et in (T.INT64, T.INT32) and size <= 4096) or (et in (T.INT8, T.UINT8, T.FLOAT8E4M3FN) and size <= 1 << 20):
            constants[init.name] = numpy_helper.to_array(init)
    return out, constants


def _tensor_ranks(model) -> dict[str, int]:
    from onnx import shape_inference

    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shape inference is best effort (ranks for GridSample only)
        inferred = model
    ranks: dict[str, int] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if vi.type.tensor_type.HasField("shape"):
            ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
    return ranks


def _int64_range_findings(constants: dict[str, Any], slice_bounds: set[str]) -> list[dict[str, Any]]:
    import numpy as np

    big = [k for k, v in constants.items() if v.dtype == np.int64 and v.size and k not in slice_bounds
           and (v.max() > np.iinfo(np.int32).max or v.min() < np.iinfo(np.int32).min)]
    if not big:
        return []
    return [_finding("warning", "int64-range", f"{len(big)} int64 constant(s) outside the int32 range "
                                               f"(e.g. {big[0]!r}); older parsers clamp them")]


# ------------------------------------------------------------------------------------ node level


@dataclass
class _Walk:
    """What one pass over the graph and its subgraphs reads and collects."""

    constants: dict[str, Any]                 # small integer initializers / Constant outputs (numpy)
    ranks: dict[str, int]                     # tensor name -> rank (shape inference, best effort)
    tname: dict[int, str]                     # ONNX elem type -> name
    local_funcs: set[tuple[str, str]]         # (domain, name) of model-local functions
    findings: list[dict[str, Any]] = field(default_factory=list)
    unsupported: dict[str, int] = field(default_factory=dict)    # op -> node count
    slice_bounds: set[str] = field(default_factory=set)          # Slice starts/ends (INT64_MAX is legal there)


def _visit(graph, where: str, walk: _Walk) -> None:
    import onnx
    from onnx import TensorProto as T
    from onnx import numpy_helper

    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type in (T.INT64, T.INT32, T.INT8, T.UINT8):
                    walk.constants[node.output[0]] = numpy_helper.to_array(a.t)
    for node in graph.node:
        name = node.name or f"{node.op_type}@{where}"
        if node.domain not in ("", "ai.onnx"):
            if (node.domain, node.op_type) not in walk.local_funcs:   # model-local functions are inlined
                op = f"{node.domain}::{node.op_type}"
                walk.unsupported[op] = walk.unsupported.get(op, 0) + 1
            continue
        if node.op_type in UNSUPPORTED_OPS or node.op_type not in SUPPORTED_OPS:
            walk.unsupported[node.op_type] = walk.unsupported.get(node.op_type, 0) + 1
            continue
        _check_node(node, name, walk)
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                _visit(a.g, f"{name}/{a.name}", walk)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    _visit(g, f"{name}/{a.name}", walk)


def _attr(node, name: str, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            v = onnx.helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def _check_node(node, name: str, walk: _Walk) -> None:
    """Per-op restrictions of one supported node -> ``op-restriction`` findings ("<op>: <what>")."""
    op = node.op_type
    issues = _op_issues(node, walk)
    if op in _AXES_INPUT:
        i = _AXES_INPUT[op]
        if len(node.input) > i and node.input[i] and node.input[i] not in walk.constants:
            issues.append(("error", f"input {i} (axes) must be a build-time constant"))
    for level, msg in issues:
        walk.findings.append(_finding(level, "op-restriction", f"{op}: {msg}", name))
    if op == "Slice":
        walk.slice_bounds.update(n for n in node.input[1:3] if n)


def _op_issues(node, walk: _Walk) -> list[tuple[str, str]]:
    """(level, message) for the ops whose attributes / constant inputs TensorRT restricts."""
    op = node.op_type
    if op == "TopK":
        return _topk_issues(node, walk.constants)
    if op == "GridSample":
        return _grid_sample_issues(node, walk.ranks)
    if op == "Resize":
        return _resize_issues(node)
    if op in ("MaxPool", "AveragePool", "LpPool"):
        return _pool_issues(node)
    if op == "ScatterND" and _attr(node, "reduction", "none") != "none":
        return [("error", f"reduction {_attr(node, 'reduction')!r} unsupported (none only)")]
    if op in ("QuantizeLinear", "DequantizeLinear"):
        return _qdq_issues(node, walk.constants)
    if op == "Cast":
        tn = walk.tname.get(_attr(node, "to"), str(_attr(node, "to")))
        if tn == "DOUBLE":
            return [("warning", "cast to DOUBLE: TensorRT computes it in FLOAT")]
        if tn in ("STRING", "COMPLEX64", "COMPLEX128", "UINT16", "UINT32", "UINT64", "INT16"):
            return [("error", f"cast to {tn} unsupported")]
    return []


def _topk_issues(node, constants: dict[str, Any]) -> list[tuple[str, str]]:
    import numpy as np

    out = []
    if _attr(node, "sorted", 1) != 1:
        out.append(("error", "`sorted` must be 1"))
    k = constants.get(node.input[1]) if len(node.input) > 1 else None
    if k is None:
        out.append(("error", "`K` must be a build-time constant (initializer / Constant)"))
    elif int(np.asarray(k).reshape(-1)[0]) >= TOPK_MAX_K:
        out.append(("error", f"K = {int(np.asarray(k).reshape(-1)[0])} must be less than {TOPK_MAX_K}"))
    return out


def _grid_sample_issues(node, ranks: dict[str, int]) -> list[tuple[str, str]]:
    out = []
    r = ranks.get(node.input[0])
    if r is not None and r != 4:
        out.append(("error", f"input must be 4-D (got rank {r})"))
    mode = _attr(node, "mode", "bilinear")
    if mode not in ("bilinear", "linear", "nearest", "bicubic", "cubic"):
        out.append(("error", f"mode {mode!r} unsupported"))
    pad = _attr(node, "padding_mode", "zeros")
    if pad not in ("zeros", "border", "reflection"):
        out.append(("error", f"padding_mode {pad!r} unsupported"))
    return out


def _resize_issues(node) -> list[tuple[str, str]]:
    out = []
    mode = _attr(node, "mode", "nearest")
    if mode not in ("nearest", "linear"):
        out.append(("error", f"mode {mode!r} unsupported (nearest / linear only)"))
    ctm = _attr(node, "coordinate_transformation_mode", "half_pixel")
    if ctm not in _RESIZE_COORD:
        out.append(("error", f"coordinate_transformation_mode {ctm!r} unsupported"))
    if mode == "nearest" and _attr(node, "nearest_mode", "round_prefer_floor") not in _RESIZE_NEAREST:
        out.append(("error", f"nearest_mode {_attr(node, 'nearest_mode')!r} unsupported"))
    if _attr(node, "antialias", 0):
        out.append(("error", "antialiasing is not supported"))
    if _attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
        out.append(("error", "keep_aspect_ratio_policy must be 'stretch'"))
    return out


def _pool_issues(node) -> list[tuple[str, str]]:
    out = []
    ks = _attr(node, "kernel_shape", [])
    if len(ks) not in (2, 3):
        out.append(("error", f"only 2-D or 3-D pooling (kernel_shape {list(ks)})"))
    dil = _attr(node, "dilations", None)
    if dil and any(int(d) != 1 for d in dil):
        out.append(("error", "dilations must be all ones"))
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
        out.append(("error", "the `Indices` output is unsupported"))
    return out


def _qdq_issues(node, constants: dict[str, Any]) -> list[tuple[str, str]]:
    import numpy as np

    zp_name = node.input[2] if len(node.input) > 2 else ""
    if not zp_name:
        return []
    zp = constants.get(zp_name)
    if zp is None:
        return [("warning", "zero point is not a constant; TensorRT needs it to be 0")]
    out = []
    if np.any(np.asarray(zp).astype(np.float64) != 0):
        out.append(("error", "zero point must be 0 (symmetric quantization)"))
    if np.asarray(zp).dtype == np.uint8:
        out.append(("error", "UINT8 quantization is unsupported (UINT8 is only a network I/O type); use INT8"))
    return out


def has_errors(findings: list[dict]) -> bool:
    return any(f["level"] == "error" for f in findings)


def format_findings(findings: list[dict], title: str = "TensorRT compatibility") -> str:
    n_err = sum(f["level"] == "error" for f in findings)
    n_warn = sum(f["level"] == "warning" for f in findings)
    head = f"{title}: {'FAIL' if n_err else 'OK'} ({n_err} error(s), {n_warn} warning(s))"
    lines = [head]
    for f in findings:
        where = f" [{f['node']}]" if f.get("node") else ""
        lines.append(f"  {f['level']:<7} {f['code']}: {f['message']}{where}")
    return "\n".join(lines)


__all__ = [
    "OPSET_MAX",
    "OPSET_MIN",
    "RESTRICTIONS",
    "SUPPORTED_OPS",
    "TOPK_MAX_K",
    "TRT_TABLE_VERSION",
    "UNSUPPORTED_OPS",
    "check_model",
    "format_findings",
    "has_errors",
]
