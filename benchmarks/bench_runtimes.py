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

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def synthetic_frame(cfg, rng: np.random.Generator, fid: str, n_points: int, hw=None):
    """A chunk Frame with a structured image (blocks + noise: decodes like a real photo, not like noise)
    and ``n_points`` LiDAR points spread over the BEV grid (ground + objects)."""
    from mtl.data.chunk import Frame
    from mtl.geometry import cam_matrix, scale_cam_matrix
    from mtl.io import encode_png

    h, w = hw or cfg.camera.image_hw
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2] = (135, 190, 230)
    img[h // 2:] = (90, 90, 95)
    for _ in range(12):
        r, c = rng.integers(0, h - 8), rng.integers(0, w - 8)
        img[r: r + rng.integers(4, h // 3), c: c + rng.integers(4, w // 4)] = rng.integers(0, 255, 3)
    img = np.clip(img.astype(np.int16) + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)
    g = cfg.grid
    n_obj = n_points // 4
    ground = np.column_stack([rng.uniform(g.x_min, g.x_max * 1.3, n_points - n_obj),
                              rng.uniform(g.y_min * 1.3, g.y_max * 1.3, n_points - n_obj),
                              rng.normal(-1.7, 0.05, n_points - n_obj), rng.uniform(0, 1, n_points - n_obj)])
    centres = rng.uniform([g.x_min + 3, g.y_min / 2], [g.x_max - 3, g.y_max / 2], (20, 2))
    idx = rng.integers(0, 20, n_obj)
    objs = np.column_stack([centres[idx, 0] + rng.uniform(-2, 2, n_obj), centres[idx, 1] + rng.uniform(-1, 1, n_obj),
                            rng.uniform(-1.7, 0, n_obj), rng.uniform(0, 1, n_obj)])
    pts = np.concatenate([ground, objs]).astype(np.float32)
    k = scale_cam_matrix(cam_matrix(cfg.camera), cfg.camera.resolution_wh, (h, w)).astype(np.float32)
    sem = np.zeros((h, w), np.uint8)
    return Frame(frame_id=fid, image_png=encode_png(img), semantic_png=encode_png(sem), points=pts,
                 boxes=np.zeros((0, 7), np.float32), box_class=np.zeros(0, np.int16), cam_matrix=k)


def write_synthetic_chunks(out: Path, cfg, n_frames: int, n_points: int, seed: int = 0, hw=None) -> Path:
    from mtl.data.chunk import write_chunk

    rng = np.random.default_rng(seed)
    frames = [synthetic_frame(cfg, rng, f"synthetic/{i:04d}", n_points, hw) for i in range(n_frames)]
    write_chunk(out / "chunk_00000.npz", frames, {"source": "bench", "sem_classes": list(cfg.classes.sem_classes),
                                                  "det_classes": list(cfg.classes.det_classes)})
    return out


def _boxes_cell(p: dict | None) -> str:
    if not p:
        return "ref"
    extra = f" ({p['boxes_equivalent']} up to tied peaks)" if "boxes_equivalent" in p else ""
    return p["boxes_identical"] + extra


def export_default(out: Path, cfg=None, seed: int = 0) -> tuple[Path, Path]:
    """Random-init checkpoint + real fp32 ONNX export (mtl.export) of ``cfg`` (default Config())."""
    import torch

    from mtl.config import Config, sha256_file
    from mtl.contract import build_metadata, write_onnx_metadata
    from mtl.export.onnx_export import export_onnx_proto
    from mtl.export.onnx_io import save_proto_atomic
    from mtl.model import build_model

    cfg = cfg or Config()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    with torch.no_grad():
        # random weights give a near-constant heatmap (prior 0.1) whose peaks tie at float precision; widen
        # the heads so peaks are distinct and "identical decoded boxes" is a meaningful check (a trained
        # checkpoint has distinct peaks anyway). Latency does not depend on the weights.
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) and m.bias is not None:
                torch.nn.init.normal_(m.weight, std=0.5)
        torch.nn.init.normal_(model.heatmap_head.out.weight, std=2.0)
        model.heatmap_head.out.bias.fill_(-1.0)
    ckpt = out / "ckpt.pt"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "epoch": 0, "step": 0, "metrics": {}}, ckpt)
    proto, info = export_onnx_proto(model, cfg, opset=18)
    write_onnx_metadata(proto, build_metadata(cfg.to_dict(), batch=1, decode=False, precision="fp32",
                                              opset=info["opset"],
                                              source_checkpoint_sha256=sha256_file(ckpt)))
    onnx_path = save_proto_atomic(proto, out / "model.onnx")
    return onnx_path, ckpt


def model_and_frames(a: argparse.Namespace, tmp_prefix: str, n_points: int = 50_000):
    """``a.model`` / ``a.checkpoint`` / ``a.data`` or their defaults (a default-config random-init export,
    synthetic chunks) -> (ORT fp32 Pipeline at ``a.threads``, up to ``a.frames`` frames). Fills ``a``."""
    from mtl.bench import load_frames
    from mtl.runtime import Pipeline

    tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix))
    if a.model is None or a.checkpoint is None:
        print("exporting a default-config model (random weights) ...", file=sys.stderr)
        a.model, a.checkpoint = export_default(tmp / "export")
    pipe = Pipeline.open(a.model, "onnxruntime", threads=a.threads)
    if a.data is None:
        a.data = write_synthetic_chunks(tmp / "chunks", pipe.cfg, a.frames, n_points)
    frames, _ = load_frames(a.data, pipe.cfg, a.frames)
    return pipe, frames


def common_args(doc: str) -> argparse.ArgumentParser:
    """The options every ORT-vs-torch benchmark script takes (model / checkpoint / data or the defaults)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="fp32 model.onnx (default: export a default-config model)")
    ap.add_argument("--checkpoint", type=Path, help="the checkpoint --model was exported from")
    ap.add_argument("--data", type=Path, help="chunks (default: synthetic chunk frames)")
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--iters", type=int, default=30, help="timed frames per runtime")
    ap.add_argument("--rounds", type=int, default=5, help="interleave the timed frames in this many rounds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    return ap


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
        diff = " / ".join(f"{p['max_abs_diff'][k]:.1e}" for k in ("bbox_heatmap", "bbox_reg", "sem_logits")) if p else "ref"
        lines.append(f"| {r['backend']} | {s['inference']['mean']:.2f} | {s['total']['mean']:.2f} | {s['total']['p50']:.2f} | "
                     f"{s['total']['p90']:.2f} | {s['total']['p99']:.2f} | {r['throughput_fps']:.1f} | "
                     f"{r['speedup_vs_torch_eager']:.2f} | {diff} | {_boxes_cell(p)} |")
    dev = report["device"]
    md = ("# ORT runtime vs torch eager vs torch.compile\n\n" + "\n".join(lines) + "\n\n"
          f"- model image {cfg.camera.image_hw[0]}x{cfg.camera.image_hw[1]}, BEV {cfg.grid.n_channels}x"
          f"{cfg.grid.shape[0]}x{cfg.grid.shape[1]}; {len(frames)} frames, {a.iters} iterations (interleaved in "
          f"{a.rounds} rounds) after {a.warmup} warm-up, batch 1, {a.threads} threads\n- CPU {dev['cpu_model']} ({dev['cpu_count']} cores, load avg "
          f"{dev['load_avg']}); {compile_note or ''}\n")
    written = write_results(a.out, "runtimes", report, md)
    print(md)
    print(f"written: {written['json']}\n         {written['markdown']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
