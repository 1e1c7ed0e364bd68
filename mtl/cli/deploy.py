"""`mtl export`, `mtl infer`, `mtl bench`, `mtl report`."""
from __future__ import annotations

import click as _ck

# the variant table is import-light (no torch / onnx): the export flags and the bench columns come from it
from ..export.options import CALIB_METHODS, DEFAULT_MAX_DROP
from ..export.variants import BENCH_BACKENDS, DEFAULT_COMPARE, FP32, GATED_PRECISIONS, OPTIONAL
from .options import note_printer, progress_option, ray_options, verbose_option, want_progress

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
                 "export_report.json/.md, manifest.json.")
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
@progress_option
@_ck.option("--overwrite", is_flag=True,
            help="Replace an export already in --out: the new set (models, engines, report, manifest) replaces the "
                 "old one in one commit once complete; old files it lacks are removed then.")
def export_cmd(**flags):
    """Export CHECKPOINT to ONNX (dynamo, opset >= 18) with a parity report against torch on real frames,
    optional fp16 / int8 variants (each gated on mIoU / mAP drop), a static TensorRT-compatibility check and
    optional TensorRT engines. Exits non-zero (ParityError, code 8) when parity or a gate fails; the report
    is still written and failed artefacts are renamed *.rejected. The output is one set (manifest.json written
    last, all files naming one checkpoint); an existing export is refused (exit 9) without --overwrite."""
    from ..export.options import ExportOptions
    from ..export.run import export_checkpoint

    chosen = tuple(v.name for v in OPTIONAL if flags.pop(v.name))
    flags["progress"] = want_progress(flags["progress"])
    export_checkpoint(ExportOptions(variants=chosen, **flags), echo=_ck.echo)


COMMANDS.append(export_cmd)


# ------------------------------------------------------------------------------- infer / bench
# (torch-free at import: the runtime and bench modules are imported inside the command bodies)

_RUNTIME_BACKENDS = ("auto", "onnxruntime", "onnxruntime-cuda", "onnxruntime-trt", "tensorrt")
_SCENARIOS = ("single-stream", "constant-stream", "offline")


@_ck.command("infer")
@_ck.option("--model", "model", required=True, type=_ck.Path(dir_okay=False),
            help="Exported model: model.onnx (metadata key 'mtl') or a TensorRT .engine with its .engine.json.")
@_ck.option("--data", required=True, type=_ck.Path(),
            help="A directory of NPZ chunks, one chunk file, or a raw A2D2 tree (auto-detected).")
@_ck.option("--out", required=True, type=_ck.Path(file_okay=False),
            help="Output directory (absent or empty, unless --resume / --overwrite; never inside --data).")
@_ck.option("--backend", type=_ck.Choice(_RUNTIME_BACKENDS), default="auto", show_default=True,
            help="auto: TensorRT EP -> CUDA EP -> CPU (-v says which and why). Explicit GPU backends never fall back.")
@_ck.option("--threads", type=int, default=None, help="CPU intra-op threads (default: onnxruntime's choice).")
@_ck.option("--overlay", is_flag=True, help="Also write frames/<id>_overlay.png (semantic colours + labelled boxes on "
                                            "the camera image; a bird's-eye view for LiDAR-only frames).")
@_ck.option("--eval", "evaluate", is_flag=True,
            help="Score every frame on the labels it carries (camera + semantic label: mIoU, pixel accuracy; LiDAR + "
                 "3D boxes: mAP) with mtl eval's metric code: printed and stored in summary.json['metrics'].")
@_ck.option("--score-threshold", type=_ck.FloatRange(0, 1, min_open=True, max_open=True), default=None,
            help="Keep boxes scoring above this instead of the model's decode.score_threshold (0 < t < 1). The "
                 "--eval mAP always uses decode.eval_score_threshold.")
@_ck.option("--max-detections", type=_ck.IntRange(1, 4096), default=None,
            help="At most this many boxes per frame instead of the model's decode.max_detections (also the --eval "
                 "top-K).")
@_ck.option("--limit", type=int, default=None, help="Process at most N frames.")
@_ck.option("--resume", is_flag=True,
            help="Continue an interrupted run in --out: frames already written by this model (with these decode "
                 "settings, and metric records for --eval) are kept, the rest run.")
@_ck.option("--overwrite", is_flag=True,
            help="Replace the results in --out: the new run replaces them in one commit once complete.")
@_ck.option("--skip-bad", is_flag=True,
            help="Skip and count chunks / frames that do not read (summary.json lists why) instead of stopping.")
