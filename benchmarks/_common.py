"""Helpers the benchmark scripts share (a module next to them, not a package: each script runs as
``python benchmarks/bench_x.py``, which puts this folder first on ``sys.path``, so ``import _common`` works).

- ``synthetic_frame`` / ``write_synthetic_chunks``: chunk frames with a structured image and N LiDAR points;
- ``export_default``: a random-init checkpoint + real fp32 ONNX export (mtl.export) of a config;
- ``model_and_frames`` / ``common_args``: the model / checkpoint / data options of the ORT-vs-torch scripts
  and their defaults; ``SMALL_MODEL``: the small-width model of the soak.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "runs" / "benchmarks"      # never a tracked folder by default; curated copies: benchmarks/results/
BENCH_DIR = Path(__file__).resolve().parent

# default input sizes, small widths: memory behaviour depends on the runtime and the input sizes, not the widths
SMALL_MODEL = {"model.cam_channels": (8, 16, 24, 32), "model.bev_channels": (16, 32, 48), "model.cam_depth": 1,
               "model.bev_depth": 1, "model.bev_decoder_channels": 16, "model.fuse_channels": 16,
               "model.head_channels": 16, "model.sem_decoder_channels": 16}


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
    ap.add_argument("--out", type=Path, default=RESULTS)
    return ap
