"""``mtl bench``: latency distribution, throughput, cold start, memory and parity of the runtime backends and
their peers, under an MLPerf-style scenario, in ONE table.

For each backend in ``--compare`` (``BENCH_BACKENDS``) the same preloaded frames go through the same numpy
preprocess and postprocess (``mtl.runtime.Pipeline``); only the inference engine differs:

- one column per row of ``mtl.export.variants.VARIANTS`` on the CPU EP: ``onnxruntime`` runs ``--model``
  (fp32 ONNX), ``onnxruntime-fp16`` / ``-int8`` (TensorRT recipe) / ``-int8-cpu`` (onnxruntime CPU recipe)
  the variant's file next to it (``model_fp16.onnx``, ...); a missing file names the export flag that writes it
- ``onnxruntime-cuda`` / ``onnxruntime-trt``   ``--model`` on the CUDA / TensorRT EP
- ``tensorrt``           the ``*.engine`` next to ``--model`` (``model.engine`` preferred), native TensorRT
- peers (``mtl.bench_peers``): ``torch`` / ``torch-compile`` (``--checkpoint``, eager / inductor; torch is
  imported lazily, only for these columns and the parity reference), ``openvino`` / ``openvino-auto``
  (``--model`` on OpenVINO's CPU plugin, fp32 / its default precision; optional extra ``mtl[openvino]``)

Unavailable backends are rows with ``status = "skipped: <reason>"``; nothing is ever substituted.

``--input png`` feeds frames as stored (a PNG to decode; raw A2D2 frames also undistorted); ``--input sensor``
feeds what the drivers hand over: the original distorted camera pixels, decoded once at load (raw A2D2 frames
only), and the LiDAR array; the runtime undistorts + resizes + normalises them in one remap pass
(``Pipeline.run_sensor`` builds the same frame from two arrays).

Scenarios (``mtl.bench_scenarios``): ``single-stream`` (``time_backends``: back to back, every backend timed
interleaved in ``--rounds`` rounds), ``constant-stream`` (a fixed arrival schedule at ``--rate-hz``; latency
from arrival, so queueing counts; ``--find-max-rate``) and ``offline`` (``Pipeline.run_stream`` vs
back-to-back ``run_frame``). Latency: n, min, mean, std, p50 / p90 / p99 / p99.9 (nearest rank) and max over
``--queries`` queries, plus the 95% upper confidence bound on the p99.9 (``mtl.bench_stats``); each row also
keeps every query's end-to-end latency (``latencies_ms``, 0.001 ms: ``mtl report`` draws its CDF). The cyclic
garbage collector is run and frozen before timing (``gc.freeze``) so its pauses do not land in the tail.

Cold start per backend: the library's import (when this process had not imported it yet), opening the model
(load, session creation / compile / engine deserialisation, by step) and the first frame. Peak RSS = the
process high-water mark after the backend was opened and warmed up (cumulative, so backends open in the order
given, torch last). Parity (needs ``--checkpoint``): max |diff| per output vs torch on every bench frame,
decoded boxes identical per frame, and mIoU / mAP deltas against the frames' ground truth.

Results go to ``--out`` (default ``runs/bench``), in a new folder ``<date-time>_<scenario>`` per run (``_2``,
... when two runs start in the same second): ``bench_<tags of the backends that ran>.json`` / ``.md`` and
``system.json`` (``mtl.bench_system``: CPU, governor, memory, OS, libraries, GPU, models, load before/after).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import importlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .bench_peers import PEERS, TorchBackend, open_peer, torch_pipeline
from .bench_report import terminal_summary, to_markdown
from .bench_scenarios import SERVE, constant_stream, find_max_rate, offline
from .bench_stats import latency_stats, stats
from .bench_system import cpu_model, device_state, load_avg, peak_rss_mb, system_description
from .contract import OUTPUTS
from .errors import BackendUnavailableError, DataError, MtlError
from .export.variants import BENCH_BACKENDS, DEFAULT_COMPARE, FP32, VARIANTS, bench_variant  # import-light
from .runtime import kernels
from .runtime.frames import KIND_RAW, RuntimeFrame, iter_frames
from .runtime.pipeline import Pipeline
from .runtime.preprocess import ModelSpec, decode_image
from .runtime.sensor import sensor_remap

BOX_ATOL = 1e-4
SCENARIOS = ("single-stream", "constant-stream", "offline")
INPUTS = ("png", "sensor")
DEFAULT_QUERIES = 3000          # the smallest round number whose maximum bounds the p99.9 at 95% (bench_stats)
DEFAULT_OUT = "runs/bench"
TAGS = {**{v.bench: v.tag for v in VARIANTS}, "onnxruntime-cuda": "ort-cuda", "onnxruntime-trt": "ort-trt",
        "tensorrt": "trt", "torch": "torch", "torch-compile": "torch-compile", "openvino": "ov",
        "openvino-auto": "ov-auto"}
_LIBRARY = {"torch": "torch", "torch-compile": "torch", "openvino": "openvino", "openvino-auto": "openvino",
            "tensorrt": "tensorrt"}          # every other column imports onnxruntime


# ------------------------------------------------------------------------------------------ frames


def load_frames(data: str | Path, cfg, n_frames: int, input_kind: str = "png") -> tuple[list[RuntimeFrame], int]:
    """Up to ``n_frames`` frames with a camera image (and how many without one were skipped); ``sensor``
    input decodes each raw frame's original PNG once here, so the timed runs start from pixels."""
    frames, skipped = [], 0
    for f in iter_frames(data, cfg, with_gt=True):
        if not f.has_image:
            skipped += 1
            continue
        frames.append(sensor_frame(f, data) if input_kind == "sensor" else f)
        if len(frames) >= n_frames:
            break
    if not frames:
        raise DataError(data, f"no frame with a camera image found ({skipped} without one)")
    return frames, skipped


