"""``mtl bench``: per-stage latency, throughput, memory and parity of the runtime backends, in ONE table.

For each backend in ``--compare`` (``BENCH_BACKENDS``) the same preloaded frames go through the same numpy
preprocess and postprocess (``mtl.runtime.Pipeline``); only the inference backend differs:

- one column per row of ``mtl.export.variants.VARIANTS`` on the CPU EP: ``onnxruntime`` runs ``--model``
  (fp32 ONNX), ``onnxruntime-fp16`` / ``-int8`` (TensorRT recipe) / ``-int8-cpu`` (onnxruntime CPU recipe)
  the variant's file next to it (``model_fp16.onnx``, ...); a missing file names the export flag that writes it
- ``onnxruntime-cuda`` / ``onnxruntime-trt``   ``--model`` on the CUDA / TensorRT EP
- ``tensorrt``           the ``*.engine`` next to ``--model`` (``model.engine`` preferred), native TensorRT
- ``torch``              ``--checkpoint`` run eagerly (``torch.inference_mode``, same thread count); torch is
                         imported lazily, only for this column and for the parity reference

Unavailable backends are rows with ``status = "skipped: <reason>"``; nothing is ever substituted.
Latency stats per stage: mean / p50 / p90 / p99 over ``--iters`` timed frames after ``--warmup``.
Timing is interleaved: every backend is opened and warmed up first, then ``--rounds`` rounds each time
every backend for its share of ``--iters`` frames in turn, so machine drift hits all columns alike.
Throughput = 1000 / mean total (batch 1, sequential). Peak RSS = the process high-water mark after the
backend was opened and warmed up (ru_maxrss; cumulative, so backends open in the order given, torch last).
Parity (needs ``--checkpoint``): max |diff| per output vs torch on every bench frame, decoded boxes
identical (same count, labels, boxes within 1e-4 m) per frame, and mIoU / mAP deltas (backend minus torch)
against the frames' ground truth when ``mtl.metrics`` and ground truth are available.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .contract import OUTPUTS
from .errors import BackendUnavailableError, DataError, MtlError
from .export.variants import BENCH_BACKENDS, DEFAULT_COMPARE, FP32, VARIANTS, bench_variant  # import-light
from .runtime.backends import Backend
from .runtime.frames import RuntimeFrame, iter_frames
from .runtime.pipeline import Pipeline
from .runtime.preprocess import STAGES, ModelSpec, StageTimer

TABLE_STAGES = STAGES
BOX_ATOL = 1e-4


# ------------------------------------------------------------------------------------- torch column


class TorchBackend(Backend):
    """The checkpoint run eagerly; outputs follow the ONNX contract (heatmap sigmoid applied)."""

    name = "torch"

    def __init__(self, checkpoint: str | Path, threads: int | None = None):
        import torch

        from .model import load_checkpoint

        self.torch = torch
        if threads:
            torch.set_num_threads(int(threads))
        self.model, self.cfg, _ = load_checkpoint(checkpoint)
        self.model.eval()
        self.providers = [f"torch {torch.__version__} eager, {torch.get_num_threads()} threads"]
        h, w = self.cfg.camera.image_hw
        self.input_shapes = {"image": (1, 3, h, w), "bev": (1, self.cfg.grid.n_channels, *self.cfg.grid.shape)}
        self.input_dtypes = {"image": np.float32, "bev": np.float32}

    def run(self, feeds: dict[str, np.ndarray], timer: StageTimer) -> dict[str, np.ndarray]:
        torch = self.torch
        with timer("inference"), torch.inference_mode():
            out = self.model(torch.from_numpy(feeds["image"]), torch.from_numpy(feeds["bev"]))
            res = {"bbox_heatmap": torch.sigmoid(out["bbox_heatmap"]).numpy(),
                   "bbox_reg": out["bbox_reg"].numpy(), "sem_logits": out["sem_logits"].numpy()}
        return res


def torch_pipeline(checkpoint: str | Path, threads: int | None = None) -> Pipeline:
    b = TorchBackend(checkpoint, threads)
    # no helper thread: torch's OpenMP workers busy-wait after each op, so overlapped numpy stages would
    # fight them for the second core (measured: +1 ms per frame) - the baseline gets its best setting
    return Pipeline(ModelSpec.from_config(b.cfg, checkpoint, heatmap_activation="sigmoid"), b, overlap=False)


# ------------------------------------------------------------------------------------------ device


def _run(cmd: list[str]) -> str | None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return r.stdout.strip() if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else ``platform.processor()`` (may be empty)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or ""


def device_state(threads: int | None) -> dict:
    cpu = cpu_model()
    gpu = None
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.mem,clocks.max.sm,"
                              "temperature.gpu,power.draw", "--format=csv,noheader"])
    if smi:
        gpu = smi.splitlines()
    from . import __version__

    libs = {d: _version(d) for d in ("numpy", "onnxruntime", "onnxruntime-gpu", "torch", "tensorrt",
                                     "cuda-python", "pillow")}
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpu_model": cpu, "cpu_count": os.cpu_count(), "threads": threads, "load_avg": load,
            "python": platform.python_version(), "platform": platform.platform(), "gpu": gpu,
            "libraries": {k: v for k, v in libs.items() if v}, "mtl_version": __version__,
            "date": _dt.datetime.now().isoformat(timespec="seconds")}


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / 1024.0, 1) if sys.platform != "darwin" else round(kb / 2**20, 1)


# ----------------------------------------------------------------------------------------- helpers


def stats(values: list[float]) -> dict:
    a = np.asarray(values, np.float64)
    return {"mean": round(float(a.mean()), 4), "p50": round(float(np.percentile(a, 50)), 4),
            "p90": round(float(np.percentile(a, 90)), 4), "p99": round(float(np.percentile(a, 99)), 4),
            "n": int(a.size)}


def load_frames(data: str | Path, cfg, n_frames: int) -> tuple[list[RuntimeFrame], int]:
    frames, skipped = [], 0
    for f in iter_frames(data, cfg, with_gt=True):
        if not f.has_image:
            skipped += 1
            continue
        frames.append(f)
        if len(frames) >= n_frames:
            break
    if not frames:
        raise DataError(data, f"no frame with a camera image found ({skipped} without one)")
    return frames, skipped


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
    if name == "torch":
        if checkpoint is None:
            raise _Skip("no --checkpoint given")
        try:
            import torch  # noqa: F401
        except ImportError:
            raise _Skip("torch is not installed") from None
        return torch_pipeline(checkpoint, threads)
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


def _summary(per_stage: dict[str, list[float]]) -> dict:
    st = {k: stats(v) for k, v in per_stage.items()}
    fps = 1000.0 / st["total"]["mean"] if st.get("total", {}).get("mean") else None
    return {"stages": st, "throughput_fps": round(fps, 2) if fps else None}


def warm_up(pipe: Pipeline, frames: list[RuntimeFrame], warmup: int) -> None:
    for i in range(warmup):
        pipe.run_frame(frames[i % len(frames)], keep_outputs=False)


def time_backends(pipes: dict[str, Pipeline], frames: list[RuntimeFrame], iters: int, rounds: int = 1,
                  tick: Callable[[], None] | None = None) -> dict[str, dict]:
    """Time every pipeline on the same frames, interleaved: ``rounds`` rounds, each running every backend
    for its share of ``iters`` frames in turn, so a slow drift of the machine (other tenants, clocks) hits
    all columns alike instead of whichever ran last. Returns name -> {"stages": stats, "throughput_fps"}
    or {"error": MtlError} for a backend that failed (it is dropped from the later rounds)."""
    rounds = max(1, min(rounds, iters))
    per: dict[str, dict[str, list[float]]] = {n: {} for n in pipes}
    failed: dict[str, MtlError] = {}
    done = 0
    for r in range(rounds):
        n = iters * (r + 1) // rounds - iters * r // rounds
        for name, pipe in pipes.items():
            if name in failed:
                continue
            try:
                for i in range(done, done + n):
                    res = pipe.run_frame(frames[i % len(frames)], keep_outputs=False)
                    for k, v in res.timings_ms.items():
                        per[name].setdefault(k, []).append(v)
                    if tick:
                        tick()
            except MtlError as e:
                failed[name] = e
        done += n
    return {name: ({"error": failed[name]} if name in failed else _summary(per[name])) for name in pipes}


def time_backend(pipe: Pipeline, frames: list[RuntimeFrame], iters: int, warmup: int,
                 tick: Callable[[], None] | None = None) -> dict:
    """One pipeline: ``warmup`` untimed frames, then ``iters`` timed ones (see ``time_backends``)."""
    warm_up(pipe, frames, warmup)
    res = time_backends({"pipe": pipe}, frames, iters, 1, tick)["pipe"]
    if "error" in res:
        raise res["error"]
    return res


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


def onnx_conv_macs(path: str | Path) -> dict:
    """Multiply-accumulates of every Conv / ConvTranspose / MatMul / Gemm in an fp32 ONNX model
    (``mtl.export.onnx_io.conv_macs``, shared with the INT8 exporter's MAC share): {"total": int,
    "by_op": {op: int}, "nodes": [(name, op, macs)]}. What the roofline (benchmarks/bench_roofline.py) divides
    by the measured time to get achieved GFLOP/s (2 FLOPs a MAC)."""
    from .export.onnx_io import conv_macs

    return conv_macs(path)


# ---------------------------------------------------------------------------------------- the bench


def run_bench(model: str | Path, data: str | Path, compare: tuple[str, ...] = DEFAULT_COMPARE,
              checkpoint: str | Path | None = None, iters: int = 100, warmup: int = 10,
              threads: int | None = None, n_frames: int = 8, out_dir: str | Path | None = "benchmarks/results",
              rounds: int = 5,
              progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """``mtl bench``: open + warm up every backend, time them interleaved, then parity vs torch; returns the
    report (with its markdown table) and writes it to ``out_dir`` unless that is None."""
    from .contract import read_onnx_metadata

    model = Path(model)
    checkpoint = Path(checkpoint) if checkpoint else None
    _check_args(compare, iters, warmup, rounds)
    meta = read_onnx_metadata(model)
    cfg = ModelSpec.from_metadata(meta, model).cfg
    frames, no_image = load_frames(data, cfg, n_frames)
    # torch runs last: importing it raises the process RSS high-water mark for everything after it
    order = [c for c in compare if c != "torch"] + (["torch"] if "torch" in compare else [])
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=(iters + warmup) * len(order), unit="it", desc="bench", file=sys.stderr)
    advance = bar.update if bar else (lambda n: None)
    rows: list[dict] = []
    pipes: dict[str, Pipeline] = {}
    try:
        for name in order:                      # open + warm up in order (peak RSS is cumulative)
            rows.append(_open_backend(name, lambda n: open_bench_pipeline(n, model, checkpoint, threads), cfg,
                                      frames, warmup, pipes))
            advance(warmup + (0 if name in pipes else iters))
        timed = time_backends(pipes, frames, iters, rounds, lambda: advance(1))
        results = _finish_rows(rows, pipes, timed, frames, cfg)
        _add_int8_info(rows, model)
    finally:
        for pipe in pipes.values():
            pipe.close()
        if bar:
            bar.close()
    parity_note = _add_parity(rows, results, checkpoint, threads, frames, cfg)
    _add_speedups(rows)
    report = {
        "mtl_bench": 1, "model": str(model), "data": str(data), "frames": len(frames),
        "frames_without_image_skipped": no_image, "frame_ids": [f.frame_id for f in frames],
        "iters": iters, "warmup": warmup, "rounds": max(1, min(rounds, iters)), "threads": threads,
        "compare": list(compare),
        "model_config": {"image_hw": list(cfg.camera.image_hw), "grid": list(cfg.grid.shape),
                         "bev_channels": cfg.grid.n_channels, "n_det": cfg.classes.n_det, "n_sem": cfg.classes.n_sem},
        **_checkpoint_info(checkpoint, meta), "parity_note": parity_note, "device": device_state(threads),
        "rows": rows,
    }
    report["markdown"] = to_markdown(report)
    if out_dir is not None:
        report["written"] = write_report(report, out_dir)
    return report


def _check_args(compare: tuple[str, ...], iters: int, warmup: int, rounds: int) -> None:
    unknown = [c for c in compare if c not in BENCH_BACKENDS]
    if unknown:
        raise BackendUnavailableError(None, f"unknown --compare entries {unknown} "
                                            f"(choose from {', '.join(BENCH_BACKENDS)})")
    if iters < 1 or warmup < 0 or rounds < 1:
        raise DataError(None, f"--iters and --rounds must be >= 1 and --warmup >= 0, got {iters} / {rounds} / {warmup}")


def _checkpoint_info(checkpoint: Path | None, meta: dict) -> dict[str, Any]:
    """The checkpoint's path and sha256, and whether it is the one the model was exported from."""
    if checkpoint is None:
        return {}
    from .config import sha256_file

    sha = sha256_file(checkpoint) if checkpoint.is_file() else None
    return {"checkpoint": str(checkpoint), "checkpoint_sha256": sha,
            "matches_model_source": sha == meta.get("source_checkpoint_sha256")}


