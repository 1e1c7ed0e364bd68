"""FP32 ONNX export (dynamo exporter, opset >= 18) of the multi-task network behind an export wrapper.

The wrapper applies the heatmap sigmoid (``bbox_heatmap`` is a probability map in every exported model) and,
with ``decode=True``, appends the CenterPoint peak decode in-graph, matching ``mtl.geometry.decode_detections``:
3x3 max-pool peak NMS, top-K over the flattened (C, Hh, Wh) map, gather of the regression at the peaks and
the box decode (x, y from cell + offset, z, exp(clip(log size, -5, 5)), yaw = atan2(sin, cos)). Shapes stay
static, so the score threshold is NOT applied in the graph: the runtime keeps ``det_scores > threshold``.
"""
from __future__ import annotations

import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..contract import DECODE_OUTPUTS, OUTPUTS
from .onnx_io import run_ort
from .options import MIN_OPSET


class ExportWrapper(nn.Module):
    """``forward(image, bev) -> tuple`` in the order of ``output_names``."""

    def __init__(self, model: nn.Module, cfg: Config, decode: bool = False):
        super().__init__()
        self.model = model
        self.decode = decode
        g = cfg.grid
        self.n_det = cfg.classes.n_det
        self.head_hw = tuple(g.head_shape)
        self.k = min(int(cfg.decode.max_detections), self.n_det * self.head_hw[0] * self.head_hw[1])
        self.kernel = int(cfg.decode.nms_kernel)
        self.head_cell = float(g.head_cell)
        self.x_min, self.y_min = float(g.x_min), float(g.y_min)

    @property
    def output_names(self) -> list[str]:
        return list(OUTPUTS) + (list(DECODE_OUTPUTS) if self.decode else [])

    def forward(self, image: torch.Tensor, bev: torch.Tensor):
        out = self.model(image, bev)
        heat = torch.sigmoid(out["bbox_heatmap"])
        reg = out["bbox_reg"]
        if not self.decode:
            return heat, reg, out["sem_logits"]
        return (heat, reg, out["sem_logits"]) + self._decode(heat, reg)

    def _decode(self, heat: torch.Tensor, reg: torch.Tensor):
        b = heat.shape[0]
        hh, ww = self.head_hw
        hw = hh * ww
        pad = self.kernel // 2
        hmax = F.max_pool2d(heat, self.kernel, stride=1, padding=pad)       # -inf padding like the numpy ref
        peaks = torch.where(hmax == heat, heat, torch.zeros_like(heat))
        scores, idx = torch.topk(peaks.reshape(b, -1), self.k, dim=1)      # sorted, ties -> lower index
        labels = torch.div(idx, hw, rounding_mode="floor")
        cell = idx - labels * hw
        rows = torch.div(cell, ww, rounding_mode="floor")
        cols = cell - rows * ww
        r = torch.gather(reg.reshape(b, 8, hw), 2, cell.unsqueeze(1).expand(b, 8, self.k))   # (B, 8, K)
        x = (rows.to(r.dtype) + r[:, 0]) * self.head_cell + self.x_min
        y = (cols.to(r.dtype) + r[:, 1]) * self.head_cell + self.y_min
        lwh = torch.exp(torch.clamp(r[:, 3:6], -5.0, 5.0))
        yaw = torch.atan2(r[:, 6], r[:, 7])
        boxes = torch.cat([x[:, None], y[:, None], r[:, 2:3], lwh, yaw[:, None]], dim=1).transpose(1, 2)
        return scores, labels, boxes.contiguous()


def example_inputs(cfg: Config, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    h, w = cfg.camera.image_hw
    image = torch.randn(batch, 3, h, w, generator=gen)
    bev = torch.rand(batch, cfg.grid.n_channels, *cfg.grid.shape, generator=gen)
    return image, bev


def export_onnx_proto(model: nn.Module, cfg: Config, *, opset: int = 18, decode: bool = False,
                      batch: int = 1, dynamic_batch: bool = False):
    """Export ``model`` (eval mode) and return ``(onnx.ModelProto, info)``; nothing is written to disk.

    ``info``: {"export_time_s", "exporter", "opset", "batch"}. Weights are embedded (single file)."""
    import onnx

    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} < {MIN_OPSET}: the dynamo exporter builds at >= {MIN_OPSET}")
    wrapper = ExportWrapper(model.eval(), cfg, decode=decode).eval()
    args = example_inputs(cfg, batch=max(batch, 2) if dynamic_batch else batch)
    kwargs = {}
    if dynamic_batch:
        dim = torch.export.Dim("batch", min=1, max=256)
        kwargs["dynamic_shapes"] = {"image": {0: dim}, "bev": {0: dim}}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            prog = torch.onnx.export(wrapper, args, None, dynamo=True, opset_version=opset,
                                     input_names=["image", "bev"], output_names=wrapper.output_names,
                                     external_data=False, verbose=False, **kwargs)
    proto = prog.model_proto
    elapsed = time.perf_counter() - t0
    # the exporter names dynamic dims after the torch symbol (s0, ...): give them one readable name
    if dynamic_batch:
        for vi in list(proto.graph.input) + list(proto.graph.output):
            d0 = vi.type.tensor_type.shape.dim[0]
            if d0.HasField("dim_param") or not d0.HasField("dim_value"):
                d0.dim_param = "batch"
    got = [o.name for o in proto.graph.output]
    if got != wrapper.output_names:
        raise RuntimeError(f"exported outputs {got} != {wrapper.output_names}")
    onnx.checker.check_model(proto, full_check=True)
    return proto, {"export_time_s": round(elapsed, 3), "exporter": f"torch.onnx dynamo (torch {torch.__version__})",
                   "opset": opset_of(proto), "batch": "batch" if dynamic_batch else batch}


def opset_of(proto) -> int:
    return max(int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def slim_proto(proto, feeds: dict, atol: float = 0.0):
    """onnxslim the model and keep it only if every output is identical on ``feeds`` (ORT, CPU).

    Returns ``(proto, info)`` with info {"applied", "nodes_before", "nodes_after", "max_abs_diff", "reason"}."""
    import numpy as np

    info = {"applied": False, "nodes_before": len(proto.graph.node)}
    try:
        import onnxslim
    except ImportError:
        info.update(nodes_after=info["nodes_before"], reason="onnxslim is not installed")
        return proto, info
    try:
        slim = onnxslim.slim(proto)
    except Exception as e:  # noqa: BLE001 - a simplifier failure must never block an export
        info.update(nodes_after=info["nodes_before"], reason=f"onnxslim failed: {type(e).__name__}: {e}")
        return proto, info
    names = [o.name for o in proto.graph.output]
    if [o.name for o in slim.graph.output] != names or [i.name for i in slim.graph.input] != [
            i.name for i in proto.graph.input]:
        info.update(nodes_after=len(slim.graph.node), reason="onnxslim changed the I/O names: kept the original")
        return proto, info
    a = run_ort(proto, feeds)
    b = run_ort(slim, feeds)
    diff = max(float(np.max(np.abs(a[n].astype(np.float64) - b[n].astype(np.float64)))) if a[n].size else 0.0
               for n in names)
    info.update(nodes_after=len(slim.graph.node), max_abs_diff=diff)
    if diff > atol:
        info["reason"] = f"onnxslim changed outputs (max abs diff {diff:.3g} > {atol}): kept the original"
        return proto, info
    info.update(applied=True, reason="outputs identical")
    return slim, info