def sensor_frame(frame: RuntimeFrame, data: str | Path) -> RuntimeFrame:
    """The frame as the drivers deliver it: the original distorted camera pixels (decoded) and the points."""
    if frame.kind != KIND_RAW:
        raise DataError(data, "--input sensor needs raw A2D2 frames (the original distorted camera image and the "
                              "LiDAR sweep, e.g. from `mtl data synth`); this data holds chunk frames, already "
                              "undistorted at the model size (use --input png)")
    img = frame.image if frame.image is not None else decode_image(frame.image_png, frame.source or frame.frame_id)
    return replace(frame, image=img, image_png=None)


# ------------------------------------------------------------------------------------------ backends


def _model_paths(model: Path) -> dict[str, Path | None]:
    """backend -> the file it opens: each variant's file next to ``--model`` (fp32: ``--model`` itself, also on
    the GPU EPs) and the engine (``model.engine`` preferred)."""
    engines = sorted(model.parent.glob("*.engine"))
    preferred = model.with_suffix(".engine")
    return {**{v.bench: model if v is FP32 else model.parent / v.file for v in VARIANTS},
            "onnxruntime-cuda": model, "onnxruntime-trt": model,
            "tensorrt": preferred if preferred.is_file() else (engines[0] if engines else None)}


def _missing_reason(name: str, model: Path, path: Path | None) -> str:
    """Why a backend's file is absent, naming the ``mtl export`` flag that writes it."""
    v = bench_variant(name)
    if v is not None and v.flag:
        return f"no {v.file} next to {model.name} (mtl export {v.flag})"
    if name == "tensorrt":
        return f"no *.engine next to {model.name} (mtl export --trt)"
    return f"{path} not found"


def open_bench_pipeline(name: str, model: Path, checkpoint: Path | None, threads: int | None) -> Pipeline:
    """Raise ``_Skip(reason)`` when the backend cannot run here."""
    if name in PEERS:
        try:
            return open_peer(name, model, checkpoint, threads)
        except BackendUnavailableError as e:
            raise _Skip(e.reason) from None
    path = _model_paths(model).get(name)
    if path is None or not path.is_file():
        raise _Skip(_missing_reason(name, model, path))
    kind = "onnxruntime" if bench_variant(name) else name       # every variant file runs on the CPU EP
    try:
        return Pipeline.open(path, kind, threads)
    except BackendUnavailableError as e:
        raise _Skip(e.reason) from None


class _Skip(Exception):
    pass


def _import_ms(name: str) -> float | None:
    """Milliseconds to import the column's library now, None when this process already had it (or it fails:
    opening the backend then reports why)."""
    module = _LIBRARY.get(name, "onnxruntime")
    if module in sys.modules:
        return None
    t0 = time.perf_counter()
    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001 - ImportError, or OSError from a wheel whose libraries do not load
        return None
    return round((time.perf_counter() - t0) * 1e3, 3)


# -------------------------------------------------------------------------------------- single-stream


def latencies_ms(values: Any) -> list[float]:
    """Every query's end-to-end latency in ms, rounded to 0.001 ms: what the report's latency CDF is drawn from
    (a few thousand floats per backend)."""
    return np.round(np.asarray(values, np.float64), 3).tolist()


