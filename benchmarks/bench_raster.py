#!/usr/bin/env python
"""Single-thread latency of ``mtl.geometry.bev_raster`` vs point count.

    python benchmarks/bench_raster.py [--iters 200] [--warmup 10] [--out runs/benchmarks]

Points are uniform in a box 2 m wider than the default grid on every side and 0.5 m beyond its z range (so
some fall outside, as in a real sweep), reflectance in [0, 1]. Times each size ``--iters`` times on one
thread (BLAS/OpenMP pools pinned to 1 before numpy is imported) and writes ``bench_raster.json`` and
``bench_raster.md`` under ``--out``: mean / p50 / p90 / min ms per size, whether the target (<= 3 ms
at 100k points) is met, CPU model, load average and numpy version. On a shared CPU check ``load_avg``.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"          # before numpy: one core, as in the target

import argparse
import datetime as dt
import platform
import sys
import time
from pathlib import Path

import numpy as np
from _common import RESULTS

POINTS = (10_000, 50_000, 100_000, 200_000)
TARGET_POINTS, TARGET_MS = 100_000, 3.0


def random_cloud(n: int, seed: int = 0) -> np.ndarray:
    """(n, 4) float32 points in a box slightly larger than the default grid."""
    from mtl.config import GridConfig

    g, rng = GridConfig(), np.random.default_rng(seed)
    return np.column_stack([
        rng.uniform(g.x_min - 2, g.x_max + 2, n), rng.uniform(g.y_min - 2, g.y_max + 2, n),
        rng.uniform(g.z_min - 0.5, g.z_max + 0.5, n), rng.uniform(0, 1, n),
    ]).astype(np.float32)


def time_raster(n: int, iters: int, warmup: int) -> dict:
    """Latency stats (ms) of bev_raster on one n-point cloud."""
    from mtl.config import GridConfig
    from mtl.geometry import bev_raster

    grid, pts = GridConfig(), random_cloud(n)
    for _ in range(warmup):
        bev_raster(pts, grid)
    ms = np.empty(iters)
    for i in range(iters):
        t0 = time.perf_counter()
        bev_raster(pts, grid)
        ms[i] = (time.perf_counter() - t0) * 1e3
    return {"points": n, "iters": iters, "mean_ms": float(ms.mean()), "p50_ms": float(np.percentile(ms, 50)),
            "p90_ms": float(np.percentile(ms, 90)), "min_ms": float(ms.min())}


def markdown(result: dict) -> str:
    rows = ["| points | mean ms | p50 ms | p90 ms | min ms |", "|---:|---:|---:|---:|---:|"]
    rows += [f"| {r['points']:,} | {r['mean_ms']:.2f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['min_ms']:.2f} |"
             for r in result["results"]]
    t = result["target"]
    verdict = "met" if t["met"] else "NOT met"
    return "\n".join([
        f"# bev_raster latency ({result['date']})", "",
        (f"CPU: {result['device']['cpu_model']}, 1 thread, load avg {result['device']['load_avg']}, "
         f"numpy {result['versions']['numpy']}, python {result['versions']['python']}"), "",
        *rows, "",
        f"Target <= {t['ms']:.0f} ms at {t['points']:,} points (p50): **{verdict}** ({t['p50_ms']:.2f} ms).", "",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)

    from mtl.bench import cpu_model
    from mtl.io import write_bytes_atomic, write_json_atomic

    results = [time_raster(n, a.iters, a.warmup) for n in POINTS]
    at_target = next(r for r in results if r["points"] == TARGET_POINTS)
    result = {
        "benchmark": "bev_raster",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "device": {"cpu_model": cpu_model() or "unknown", "cpu_count": os.cpu_count(), "threads": 1,
                   "load_avg": [round(x, 2) for x in os.getloadavg()]},
        "versions": {"numpy": np.__version__, "python": platform.python_version()},
        "results": results,
        "target": {"points": TARGET_POINTS, "ms": TARGET_MS, "p50_ms": at_target["p50_ms"],
                   "met": at_target["p50_ms"] <= TARGET_MS},
    }
    write_json_atomic(a.out / "bench_raster.json", result)
    md = markdown(result)
    write_bytes_atomic(a.out / "bench_raster.md", md.encode())
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
