"""`mtl export`, `mtl infer`, `mtl bench`."""
from __future__ import annotations

import click as _ck

# the variant table is import-light (no torch / onnx): the export flags and the bench columns come from it
from ..export.options import CALIB_METHODS, DEFAULT_MAX_DROP
from ..export.variants import BENCH_BACKENDS, DEFAULT_COMPARE, FP32, GATED_PRECISIONS, OPTIONAL

COMMANDS: list = []


# -------------------------------------------------------------------------------------- export
# (torch / onnx are imported inside the command body)


def _variant_flags(f):
    """One ``--<variant>`` flag per optional row of ``mtl.export.variants.VARIANTS``, in table order."""
    for v in reversed(OPTIONAL):      # click lists stacked options bottom-up
        f = _ck.option(v.flag, v.name, is_flag=True, help=v.help)(f)
    return f


@_ck.command("export")
@_ck.argument("checkpoint", type=_ck.Path(dir_okay=False))
@_ck.option("--out", "out_dir", required=True, type=_ck.Path(file_okay=False),
            help=f"Output directory: {FP32.file} [+ {', '.join(v.file for v in OPTIONAL)}, *.engine], "
                 "export_report.json/.md.")
@_ck.option("--opset", type=_ck.IntRange(min=18), default=18, show_default=True,
            help="ONNX opset (dynamo exporter: >= 18).")
@_variant_flags
@_ck.option("--calib-data", type=_ck.Path(file_okay=False), default=None, help="Chunks for INT8 calibration.")
@_ck.option("--calib-frames", type=_ck.IntRange(min=1), default=32, show_default=True,
            help="Calibration frames, sampled evenly across the scenes (frame id <scene>/<id>) of --calib-data.")
@_ck.option("--calib-method", type=_ck.Choice(CALIB_METHODS), default="minmax", show_default=True,
            help="INT8 activation ranges: observed min/max, a percentile of |x|, TensorRT's entropy (KL) "
                 "calibration, or the least quantization MSE. Cached in OUT/calibration_cache.json.")
@_ck.option("--calib-percentile", type=_ck.FloatRange(0, 100, min_open=True), default=99.99, show_default=True,
            help="The |x| percentile of --calib-method percentile.")
@_ck.option("--val-data", type=_ck.Path(file_okay=False), default=None,
            help=f"Chunks for the parity report and the {GATED_PRECISIONS} metric gates.")
@_ck.option("--gate-frames", type=_ck.IntRange(min=0), default=128, show_default=True,
            help="Frames for the metric gate (evenly spaced; 0 = all of --val-data).")
@_ck.option("--max-drop-miou", type=float, default=DEFAULT_MAX_DROP, show_default=True,
            help="Allowed mIoU drop of a variant vs fp32.")
@_ck.option("--max-drop-map", type=float, default=DEFAULT_MAX_DROP, show_default=True,
            help="Allowed mAP drop of a variant vs fp32.")
@_ck.option("--mixed-precision/--no-mixed-precision", default=True, show_default=True,
            help="An INT8 variant that fails its gate keeps its most sensitive layers in float (fp16 for "
                 "TensorRT, fp32 for the CPU) until it passes; rejected when no mix does.")
@_ck.option("--sensitivity", is_flag=True,
            help="Per-layer sensitivity table of the INT8 variants in export_report.md (also when they pass).")
@_ck.option("--sensitivity-frames", type=_ck.IntRange(min=1), default=4, show_default=True,
            help="Validation frames of the per-layer output-error ranking.")
@_ck.option("--sensitivity-top", type=_ck.IntRange(min=0), default=6, show_default=True,
            help="With --sensitivity: the most sensitive layers whose mIoU / mAP effect is measured.")
@_ck.option("--decode", is_flag=True, help="Add det_scores/det_labels/det_boxes (peak NMS + top-K + box decode) "
                                           "to the graph; the score threshold is applied by the runtime.")
@_ck.option("--slim/--no-slim", default=True, show_default=True, help="onnxslim the fp32 graph (kept only if outputs "
                                                                      "are identical).")
@_ck.option("--batch", type=_ck.IntRange(min=1), default=1, show_default=True, help="Static batch size of the graph.")
@_ck.option("--dynamic-batch", is_flag=True, help="Dynamic batch axis ('batch'); TensorRT then needs --trt-profile.")
@_ck.option("--trt", is_flag=True, help="Also build TensorRT engines (needs tensorrt + cuda-python + an NVIDIA GPU).")
@_ck.option("--trt-profile", default=None, metavar="MIN:OPT:MAX",
            help="TensorRT batch optimisation profile, e.g. 1:4:8 (implies --dynamic-batch).")
@_ck.option("--timing-cache", type=_ck.Path(dir_okay=False), default=None,
            help="TensorRT timing cache file (loaded if present, saved after the build) [default: OUT/timing.cache].")
@_ck.option("--parity/--no-parity", default=True, show_default=True,
            help="Parity report + metric gates on real frames (needs --val-data or --calib-data).")
@_ck.option("--parity-frames", type=_ck.IntRange(min=1), default=4, show_default=True,
            help="Frames for the parity report.")
@_ck.option("--atol", type=float, default=1e-4, show_default=True,
            help="fp32 parity tolerance (max abs diff per output).")