@ray_options
@progress_option
@verbose_option
def infer_cmd(model, data, out, backend, threads, overlay, evaluate, score_threshold, max_detections, limit, resume,
              overwrite, skip_bad, ray_address, ray_workers, progress, verbose):
    """Run the torch-free runtime on every frame: OUT/frames/<id>.json (boxes in metres with class names, scores,
    timing, modality, the model's sha256), OUT/frames/<id>_sem.png (class ids, for machines),
    OUT/frames/<id>_sem_color.png (the same in colour, for people), optional overlays, then OUT/summary.json and
    OUT/manifest.json. LiDAR-only frames run with a mean-colour stand-in image (as mtl eval does). A non-empty OUT
    is refused (exit 9) without --resume / --overwrite.

    With --ray each chunk (raw tree: each piece of a scene) is a task for one of --ray-workers actors that hold
    the model (--threads each, default 1): the same files and summary as one machine. After a killed --ray run
    the same command with --resume runs only the frames still missing."""
    from ..runtime.infer import infer_directory

    s = infer_directory(model, data, out, backend=backend, threads=threads, overlay_images=overlay, limit=limit,
                        progress=want_progress(progress), log=lambda m: _ck.echo(m, err=True), overwrite=overwrite,
                        resume=resume, skip_bad=skip_bad, evaluate=evaluate, score_threshold=score_threshold,
                        max_detections=max_detections, note=note_printer(verbose), ray_address=ray_address,
                        ray_workers=ray_workers)
    for line in infer_lines(s, out):
        _ck.echo(line)


def infer_lines(s: dict, out: str) -> list[str]:
    """What ``mtl infer`` prints: frames (by modality), detections, skips, timing; the metrics with --eval."""
    t = s["mean_timing_ms"]
    skipped = ", ".join(f"{v} {k}" for k, v in s["frames_skipped"].items()) or "none"
    kinds = ", ".join(f"{v} {k}" for k, v in s["modalities"].items() if v)
    resumed = f", {s['frames_resumed']} kept from an earlier run" if s["frames_resumed"] else ""
    d = s["decode"]
    f = s.get("fleet")
    on = f" on Ray ({f['workers']} workers, {f['shards_run']}/{f['shards']} shards run)" if f else ""
    lines = [f"{s['frames_written']} frames ({kinds or 'none'}{resumed}) -> {out}{on} ({s['backend']}: "
             f"{', '.join(s['providers'])}); {s['detections']} detections (score > {d['score_threshold']:g}, at most "
             f"{d['max_detections']} per frame); skipped: {skipped}; mean total {t.get('total', 0):.2f} ms/frame"]
    m = s.get("metrics")
    if m is not None:
        sem = (f"mIoU {m['miou']:.4f}, pixel accuracy {m['pixel_acc']:.4f} over {m['semantic_frames']} frames with a "
               "camera image + semantic label" if m["semantic_frames"] else "no frame with a camera image + semantic "
                                                                            "label (mIoU, pixel accuracy: -)")
        det = (f"mAP {m['map']:.4f} over {m['detection_frames']} frames with LiDAR + 3D boxes"
               if m["detection_frames"] else "no frame with LiDAR + 3D boxes (mAP: -)")
        lines.append(f"eval: {sem}; {det}")
    lines.append(f"summary: {out}/summary.json")
    return lines


@_ck.command("bench")
@_ck.option("--model", "model", required=True, type=_ck.Path(dir_okay=False),
            help=f"fp32 {FP32.file}; {' / '.join(v.file for v in OPTIONAL)} / *.engine are looked up next to it.")
@_ck.option("--compare", default=",".join(DEFAULT_COMPARE), show_default=True,
            help=f"Comma-separated backends: {', '.join(BENCH_BACKENDS)}. Unavailable ones are listed as skipped "
                 "with the reason.")
@_ck.option("--checkpoint", type=_ck.Path(dir_okay=False), default=None,
            help="Torch checkpoint: the torch / torch-compile columns and the parity reference.")
@_ck.option("--data", required=True, type=_ck.Path(), help="Chunks or a raw A2D2 tree (frames are preloaded).")
@_ck.option("--scenario", type=_ck.Choice(_SCENARIOS), default="single-stream", show_default=True,
            help="single-stream: one frame at a time, back to back. constant-stream: arrivals at --rate-hz on a "
                 "fixed schedule, latency from arrival (queueing counts). offline: all frames available, "
                 "overlapped (run_stream) vs back to back.")
@_ck.option("--input", "input_kind", type=_ck.Choice(("png", "sensor")), default="png", show_default=True,
            help="png: frames as stored (PNG decode timed). sensor: the original distorted camera pixels + LiDAR "
                 "array, as drivers deliver them (needs a raw A2D2 tree).")
