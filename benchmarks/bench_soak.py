#!/usr/bin/env python
"""Runtime soak: run the torch-free runtime over many frames (a small set, cycled) and record RSS over time.

    python benchmarks/bench_soak.py                                  # 10,000 frames, small random model
    python benchmarks/bench_soak.py --model export/model.onnx --data data/val --frames 10000

Every ``--sample-every`` frames the process RSS (/proc/self/statm) is recorded. The verdict is the
least-squares slope of RSS over the frames after ``--settle`` (allocator and ORT arenas warm up first),
in MB per 1,000 frames, and the growth over that window; memory is "flat" when the growth over the whole
window stays under ``--max-growth-mb``. The frame set always includes frames with 0 LiDAR points and frames
with NaN / out-of-grid points, so those paths are soaked too.

Without --model, a default-input-size model with small widths (random weights; memory behaviour depends on
the runtime and the input sizes, not on the weights) is exported with the real mtl.export code. Writes
``soak_<date>.json`` and ``.md`` under --out.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import BENCH_DIR, RESULTS, write_synthetic_chunks


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def degenerate_frames(frames: list, rng: np.random.Generator) -> list:
    """Copies of the first frame with 0 points, with NaN / inf rows and with every point outside the grid."""
    from dataclasses import replace

    f = frames[0]
    pts = np.asarray(f.points, np.float32)
    nan = pts.copy()
    if len(nan):
        nan[rng.choice(len(nan), max(1, len(nan) // 100), replace=False), rng.integers(0, 4)] = np.nan
    outside = pts.copy()
    outside[:, 0] -= 1000.0
    return [replace(f, frame_id=f"{f.frame_id}/empty", points=np.zeros((0, 4), np.float32)),
            replace(f, frame_id=f"{f.frame_id}/nan", points=nan),
            replace(f, frame_id=f"{f.frame_id}/outside", points=outside)]


def slope_mb_per_kframe(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of y (MB) over x (frames), in MB per 1,000 frames."""
    if len(x) < 2:
        return 0.0
    a = np.polyfit(x.astype(np.float64), y.astype(np.float64), 1)[0]
    return float(a * 1000.0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="model.onnx (default: export a small random default-input model)")
    ap.add_argument("--data", type=Path, help="chunks / raw tree (default: synthetic chunk frames)")
    ap.add_argument("--frames", type=int, default=10_000, help="frames to run in total")
    ap.add_argument("--distinct", type=int, default=8, help="distinct frames to cycle (plus 3 degenerate ones)")
    ap.add_argument("--points", type=int, default=50_000, help="points per synthetic frame")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sample-every", type=int, default=100)
    ap.add_argument("--settle", type=int, default=1000, help="frames before the slope window starts")
    ap.add_argument("--max-growth-mb", type=float, default=10.0, help="allowed RSS growth over the window")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    if a.frames <= a.settle + 2 * a.sample_every:
        ap.error("--frames must exceed --settle by at least two samples")

    from mtl.bench import device_state, load_frames, write_results
    from mtl.runtime import Pipeline

    tmp = Path(tempfile.mkdtemp(prefix="mtl_soak_"))
    if a.model is None:
        a.model = export_small(tmp / "export")
    pipe = Pipeline.open(a.model, "onnxruntime", threads=a.threads)
    if a.data is None:
        a.data = write_synthetic_chunks(tmp / "chunks", pipe.cfg, a.distinct, a.points)
    frames, _ = load_frames(a.data, pipe.cfg, a.distinct)
    frames += degenerate_frames(frames, np.random.default_rng(0))

    assert "torch" not in sys.modules, "the soak process must stay torch-free"
    samples: list[tuple[int, float, float]] = []        # (frames done, seconds, RSS MB)
    n_dets, dropped = 0, 0
    t0 = time.perf_counter()
    rss0 = rss_mb()
    from tqdm import tqdm

    for i in tqdm(range(a.frames), desc="soak", unit="frame", file=sys.stderr, mininterval=2.0):
        res = pipe.run_frame(frames[i % len(frames)], keep_outputs=False)
        n_dets += len(res.boxes)
        dropped += res.info["points_dropped_nonfinite"]
        if (i + 1) % a.sample_every == 0:
            samples.append((i + 1, time.perf_counter() - t0, rss_mb()))
    elapsed = time.perf_counter() - t0
    pipe.close()

    s = np.asarray(samples)
    window = s[s[:, 0] > a.settle]
    slope = slope_mb_per_kframe(window[:, 0], window[:, 2])
    growth = float(window[-1, 2] - window[0, 2])
    fitted_growth = slope * (window[-1, 0] - window[0, 0]) / 1000.0
    flat = abs(fitted_growth) <= a.max_growth_mb and growth <= a.max_growth_mb
    report = {
        "bench_soak": 1, "model": str(a.model), "data": str(a.data), "frames": a.frames,
        "distinct_frames": len(frames), "degenerate_frames": ["0 points", "NaN rows", "all points outside the grid"],
        "threads": a.threads, "wall_s": round(elapsed, 2), "frames_per_s": round(a.frames / elapsed, 2),
        "rss_start_mb": round(rss0, 2), "rss_end_mb": round(float(s[-1, 2]), 2),
        "rss_peak_sampled_mb": round(float(s[:, 2].max()), 2), "settle_frames": a.settle,
        "slope_mb_per_1000_frames": round(slope, 4), "window_growth_mb": round(growth, 3),
        "fitted_window_growth_mb": round(fitted_growth, 3), "max_growth_mb": a.max_growth_mb, "flat": bool(flat),
        "detections": n_dets, "nonfinite_points_dropped": dropped, "device": device_state(a.threads),
        "samples": [[int(f), round(t, 3), round(r, 3)] for f, t, r in samples],
    }
    md = (f"# Runtime soak ({report['device']['date']})\n\n"
          "| frames | distinct | frames/s | RSS start MB | RSS end MB | slope MB / 1k frames (after settle) | "
          "growth in window MB | flat |\n|---:|---:|---:|---:|---:|---:|---:|---|\n"
          f"| {a.frames:,} | {len(frames)} | {report['frames_per_s']} | {report['rss_start_mb']} | "
          f"{report['rss_end_mb']} | {report['slope_mb_per_1000_frames']:+.4f} | {report['window_growth_mb']:+.3f} | "
          f"{'yes' if flat else 'NO'} |\n\n"
          f"- model `{a.model}`, {a.threads} threads, ORT CPU; settle {a.settle} frames, RSS sampled every "
          f"{a.sample_every} frames\n- frame set includes 0-point, NaN-point and all-outside-grid frames "
          f"({dropped:,} non-finite points dropped in total)\n- CPU {report['device']['cpu_model']} "
          f"({report['device']['cpu_count']} cores, load avg {report['device']['load_avg']})\n")
    written = write_results(a.out, "soak", report, md)
    print(md)
    print(f"written: {written['json']}\n         {written['markdown']}")
    return 0 if flat else 1


def export_small(out: Path) -> Path:
    """Export in a child process, so this (measured) process never imports torch, like a vehicle runtime."""
    import subprocess

    # `python -c` puts its working directory first on sys.path: run it here, so it imports _common
    code = ("import sys; from pathlib import Path; from _common import SMALL_MODEL, export_default; "
            "from mtl.config import Config; export_default(Path(sys.argv[1]), Config().override(**SMALL_MODEL))")
    out = Path(out).resolve()
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, cwd=BENCH_DIR)
    return out / "model.onnx"


if __name__ == "__main__":
    sys.exit(main())
