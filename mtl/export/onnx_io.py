"""ONNX models in and out, shared by the export steps (and ``mtl bench``): an atomic single-file save, a CPU
onnxruntime session and one run of it, and the MAC count of a model's convolutions. Imports onnx /
onnxruntime only when used."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import write_bytes_atomic


def save_proto_atomic(proto: Any, path: str | Path) -> Path:
    """Single-file ONNX written atomically (temp file + rename)."""
    write_bytes_atomic(path, proto.SerializeToString())
    return Path(path)


def ort_session(model: Any, threads: int = 0):
    """CPU onnxruntime session from a path or a ModelProto."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    src = model if isinstance(model, (str, Path)) else model.SerializeToString()
    return ort.InferenceSession(str(src) if isinstance(src, Path) else src, so, providers=["CPUExecutionProvider"])


def run_ort(model: Any, feeds: dict) -> dict:
    """All outputs by name of a session (or of a path / ModelProto, through a fresh CPU session)."""
    sess = model if hasattr(model, "run") else ort_session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def conv_macs(model: Any, dynamic_as: int | None = None) -> dict:
    """Multiply-accumulates of every Conv / ConvTranspose / MatMul / Gemm of an fp32 ONNX model (a path or a
    ModelProto), from ONNX shape inference (static shapes): {"total": int, "by_op": {op: int},
    "nodes": [(name, op, macs)]}.

    Conv: out elements x (kh * kw * C_in / groups); ConvTranspose: in elements x (kh * kw * C_out / groups);
    MatMul / Gemm: out elements x K. Raises ``DataError`` when a shape is not inferable (dynamic shapes), unless
    ``dynamic_as`` gives the symbolic input dims a value (e.g. 1: MACs per frame of a dynamic-batch model)."""
    import copy

    import numpy as np
    import onnx
    from onnx import shape_inference

    from ..errors import DataError

    source = model if isinstance(model, (str, Path)) else None
    proto = onnx.load(str(model)) if source is not None else model
    if dynamic_as is not None:
        proto = copy.deepcopy(proto)
        del proto.graph.value_info[:]          # re-inferred from the now static inputs
        for vi in proto.graph.input:
            for d in vi.type.tensor_type.shape.dim:
                if not d.HasField("dim_value"):
                    d.dim_value = dynamic_as
    proto = shape_inference.infer_shapes(proto, data_prop=True)     # data_prop: Shape -> Expand chains
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            shapes[vi.name] = tuple(d.dim_value for d in t.shape.dim)
    for init in proto.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    by_op: dict[str, int] = {}
    nodes: list[tuple[str, str, int]] = []
    for n in proto.graph.node:
        if n.op_type not in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
            continue
        out, w = shapes.get(n.output[0]), shapes.get(n.input[1])
        if out is None or w is None:
            raise DataError(source, f"node {n.name or n.op_type}: shapes not inferable (dynamic shapes?)")
        if n.op_type == "Conv":                                 # w: (C_out, C_in / groups, kh, kw)
            macs = int(np.prod(out)) * int(np.prod(w[1:]))
        elif n.op_type == "ConvTranspose":                      # w: (C_in, C_out / groups, kh, kw)
            x = shapes.get(n.input[0])
            if x is None:
                raise DataError(source, f"node {n.name or n.op_type}: input shape not inferable")
            macs = int(np.prod(x)) * int(np.prod(w[1:]))        # every input element scatters a kernel
        else:                                                   # (.., M, K) @ (K, N) -> (.., M, N)
            trans_b = n.op_type == "Gemm" and any(a.name == "transB" and a.i for a in n.attribute)
            macs = int(np.prod(out)) * (w[-1] if trans_b else w[-2])
        by_op[n.op_type] = by_op.get(n.op_type, 0) + macs
        nodes.append((n.name, n.op_type, macs))
    return {"total": sum(by_op.values()), "by_op": by_op, "nodes": nodes}