@_ck.option("--frames", "n_frames", type=int, default=8, show_default=True, help="Distinct frames to cycle through.")
@_ck.option("--queries", "--iters", "queries", type=int, default=3000, show_default=True,
            help="Timed queries per backend (3,000: the fewest whose maximum bounds the p99.9 at 95%; MLPerf's "
                 "single-stream minimum is 6636).")
@_ck.option("--warmup", type=int, default=10, show_default=True, help="Untimed frames per backend first.")
@_ck.option("--rounds", type=int, default=5, show_default=True,
            help="single-stream / offline: interleave the timed queries in this many rounds (machine drift hits "
                 "every column alike).")
@_ck.option("--threads", type=int, default=None, help="Threads for every backend (ORT intra-op, torch, OpenVINO).")
@_ck.option("--rate-hz", type=float, default=10.0, show_default=True,
            help="constant-stream arrival rate (A2D2's sensor rate).")
@_ck.option("--deadline-ms", type=float, default=100.0, show_default=True,
            help="constant-stream deadline: share of frames over it, and the --find-max-rate criterion.")
@_ck.option("--find-max-rate", "find_rate", is_flag=True,
            help="constant-stream: also search the highest rate whose p99.9 stays under --deadline-ms.")
@_ck.option("--probe-queries", type=int, default=300, show_default=True,
            help="Queries per --find-max-rate probe.")
@_ck.option("--sessions", type=int, default=1, show_default=True,
            help="constant-stream / offline: inference sessions run_stream runs concurrently (onnxruntime).")
@_ck.option("--serve", type=_ck.Choice(("stream", "frame")), default="stream", show_default=True,
            help="constant-stream: stream = Pipeline.run_stream (the next frame is preprocessed while one is in "
                 "inference: throughput); frame = Pipeline.run_frame one frame at a time in arrival order (each "
                 "frame gets every core; one arriving while another runs waits: latency at a sensor rate).")
@_ck.option("--out", "out_dir", type=_ck.Path(file_okay=False), default="runs/bench", show_default=True,
            help="Results go to a new folder OUT/<date-time>_<scenario>/: bench_<backends that ran>.json / .md, "
                 "system.json.")
@progress_option
def bench_cmd(model, compare, checkpoint, data, progress, **settings):
    """Latency distribution (min / mean / p50 / p90 / p99 / p99.9 / max / std), throughput, cold start, peak RSS
    and parity vs torch for each backend under an MLPerf-style scenario. Prints a compact summary; the wide
    table goes to the markdown, everything to the JSON. Model files exported from another checkpoint than the
    fp32 model.onnx beside them are refused (exit 5)."""
    from ..bench import run_bench
    from ..io import OutputLock

    names = tuple(c.strip() for c in compare.split(",") if c.strip())
    # one bench per results folder at a time: two would also skew each other's timings
    with OutputLock(settings["out_dir"], "mtl bench"):
        report = run_bench(model, data, names, checkpoint=checkpoint, progress=want_progress(progress), **settings)
    _ck.echo(report["summary"])
    w = report["written"]
    _ck.echo(f"written: {w['json']}\n         {w['markdown']}\n         {w['system']}")


@_ck.command("report")
@_ck.argument("paths", nargs=-1, required=True, type=_ck.Path(exists=True))
@_ck.option("--out", required=True, type=_ck.Path(file_okay=False),
            help="Folder for the site (index.html + images); created if missing.")
@_ck.option("--overwrite", is_flag=True,
            help="Write into a non-empty folder that is not an earlier report (only the report's files are "
                 "written; nothing else is deleted). An earlier report in --out is always replaced.")
def report_cmd(paths, out, overwrite):
    """Make one static site from training runs, export folders, infer outputs and bench results (any mix,
    several at once): curves, per-class IoU / AP per epoch and debug images of a run; parity, gates and the
    TensorRT check of an export; a contact sheet (camera overlay + bird's-eye view), per-frame detections
    and metrics of an infer output; tables, latency distributions and the system description of a bench.
    Open OUT/index.html in a browser: no server, no network."""
    from ..report import build_report

    manifest = build_report(paths, out, overwrite=overwrite)
    size = sum(f["size"] for f in manifest["files"]) / 1e6
    kinds = ", ".join(f"{i['kind']} {i['path']}" for i in manifest["inputs"])
    _ck.echo(f"report: {out}/index.html ({kinds}; {len(manifest['files'])} files, {size:.1f} MB)")


COMMANDS += [infer_cmd, bench_cmd, report_cmd]