def _summary(per_stage: dict[str, list[float]], latency: list[float]) -> dict:
    st = {k: stats(v) for k, v in per_stage.items()}
    lat = latency_stats(latency)
    return {"latency": lat, "latencies_ms": latencies_ms(latency), "stages": st,
            "throughput_fps": round(1000.0 / lat["mean"], 2) if lat.get("mean") else None}


def warm_up(pipe: Pipeline, frames: list[RuntimeFrame], warmup: int) -> None:
    for i in range(warmup):
        pipe.run_frame(frames[i % len(frames)], keep_outputs=False)


def time_backends(pipes: dict[str, Pipeline], frames: list[RuntimeFrame], iters: int, rounds: int = 1,
                  tick: Callable[[], None] | None = None) -> dict[str, dict]:
    """Single-stream: time every pipeline on the same frames, interleaved: ``rounds`` rounds, each running every
    backend for its share of ``iters`` frames in turn, so a slow drift of the machine (other tenants, clocks)
    hits all columns alike instead of whichever ran last. A query's latency is from calling ``run_frame`` to
    its return. Returns name -> {"latency": latency_stats, "stages": stats, "throughput_fps"} or {"error":
    MtlError} for a backend that failed (it is dropped from the later rounds)."""
    rounds = max(1, min(rounds, iters))
    per: dict[str, dict[str, list[float]]] = {n: {} for n in pipes}
    latency: dict[str, list[float]] = {n: [] for n in pipes}
    failed: dict[str, MtlError] = {}
    done = 0
    for r in range(rounds):
        n = iters * (r + 1) // rounds - iters * r // rounds
        for name, pipe in pipes.items():
            if name in failed:
                continue
            try:
                for i in range(done, done + n):
                    t0 = time.perf_counter()
                    res = pipe.run_frame(frames[i % len(frames)], keep_outputs=False)
                    latency[name].append((time.perf_counter() - t0) * 1e3)
                    for k, v in res.timings_ms.items():
                        per[name].setdefault(k, []).append(v)
                    if tick:
                        tick()
            except MtlError as e:
                failed[name] = e
        done += n
    return {name: ({"error": failed[name]} if name in failed else _summary(per[name], latency[name]))
            for name in pipes}


