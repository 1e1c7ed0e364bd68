#!/usr/bin/env python
"""ORT runtime vs torch eager vs torch.compile on the same frames (batch 1, same thread count).

    python benchmarks/bench_runtimes.py                       # default model, random init, synthetic frames
    python benchmarks/bench_runtimes.py --model export/model.onnx --checkpoint runs/x/best.pt --data chunks/

Every column goes through the SAME numpy preprocess / postprocess (mtl.runtime.Pipeline); only inference
differs. Without --model/--checkpoint/--data a default-config model (random weights, the latency does not
depend on them) is exported with the real mtl.export code into a temp dir and synthetic chunk frames are
written (image at the model size, --points LiDAR points). The columns are timed interleaved (--rounds
rounds, each running every runtime in turn) so machine drift hits them alike. The ORT column overlaps its
independent numpy stages on a helper thread; the torch columns do not (their OpenMP workers busy-wait and
would slow it down), each getting its best setting. Writes JSON + markdown under --out.
Perf bar (benchmarks/README.md): ORT fp32 end-to-end >= 2x faster than torch eager, parity <= 1e-4.
"""
from __future__ import annotations

import sys

from _common import common_args, model_and_frames


def _boxes_cell(p: dict | None) -> str:
    if not p:
        return "ref"
    extra = f" ({p['boxes_equivalent']} up to tied peaks)" if "boxes_equivalent" in p else ""
    return p["boxes_identical"] + extra


def main(argv=None) -> int:
    ap = common_args(__doc__)
    ap.add_argument("--points", type=int, default=50_000, help="points per synthetic frame")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    a = ap.parse_args(argv)

    import torch

    from mtl.bench import (
        TorchBackend,
        device_state,
        frame_outputs,
        parity,
        peak_rss_mb,
        time_backends,
        torch_pipeline,
        warm_up,
        write_results,
    )
    from mtl.runtime import ModelSpec, Pipeline

    ort_pipe, frames = model_and_frames(a, "mtl_bench_rt_", a.points)

    pipes = {"onnxruntime": ort_pipe, "torch eager": torch_pipeline(a.checkpoint, a.threads)}
    compile_note = None
    if not a.no_compile:
        try:
            cb = TorchBackend(a.checkpoint, a.threads)
            cb.model = torch.compile(cb.model)
            cb.name = "torch.compile"
            # no helper thread, like the eager column (torch's OpenMP workers busy-wait)
            cp = Pipeline(ModelSpec.from_config(cb.cfg, a.checkpoint), cb, overlap=False)
            import time as _t

            print("compiling (torch.compile first call) ...", file=sys.stderr)
            t0 = _t.perf_counter()
            cp.run_frame(frames[0])
            compile_note = f"first call (compile) {(_t.perf_counter() - t0):.1f} s"
            pipes["torch.compile"] = cp
        except Exception as e:  # inductor needs a C++ compiler; report, never fake
            compile_note = f"torch.compile unavailable: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    rows = []
    for name, pipe in pipes.items():
        warm_up(pipe, frames, a.warmup)
        rows.append({"backend": name, "providers": pipe.backend.providers, "peak_rss_mb": peak_rss_mb()})
    print(f"timing {', '.join(pipes)} (interleaved, {a.rounds} rounds) ...", file=sys.stderr)
    timed = time_backends(pipes, frames, a.iters, a.rounds)
    for row in rows:
        if "error" in timed[row["backend"]]:
            raise SystemExit(f"error: {row['backend']}: {timed[row['backend']]['error']}")
        row.update(timed[row["backend"]])
        row["outputs"] = frame_outputs(pipes[row["backend"]], frames)
    ref = rows[1]
    t_ref = ref["stages"]["total"]["mean"]
    for row in rows:
        row["speedup_vs_torch_eager"] = round(t_ref / row["stages"]["total"]["mean"], 3)
        if row is not ref:
            row["parity_vs_torch_eager"] = parity(ref["outputs"], row["outputs"], {}, {}, cfg=ort_pipe.cfg)
    for row in rows:
        del row["outputs"]

    cfg = ort_pipe.cfg
    report = {"bench_runtimes": 1, "model": str(a.model), "checkpoint": str(a.checkpoint), "data": str(a.data),
              "frames": len(frames), "points_per_frame": [len(f.points) for f in frames], "iters": a.iters,
              "rounds": a.rounds, "warmup": a.warmup, "threads": a.threads, "image_hw": list(cfg.camera.image_hw),
              "grid": list(cfg.grid.shape), "compile_note": compile_note, "device": device_state(a.threads),
              "rows": rows}
    lines = ["| runtime | inference mean ms | total mean ms | total p50 | p90 | p99 | frames/s | x torch eager | "
             "max abs diff (heatmap / reg / sem) | boxes identical |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["stages"]
        p = r.get("parity_vs_torch_eager")
        diff = (" / ".join(f"{p['max_abs_diff'][k]:.1e}" for k in ("bbox_heatmap", "bbox_reg", "sem_logits"))
                if p else "ref")
        lines.append(f"| {r['backend']} | {s['inference']['mean']:.2f} | {s['total']['mean']:.2f} | "
                     f"{s['total']['p50']:.2f} | {s['total']['p90']:.2f} | {s['total']['p99']:.2f} | "
                     f"{r['throughput_fps']:.1f} | "
                     f"{r['speedup_vs_torch_eager']:.2f} | {diff} | {_boxes_cell(p)} |")
    dev = report["device"]
    md = ("# ORT runtime vs torch eager vs torch.compile\n\n" + "\n".join(lines) + "\n\n"
          f"- model image {cfg.camera.image_hw[0]}x{cfg.camera.image_hw[1]}, BEV {cfg.grid.n_channels}x"
          f"{cfg.grid.shape[0]}x{cfg.grid.shape[1]}; {len(frames)} frames, {a.iters} iterations (interleaved in "
          f"{a.rounds} rounds) after {a.warmup} warm-up, batch 1, {a.threads} threads\n"
          f"- CPU {dev['cpu_model']} ({dev['cpu_count']} cores, load avg {dev['load_avg']}); {compile_note or ''}\n")
    written = write_results(a.out, "runtimes", report, md)
    print(md)
    print(f"written: {written['json']}\n         {written['markdown']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