def _open_backend(name: str, open_pipe: Callable[[str], Pipeline], cfg, frames: list[RuntimeFrame], warmup: int,
                  pipes: dict[str, Pipeline]) -> dict[str, Any]:
    """One row: open the backend (or record why it is skipped) and warm it up; a warm pipeline joins ``pipes``."""
    row: dict[str, Any] = {"backend": name}
    try:
        pipe = open_pipe(name)
    except (_Skip, MtlError) as e:
        row["status"] = f"skipped: {e}"
        return row
    if name == "torch" and pipe.cfg.to_dict() != cfg.to_dict():
        row["status"] = "skipped: checkpoint config differs from the model's metadata config"
        pipe.close()
        return row
    row.update(status="ok", model=pipe.spec.path, precision=pipe.spec.precision,
               providers=pipe.backend.providers, fallback=pipe.fallback)
    try:
        warm_up(pipe, frames, warmup)
        pipes[name] = pipe
    except MtlError as e:
        row["status"] = f"failed: {e}"
        pipe.close()
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


def _add_speedups(rows: list[dict]) -> None:
    """``speedup_vs_torch`` of every ok row: torch's mean total over the row's."""
    torch_row = next((r for r in rows if r["backend"] == "torch" and r["status"] == "ok"), None)
    if torch_row:
        t = torch_row["stages"]["total"]["mean"]
        for row in rows:
            if row["status"] == "ok" and row["backend"] != "torch":
                row["speedup_vs_torch"] = round(t / row["stages"]["total"]["mean"], 3)


