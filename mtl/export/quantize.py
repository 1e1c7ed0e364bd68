"""Reduced-precision ONNX variants of the fp32 export.

FP16 (``convert_fp16``): ``onnxruntime.transformers.float16.convert_float_to_float16`` with
``keep_io_types=True`` (inputs / outputs stay float32, so the runtime feeds the same arrays). Kept in fp32:
- ORT's ``DEFAULT_OP_BLOCK_LIST`` (includes TopK, Range, CumSum, Min/Max, ...);
- ``Sigmoid`` and every node downstream of it: the heatmap probabilities and the whole in-graph decode
  (max-pool peak test, TopK, index arithmetic, gather, exp / atan2 box decode). Peak equality tests and
  score ranking near the threshold are where fp16 rounding would change detections; they are cheap.
The backbone, necks, GridSample fusion, heads and the semantic upsampling run in fp16.

INT8: ``plan_int8(calibration, target)`` prepares a recipe once, ``build_int8(plan, keep_float)`` writes the
variant with any set of quantizable nodes ("units") kept in float (``mtl.export.sensitivity`` and the mixed
precision search build many). Ranges come from ``mtl.export.calibration`` (minmax / percentile / entropy /
mse, cached); weights are INT8 symmetric per output channel; ``quant_pre_process`` (shape inference + basic
graph optimisation) runs first when it succeeds. Both recipes keep the in-graph decode (everything after the
heatmap Sigmoid) in float and, by default, the final head convs (the last conv before each output: heatmap
logits, box regression, semantic logits), whose wide-range outputs int8 would turn directly into score / box /
class errors.

- ``target="tensorrt"`` (``--int8`` -> ``model_int8.onnx``): explicit quantization for a strongly typed
  TensorRT 10 / 11 build. The model is the fp16 model of ``convert_fp16`` (opset raised to 19 for fp16 Q/DQ)
  with symmetric INT8 Q/DQ pairs (zero point 0, scales of the tensor's own type) inserted on the INPUTS and
  WEIGHTS of the INT8 convs only, never on their outputs: TensorRT fuses a conv's output with the next
  consumer's input Q (conv -> ReLU -> Q becomes one INT8-in / INT8-out kernel), while an output Q/DQ would
  force a float round trip where a consumer needs high precision. The exception is a residual / FPN ``Add`` fed
  by an INT8 conv: its other input gets a Q/DQ pair so TensorRT can fuse the add into the conv. Biases stay
  float (TensorRT's DequantizeLinear has no INT32 input); each consumer gets its own pair (TensorRT does not
  share one between nodes). Units kept in float and everything the pairs leave alone run in fp16 (a strongly
  typed build takes the precision from the ONNX types: an fp32 remainder would run in fp32, slower than the
  fp16 model).
- ``target="cpu"`` (``--int8-cpu`` -> ``model_int8_cpu.onnx``): the recipe onnxruntime's x86 kernels are fast
  with - UINT8 asymmetric activations, INT8 symmetric per-channel weights (u8s8, VNNI), int32 biases - and
  ``Add`` / ``Concat`` / ``Resize`` quantized as well as the convolutions, so the graph stays in int8 between
  convolutions instead of dequantising around every skip-add and upsample (onnxruntime's ``QDQQuantizer``
  fed the calibration ranges). Units kept in float stay fp32. Not for TensorRT (UINT8, non-zero zero points).
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FP16_EXTRA_BLOCK_OPS = ("Sigmoid",)
INT8_OP_TYPES = ("Conv", "ConvTranspose", "MatMul", "Gemm")
INT8_TRT_OP_TYPES = ("Conv", "ConvTranspose")      # what the TensorRT recipe's Q/DQ inserter quantizes
INT8_CPU_OP_TYPES = INT8_OP_TYPES + ("Add", "Concat", "Resize")
INT8_TARGETS = ("tensorrt", "cpu")
TRT_QDQ_OPSET = 19         # QuantizeLinear / DequantizeLinear on fp16 tensors (scale of the input's type)


def downstream_nodes(model, start_op: str = "Sigmoid") -> list[str]:
    """Names of all nodes reachable from the outputs of nodes of type ``start_op`` (including them)."""
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    seen: dict[str, object] = {}
    stack = [n for n in model.graph.node if n.op_type == start_op]
    while stack:
        n = stack.pop()
        if n.name in seen:
            continue
        seen[n.name] = n
        for o in n.output:
            stack.extend(consumers.get(o, []))
    return list(seen)


def final_convs(model) -> list[str]:
    """Names of the last Conv on every path to a graph output (walking back through non-Conv nodes)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    found: dict[str, None] = {}
    seen: set[str] = set()
    stack = [o.name for o in model.graph.output]
    while stack:
        t = stack.pop()
        if t in seen or t in inits or t not in producer:
            continue
        seen.add(t)
        n = producer[t]
        if n.op_type in ("Conv", "ConvTranspose"):
            found[n.name] = None
            continue
        stack.extend(n.input)
    return list(found)