def export_cmd(**flags):
    """Export CHECKPOINT to ONNX (dynamo, opset >= 18) with a parity report against torch on real frames,
    optional fp16 / int8 variants (each gated on mIoU / mAP drop), a static TensorRT-compatibility check and
    optional TensorRT engines. Exits non-zero (ParityError, code 8) when parity or a gate fails; the report
    is still written and failed artefacts are renamed *.rejected."""
    from ..export.options import ExportOptions
    from ..export.run import export_checkpoint

    chosen = tuple(v.name for v in OPTIONAL if flags.pop(v.name))
    export_checkpoint(ExportOptions(variants=chosen, **flags), echo=_ck.echo)


COMMANDS.append(export_cmd)


# ------------------------------------------------------------------------------- infer / bench
# (torch-free at import: the runtime and bench modules are imported inside the command bodies)

_RUNTIME_BACKENDS = ("auto", "onnxruntime", "onnxruntime-cuda", "onnxruntime-trt", "tensorrt")


@_ck.command("infer")
@_ck.option("--model", "model", required=True, type=_ck.Path(dir_okay=False),
            help="Exported model: model.onnx (metadata key 'mtl') or a TensorRT .engine with its .engine.json.")
@_ck.option("--data", required=True, type=_ck.Path(),
            help="A directory of NPZ chunks, one chunk file, or a raw A2D2 tree (auto-detected).")
@_ck.option("--out", required=True, type=_ck.Path(file_okay=False), help="Output directory.")
@_ck.option("--backend", type=_ck.Choice(_RUNTIME_BACKENDS), default="auto", show_default=True,
            help="auto: TensorRT EP -> CUDA EP -> CPU, each fallback reported. Explicit GPU backends never fall back.")
@_ck.option("--threads", type=int, default=None, help="CPU intra-op threads (default: onnxruntime's choice).")
@_ck.option("--overlay", is_flag=True, help="Also write <id>_overlay.png (semantic colours + projected boxes).")
@_ck.option("--limit", type=int, default=None, help="Process at most N frames.")
@_ck.option("--no-progress", is_flag=True, help="No progress bar.")
def infer_cmd(model, data, out, backend, threads, overlay, limit, no_progress):
    """Run the torch-free runtime on every frame: OUT/<id>.json (boxes in metres with class names, scores,
    timing), OUT/<id>_sem.png (class-id PNG), optional overlays, OUT/summary.json."""
    from ..runtime.pipeline import infer_directory

    s = infer_directory(model, data, out, backend=backend, threads=threads, overlay_images=overlay, limit=limit,
                        progress=not no_progress, log=lambda m: _ck.echo(m, err=True))
    t = s["mean_timing_ms"]
    skipped = ", ".join(f"{v} {k}" for k, v in s["frames_skipped"].items()) or "none"
    _ck.echo(f"{s['frames_written']} frames -> {out} ({s['backend']}: {', '.join(s['providers'])}); "
             f"{s['detections']} detections; skipped: {skipped}; mean total {t.get('total', 0):.2f} ms/frame")
    _ck.echo(f"summary: {out}/summary.json")


@_ck.command("bench")
@_ck.option("--model", "model", required=True, type=_ck.Path(dir_okay=False),
            help=f"fp32 {FP32.file}; {' / '.join(v.file for v in OPTIONAL)} / *.engine are looked up next to it.")
@_ck.option("--compare", default=",".join(DEFAULT_COMPARE), show_default=True,
            help=f"Comma-separated backends: {', '.join(BENCH_BACKENDS)}. Unavailable ones are listed as skipped "
                 "with the reason.")
@_ck.option("--checkpoint", type=_ck.Path(dir_okay=False), default=None,
            help="Torch checkpoint: the eager torch column and the parity reference.")
@_ck.option("--data", required=True, type=_ck.Path(), help="Chunks or a raw A2D2 tree (frames are preloaded).")
@_ck.option("--frames", "n_frames", type=int, default=8, show_default=True, help="Distinct frames to cycle through.")
@_ck.option("--iters", type=int, default=100, show_default=True, help="Timed frames per backend.")
@_ck.option("--warmup", type=int, default=10, show_default=True, help="Untimed frames per backend first.")
@_ck.option("--rounds", type=int, default=5, show_default=True,
            help="Interleave the timed frames in this many rounds over all backends (machine drift hits "
                 "every column alike).")
@_ck.option("--threads", type=int, default=None, help="Threads for every backend (ORT intra-op, torch).")
@_ck.option("--out", "out_dir", type=_ck.Path(file_okay=False), default="benchmarks/results", show_default=True,
            help="Directory for bench_<date>_<backends>.json / .md.")
@_ck.option("--no-progress", is_flag=True, help="No progress bar.")
def bench_cmd(model, compare, checkpoint, data, n_frames, iters, warmup, rounds, threads, out_dir, no_progress):
    """Per-stage latency (mean/p50/p90/p99), throughput, peak RSS and parity vs torch for each backend,
    printed as one table and written as JSON + markdown."""
    from ..bench import run_bench

    names = tuple(c.strip() for c in compare.split(",") if c.strip())
    report = run_bench(model, data, names, checkpoint=checkpoint, iters=iters, warmup=warmup, threads=threads,
                       n_frames=n_frames, out_dir=out_dir, progress=not no_progress, rounds=rounds)
    _ck.echo(report["markdown"])
    _ck.echo(f"written: {report['written']['json']}\n         {report['written']['markdown']}")


COMMANDS += [infer_cmd, bench_cmd]