def time_backend(pipe: Pipeline, frames: list[RuntimeFrame], iters: int, warmup: int,
                 tick: Callable[[], None] | None = None) -> dict:
    """One pipeline: ``warmup`` untimed frames, then ``iters`` timed ones (see ``time_backends``)."""
    warm_up(pipe, frames, warmup)
    res = time_backends({"pipe": pipe}, frames, iters, 1, tick)["pipe"]
    if "error" in res:
        raise res["error"]
    return res


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """Collect once and freeze every surviving object (``gc.freeze``) for the timed runs: the collector then
    only scans what the runs allocate, so a full collection's pause cannot land in the latency tail."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


# ------------------------------------------------------------------------------------------ parity


def frame_outputs(pipe: Pipeline, frames: list[RuntimeFrame]) -> list[dict]:
    out = []
    for f in frames:
        r = pipe.run_frame(f)
        out.append({"outputs": {k: np.asarray(r.outputs[k], np.float32) for k in OUTPUTS},
                    "boxes": r.boxes, "scores": r.scores, "labels": r.labels, "semantic": r.semantic})
    return out


def boxes_identical(a: dict, b: dict, atol: float = BOX_ATOL) -> bool:
    return (len(a["boxes"]) == len(b["boxes"]) and np.array_equal(a["labels"], b["labels"])
            and np.allclose(a["boxes"], b["boxes"], atol=atol, rtol=0))


def task_metrics(results: list[dict], frames: list[RuntimeFrame], cfg) -> dict:
    """mIoU over the frames with semantic ground truth, mAP over those with boxes (``MetricsAccumulator``:
    boxes re-decoded from each frame's heatmap at the metric score cut, the same as ``mtl eval``'s)."""
    try:
        from .metrics import MetricsAccumulator, metric_detections
    except ImportError:
        return {"reason": "mtl.metrics not available"}
    acc = MetricsAccumulator.from_config(cfg)
    for r, f in zip(results, frames):
        det = metric_detections(r["outputs"]["bbox_heatmap"][0], r["outputs"]["bbox_reg"][0], cfg) \
            if f.gt_boxes is not None else {}
        acc.add_frame(f.frame_id, semantic_pred=r["semantic"] if f.gt_semantic is not None else None,
                      semantic_gt=f.gt_semantic, gt_boxes=f.gt_boxes, gt_labels=f.gt_labels, **det)
    m = acc.compute()
    out: dict[str, Any] = {}
    if acc.n_semantic_frames:
        out["miou"] = float(m["miou"])
    if acc.n_detection_frames:
        out["map"] = float(m["map"])
    if not out:
        out["reason"] = "bench frames have no ground truth"
    return out


def boxes_equivalent(r: dict, g: dict, cfg) -> bool:
    """Decoded boxes equal (``BOX_ATOL``) except detections at tied / near-tied heatmap peaks or at the
    threshold / top-K boundary (``export.parity.compare_detections``): what an untrained net's flat heatmap
    legitimately flips under 1e-7 output differences."""
    from .export.parity import compare_detections, numpy_decode

    d = cfg.decode
    c = compare_detections(numpy_decode(r["outputs"], 0, cfg, d.score_threshold),
                           numpy_decode(g["outputs"], 0, cfg, d.score_threshold), BOX_ATOL, d.score_threshold,
                           ref_heat=r["outputs"]["bbox_heatmap"][0], got_heat=g["outputs"]["bbox_heatmap"][0])
    return bool(c["passed"])


def parity(ref: list[dict], got: list[dict], ref_metrics: dict, got_metrics: dict, cfg=None) -> dict:
    """Max abs diff per output; decoded boxes identical per frame (strict), and with ``cfg`` also
    ``boxes_equivalent`` (ties at flat heatmap peaks excepted, see ``boxes_equivalent``)."""
    p: dict[str, Any] = {"max_abs_diff": {}}
    for k in OUTPUTS:
        p["max_abs_diff"][k] = float(max(np.max(np.abs(r["outputs"][k].astype(np.float64) - g["outputs"][k]))
                                         for r, g in zip(ref, got)))
    flags = [boxes_identical(r, g) for r, g in zip(ref, got)]
    same = sum(flags)
    p["boxes_identical"] = f"{same}/{len(ref)}"
    p["boxes_identical_all"] = same == len(ref)
    if cfg is not None and not p["boxes_identical_all"]:
        eq = sum(f or boxes_equivalent(r, g, cfg) for f, r, g in zip(flags, ref, got))
        p["boxes_equivalent"] = f"{eq}/{len(ref)}"
    for key in ("miou", "map"):
        if key in ref_metrics and key in got_metrics:
            p[f"{key}_delta"] = round(got_metrics[key] - ref_metrics[key], 6)
    return p


# ------------------------------------------------------------------------------------- compute




# ------------------------------------------------------------------------------------- compute


def onnx_conv_macs(path: str | Path) -> dict:
    """Multiply-accumulates of every Conv / ConvTranspose / MatMul / Gemm in an fp32 ONNX model
    (``mtl.export.onnx_io.conv_macs``, shared with the INT8 exporter's MAC share): {"total": int,
    "by_op": {op: int}, "nodes": [(name, op, macs)]}. What the roofline (benchmarks/bench_roofline.py) divides
    by the measured time to get achieved GFLOP/s (2 FLOPs a MAC)."""
    from .export.onnx_io import conv_macs

    return conv_macs(path)


# ---------------------------------------------------------------------------------------- the bench


# ---------------------------------------------------------------------------------------- the bench


def run_bench(model: str | Path, data: str | Path, compare: tuple[str, ...] = DEFAULT_COMPARE,
              checkpoint: str | Path | None = None, queries: int = DEFAULT_QUERIES, warmup: int = 10,
              threads: int | None = None, n_frames: int = 8, out_dir: str | Path | None = DEFAULT_OUT,
              rounds: int = 5, scenario: str = "single-stream", input_kind: str = "png", rate_hz: float = 10.0,
              deadline_ms: float = 100.0, find_rate: bool = False, probe_queries: int = 300, sessions: int = 1,
              serve: str = "stream", progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """``mtl bench``: open + warm up every backend (cold start measured), run the scenario, then parity vs torch;
    returns the report (with its markdown table and terminal summary) and writes it to a new folder under
    ``out_dir`` unless that is None."""
    from .contract import check_export_set, read_onnx_metadata

    model = Path(model)
    checkpoint = Path(checkpoint) if checkpoint else None
    _check_args(compare, queries, warmup, rounds, scenario, input_kind, rate_hz, deadline_ms, probe_queries, sessions,
                serve)
    # every column's file comes from one export: same source checkpoint as the fp32 model, no unfinished commit
    check_export_set([model, *(p for c in compare if (p := _model_paths(model).get(c)) is not None and p.is_file())])
    system = system_description(threads)
    meta = read_onnx_metadata(model)
    cfg = ModelSpec.from_metadata(meta, model).cfg
    frames, no_image = load_frames(data, cfg, n_frames, input_kind)
    # the camera's fused remap table (process-wide cache) and the runtime's numba kernels (compiled or loaded)
    cam = cfg.camera
    remap_ms = (_one_off_ms(sensor_remap, cam, tuple(cam.image_hw), tuple(cam.mean), tuple(cam.std))
                if any(f.kind == KIND_RAW for f in frames) else None)
    kernels_ms = _one_off_ms(kernels.available)
    # torch runs last: importing it raises the process RSS high-water mark for everything after it
    order = [c for c in compare if c not in ("torch", "torch-compile")] + \
            [c for c in compare if c in ("torch", "torch-compile")]
    bar = None
    if progress:
        from tqdm import tqdm

        per_backend = warmup + 1 + {"single-stream": queries, "offline": 2 * queries,
                                    "constant-stream": queries + (8 * probe_queries if find_rate else 0)}[scenario]
        bar = tqdm(total=per_backend * len(order), unit="it", desc=f"bench {scenario}", file=sys.stderr)
    advance = bar.update if bar else (lambda n: None)
    rows: list[dict] = []
    pipes: dict[str, Pipeline] = {}
    settings = {"queries": queries, "rounds": rounds, "rate_hz": rate_hz, "deadline_ms": deadline_ms,
                "find_rate": find_rate, "probe_queries": probe_queries, "sessions": sessions, "serve": serve}
    try:
        for name in order:                      # open + warm up in order (peak RSS is cumulative)
            rows.append(_open_backend(name, lambda n: open_bench_pipeline(n, model, checkpoint, threads), cfg,
                                      frames, warmup, pipes))
            advance(warmup + 1)
        with quiet_gc():
            timed = run_scenario(scenario, pipes, frames, settings, lambda: advance(1))
        results = _finish_rows(rows, pipes, timed, frames, cfg)
        _add_int8_info(rows, model)
    finally:
        for pipe in pipes.values():
            pipe.close()
        if bar:
            bar.close()
    parity_note = _add_parity(rows, results, checkpoint, threads, frames, cfg)
    _add_speedups(rows, scenario)
    system.update(load_avg_after=load_avg(), models=_models(rows, meta))
    report = {
        "mtl_bench": 2, "scenario": scenario, "input": input_kind, "model": str(model), "data": str(data),
        "frames": len(frames), "frames_without_image_skipped": no_image, "frame_ids": [f.frame_id for f in frames],
        "queries": queries, "warmup": warmup, "rounds": max(1, min(rounds, queries)), "threads": threads,
        "sessions": sessions, "serve": serve, "rate_hz": rate_hz, "deadline_ms": deadline_ms,
        "find_max_rate": find_rate, "probe_queries": probe_queries, "compare": list(compare),
        "ran": [r["backend"] for r in rows if r["status"] == "ok"],
        "model_config": {"image_hw": list(cfg.camera.image_hw), "grid": list(cfg.grid.shape),
                         "bev_channels": cfg.grid.n_channels, "n_det": cfg.classes.n_det, "n_sem": cfg.classes.n_sem,
                         "camera_resolution_wh": list(cfg.camera.resolution_wh)},
        "remap_table_build_ms": remap_ms, "stages": kernels.name(), "stages_load_ms": kernels_ms,
        **_checkpoint_info(checkpoint, meta),
        "parity_note": parity_note,
        "harness": _harness(scenario, serve),
        "system": system, "rows": rows,
    }
    report["markdown"] = to_markdown(report)
    report["summary"] = terminal_summary(report)
    if out_dir is not None:
        report["written"] = write_report(report, out_dir)
    return report


def _one_off_ms(fn: Callable[..., object], *args) -> float:
    """``fn(*args)`` once, before any backend opens (so no backend's open or first frame pays for it); the
    milliseconds it took (a one-off of the process's cold start, reported on its own)."""
    t0 = time.perf_counter()
    fn(*args)
    return round((time.perf_counter() - t0) * 1e3, 3)


def run_scenario(scenario: str, pipes: dict[str, Pipeline], frames: list[RuntimeFrame], s: dict,
                 tick: Callable[[], None]) -> dict[str, dict]:
    """name -> the scenario's result for that backend (``latency``, ``stages``, ``throughput_fps`` and the
    scenario's own block) or {"error": MtlError}."""
    if scenario == "single-stream":
        return time_backends(pipes, frames, s["queries"], s["rounds"], tick)
    out: dict[str, dict] = {}
    for name, pipe in pipes.items():             # a schedule or a stream per backend: one backend at a time
        try:
            n, note = usable_sessions(pipe, s["sessions"])
            if scenario == "offline":
                r = offline(pipe, frames, s["queries"], s["rounds"], n, tick)
                out[name] = {"offline": r, "latency": r["stream_latency"], "latencies_ms": r.pop("latencies_ms"),
                             "stages": r["stages"], "throughput_fps": r["stream_fps"]}
            else:
                r = constant_stream(pipe, frames, s["queries"], s["rate_hz"], s["deadline_ms"], n, tick, s["serve"])
                out[name] = {"constant_stream": r, "latency": r["latency"], "latencies_ms": r.pop("latencies_ms"),
                             "stages": r["stages"], "throughput_fps": r["achieved_rate_hz"]}
                if s["find_rate"]:
                    start = 0.9 * 1000.0 / max(r["latency"]["p50"], 1e-3)
                    out[name]["max_rate"] = find_max_rate(pipe, frames, s["deadline_ms"], s["probe_queries"], start,
                                                          n, tick=tick, serve=s["serve"])
            if note:
                out[name]["sessions_note"] = note
        except MtlError as e:
            out[name] = {"error": e}
    return out


def usable_sessions(pipe: Pipeline, sessions: int) -> tuple[int, str | None]:
    """``sessions`` when the backend can open that many (they are created now, outside the timing), else 1
    and why."""
    try:
        pipe.run_stream((), sessions=sessions)         # opens the extra sessions; the stream is never started
    except BackendUnavailableError as e:
        return 1, f"1 session ({e.reason})"
    return sessions, None


def _harness(scenario: str, serve: str = "stream") -> dict:
    served = "Pipeline.run_stream" if serve == "stream" else "Pipeline.run_frame, one frame at a time"
    latency = {"single-stream": "from calling Pipeline.run_frame to its return, frames back to back",
               "constant-stream": f"from the frame's scheduled arrival to its Result ({served}), so waiting for "
                                  "the runtime counts",
               "offline": "per frame, from its preprocess start to its postprocess end inside run_stream"}[scenario]
    return {"latency": latency, "percentiles": "nearest rank: the ceil(q/100*n)-th smallest",
            "p99.9_upper95": "95% upper confidence bound on the true p99.9 (order statistic, binomial)",
            "gc": "collected and frozen (gc.freeze) before the timed runs",
            "cold_start": "import (first use of the library in this process), open (load + session / compile / "
                          "engine), first frame; warm-up frames follow. Raw frames: the fused remap table is built "
                          "once before (remap_table_build_ms)"}


def _check_args(compare: tuple[str, ...], queries: int, warmup: int, rounds: int, scenario: str = "single-stream",
                input_kind: str = "png", rate_hz: float = 10.0, deadline_ms: float = 100.0,
                probe_queries: int = 300, sessions: int = 1, serve: str = "stream") -> None:
    unknown = [c for c in compare if c not in BENCH_BACKENDS]
    if unknown:
        raise BackendUnavailableError(None, f"unknown --compare entries {unknown} "
                                            f"(choose from {', '.join(BENCH_BACKENDS)})")
    if queries < 1 or warmup < 0 or rounds < 1:
        raise DataError(None, f"--queries and --rounds must be >= 1 and --warmup >= 0, got {queries} / {rounds} / "
                              f"{warmup}")
    if scenario not in SCENARIOS or input_kind not in INPUTS:
        raise DataError(None, f"--scenario must be one of {', '.join(SCENARIOS)} and --input one of "
                              f"{', '.join(INPUTS)}, got {scenario!r} / {input_kind!r}")
    if not (rate_hz > 0 and deadline_ms > 0 and probe_queries >= 1 and sessions >= 1):
        raise DataError(None, f"--rate-hz and --deadline-ms must be > 0, --probe-queries and --sessions >= 1, got "
                              f"{rate_hz} / {deadline_ms} / {probe_queries} / {sessions}")
    if serve not in SERVE or (serve == "frame" and sessions > 1):
        raise DataError(None, f"--serve must be one of {', '.join(SERVE)} (and --serve frame runs one session), got "
                              f"{serve!r} with --sessions {sessions}")


def _checkpoint_info(checkpoint: Path | None, meta: dict) -> dict[str, Any]:
    """The checkpoint's path and sha256, and whether it is the one the model was exported from."""
    if checkpoint is None:
        return {}
    from .config import sha256_file

    sha = sha256_file(checkpoint) if checkpoint.is_file() else None
    return {"checkpoint": str(checkpoint), "checkpoint_sha256": sha,
            "matches_model_source": sha == meta.get("source_checkpoint_sha256")}


def _models(rows: list[dict], meta: dict) -> dict[str, dict]:
    """What every backend that ran loaded: path, sha256, precision (``system.json``'s ``models``)."""
    from .config import sha256_file

    out: dict[str, dict] = {}
    for r in rows:
        if r["status"] == "ok" and r.get("model") and Path(r["model"]).is_file():
            out[r["backend"]] = {"path": r["model"], "sha256": sha256_file(r["model"]), "precision": r["precision"]}
    return out


def _open_backend(name: str, open_pipe: Callable[[str], Pipeline], cfg, frames: list[RuntimeFrame], warmup: int,
                  pipes: dict[str, Pipeline]) -> dict[str, Any]:
    """One row: open the backend (or record why it is skipped), time its cold start (import, open, first
    frame) and warm it up; a warm pipeline joins ``pipes``."""
    row: dict[str, Any] = {"backend": name}
    import_ms = _import_ms(name)
    t0 = time.perf_counter()
    try:
        pipe = open_pipe(name)
    except (_Skip, MtlError) as e:
        row["status"] = f"skipped: {e}"
        return row
    open_ms = (time.perf_counter() - t0) * 1e3
    if name in ("torch", "torch-compile") and pipe.cfg.to_dict() != cfg.to_dict():
        row["status"] = "skipped: checkpoint config differs from the model's metadata config"
        pipe.close()
        return row
    row.update(status="ok", model=pipe.spec.path, precision=getattr(pipe.backend, "precision", pipe.spec.precision),
               providers=pipe.backend.providers, fallback=pipe.fallback)
    try:
        t1 = time.perf_counter()
        pipe.run_frame(frames[0], keep_outputs=False)
        first_ms = (time.perf_counter() - t1) * 1e3
        warm_up(pipe, frames, warmup)
        pipes[name] = pipe
    except MtlError as e:
        row["status"] = f"failed: {e}"
        pipe.close()
        return row
    row["cold_start"] = {"import_ms": import_ms, "open_ms": round(open_ms, 3),
                         **{k: round(v, 3) for k, v in pipe.backend.open_ms.items()},
                         "first_frame_ms": round(first_ms, 3)}
    if name == "torch-compile":
        row["compile_s"] = round(first_ms / 1e3, 3)          # inductor compiles on the first call
    row["peak_rss_mb"] = peak_rss_mb()
    return row


def _finish_rows(rows: list[dict], pipes: dict[str, Pipeline], timed: dict[str, dict], frames: list[RuntimeFrame],
                 cfg) -> dict[str, list[dict]]:
    """Timings into the rows, then every timed backend's outputs on the frames (and their task metrics)."""
    results: dict[str, list[dict]] = {}
    for row in rows:
        name = row["backend"]
        if name not in pipes:
            continue
        if "error" in timed[name]:
            row["status"] = f"failed: {timed[name]['error']}"
            continue
        row.update(timed[name])
        inference = row["stages"].get("inference", {}).get("mean")
        if inference and row["latency"].get("mean"):
            row["e2e_over_inference"] = round(row["latency"]["mean"] / inference, 4)
        try:
            results[name] = frame_outputs(pipes[name], frames)
            row["metrics"] = task_metrics(results[name], frames, cfg)
        except MtlError as e:
            row["status"] = f"failed: {e}"
    return results


def _add_int8_info(rows: list[dict], model: Path) -> None:
    """The INT8 rows' calibration method and mixed precision (units kept in float, share of MACs in INT8),
    from the metadata ``mtl export`` wrote into their files."""
    from .contract import read_onnx_metadata

    paths = _model_paths(model)
    for row in rows:
        v = bench_variant(row["backend"])
        if v is None or v.precision != "int8" or row.get("status") != "ok":
            continue
        meta = read_onnx_metadata(paths[row["backend"]])
        if "int8_mac_share" in meta:
            row["int8"] = {"calibration": meta.get("int8_calibration"), "mac_share": meta["int8_mac_share"],
                           "float_nodes": list(meta.get("int8_float_nodes") or [])}


def _add_parity(rows: list[dict], results: dict[str, list[dict]], checkpoint: Path | None, threads: int | None,
                frames: list[RuntimeFrame], cfg) -> str | None:
    """Parity vs torch of every backend with outputs; returns why there is none (None when measured)."""
    if checkpoint is None:
        return "no --checkpoint: parity vs torch not measured"
    note = None
    if "torch" not in results:          # parity reference even when the torch column itself was not requested
        note = _torch_reference(results, checkpoint, threads, frames, cfg)
    if "torch" not in results:
        return note or "torch reference unavailable"
    ref = results["torch"]
    ref_metrics = task_metrics(ref, frames, cfg)
    for row in rows:
        if row["backend"] in results and row["backend"] != "torch":
            row["parity"] = parity(ref, results[row["backend"]], ref_metrics,
                                   row.get("metrics") or task_metrics(results[row["backend"]], frames, cfg),
                                   cfg=cfg)
    return None


def _torch_reference(results: dict[str, list[dict]], checkpoint: Path, threads: int | None,
                     frames: list[RuntimeFrame], cfg) -> str | None:
    """Add the torch outputs to ``results``; returns why they are unavailable (None when added)."""
    try:
        tp = torch_pipeline(checkpoint, threads)
        if tp.cfg.to_dict() != cfg.to_dict():
            return "checkpoint config differs from the model's metadata config: no parity"
        results["torch"] = frame_outputs(tp, frames)
    except (ImportError, MtlError) as e:
        return f"torch reference unavailable ({e})"
    return None



def _add_speedups(rows: list[dict], scenario: str = "single-stream") -> None:
    """``speedup_vs_torch`` of every ok row: torch's mean latency over the row's (offline: frames/s over
    torch's frames/s)."""
    torch_row = next((r for r in rows if r["backend"] == "torch" and r["status"] == "ok"), None)
    if not torch_row:
        return
    for row in rows:
        if row["status"] == "ok" and row["backend"] != "torch":
            if scenario == "offline":
                ratio = row["throughput_fps"] / torch_row["throughput_fps"]
            else:
                ratio = torch_row["latency"]["mean"] / row["latency"]["mean"]
            row["speedup_vs_torch"] = round(ratio, 3)


# ------------------------------------------------------------------------------------------ output


def write_results(out_dir: str | Path, prefix: str, report: dict, markdown: str, suffix: str = "",
                  stamp: str | None = None) -> dict:
    """Write ``OUT/<prefix>_<date-time>[_<suffix>].json`` (the report) and ``.md`` (the table) atomically;
    returns both paths. Used by the scripts in benchmarks/."""
    from .io import write_bytes_atomic, write_json_atomic

    stamp = stamp or _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(out_dir) / f"{prefix}_{stamp}{'_' + suffix if suffix else ''}"
    json_path, md_path = base.with_suffix(".json"), base.with_suffix(".md")
    write_json_atomic(json_path, report)
    write_bytes_atomic(md_path, markdown.encode())
    return {"json": str(json_path), "markdown": str(md_path)}


def new_run_dir(root: str | Path, scenario: str, stamp: str | None = None) -> Path:
    """A folder of its own for one run: ``root/<date-time>_<scenario>``, or ``..._2``, ``..._3`` when that
    name is taken (``mkdir`` without ``exist_ok`` is atomic, so two runs never share a folder)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    base = f"{stamp or _dt.datetime.now().strftime('%Y%m%d-%H%M%S')}_{scenario}"
    for i in range(1, 10_000):
        run = root / (base if i == 1 else f"{base}_{i}")
        try:
            run.mkdir()
            return run
        except FileExistsError:
            continue
    raise DataError(root, f"no free run folder name for {base} (10,000 taken)")


def write_report(report: dict, out_dir: str | Path) -> dict:
    """``mtl bench``'s files in a new run folder under ``out_dir``: ``bench_<tags of the backends that
    ran>.json`` (the report) / ``.md`` (the wide table) and ``system.json``; returns the three paths."""
    from .io import write_bytes_atomic, write_json_atomic

    scenario = report.get("scenario", "single-stream")
    run = new_run_dir(out_dir, scenario)
    ran = [r["backend"] for r in report["rows"] if r.get("status") == "ok"]
    base = run / f"bench_{'+'.join(TAGS.get(c, c) for c in ran) or 'none'}"
    body = {k: v for k, v in report.items() if k not in ("markdown", "summary", "written")}
    write_json_atomic(base.with_suffix(".json"), body)
    write_bytes_atomic(base.with_suffix(".md"), f"# mtl bench {run.name}\n\n{report['markdown']}".encode())
    write_json_atomic(run / "system.json", report.get("system", {}))
    return {"dir": str(run), "json": str(base.with_suffix(".json")), "markdown": str(base.with_suffix(".md")),
            "system": str(run / "system.json")}


__all__ = [
    "BENCH_BACKENDS",
    "DEFAULT_COMPARE",
    "DEFAULT_QUERIES",
    "INPUTS",
    "SCENARIOS",
    "TorchBackend",
    "boxes_identical",
    "cpu_model",
    "device_state",
    "frame_outputs",
    "load_frames",
    "new_run_dir",
    "onnx_conv_macs",
    "run_bench",
    "run_scenario",
    "stats",
    "time_backend",
    "time_backends",
    "to_markdown",
    "torch_pipeline",
    "warm_up",
    "write_report",
    "write_results",
]
