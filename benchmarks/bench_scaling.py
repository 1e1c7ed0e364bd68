#!/usr/bin/env python
"""Runtime scaling: latency vs LiDAR point count, vs camera resolution, vs model input size, and throughput vs
threads, each with its measured growth (least-squares slope and last / first ratio).

    python benchmarks/bench_scaling.py                    # default model (random init), 2 threads
    python benchmarks/bench_scaling.py --model export/model.onnx --model-sizes

1. Points: 10k, 25k, 50k, 100k, 200k points per frame -> ``bev_raster`` ms and end-to-end latency of the ORT
   fp32 runtime (same image, the model and everything else fixed). Growth: ms per 10k points.
2. Camera resolution: the sensor image at 0.5x, 1x, 1.5x and 2x A2D2's 1920x1208 (intrinsics scaled with it),
   brought to the fixed model size: the fused remap of the sensor path (``mtl.runtime.sensor``), the two-step
   training path (``prepare_image`` + ``normalise_image``) and decoding the original PNG (the png path).
   Growth: ms per megapixel. The network's input (and time) does not change with the sensor resolution.
3. ``--model-sizes``: model input sizes 160x256, 320x512, 480x768 (one tiny-width model exported per size):
   inference and end-to-end ms. Growth: ms per input megapixel.
4. Threads 1 and 2: single-stream frames/s (``run_frame`` back to back) and offline frames/s (``run_stream``)
   of the default model on sensor-input frames (synthetic distorted full-resolution pixels + 50k points).
Writes JSON + markdown under --out (runs/benchmarks by default).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from _common import RESULTS, export_default, synthetic_frame

POINTS = (10_000, 25_000, 50_000, 100_000, 200_000)
SCALES = (0.5, 1.0, 1.5, 2.0)
SIZES = ((160, 256), (320, 512), (480, 768))


def _frame(cfg, n_points, seed=0, hw=None):
    from mtl.runtime.frames import RuntimeFrame

    f = synthetic_frame(cfg, np.random.default_rng(seed), "scaling", n_points, hw)
    return RuntimeFrame(frame_id=f.frame_id, kind="chunk", points=f.points, image_png=f.image_png,
                        cam_matrix=np.asarray(f.cam_matrix, np.float64), source="synthetic")


def sensor_frames(cfg, n: int, n_points: int = 50_000) -> list:
    """``n`` raw frames as the drivers deliver them: distorted full-resolution pixels (a synthetic photo-like
    image) and ``n_points`` points, with the model's own calibration."""
    from mtl.io import decode_png
    from mtl.runtime.frames import KIND_RAW, RuntimeFrame

    w0, h0 = cfg.camera.resolution_wh
    out = []
    for i in range(n):
        f = synthetic_frame(cfg, np.random.default_rng(100 + i), f"sensor/{i}", n_points, (h0, w0))
        out.append(RuntimeFrame(frame_id=f.frame_id, kind=KIND_RAW, points=f.points,
                                image=decode_png(f.image_png, "synthetic", "RGB"), camera=cfg.camera,
                                source="synthetic"))
    return out


def _time(pipe, frames, iters, warmup):
    from mtl.bench import time_backend

    return time_backend(pipe, frames, iters, warmup)


def scaled_camera(camera, scale: float):
    """The camera at ``scale`` x its resolution, intrinsics scaled alike (same field of view and distortion)."""
    from mtl.geometry import scale_cam_matrix

    w0, h0 = camera.resolution_wh
    wh = (round(w0 * scale), round(h0 * scale))
    k = scale_cam_matrix(np.asarray(camera.cam_matrix), (w0, h0), (wh[1], wh[0]))
    k0 = scale_cam_matrix(np.asarray(camera.cam_matrix_original), (w0, h0), (wh[1], wh[0]))
    return replace(camera, resolution_wh=wh, cam_matrix=tuple(map(tuple, k.tolist())),
                   cam_matrix_original=tuple(map(tuple, k0.tolist())))


def _ms(fn, reps: int) -> dict:
    from mtl.bench import stats

    fn()
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        t.append((time.perf_counter() - t0) * 1e3)
    return stats(t)


