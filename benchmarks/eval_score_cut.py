#!/usr/bin/env python
"""mAP of one checkpoint against the detection score cut and the per-frame top-K.

    python benchmarks/eval_score_cut.py --checkpoint run/last.pt --data val [--out runs/benchmarks]

Runs the model once over every frame of ``--data`` (no augmentation), keeps the sigmoid heatmaps, then
scores them with ``mtl.metrics.MetricsAccumulator`` (the implementation behind every mAP in mtl) at each
cut in ``--cuts`` and each K in ``--top-k``. It shows what ``decode.eval_score_threshold`` costs or gains
against no cut at all, and how many predictions per frame each cut leaves. Also counts the ground-truth
boxes whose centre lies outside the BEV grid (they count, and nothing can be predicted there). Writes
``score_cut_<date>.json`` and ``.md`` under ``--out``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def model_outputs(checkpoint: str, data: str) -> tuple[object, list[tuple]]:
    """(cfg, [(frame_id, heat_prob (C,Hh,Wh), reg (8,Hh,Wh), gt boxes, gt labels)]) for every frame."""
    import torch
    from torch.utils.data import DataLoader

    from mtl.dataset import ChunkDataset, collate
    from mtl.model import load_checkpoint

    model, cfg, _ = load_checkpoint(checkpoint)
    model.eval()
    frames = []
    with torch.no_grad():
        for b in DataLoader(ChunkDataset(data, cfg), batch_size=4, collate_fn=collate):
            out = model(b["image"], b["bev"])
            heat, reg = torch.sigmoid(out["bbox_heatmap"]).numpy(), out["bbox_reg"].numpy()
            frames += [(fid, heat[i], reg[i], b["boxes"][i], b["box_class"][i]) for i, fid in enumerate(b["frame_id"])]
    return cfg, frames


def sweep(cfg, frames: list[tuple], cuts: list[float], top_k: list[int]) -> list[dict]:
    from mtl.geometry import decode_detections
    from mtl.metrics import MetricsAccumulator

    rows = []
    for k in top_k:
        for cut in cuts:
            acc = MetricsAccumulator(cfg.classes.sem_classes, cfg.classes.det_classes, score_threshold=cut,
                                     max_detections=k)
            n_pred = 0
            for fid, heat, reg, gt_boxes, gt_labels in frames:
                d = decode_detections(heat, reg, cfg.grid, k=k, score_threshold=cut, kernel=cfg.decode.nms_kernel)
                n_pred += len(d["scores"])
                acc.add_frame(fid, boxes=d["boxes"], scores=d["scores"], labels=d["labels"], gt_boxes=gt_boxes,
                              gt_labels=gt_labels)
            m = acc.compute()
            rows.append({"top_k": k, "cut": cut, "preds_per_frame": n_pred / max(len(frames), 1), "map": m["map"],
                         "ap": m["ap"]})
    return rows


def outside_grid(cfg, frames: list[tuple]) -> tuple[int, int]:
    """(scored GT boxes, those with the centre outside the BEV grid)."""
    g = cfg.grid
    boxes = np.concatenate([np.asarray(f[3]).reshape(-1, 7) for f in frames])
    labels = np.concatenate([np.asarray(f[4]).reshape(-1) for f in frames])
    boxes = boxes[labels >= 0]
    inside = (boxes[:, 0] >= g.x_min) & (boxes[:, 0] < g.x_max) & (boxes[:, 1] >= g.y_min) & (boxes[:, 1] < g.y_max)
    return len(boxes), int((~inside).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--cuts", default="0,0.01,0.05,0.1,0.2,0.3")
    ap.add_argument("--top-k", default="100,500")
    ap.add_argument("--out", default=str(REPO / "runs" / "benchmarks"))
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from mtl.io import write_bytes_atomic, write_json_atomic

    cfg, frames = model_outputs(args.checkpoint, args.data)
    rows = sweep(cfg, frames, [float(c) for c in args.cuts.split(",")], [int(k) for k in args.top_k.split(",")])
    n_gt, n_out = outside_grid(cfg, frames)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    report = {"checkpoint": args.checkpoint, "data": args.data, "frames": len(frames), "gt_boxes": n_gt,
              "gt_boxes_outside_grid": n_out, "eval_score_threshold": cfg.decode.eval_score_threshold,
              "max_detections": cfg.decode.max_detections, "rows": rows}
    classes = list(cfg.classes.det_classes)
    title = (f"mAP vs score cut: `{args.checkpoint}` on `{args.data}` ({len(frames)} frames, {n_gt} GT boxes, "
             f"{n_out} with the centre outside the BEV grid)")
    lines = [title, "",
             "| top-K | cut | predictions / frame | mAP | " + " | ".join(classes) + " |",
             "|---:|---:|---:|---:|" + "---:|" * len(classes)]
    for r in rows:
        aps = " | ".join("-" if r["ap"][c] is None else f"{r['ap'][c]:.3f}" for c in classes)
        lines.append(f"| {r['top_k']} | {r['cut']:g} | {r['preds_per_frame']:.1f} | {r['map']:.4f} | {aps} |")
    out = Path(args.out)
    write_json_atomic(out / f"score_cut_{stamp}.json", report)
    write_bytes_atomic(out / f"score_cut_{stamp}.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