# ------------------------------------------------------------------------------------------ output


def _ms(row: dict, stage: str, key: str = "mean") -> str:
    s = row.get("stages", {}).get(stage)
    return f"{s[key]:.2f}" if s else "-"


def _num(v: Any, fmt: str = "{:.2e}") -> str:
    return "-" if v is None else fmt.format(v)


def to_markdown(report: dict) -> str:
    stage_cols = [s for s in TABLE_STAGES if s != "total"]
    head = (["backend", "status"] + [f"{s} ms" for s in stage_cols] +
            ["total mean", "p50", "p90", "p99", "frames/s", "x torch", "peak RSS MB",
             "maxdiff heatmap", "maxdiff reg", "maxdiff sem", "boxes =", "dmIoU", "dmAP"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        if r["status"] != "ok":
            cells = [r["backend"], r["status"]] + ["-"] * (len(head) - 2)
        else:
            p = r.get("parity", {})
            d = p.get("max_abs_diff", {})
            cells = ([r["backend"], "ok"] + [_ms(r, s) for s in stage_cols] +
                     [_ms(r, "total"), _ms(r, "total", "p50"), _ms(r, "total", "p90"), _ms(r, "total", "p99"),
                      _num(r.get("throughput_fps"), "{:.1f}"), _num(r.get("speedup_vs_torch"), "{:.2f}"),
                      _num(r.get("peak_rss_mb"), "{:.0f}"),
                      _num(d.get("bbox_heatmap")), _num(d.get("bbox_reg")), _num(d.get("sem_logits")),
                      p.get("boxes_identical", "-") + (f" ({p['boxes_equivalent']} up to tied peaks)"
                                                       if "boxes_equivalent" in p else ""),
                      _num(p.get("miou_delta"), "{:+.4f}"),
                      _num(p.get("map_delta"), "{:+.4f}")])
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    dev = report["device"]
    cfgd = report["model_config"]
    notes = [
        f"model `{report['model']}` (image {cfgd['image_hw'][0]}x{cfgd['image_hw'][1]}, BEV "
        f"{cfgd['bev_channels']}x{cfgd['grid'][0]}x{cfgd['grid'][1]}), data `{report['data']}`: "
        f"{report['frames']} frames, "
        f"{report['iters']} timed iterations (interleaved in {report.get('rounds', 1)} rounds) after "
        f"{report['warmup']} warm-up, batch 1, threads {report['threads']}",
        f"CPU: {dev['cpu_model']} ({dev['cpu_count']} cores, load avg {dev['load_avg']}); GPU: {dev['gpu'] or 'none'}",
        "libraries: " + ", ".join(f"{k} {v}" for k, v in dev["libraries"].items()),
    ]
    for r in report["rows"]:
        q = r.get("int8")
        if q:
            kept = q["float_nodes"]
            notes.append(f"{r['backend']}: calibration {q['calibration']}, {100 * q['mac_share']:.1f}% of the MACs in "
                         f"INT8, {len(kept)} unit(s) kept in float" + (f" ({', '.join(kept)})" if kept else ""))
    if report.get("parity_note"):
        notes.append(f"parity: {report['parity_note']}")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def write_results(out_dir: str | Path, prefix: str, report: dict, markdown: str, suffix: str = "",
                  stamp: str | None = None) -> dict:
    """Write ``OUT/<prefix>_<date-time>[_<suffix>].json`` (the report) and ``.md`` (the table) atomically;
    returns both paths. Shared by ``mtl bench`` and the scripts in benchmarks/."""
    from .io import write_bytes_atomic, write_json_atomic

    stamp = stamp or _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(out_dir) / f"{prefix}_{stamp}{'_' + suffix if suffix else ''}"
    json_path, md_path = base.with_suffix(".json"), base.with_suffix(".md")
    write_json_atomic(json_path, report)
    write_bytes_atomic(md_path, markdown.encode())
    return {"json": str(json_path), "markdown": str(md_path)}


def write_report(report: dict, out_dir: str | Path) -> dict:
    """``mtl bench``'s files: ``bench_<date-time>_<backend tags>.json`` / ``.md``."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    short = {**{v.bench: v.tag for v in VARIANTS}, "onnxruntime-cuda": "ort-cuda", "onnxruntime-trt": "ort-trt",
             "tensorrt": "trt", "torch": "torch"}
    tag = "+".join(short.get(c, c) for c in report["compare"]) or "none"
    body = {k: v for k, v in report.items() if k not in ("markdown", "written")}
    return write_results(out_dir, "bench", body, f"# mtl bench {stamp}\n\n" + report["markdown"], tag, stamp)


__all__ = [
    "BENCH_BACKENDS",
    "DEFAULT_COMPARE",
    "TorchBackend",
    "boxes_identical",
    "cpu_model",
    "device_state",
    "frame_outputs",
    "onnx_conv_macs",
    "run_bench",
    "stats",
    "time_backend",
    "time_backends",
    "to_markdown",
    "torch_pipeline",
    "warm_up",
]
