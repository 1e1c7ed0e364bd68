#!/usr/bin/env python
"""Runtime latency scaling: vs LiDAR point count and vs image size.

    python benchmarks/bench_scaling.py                    # default model (random init), 2 threads
    python benchmarks/bench_scaling.py --model export/model.onnx --model-sizes

1. Points: 10k, 25k, 50k, 100k, 200k points per frame -> ``bev_raster`` ms and end-to-end ``total`` ms of the
   ORT fp32 runtime (same image, the model and everything else fixed).
2. Image preprocess: a 1920x1208 ORIGINAL camera PNG (raw A2D2 frame) -> PNG decode + undistort/resize to the
   model size (``mtl.data.a2d2.prepare_image``) + normalise, vs a chunk frame already stored at model size.
3. ``--model-sizes``: model input sizes 160x256, 320x512, 480x768 (one tiny-width model exported per size):
   inference and total ms.
Writes JSON + markdown under --out (benchmarks/results by default).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, export_default, synthetic_frame

POINTS = (10_000, 25_000, 50_000, 100_000, 200_000)
SIZES = ((160, 256), (320, 512), (480, 768))


def _frame(cfg, n_points, seed=0, hw=None):
    from mtl.runtime.frames import RuntimeFrame

    f = synthetic_frame(cfg, np.random.default_rng(seed), "scaling", n_points, hw)
    return RuntimeFrame(frame_id=f.frame_id, kind="chunk", points=f.points, image_png=f.image_png,
                        cam_matrix=np.asarray(f.cam_matrix, np.float64), source="synthetic")


def _time(pipe, frame, iters, warmup):
    from mtl.bench import time_backend

    return time_backend(pipe, [frame], iters, warmup)["stages"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model-sizes", action="store_true", help="also export + time one tiny model per input size")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)

    from mtl.bench import device_state, stats, write_results
    from mtl.data.a2d2 import prepare_image
    from mtl.geometry import normalise_image
    from mtl.io import decode_png
    from mtl.runtime import Pipeline

    tmp = Path(tempfile.mkdtemp(prefix="mtl_bench_scaling_"))
    if a.model is None:
        print("exporting a default-config model (random weights) ...", file=sys.stderr)
        a.model, _ = export_default(tmp / "export")
    pipe = Pipeline.open(a.model, "onnxruntime", threads=a.threads)
    cfg = pipe.cfg
    report = {"bench_scaling": 1, "model": str(a.model), "iters": a.iters, "warmup": a.warmup, "threads": a.threads,
              "image_hw": list(cfg.camera.image_hw), "grid": list(cfg.grid.shape), "points": [], "image": {},
              "model_sizes": []}

    # 1. point count
    for n in POINTS:
        print(f"points {n} ...", file=sys.stderr)
        st = _time(pipe, _frame(cfg, n), a.iters, a.warmup)
        report["points"].append({"n_points": n, "bev_raster": st["bev_raster"], "total": st["total"],
                                 "inference": st["inference"]})

    # 2. image preprocess: original 1920x1208 PNG vs model-size PNG
    w0, h0 = cfg.camera.resolution_wh
    orig = synthetic_frame(cfg, np.random.default_rng(1), "orig", 10, (h0, w0))
    png0 = orig.image_png
    small = _frame(cfg, 10).image_png
    prepare_image(decode_png(png0, "x", "RGB"), cfg.camera, tuple(cfg.camera.image_hw))   # build the cached maps
    t = {"decode_png_original": [], "undistort_resize": [], "normalise": [], "decode_png_model_size": []}
    for _ in range(max(3, a.iters // 2)):
        t0 = time.perf_counter()
        img0 = decode_png(png0, "x", "RGB")
        t1 = time.perf_counter()
        img = prepare_image(img0, cfg.camera, tuple(cfg.camera.image_hw))
        t2 = time.perf_counter()
        normalise_image(img, cfg.camera.mean, cfg.camera.std)
        t3 = time.perf_counter()
        decode_png(small, "x", "RGB")
        t4 = time.perf_counter()
        for k, v in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            t[k].append(v * 1e3)
    report["image"] = {"original_wh": [w0, h0], "png_bytes_original": len(png0), "png_bytes_model_size": len(small),
                       **{k: stats(v) for k, v in t.items()}}

    # 3. model input sizes (tiny widths)
    if a.model_sizes:
        for hw in SIZES:
            print(f"model size {hw} ...", file=sys.stderr)
            c = cfg.override(**{"camera.image_hw": hw, "model.cam_channels": (8, 16, 16, 16),
                                "model.bev_channels": (16, 16, 16)})
            onnx_path, _ = export_default(tmp / f"size_{hw[0]}x{hw[1]}", c)
            p = Pipeline.open(onnx_path, "onnxruntime", threads=a.threads)
            st = _time(p, _frame(c, 50_000, hw=hw), a.iters, a.warmup)
            report["model_sizes"].append({"image_hw": list(hw), "inference": st["inference"], "total": st["total"],
                                          "decode_png": st["decode_png"], "normalise": st["normalise"]})

    report["device"] = device_state(a.threads)
    md = ["# Runtime scaling (ORT fp32, batch 1)", "", "## vs LiDAR points", "",
          "| points | bev_raster mean ms | p90 | inference mean ms | total mean ms | p90 |",
          "|---|---|---|---|---|---|"]
    for r in report["points"]:
        md.append(f"| {r['n_points']:,} | {r['bev_raster']['mean']:.2f} | {r['bev_raster']['p90']:.2f} | "
                  f"{r['inference']['mean']:.2f} | {r['total']['mean']:.2f} | {r['total']['p90']:.2f} |")
    im = report["image"]
    md += ["", f"## image preprocess ({w0}x{h0} original -> {cfg.camera.image_hw[0]}x{cfg.camera.image_hw[1]})", "",
           "| step | mean ms | p90 |", "|---|---|---|"]
    for k in t:
        md.append(f"| {k} | {im[k]['mean']:.2f} | {im[k]['p90']:.2f} |")
    if report["model_sizes"]:
        md += ["", "## vs model input size (tiny widths)", "", "| image H x W | inference mean ms | total mean ms |",
               "|---|---|---|"]
        for r in report["model_sizes"]:
            md.append(f"| {r['image_hw'][0]}x{r['image_hw'][1]} | {r['inference']['mean']:.2f} | "
                      f"{r['total']['mean']:.2f} |")
    dev = report["device"]
    md += ["", f"- CPU {dev['cpu_model']} ({dev['cpu_count']} cores, load avg {dev['load_avg']}), {a.threads} threads, "
               f"{a.iters} iterations after {a.warmup} warm-up"]
    text = "\n".join(md) + "\n"
    written = write_results(a.out, "scaling", report, text)
    print(text)
    print(f"written: {written['json']}\n         {written['markdown']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
