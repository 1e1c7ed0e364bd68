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
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..contract import DECODE_OUTPUTS, OUTPUTS

MIN_OPSET = 18


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
        raise ValueError(f"opset {opset} < {MIN_OPSET}: the dynamo exporter builds at >= 18 (lower opsets would be "
                         "built at 18 and down-converted)")
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


def ort_session(model, threads: int = 0):
    """CPU onnxruntime session from a path or a ModelProto."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    src = model if isinstance(model, (str, Path)) else model.SerializeToString()
    return ort.InferenceSession(str(src) if isinstance(src, Path) else src, so, providers=["CPUExecutionProvider"])


def run_ort(model, feeds: dict) -> dict:
    sess = model if hasattr(model, "run") else ort_session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def save_proto_atomic(proto, path: str | Path) -> Path:
    """Single-file ONNX written atomically (temp file + rename)."""
    from ..io import write_bytes_atomic

    data = proto.SerializeToString()
    write_bytes_atomic(path, data)
    return Path(path)


# ------------------------------------------------------------------------------------ orchestration


def _variant_entry(path: Path, proto, findings: list[dict], info: dict) -> dict:
    from collections import Counter

    from ..config import sha256_file

    return {"path": path.name, "sha256": sha256_file(path), "size_bytes": path.stat().st_size,
            "nodes": len(proto.graph.node), "op_types": dict(sorted(Counter(n.op_type for n in proto.graph.node).items())),
            "trt_check": findings, "info": info, "status": "ok"}


def _for_tensorrt(info: dict) -> bool:
    """Whether a variant is meant for TensorRT: every one but the INT8 recipe for the onnxruntime CPU
    (``quantize_int8`` records its ``target``)."""
    return info.get("target", "tensorrt") == "tensorrt"


def _reject(path: Path) -> str:
    """Move a failed artefact aside (``<name>.rejected``) so the runtime never picks it up."""
    import os

    dst = path.with_name(path.name + ".rejected")
    if path.exists():
        os.replace(path, dst)
    return dst.name


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, *, opset: int = 18, fp16: bool = False,
                      int8: bool = False, int8_cpu: bool = False, calib_data: str | Path | None = None,
                      calib_frames: int = 32,
                      val_data: str | Path | None = None, max_drop_miou: float = 0.02, max_drop_map: float = 0.02,
                      decode: bool = False, slim: bool = True, trt: bool = False, trt_profile: str | None = None,
                      parity: bool = True, parity_frames: int = 4, gate_frames: int = 128, atol: float = 1e-4,
                      batch: int = 1, dynamic_batch: bool = False, exclude_heads_int8: bool = True,
                      timing_cache: str | Path | None = None, echo=print) -> dict:
    """``mtl export``: checkpoint -> DIR/model.onnx (+ model_fp16.onnx, model_int8.onnx, model_int8_cpu.onnx,
    *.engine),
    DIR/export_report.json and DIR/export_report.md. Raises ``ParityError`` (after writing the report) when
    fp32 parity or a variant's metric gate fails; failed artefacts are renamed ``*.rejected``."""
    import platform

    import onnx

    from .. import __version__
    from ..config import sha256_file
    from ..errors import ConfigError, ParityError
    from ..io import write_bytes_atomic, write_json_atomic
    from ..model import load_checkpoint
    from . import parity as par
    from ..contract import build_metadata, write_onnx_metadata
    from .trt_check import check_model, format_findings, has_errors

    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    checkpoint = Path(checkpoint)
    profile = None
    if trt_profile:
        from .tensorrt_build import parse_profile

        try:
            profile = parse_profile(trt_profile)
        except ValueError as e:
            raise ConfigError(None, str(e)) from None
        dynamic_batch = True
    if opset < MIN_OPSET:
        raise ConfigError(None, f"--opset {opset}: the dynamo exporter needs opset >= {MIN_OPSET}")
    if batch < 1:
        raise ConfigError(None, f"--batch must be >= 1, got {batch}")
    if (int8 or int8_cpu) and not calib_data:
        raise ConfigError(None, f"--{'int8' if int8 else 'int8-cpu'} needs --calib-data DIR (chunks for the "
                                "calibration frames)")
    if parity and not (val_data or calib_data):
        raise ConfigError(None, "the parity report needs real frames: pass --val-data DIR (or --calib-data DIR), "
                                "or --no-parity to skip parity and metric gates")
    if parity and (fp16 or int8 or int8_cpu) and not val_data:
        raise ConfigError(None, "--fp16/--int8/--int8-cpu are gated on mIoU/mAP over --val-data DIR: pass it (or "
                                "--no-parity)")
    if trt:
        from .tensorrt_build import check_available

        check_available()      # fail before any work: one line saying what is missing

    model, cfg, _ = load_checkpoint(checkpoint)
    ckpt_sha = sha256_file(checkpoint)
    run_batch = 2 if dynamic_batch else batch       # batch used for parity / gate runs
    report: dict[str, Any] = {
        "mtl_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "checkpoint": str(checkpoint), "checkpoint_sha256": ckpt_sha, "out_dir": str(out_dir),
        "options": {"opset": opset, "fp16": fp16, "int8": int8, "int8_cpu": int8_cpu, "decode": decode, "slim": slim,
                    "trt": trt,
                    "trt_profile": list(profile) if profile else None, "batch": "dynamic" if dynamic_batch else batch,
                    "atol": atol, "parity": parity, "parity_frames": parity_frames, "gate_frames": gate_frames,
                    "max_drop_miou": max_drop_miou, "max_drop_map": max_drop_map, "calib_frames": calib_frames,
                    "calib_data": str(calib_data) if calib_data else None,
                    "val_data": str(val_data) if val_data else None},
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
                        "onnxruntime": _ort_version()},
        "variants": {}, "engines": {}, "failures": [], "timings_s": {},
    }
    failures: list[str] = report["failures"]
    error: BaseException | None = None
    try:
        # ---------------------------------------------------------------- real frames
        parity_samples: list[dict] = []
        if parity:
            src = par.FrameSource(val_data or calib_data, cfg, max_frames=parity_frames)
            parity_samples = list(src)
            report["parity_data"] = str(val_data or calib_data)
        # ---------------------------------------------------------------- fp32
        echo(f"exporting {checkpoint.name} -> ONNX (dynamo, opset {opset}, decode={decode}, "
             f"batch={'dynamic' if dynamic_batch else batch}) ...")
        proto, info = export_onnx_proto(model, cfg, opset=opset, decode=decode, batch=batch,
                                        dynamic_batch=dynamic_batch)
        report["timings_s"]["torch_onnx_export"] = info["export_time_s"]
        if slim:
            feeds = (next(par.batched(parity_samples, run_batch))[0] if parity_samples else
                     {k: v.numpy() for k, v in zip(("image", "bev"), example_inputs(cfg, run_batch))})
            proto, slim_info = slim_proto(proto, feeds)
            report["slim"] = slim_info
            echo(f"onnxslim: {slim_info['nodes_before']} -> {slim_info['nodes_after']} nodes, "
                 f"{'applied' if slim_info['applied'] else 'not applied'} ({slim_info['reason']})")
        meta = build_metadata(cfg.to_dict(), batch="batch" if dynamic_batch else batch, decode=decode,
                              precision="fp32", opset=opset_of(proto), source_checkpoint_sha256=ckpt_sha)
        write_onnx_metadata(proto, meta)
        onnx.checker.check_model(proto, full_check=True)
        fp32_path = save_proto_atomic(proto, out_dir / "model.onnx")
        report["opset"] = opset_of(proto)
        findings = check_model(proto, profile=profile)
        report["variants"]["fp32"] = _variant_entry(fp32_path, proto, findings, {**info, "checker": "full_check ok"})
        echo(format_findings(findings, "TensorRT compatibility (fp32)"))
        fp32_sess = ort_session(fp32_path)
        if parity:
            t0 = time.perf_counter()
            rep = par.parity_report(model, cfg, fp32_sess, parity_samples, decode=decode, batch=run_batch,
                                    atol=atol, gate=True)
            report["timings_s"]["parity_fp32"] = round(time.perf_counter() - t0, 3)
            report["variants"]["fp32"]["parity"] = rep
            echo(_parity_line("fp32", rep))
            if not rep["passed"]:
                failures.extend(f"fp32 parity: {f}" for f in rep["failures"])
                report["variants"]["fp32"]["status"] = "rejected"
                report["variants"]["fp32"]["path"] = _reject(fp32_path)
                raise ParityError(fp32_path, "; ".join(rep["failures"]))
        else:
            report["variants"]["fp32"]["parity"] = None
            echo("parity: skipped (--no-parity)")

        # ---------------------------------------------------------------- variants
        sessions = {}
        variants: dict[str, tuple] = {}
        if fp16:
            t0 = time.perf_counter()
            p16, i16 = convert_fp16_proto(proto)
            write_onnx_metadata(p16, {**meta, "precision": "fp16"})
            onnx.checker.check_model(p16, full_check=True)
            variants["fp16"] = (save_proto_atomic(p16, out_dir / "model_fp16.onnx"), p16, i16)
            report["timings_s"]["fp16_convert"] = round(time.perf_counter() - t0, 3)
        if int8 or int8_cpu:
            from .quantize import quantize_int8

            calib = par.FrameSource(calib_data, cfg, max_frames=calib_frames)
            feeds = [f for f, _ in par.batched(calib, run_batch)]
            for name, target, on in (("int8", "tensorrt", int8), ("int8_cpu", "cpu", int8_cpu)):
                if not on:
                    continue
                t0 = time.perf_counter()
                p8, i8 = quantize_int8(proto, feeds, exclude_heads=exclude_heads_int8, target=target)
                i8["calibration_data"] = str(calib_data)
                i8["calibration_frames"] = len(calib)
                write_onnx_metadata(p8, {**meta, "precision": "int8", "int8_target": target})
                onnx.checker.check_model(p8, full_check=True)
                variants[name] = (save_proto_atomic(p8, out_dir / f"model_{name}.onnx"), p8, i8)
                report["timings_s"][f"{name}_quantize"] = round(time.perf_counter() - t0, 3)
        for name, (path, vproto, vinfo) in variants.items():
            findings = check_model(vproto, profile=profile)
            report["variants"][name] = _variant_entry(path, vproto, findings, vinfo)
            if not _for_tensorrt(vinfo):    # UINT8 / non-zero zero points by design: one summary line
                n_err = sum(f["level"] == "error" for f in findings)
                echo(f"TensorRT compatibility ({name}): not a TensorRT model by design ({n_err} finding(s), "
                     "UINT8 activations with zero points; onnxruntime CPU only; details in export_report.json)")
            else:
                echo(format_findings(findings, f"TensorRT compatibility ({name})"))
            sessions[name] = ort_session(path)
            if parity:
                rep = par.parity_report(model, cfg, sessions[name], parity_samples, decode=decode, batch=run_batch,
                                        atol=atol, gate=False)
                report["variants"][name]["parity"] = rep
                echo(_parity_line(name, rep))
                if rep["failures"]:   # only the in-graph decode consistency can fail an ungated report
                    failures.extend(f"{name} parity: {f}" for f in rep["failures"])
        if variants and parity:
            t0 = time.perf_counter()
            frames = par.FrameSource(val_data, cfg, max_frames=gate_frames)
            echo(f"metric gate: evaluating fp32 + {', '.join(variants)} on {len(frames)} frame(s) of {val_data} ...")
            metrics = par.evaluate_sessions({"fp32": fp32_sess, **sessions}, frames, cfg, run_batch, progress=True)
            report["timings_s"]["metric_gate"] = round(time.perf_counter() - t0, 3)
            report["variants"]["fp32"]["metrics"] = metrics["fp32"]
            for name in variants:
                gate = par.metric_gate(metrics["fp32"], metrics[name], max_drop_miou, max_drop_map)
                report["variants"][name]["metrics"] = metrics[name]
                report["variants"][name]["gate"] = gate
                echo(f"gate {name}: mIoU {_fmt(gate['fp32']['miou'])} -> {_fmt(gate['variant']['miou'])} "
                     f"(drop {gate['drop_miou']:+.4f}, max {max_drop_miou:g}), mAP {_fmt(gate['fp32']['map'])} -> "
                     f"{_fmt(gate['variant']['map'])} (drop {gate['drop_map']:+.4f}, max {max_drop_map:g}): "
                     f"{'PASS' if gate['passed'] else 'FAIL'}")
                if not gate["passed"]:
                    failures.extend(f"{name} gate: {f}" for f in gate["failures"])
        elif variants:
            for name in variants:
                report["variants"][name]["gate"] = None
            echo("metric gate: skipped (--no-parity): the fp16/int8 variants are NOT validated")
        for name, (path, _, _) in variants.items():
            entry = report["variants"][name]
            if (entry.get("gate") and not entry["gate"]["passed"]) or (entry.get("parity") or {}).get("failures"):
                entry["status"] = "rejected"
                entry["path"] = _reject(path)

        # ---------------------------------------------------------------- TensorRT
        if trt:
            from .tensorrt_build import build_engine

            cache = Path(timing_cache) if timing_cache else out_dir / "timing.cache"
            for name, entry in report["variants"].items():
                if entry["status"] != "ok" or not _for_tensorrt(entry["info"]):   # int8_cpu: onnxruntime CPU only
                    continue
                if has_errors(entry["trt_check"]):
                    failures.append(f"{name}: not built with TensorRT (trt_check errors)")
                    continue
                onnx_file = out_dir / entry["path"]
                engine = onnx_file.with_suffix(".engine")
                echo(f"building TensorRT engine {engine.name} ...")
                side = build_engine(onnx_file, engine, profile=profile, timing_cache=cache)
                report["engines"][name] = {"path": engine.name, "sidecar": engine.name + ".json",
                                           **{k: side[k] for k in ("tensorrt_version", "gpu_name",
                                                                   "compute_capability", "precision_recipe",
                                                                   "build_time_s")}}
    except BaseException as e:  # noqa: BLE001 - re-raised below, after the report is written
        error = e
        if not isinstance(e, ParityError):
            report["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    finally:
        report["timings_s"]["total"] = round(time.perf_counter() - t_start, 3)
        report["passed"] = not failures and error is None
        if out_dir.exists() or report["variants"]:
            write_json_atomic(out_dir / "export_report.json", report)
            write_bytes_atomic(out_dir / "export_report.md", render_markdown(report).encode())
    if error is not None:
        raise error
    if failures:
        raise ParityError(out_dir / "export_report.json", "; ".join(failures))
    echo(f"wrote {', '.join(v['path'] for v in report['variants'].values())}"
         f"{', ' + ', '.join(e['path'] for e in report['engines'].values()) if report['engines'] else ''}"
         f", export_report.json/.md to {out_dir} ({report['timings_s']['total']:.1f} s)")
    return report


def convert_fp16_proto(proto):
    from .quantize import convert_fp16

    return convert_fp16(proto)


def _ort_version() -> str:
    try:
        import onnxruntime

        return onnxruntime.__version__
    except ImportError:
        return "missing"


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def _parity_line(name: str, rep: dict) -> str:
    outs = ", ".join(f"{k} {v['max_abs']:.2e}" for k, v in rep["outputs"].items())
    det = rep["decoded"] or {}
    s = (f"parity {name} vs torch ({rep['frames']} frames): max abs {outs}; decoded boxes "
         f"{det.get('matched', 0)}/{det.get('n_ref', 0)} matched within {rep.get('box_atol_m', 1e-4):g} m "
         f"(max box diff {det.get('max_box_diff', 0):.2e}); "
         f"semantic argmax agreement {rep['semantic_argmax_agreement']:.5f}")
    if rep.get("in_graph_decode"):
        g = rep["in_graph_decode"]
        s += f"; in-graph decode {g['matched']}/{g['n_ref']} = numpy decode"
    if rep["gated"]:
        s += f" -> {'PASS' if rep['passed'] else 'FAIL'} (atol {rep['atol']:g})"
    return s


def render_markdown(report: dict) -> str:
    o = report["options"]
    lines = ["# mtl export report", "",
             f"- checkpoint: `{report['checkpoint']}` (sha256 `{report['checkpoint_sha256'][:16]}…`)",
             (f"- opset {report.get('opset', o['opset'])}, decode={o['decode']}, batch={o['batch']}, "
              f"slim={o['slim']}, mtl {report['mtl_version']}, torch {report['environment']['torch']}, "
              f"onnxruntime {report['environment']['onnxruntime']}"),
             (f"- parity data: `{report.get('parity_data', '-')}`; atol {o['atol']:g}; allowed drops mIoU "
              f"{o['max_drop_miou']:g}, mAP {o['max_drop_map']:g}"),
             f"- result: **{'PASS' if report['passed'] else 'FAIL'}**", ""]
    if report.get("error"):
        lines += [f"**error:** {report['error']}", ""]
    if report["failures"]:
        lines += ["## Failures", ""] + [f"- {f}" for f in report["failures"]] + [""]
    lines += ["## Variants", "", "| variant | file | status | nodes | size | TensorRT check | mIoU | mAP | gate |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, v in report["variants"].items():
        n_err = sum(f["level"] == "error" for f in v["trt_check"])
        n_warn = sum(f["level"] == "warning" for f in v["trt_check"])
        m = v.get("metrics") or {}
        g = v.get("gate")
        gate = "-" if g is None else ("pass" if g["passed"] else "FAIL") + f" (drop mIoU {g['drop_miou']:+.4f}, mAP {g['drop_map']:+.4f})"
        lines.append(f"| {name} | `{v['path']}` | {v['status']} | {v['nodes']} | {v['size_bytes'] / 1e6:.2f} MB | "
                     f"{'FAIL' if n_err else 'ok'} ({n_err} err, {n_warn} warn) | {_fmt(m.get('miou'))} | "
                     f"{_fmt(m.get('map'))} | {gate} |")
    lines += ["", "## Parity against torch", ""]
    for name, v in report["variants"].items():
        rep = v.get("parity")
        if not rep:
            continue
        lines += [f"### {name} ({rep['frames']} frames{', gated' if rep['gated'] else ', informational'})", "",
                  "| output | max abs diff | max rel diff |", "|---|---|---|"]
        lines += [f"| {k} | {s['max_abs']:.3e} | {s['max_rel']:.3e} |" for k, s in rep["outputs"].items()]
        d = rep["decoded"] or {}
        lines += ["", (f"- decoded detections (threshold {rep['score_threshold']}): {d.get('matched', 0)} matched "
                       f"within {rep.get('box_atol_m', 1e-4):g} m of {d.get('n_ref', 0)} torch / {d.get('n_got', 0)} onnx, {d.get('unmatched', 0)} unmatched, "
                       f"{d.get('unmatched_borderline', 0)} borderline, max box diff {d.get('max_box_diff', 0):.2e}"),
                  f"- semantic argmax agreement: {rep['semantic_argmax_agreement']:.6f}"]
        if rep.get("in_graph_decode"):
            g = rep["in_graph_decode"]
            lines.append(f"- in-graph decode vs numpy decode: {g['matched']}/{g['n_ref']} matched, "
                         f"max box diff {g['max_box_diff']:.2e}")
        lines.append("")
    lines += ["## TensorRT compatibility (static check)", ""]
    for name, v in report["variants"].items():
        lines.append(f"**{name}**")
        lines += [f"- {f['level']}: {f['code']}: {f['message']}" + (f" [{f['node']}]" if f.get("node") else "")
                  for f in v["trt_check"]]
        lines.append("")
    if report["engines"]:
        lines += ["## TensorRT engines", "", "| variant | engine | TensorRT | GPU | recipe | build s |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {k} | `{e['path']}` | {e['tensorrt_version']} | {e['gpu_name']} ({e['compute_capability']}) | "
                  f"{e['precision_recipe']} | {e['build_time_s']} |" for k, e in report["engines"].items()]
        lines.append("")
    lines += ["## Timings (s)", ""] + [f"- {k}: {v}" for k, v in report["timings_s"].items()] + [""]
    return "\n".join(lines)
