#!/usr/bin/env python
"""The runtime's per-frame stages, compiled (numba, ``mtl[fast]``) vs numpy, interleaved in one process.

    python benchmarks/bench_kernels.py                        # default-config model + 16 synthetic raw frames
    python benchmarks/bench_kernels.py --model export/model.onnx --data raw_val [--rounds 30 --per-round 30]

One ``Pipeline`` (onnxruntime fp32, ``--threads``) runs sensor-input frames (``run_frame`` on raw A2D2 frames
with the decoded distorted camera image, as ``mtl bench --input sensor``). Each round runs ``--per-round``
frames with the compiled kernels and then as many with ``MTL_KERNELS=numpy`` (the first 3 of each block are
not timed), so drift of the machine hits both alike. Writes ``kernels_<date-time>.json`` / ``.md`` under
``--out``: per implementation the mean end-to-end latency, p50 / p99 / p99.9, the mean ``inference`` stage,
their ratio (the vehicle bar's "end to end / network-only") and the per-stage means, plus the device state.
Without ``--model`` / ``--data`` a default-config model with random weights is exported and 16 raw frames are
ray-cast by ``mtl data synth`` (a random model finds thousands of heatmap peaks, a trained one a few: the
postprocess of a trained model is faster).
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import REPO, RESULTS, export_default

STAGES = ("remap_normalise", "bev_raster", "inference", "postprocess")


def _inputs(a: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    model = a.model or export_default(work / "export")[0]
    data = a.data
    if data is None:
        data = work / "raw"
        subprocess.run([sys.executable, "-m", "mtl.cli", "data", "synth", "--out", str(data), "--frames", "16",
                        "--seed", "1", "--no-progress"], check=True, cwd=REPO)
    return model, data


def measure(model: Path, data: Path, rounds: int, per_round: int, threads: int) -> dict:
    from mtl.bench import load_frames
    from mtl.bench_stats import stats
    from mtl.runtime import Pipeline, kernels

    if not kernels.available():
        raise SystemExit(f"bench_kernels: the numba kernels are not usable here "
                         f"({kernels.failure() or 'numba not installed: pip install mtl[fast]'})")
    timed: dict[str, dict[str, list[float]]] = {k: {"latency": [], **{s: [] for s in STAGES}}
                                                for k in ("numba", "numpy")}
    with Pipeline.open(model, "onnxruntime", threads=threads) as pipe:
        frames, _ = load_frames(data, pipe.cfg, 8, "sensor")
        for _ in range(rounds):
            for impl in ("numba", "numpy"):
                if impl == "numpy":
                    os.environ[kernels.ENV] = "numpy"
                else:
                    os.environ.pop(kernels.ENV, None)
                for i in range(per_round):
                    t0 = time.perf_counter()
                    res = pipe.run_frame(frames[i % len(frames)], keep_outputs=False)
                    if i >= 3:
                        timed[impl]["latency"].append((time.perf_counter() - t0) * 1e3)
                        for s in STAGES:
                            timed[impl][s].append(res.timings_ms.get(s, 0.0))
        os.environ.pop(kernels.ENV, None)
    out = {}
    for impl, t in timed.items():
        lat, inf = stats(t["latency"]), stats(t["inference"])
        out[impl] = {"latency": lat, "stage_means_ms": {s: round(float(np.mean(t[s])), 3) for s in STAGES},
                     "e2e_over_inference": round(lat["mean"] / inf["mean"], 4)}
    return out


def markdown(rep: dict) -> str:
    r = rep["results"]
    lines = [f"# bench_kernels {rep['date']}", "",
             "| stages | e2e mean ms | p50 | p99 | p99.9 | inference mean | e2e / inference | remap + normalise | "
             "BEV raster (helper) | postprocess |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for impl in ("numba", "numpy"):
        lat, st = r[impl]["latency"], r[impl]["stage_means_ms"]
        lines.append(f"| {impl} | {lat['mean']:.2f} | {lat['p50']:.2f} | {lat['p99']:.2f} | {lat['p99.9']:.2f} | "
                     f"{st['inference']:.2f} | {r[impl]['e2e_over_inference']:.3f} | {st['remap_normalise']:.2f} | "
                     f"{st['bev_raster']:.2f} | {st['postprocess']:.2f} |")
    d = rep["device"]
    lines += ["", f"- {rep['rounds']} rounds x {rep['per_round']} frames per implementation (3 untimed per block), "
                  f"interleaved; sensor input, onnxruntime fp32, {rep['threads']} threads; model `{rep['model']}`",
              f"- compiled stages save {r['numpy']['latency']['mean'] - r['numba']['latency']['mean']:.2f} ms per "
              f"frame on average",
              f"- {d['cpu_model']} ({d['cpu_count']} cores), load average {d['load_avg']} at the start, "
              f"{rep['load_avg_after']} at the end; " +
              ", ".join(f"{k} {v}" for k, v in d["libraries"].items() if k in ("numpy", "numba", "onnxruntime"))]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, help="fp32 model.onnx (default: export a default-config model)")
    p.add_argument("--data", type=Path, help="raw A2D2 tree (default: 16 frames from `mtl data synth`)")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--per-round", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()
    from mtl.bench_system import device_state, load_avg
    from mtl.io import write_bytes_atomic, write_json_atomic

    with tempfile.TemporaryDirectory() as tmp:
        model, data = _inputs(a, Path(tmp))
        device = device_state(a.threads)
        results = measure(model, data, a.rounds, a.per_round, a.threads)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    rep = {"date": stamp, "model": str(a.model or "default-config, random weights"), "data": str(a.data or "synth"),
           "rounds": a.rounds, "per_round": a.per_round, "threads": a.threads, "results": results,
           "device": device, "load_avg_after": load_avg()}
    a.out.mkdir(parents=True, exist_ok=True)
    md = markdown(rep)
    write_json_atomic(a.out / f"kernels_{stamp}.json", rep)
    write_bytes_atomic(a.out / f"kernels_{stamp}.md", md.encode())
    print(md)
    print(f"written: {a.out / f'kernels_{stamp}.md'}")


if __name__ == "__main__":
    main()