def remove_cast_round_trips(model) -> int:
    """Undo the converter's fp32 -> fp16 -> fp32 Cast pairs between two fp32 (blocked) nodes: they would
    round the decode's intermediate values to fp16. ``Cast(to=FLOAT)(Cast(to=FLOAT16)(x))`` becomes
    ``Identity(x)`` (same output name, so graph outputs keep their names); dead Casts are dropped."""
    import onnx

    F32, F16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16

    def cast_to(n):
        return next((a.i for a in n.attribute if a.name == "to"), None) if n.op_type == "Cast" else None

    producer = {o: n for n in model.graph.node for o in n.output}
    f32 = {i.name for i in model.graph.input if i.type.tensor_type.elem_type == F32}
    f32 |= {v.name for v in model.graph.value_info if v.type.tensor_type.elem_type == F32}
    f32 |= {o for n in model.graph.node if cast_to(n) == F32 for o in n.output}
    changed = 0
    for n in model.graph.node:
        if cast_to(n) != F32:
            continue
        p = producer.get(n.input[0])
        if p is None or cast_to(p) != F16 or p.input[0] not in f32:
            continue
        n.op_type = "Identity"
        del n.attribute[:]
        n.input[0] = p.input[0]
        changed += 1
    # drop Casts nobody consumes any more
    while True:
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        dead = [n for n in model.graph.node if n.op_type == "Cast" and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    names = {o for n in model.graph.node for o in n.output}
    keep = [v for v in model.graph.value_info if v.name in names]
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
    return changed


def topological_sort(model) -> None:
    """Reorder ``model.graph.node`` in place so every node comes after the producers of its inputs."""
    nodes = list(model.graph.node)
    available = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    producers = {o for n in nodes for o in n.output}
    order, pending = [], nodes
    while pending:
        rest = []
        for n in pending:
            # names produced by no node are outer-scope / graph values (or errors the checker reports)
            if all(i in available or i not in producers for i in n.input):
                order.append(n)
                available.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ValueError(f"graph has a cycle around {rest[0].name or rest[0].op_type}")
        pending = rest
    del model.graph.node[:]
    model.graph.node.extend(order)


def _ensure_node_names(model) -> None:
    used = {n.name for n in model.graph.node if n.name}
    for i, n in enumerate(model.graph.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in used:
                name += "_"
            n.name = name
            used.add(name)


def convert_fp16(model):
    """fp32 ModelProto -> fp16 ModelProto (I/O stay float32). Returns ``(proto, info)``."""
    import copy

    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = copy.deepcopy(model)
    _ensure_node_names(model)
    block_nodes = downstream_nodes(model, "Sigmoid")
    op_block = list(DEFAULT_OP_BLOCK_LIST) + [o for o in FP16_EXTRA_BLOCK_OPS if o not in DEFAULT_OP_BLOCK_LIST]
    out = convert_float_to_float16(model, keep_io_types=True, op_block_list=op_block, node_block_list=block_nodes,
                                   disable_shape_infer=False)
    removed = remove_cast_round_trips(out)
    topological_sort(out)   # the converter appends the input Casts at the end of the node list
    info = {"tool": "onnxruntime.transformers.float16.convert_float_to_float16", "keep_io_types": True,
            "op_block_list_extra": list(FP16_EXTRA_BLOCK_OPS), "fp32_nodes_downstream_of_sigmoid": len(block_nodes),
            "cast_round_trips_removed": removed}
    return out, info


def tensor_types(model) -> dict[str, int]:
    """Element type of every typed tensor (graph I/O, initializers, inferred value_info) of ``model``."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - an un-inferable graph keeps what it declares
        inferred = model
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.input) + list(g.output) + list(g.value_info)}
    types.update({i.name: i.data_type for i in g.initializer})
    return types


def float_tensors(model) -> set[str]:
    """Names of the float32 tensors of ``model`` (initializers included)."""
    import onnx

    return {k for k, t in tensor_types(model).items() if t == onnx.TensorProto.FLOAT}


def pre_process(model) -> tuple[Any, dict[str, Any]]:
    """``quant_pre_process`` (onnx shape inference + onnxruntime basic optimisation) when it succeeds, else the
    model as it is; metadata is dropped (the exporter writes the variant's own). Returns ``(proto, info)``."""
    import copy

    import onnx

    model = copy.deepcopy(model)
    _ensure_node_names(model)
    del model.metadata_props[:]
    info: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mtl_int8_") as tmp:
        src, pre = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx"
        onnx.save(model, str(src))
        try:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            model = onnx.load(str(pre))
            info["pre_process"] = "quant_pre_process (onnx shape inference + basic optimisation)"
        except Exception as e:  # noqa: BLE001 - pre-processing is an optimisation only
            info["pre_process"] = f"skipped ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    del model.metadata_props[:]
    _ensure_node_names(model)
    return model, info


@dataclass(frozen=True)
class Int8Plan:
    """One recipe prepared once for a calibrated model: what ``build_int8`` needs to write the variant with
    any set of quantizable nodes (``units``) kept in float (sensitivity, mixed precision)."""

    target: str                      # "tensorrt" | "cpu"
    model: Any                       # pre-processed fp32 ModelProto the ranges belong to
    ranges: dict[str, dict]          # mtl.export.calibration.tensor_ranges
    units: tuple[str, ...]           # nodes that are INT8 unless kept in float, in graph order
    excluded: tuple[str, ...]        # head convs kept in float by design (exclude_heads)
    tail: tuple[str, ...]            # the in-graph decode after the heatmap Sigmoid (always float)
    macs: dict[str, int]             # multiply-accumulates per Conv / ConvTranspose / MatMul / Gemm node
    base: Any = None                 # TensorRT: the fp16 model (opset >= 19) the Q/DQ pairs go into
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def op_types(self) -> tuple[str, ...]:
        return INT8_CPU_OP_TYPES if self.target == "cpu" else INT8_TRT_OP_TYPES


def plan_int8(calib: Any, target: str = "tensorrt", exclude_heads: bool = True) -> Int8Plan:
    """The recipe ``target`` for ``calib`` (``mtl.export.calibration.Calibration``: pre-processed model + ranges)."""
    from .onnx_io import conv_macs

    if target not in INT8_TARGETS:
        raise ValueError(f"int8 target must be one of {INT8_TARGETS}, got {target!r}")
    m = calib.model
    excluded = final_convs(m) if exclude_heads else []
    tail = [n for n in downstream_nodes(m, "Sigmoid") if n not in excluded]
    inits = {i.name for i in m.graph.initializer}
    ops = INT8_CPU_OP_TYPES if target == "cpu" else INT8_TRT_OP_TYPES
    skip = set(excluded) | set(tail)
    units = [n.name for n in m.graph.node if n.op_type in ops and n.name not in skip
             and (target == "cpu" or (len(n.input) > 1 and n.input[1] in inits))]
    macs = {name: k for name, _, k in conv_macs(m, dynamic_as=1)["nodes"]}     # per frame (also dynamic batch)
    base = _trt_base(m) if target == "tensorrt" else None
    return Int8Plan(target, m, calib.ranges, tuple(units), tuple(excluded), tuple(tail), macs, base,
                    dict(calib.info))


def int8_mac_share(plan: Int8Plan, keep_float: Iterable[str] = ()) -> float:
    """Share of the model's MACs that run in INT8 when ``keep_float`` units stay float."""
    total = sum(plan.macs.values())
    keep = set(keep_float)
    return sum(plan.macs.get(u, 0) for u in plan.units if u not in keep) / total if total else 0.0


def build_int8(plan: Int8Plan, keep_float: Iterable[str] = ()) -> tuple[Any, dict[str, Any]]:
    """The INT8 variant of ``plan`` with ``keep_float`` units in float (fp16 for TensorRT, fp32 for the CPU).
    Returns ``(proto, info)``."""
    keep = list(dict.fromkeys(keep_float))          # the caller's order (mixed precision: most sensitive first)
    unknown = set(keep) - set(plan.units)
    if unknown:
        raise ValueError(f"not quantizable units of this recipe: {sorted(unknown)}")
    proto = _build_trt(plan, keep) if plan.target == "tensorrt" else _build_cpu(plan, keep)
    _strip_unused_opsets(proto)
    cpu = plan.target == "cpu"
    info: dict[str, Any] = {
        "tool": "mtl Q/DQ inserter on the fp16 model" if not cpu else
                "onnxruntime.quantization QDQQuantizer with mtl calibration ranges",
        "format": "QDQ", "target": plan.target, "per_channel": True,
        "activation_type": "QUInt8 asymmetric" if cpu else "QInt8 symmetric",
        "weight_type": "QInt8 symmetric", "quantize_bias": cpu, "op_types": list(plan.op_types),
        "qdq_placement": QDQ_PLACEMENT[plan.target], "float_type": "fp32" if cpu else "fp16",
        "calibration": plan.calibration, "excluded_nodes": list(plan.excluded),
        "decode_tail_nodes_float": len(plan.tail), "int8_nodes": len(plan.units) - len(keep),
        "float_nodes": keep, "int8_mac_share": round(int8_mac_share(plan, keep), 6)}
    return proto, info


QDQ_PLACEMENT = {
    "tensorrt": "inputs and weights of each INT8 conv (no Q/DQ on conv outputs; TensorRT fuses the next "
                "conv's input Q into the producing conv) + the other input of an Add fed by an INT8 conv "
                "(TensorRT fuses the residual add into the conv); dedicated pair per consumer",
    "cpu": "onnxruntime QDQ: inputs and outputs of convs, adds, concats, resizes (QLinearConv / QLinearAdd / "
           "QLinearConcat kernels)",
}


# ------------------------------------------------------------------------------ TensorRT recipe


def _trt_base(model) -> Any:
    """The fp16 model (``convert_fp16``: decode tail fp32, I/O fp32) at opset >= ``TRT_QDQ_OPSET``: the
    precision of everything the Q/DQ pairs leave alone, so a strongly typed TensorRT build runs it in fp16."""
    from onnx import version_converter

    base, _ = convert_fp16(model)
    opset = max(int(o.version) for o in base.opset_import if o.domain in ("", "ai.onnx"))
    if opset < TRT_QDQ_OPSET:     # fp16 QuantizeLinear / DequantizeLinear (scale type = x type) need opset 19
        base = version_converter.convert_version(base, TRT_QDQ_OPSET)
    return base


def _build_trt(plan: Int8Plan, keep_float: list[str]) -> Any:
    """Q/DQ pairs into a copy of the fp16 base: every INT8 conv's input (per-tensor, scale sym / 127) and
    weight (int8 per output channel, from the fp32 weights), the residual input of an Add fed by an INT8
    conv; a dedicated pair per consumer. Scales have the type of the tensor they quantize (fp16)."""
    import copy

    import onnx

    m = copy.deepcopy(plan.base)
    quantized = set(plan.units) - set(keep_float)
    types = tensor_types(m)
    producer = {o: n for n in m.graph.node for o in n.output}
    fp32_weights = {i.name: i for i in plan.model.graph.initializer}
    residual = _residual_inputs(m, quantized, producer)
    nodes, inits = [], []
    for n in m.graph.node:
        if n.name in quantized:
            ftype = types[n.input[1]]           # the conv's float type: its (fp16) weight's
            nodes += _weight_dq(n, fp32_weights[n.input[1]], ftype, inits)
            nodes += _activation_qdq(n, 0, plan.ranges, ftype, producer, inits)
        elif n.name in residual:
            ftype = types.get(n.input[residual[n.name]], types.get(n.output[0], onnx.TensorProto.FLOAT))
            nodes += _activation_qdq(n, residual[n.name], plan.ranges, ftype, producer, inits)
        nodes.append(n)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    m.graph.initializer.extend(inits)
    used = {i for n in m.graph.node for i in n.input}
    keep = [i for i in m.graph.initializer if i.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    return m


def _residual_inputs(model, quantized: set[str], producer: dict) -> dict[str, int]:
    """Add node -> index of its input to quantize: the one NOT produced by an INT8 conv, when the other is."""
    out = {}
    for n in model.graph.node:
        if n.op_type != "Add" or len(n.input) != 2:
            continue
        from_conv = [producer.get(t) is not None and producer[t].name in quantized for t in n.input]
        if from_conv[1] and not from_conv[0]:
            out[n.name] = 0
        elif from_conv[0] and not from_conv[1]:
            out[n.name] = 1
    return out


def _range_source(t: str, ranges: dict, producer: dict) -> str | None:
    """The calibrated tensor behind ``t`` (walking back through the fp16 converter's Casts)."""
    while t not in ranges and t in producer and producer[t].op_type == "Cast":
        t = producer[t].input[0]
    return t if t in ranges else None


def _scale_array(values, elem_type: int):
    """Positive, finite scales in the tensor's float type (fp16 underflow / overflow clamped)."""
    import numpy as np
    from onnx import helper

    dt = helper.tensor_dtype_to_np_dtype(elem_type)
    info = np.finfo(dt)
    v = np.nan_to_num(np.asarray(values, np.float64), nan=1.0, posinf=float(info.max), neginf=1.0)
    return np.clip(v, float(info.tiny), float(info.max)).astype(dt)


def _activation_qdq(node, idx: int, ranges: dict, elem_type: int, producer: dict, inits: list) -> list:
    import numpy as np
    from onnx import helper, numpy_helper

    t = node.input[idx]
    src = _range_source(t, ranges, producer)
    if src is None:
        return []                       # nothing calibrated behind it (e.g. a constant): left in float
    scale = _scale_array(max(ranges[src]["sym"], 0.0) / 127.0, elem_type)
    tag = f"{t}__{node.name}"
    inits += [numpy_helper.from_array(scale, f"{tag}_scale"), numpy_helper.from_array(np.array(0, np.int8),
                                                                                      f"{tag}_zp")]
    q = helper.make_node("QuantizeLinear", [t, f"{tag}_scale", f"{tag}_zp"], [f"{tag}_q"], name=f"{tag}_Q")
    dq = helper.make_node("DequantizeLinear", [f"{tag}_q", f"{tag}_scale", f"{tag}_zp"], [f"{tag}_dq"],
                          name=f"{tag}_DQ")
    node.input[idx] = f"{tag}_dq"
    return [q, dq]


def _weight_dq(node, w32, elem_type: int, inits: list) -> list:
    """Per-output-channel symmetric INT8 weight + its DequantizeLinear (output type = the conv's input type)."""
    import numpy as np
    from onnx import helper, numpy_helper

    w = numpy_helper.to_array(w32).astype(np.float32)
    axis = 1 if node.op_type == "ConvTranspose" else 0
    red = tuple(a for a in range(w.ndim) if a != axis)
    scale = _scale_array(np.abs(w).max(axis=red) / 127.0, elem_type)
    shape = [-1 if a == axis else 1 for a in range(w.ndim)]
    wq = np.clip(np.round(w / scale.astype(np.float32).reshape(shape)), -127, 127).astype(np.int8)
    name = node.input[1]
    tag = f"{name}__{node.name}"
    inits += [numpy_helper.from_array(wq, f"{tag}_int8"), numpy_helper.from_array(scale, f"{tag}_scale"),
              numpy_helper.from_array(np.zeros(len(scale), np.int8), f"{tag}_zp")]
    node.input[1] = f"{tag}_dq"
    return [helper.make_node("DequantizeLinear", [f"{tag}_int8", f"{tag}_scale", f"{tag}_zp"], [f"{tag}_dq"],
                             name=f"{tag}_DQ", axis=axis)]


# --------------------------------------------------------------------------- onnxruntime CPU recipe


def _build_cpu(plan: Int8Plan, keep_float: list[str]) -> Any:
    """onnxruntime's QDQ quantizer (the engine of ``quantize_static``) fed the calibration ranges directly, so
    a rebuild with other float nodes does not re-run the model. UINT8 asymmetric activations, INT8 symmetric
    per-channel weights, int32 biases (what QLinearConv takes)."""
    import copy

    import numpy as np
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    ranges = TensorsData(CalibrationMethod.MinMax, {
        k: TensorData(lowest=np.float32(r["lo"]), highest=np.float32(r["hi"])) for k, r in plan.ranges.items()})
    q = QDQQuantizer(copy.deepcopy(plan.model), True, False, QuantType.QInt8, QuantType.QUInt8, ranges, [],
                     list(plan.excluded) + list(plan.tail) + list(keep_float), list(INT8_CPU_OP_TYPES),
                     {"ActivationSymmetric": False, "WeightSymmetric": True, "QuantizeBias": True})
    q.quantize_model()
    q.model.topological_sort()      # what quantize_static's save does: Q/DQ nodes were appended
    return q.model.model


def quantize_int8(model, calib: Any, exclude_heads: bool = True, target: str = "tensorrt",
                  keep_float: Iterable[str] = ()) -> tuple[Any, dict[str, Any]]:
    """Calibrated INT8 variant of ``model``: the builders of the variant table call this. ``calib`` is the
    ``mtl.export.calibration.Calibration`` of ``model`` (it holds the pre-processed copy of ``model`` that is
    quantized, with its ranges). Returns ``(proto, info)``."""
    if calib is None:
        raise ValueError("an INT8 variant needs a calibration (mtl.export.calibration.calibrate)")
    return build_int8(plan_int8(calib, target, exclude_heads), keep_float)




def _strip_unused_opsets(model) -> None:
    """The quantizer imports every ORT domain; keep the default one and those nodes / functions use."""
    used = {n.domain for n in model.graph.node} | {f.domain for f in model.functions}
    keep = [o for o in model.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)
