"""Reduced-precision ONNX variants of the fp32 export.

FP16 (``convert_fp16``): ``onnxruntime.transformers.float16.convert_float_to_float16`` with
``keep_io_types=True`` (inputs / outputs stay float32, so the runtime feeds the same arrays). Kept in fp32:
- ORT's ``DEFAULT_OP_BLOCK_LIST`` (includes TopK, Range, CumSum, Min/Max, ...);
- ``Sigmoid`` and every node downstream of it: the heatmap probabilities and the whole in-graph decode
  (max-pool peak test, TopK, index arithmetic, gather, exp / atan2 box decode). Peak equality tests and
  score ranking near the threshold are where fp16 rounding would change detections; they are cheap.
The backbone, necks, GridSample fusion, heads and the semantic upsampling run in fp16.

INT8 (``quantize_int8``): ``onnxruntime.quantization.quantize_static`` in QDQ format, TensorRT-style:
symmetric INT8 activations and weights (zero point 0: TensorRT rejects non-zero zero points and UINT8),
per-channel weights, biases left in float (TensorRT's DequantizeLinear has no INT32 input), MinMax
calibration over dataset frames, only ``Conv`` / ``ConvTranspose`` / ``MatMul`` / ``Gemm`` quantized (the decode
tail after the heatmap Sigmoid and the resizes stay float) and, by default, the final head convs excluded (the last conv
before each output: heatmap logits, box regression, semantic logits), whose outputs have a wide range that int8 would
turn directly into score / box / class errors. ``quant_pre_process`` (shape inference + basic graph
optimisation) runs first when it succeeds.

INT8 for the onnxruntime CPU (``quantize_int8(..., target="cpu")``, ``mtl export --int8-cpu`` ->
``model_int8_cpu.onnx``): the recipe onnxruntime's x86 kernels are fast with - UINT8 asymmetric activations,
INT8 symmetric per-channel weights (u8s8, VNNI) - and ``Add`` / ``Concat`` / ``Resize`` quantized as well as
the convolutions, so the graph stays in int8 between convolutions instead of dequantising around every
skip-add and upsample. Same calibration and head exclusion. Not for TensorRT (UINT8, non-zero zero points).
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

FP16_EXTRA_BLOCK_OPS = ("Sigmoid",)
INT8_OP_TYPES = ("Conv", "ConvTranspose", "MatMul", "Gemm")
INT8_CPU_OP_TYPES = INT8_OP_TYPES + ("Add", "Concat", "Resize")
INT8_TARGETS = ("tensorrt", "cpu")


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


class FrameReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over a list of feed dicts."""

    def __init__(self, feeds: Iterable[dict]):
        self._feeds = list(feeds)
        self._it = iter(self._feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


def quantize_int8(model, feeds: list[dict], exclude_heads: bool = True, pre_process: bool = True,
                  target: str = "tensorrt"):
    """fp32 ModelProto + calibration feeds -> INT8 QDQ ModelProto. Returns ``(proto, info)``.

    ``target``: "tensorrt" (symmetric INT8 activations, convolution-like ops only) or "cpu" (onnxruntime
    CPU: UINT8 asymmetric activations, adds / concats / resizes quantized too); see the module docstring."""
    import copy

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if target not in INT8_TARGETS:
        raise ValueError(f"int8 target must be one of {INT8_TARGETS}, got {target!r}")
    cpu = target == "cpu"
    op_types = INT8_CPU_OP_TYPES if cpu else INT8_OP_TYPES
    model = copy.deepcopy(model)
    _ensure_node_names(model)
    # metadata is re-written by the caller; keep the quantizer's input small and generic
    del model.metadata_props[:]
    info: dict = {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ", "target": target,
                  "per_channel": True, "activation_type": "QUInt8 asymmetric" if cpu else "QInt8 symmetric",
                  "weight_type": "QInt8 symmetric", "calibration": "MinMax", "calibration_frames": len(feeds),
                  "op_types": list(op_types), "quantize_bias": cpu}
    with tempfile.TemporaryDirectory(prefix="mtl_int8_") as tmp:
        src = Path(tmp) / "fp32.onnx"
        onnx.save(model, str(src))
        if pre_process:
            try:
                from onnxruntime.quantization.shape_inference import quant_pre_process

                pre = Path(tmp) / "pre.onnx"
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
                src = pre
                info["pre_process"] = "quant_pre_process (onnx shape inference + basic optimisation)"
            except Exception as e:  # noqa: BLE001 - pre-processing is an optimisation only
                info["pre_process"] = f"skipped ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
        m_src = onnx.load(str(src))
        exclude = final_convs(m_src) if exclude_heads else []
        info["excluded_nodes"] = exclude
        # the in-graph decode (everything after the heatmap Sigmoid: peak test, TopK, index / box arithmetic)
        # stays float, like in fp16: its Adds would otherwise be quantized by the CPU recipe
        tail = [n for n in downstream_nodes(m_src, "Sigmoid") if n not in exclude]
        info["decode_tail_nodes_float"] = len(tail)
        dst = Path(tmp) / "int8.onnx"
        quantize_static(
            str(src), str(dst), FrameReader(feeds), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types), per_channel=True,
            activation_type=QuantType.QUInt8 if cpu else QuantType.QInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude + tail, calibrate_method=CalibrationMethod.MinMax,
            # the CPU recipe quantizes biases to int32 (what QLinearConv takes); TensorRT keeps them float
            extra_options={"ActivationSymmetric": not cpu, "WeightSymmetric": True, "QuantizeBias": cpu},
        )
        out = onnx.load(str(dst))
    _strip_unused_opsets(out)
    return out, info


def _strip_unused_opsets(model) -> None:
    """The quantizer imports every ORT domain; keep the default one and those nodes / functions use."""
    used = {n.domain for n in model.graph.node} | {f.domain for f in model.functions}
    keep = [o for o in model.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)