def camera_scaling(cfg, reps: int) -> list[dict]:
    from mtl.data.a2d2 import prepare_image
    from mtl.geometry import normalise_image
    from mtl.io import decode_png
    from mtl.runtime.sensor import sensor_remap

    hw, rows = tuple(cfg.camera.image_hw), []
    for scale in SCALES:
        cam = scaled_camera(cfg.camera, scale)
        w, h = cam.resolution_wh
        print(f"camera {w}x{h} ...", file=sys.stderr)
        png = synthetic_frame(cfg, np.random.default_rng(1), "cam", 10, (h, w)).image_png
        img = decode_png(png, "x", "RGB")
        remap = sensor_remap(cam, hw, tuple(cam.mean), tuple(cam.std))
        steps = {"remap_normalise": lambda r=remap, i=img: r.apply(i),
                 "two_step": lambda i=img, c=cam: normalise_image(prepare_image(i, c, hw), c.mean, c.std),
                 "decode_png": lambda p=png: decode_png(p, "x", "RGB")}
        rows.append({"resolution_wh": [w, h], "megapixels": round(w * h / 1e6, 3),
                     **{k: _ms(fn, reps) for k, fn in steps.items()}})
    return rows


def thread_scaling(model, cfg, iters: int, warmup: int) -> list[dict]:
    from mtl.bench_scenarios import offline
    from mtl.runtime import Pipeline

    frames, rows = sensor_frames(cfg, 4), []
    for threads in (1, 2):
        print(f"threads {threads} ...", file=sys.stderr)
        with Pipeline.open(model, "onnxruntime", threads=threads) as pipe:
            single = _time(pipe, frames, iters, warmup)
            off = offline(pipe, frames, iters, rounds=2)
        rows.append({"threads": threads, "single_stream_fps": single["throughput_fps"],
                     "latency": single["latency"], "inference": single["stages"]["inference"],
                     "offline_fps": off["stream_fps"], "offline_single_fps": off["single_stream_fps"]})
    return rows


def _growth_line(what: str, xs, ys, unit: str) -> str:
    from mtl.bench_stats import linear_growth

    g = linear_growth(xs, ys)
    return (f"- {what}: +{g['slope']:.3f} ms {unit} (least squares), last / first {g['ratio_last_first']:.2f}x "
            f"({ys[0]:.2f} -> {ys[-1]:.2f} ms)")


def markdown(report: dict, cfg, a) -> str:
    md = ["# Runtime scaling (ORT fp32, batch 1)", "", "## vs LiDAR points", "",
          "| points | bev_raster mean ms | p90 | inference mean ms | latency mean ms | p99 |",
          "|---|---|---|---|---|---|"]
    pts = report["points"]
    for r in pts:
        md.append(f"| {r['n_points']:,} | {r['bev_raster']['mean']:.2f} | {r['bev_raster']['p90']:.2f} | "
                  f"{r['inference']['mean']:.2f} | {r['latency']['mean']:.2f} | {r['latency']['p99']:.2f} |")
    x = [r["n_points"] / 1e4 for r in pts]
    md += ["", _growth_line("bev_raster", x, [r["bev_raster"]["mean"] for r in pts], "per 10k points"),
           _growth_line("end to end", x, [r["latency"]["mean"] for r in pts], "per 10k points")]
    cams = report["camera"]
    md += ["", f"## vs camera resolution (to the model's {cfg.camera.image_hw[0]}x{cfg.camera.image_hw[1]})", "",
           "| camera W x H | MP | fused remap + normalise ms (sensor) | prepare_image + normalise ms | "
           "PNG decode ms (png input) |", "|---|---|---|---|---|"]
    for r in cams:
        md.append(f"| {r['resolution_wh'][0]}x{r['resolution_wh'][1]} | {r['megapixels']:.2f} | "
                  f"{r['remap_normalise']['mean']:.2f} | {r['two_step']['mean']:.2f} | {r['decode_png']['mean']:.2f} |")
    mp = [r["megapixels"] for r in cams]
    md += ["", _growth_line("fused remap", mp, [r["remap_normalise"]["mean"] for r in cams], "per megapixel"),
           _growth_line("two-step prepare", mp, [r["two_step"]["mean"] for r in cams], "per megapixel"),
           _growth_line("PNG decode", mp, [r["decode_png"]["mean"] for r in cams], "per megapixel")]
    if report["model_sizes"]:
        ms = report["model_sizes"]
        md += ["", "## vs model input size (tiny widths)", "", "| image H x W | inference mean ms | latency mean ms |",
               "|---|---|---|"]
        md += [f"| {r['image_hw'][0]}x{r['image_hw'][1]} | {r['inference']['mean']:.2f} | {r['latency']['mean']:.2f} |"
               for r in ms]
        mpx = [r["image_hw"][0] * r["image_hw"][1] / 1e6 for r in ms]
        md += ["", _growth_line("inference", mpx, [r["inference"]["mean"] for r in ms], "per input megapixel")]
    th = report["threads_scaling"]
    md += ["", "## throughput vs threads (sensor input, default model)", "",
           "| threads | single-stream frames/s | latency mean ms | inference mean ms | offline frames/s |",
           "|---|---|---|---|---|"]
    md += [f"| {r['threads']} | {r['single_stream_fps']:.2f} | {r['latency']['mean']:.2f} | "
           f"{r['inference']['mean']:.2f} | {r['offline_fps']:.2f} |" for r in th]
    if len(th) == 2:
        md += ["", f"- 1 -> 2 threads: single-stream {th[1]['single_stream_fps'] / th[0]['single_stream_fps']:.2f}x, "
                   f"inference {th[0]['inference']['mean'] / th[1]['inference']['mean']:.2f}x faster, offline "
                   f"{th[1]['offline_fps'] / th[0]['offline_fps']:.2f}x"]
    dev = report["device"]
    md += ["", f"- CPU {dev['cpu_model']} ({dev['cpu_count']} cores, load avg {dev['load_avg']}), {a.threads} threads "
               f"(sections 1-3), {a.iters} iterations after {a.warmup} warm-up"]
    return "\n".join(md) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model-sizes", action="store_true", help="also export + time one tiny model per input size")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)

    from mtl.bench import device_state, write_results
    from mtl.runtime import Pipeline

    tmp = Path(tempfile.mkdtemp(prefix="mtl_bench_scaling_"))
    if a.model is None:
        print("exporting a default-config model (random weights) ...", file=sys.stderr)
        a.model, _ = export_default(tmp / "export")
    pipe = Pipeline.open(a.model, "onnxruntime", threads=a.threads)
    cfg = pipe.cfg
    report = {"bench_scaling": 2, "model": str(a.model), "iters": a.iters, "warmup": a.warmup, "threads": a.threads,
              "image_hw": list(cfg.camera.image_hw), "grid": list(cfg.grid.shape), "points": [], "camera": [],
              "model_sizes": [], "threads_scaling": []}

    for n in POINTS:                                                    # 1. point count
        print(f"points {n} ...", file=sys.stderr)
        r = _time(pipe, [_frame(cfg, n)], a.iters, a.warmup)
        st = r["stages"]
        report["points"].append({"n_points": n, "bev_raster": st["bev_raster"], "latency": r["latency"],
                                 "total": st["total"], "inference": st["inference"]})
    pipe.close()
    report["camera"] = camera_scaling(cfg, max(3, a.iters // 2))           # 2. camera resolution
    if a.model_sizes:                                                   # 3. model input sizes (tiny widths)
        for hw in SIZES:
            print(f"model size {hw} ...", file=sys.stderr)
            c = cfg.override(**{"camera.image_hw": hw, "model.cam_channels": (8, 16, 16, 16),
                                "model.bev_channels": (16, 16, 16)})
            onnx_path, _ = export_default(tmp / f"size_{hw[0]}x{hw[1]}", c)
            with Pipeline.open(onnx_path, "onnxruntime", threads=a.threads) as p:
                r = _time(p, [_frame(c, 50_000, hw=hw)], a.iters, a.warmup)
            report["model_sizes"].append({"image_hw": list(hw), "inference": r["stages"]["inference"],
                                          "latency": r["latency"], "decode_png": r["stages"]["decode_png"]})
    report["threads_scaling"] = thread_scaling(a.model, cfg, a.iters, a.warmup)  # 4. threads
    report["device"] = device_state(a.threads)
    text = markdown(report, cfg, a)
    written = write_results(a.out, "scaling", report, text)
    print(text)
    print(f"written: {written['json']}\n         {written['markdown']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
