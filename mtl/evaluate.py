"""Evaluation: one implementation for `mtl eval` and the validation pass of `mtl train`.

Semantic: confusion matrix -> mIoU, pixel accuracy, per-class IoU (``metrics.segmentation_metrics``).
Detection: sigmoid heatmap -> ``geometry.decode_detections`` -> BEV AP per class with nuScenes centre-distance
matching and mAP (``metrics.DetectionAccumulator``). Under DDP every rank evaluates its shard; confusion
matrices and loss sums are all-reduced and per-frame detections gathered, so all ranks return the same dict.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .config import Config
from .geometry import decode_detections


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Iterable[dict], cfg: Config, device: torch.device | str = "cpu",
             sem_weights: torch.Tensor | None = None, with_losses: bool = True, progress: bool = False,
             score_threshold: float | None = None) -> dict[str, Any]:
    """Run ``model`` over ``loader`` and return
    ``{"loss": {term: mean, "total": mean}, "miou", "pixel_acc", "per_class_iou": {name: iou|None},
    "map", "ap": {cls: ap}, "ap_by_threshold": {...}, "frames", "time_s", "samples_per_s"}``."""
    from .losses import compute_losses
    from .metrics import DetectionAccumulator, confusion_matrix, segmentation_metrics

    device = torch.device(device)
    was_training = model.training
    model.eval()
    n_sem = cfg.classes.n_sem
    thr = cfg.train.eval_score_threshold if score_threshold is None else score_threshold
    confmat = np.zeros((n_sem, n_sem), np.int64)
    loss_sums: dict[str, float] = {}
    n_frames = 0
    frames: list[tuple] = []      # per frame: pred boxes, scores, labels, gt boxes, gt labels
    t0 = time.perf_counter()
    it = loader
    if progress:
        from tqdm import tqdm

        it = tqdm(loader, desc="eval", leave=False, dynamic_ncols=True)
    n_bad = 0
    for batch in it:
        n_bad += len(batch.get("bad", ()))
        if "image" not in batch:            # every frame of the batch was bad (skip_bad)
            continue
        b = to_device(batch, device)
        out = model(b["image"], b["bev"])
        bs = b["image"].shape[0]
        n_frames += bs
        if with_losses:
            terms = compute_losses(out, b, cfg.loss, sem_weights, ignore_index=cfg.classes.ignore_index)
            for k, v in terms.items():
                loss_sums[k] = loss_sums.get(k, 0.0) + float(v) * bs
            loss_sums["total"] = loss_sums.get("total", 0.0) + float(sum(terms.values())) * bs
        pred = out["sem_logits"].argmax(1).cpu().numpy()
        confmat += confusion_matrix(batch["semantic"].numpy(), pred, n_sem, cfg.classes.ignore_index)
        heat = torch.sigmoid(out["bbox_heatmap"].float()).cpu().numpy()
        reg = out["bbox_reg"].float().cpu().numpy()
        for i in range(bs):
            det = decode_detections(heat[i], reg[i], cfg.grid, k=cfg.decode.max_detections,
                                    score_threshold=thr, kernel=cfg.decode.nms_kernel)
            frames.append((det["boxes"], det["scores"], det["labels"],
                           np.asarray(batch["boxes"][i], np.float32).reshape(-1, 7),
                           np.asarray(batch["box_class"][i], np.int64).reshape(-1)))

    if dist.is_available() and dist.is_initialized():
        loss_sums["_bad"] = float(n_bad)
        confmat, loss_sums, n_frames, frames = _reduce(confmat, loss_sums, n_frames, frames, device)
        n_bad = int(loss_sums.pop("_bad"))

    acc = DetectionAccumulator(list(cfg.classes.det_classes))
    for pb, ps, pl, gb, gl in frames:
        keep = gl >= 0    # ignored boxes (class -1) are neither matched nor counted
        acc.add(pb, ps, pl, gb[keep], gl[keep])
    seg = segmentation_metrics(confmat, list(cfg.classes.sem_classes))
    det = acc.compute()
    elapsed = time.perf_counter() - t0
    model.train(was_training)
    result: dict[str, Any] = {}
    if with_losses:
        result["loss"] = {k: v / max(n_frames, 1) for k, v in loss_sums.items()}
    result.update(seg)
    result.update(det)
    result.update(frames=n_frames, skipped_bad=n_bad, time_s=elapsed, samples_per_s=n_frames / max(elapsed, 1e-9))
    return result


def _reduce(confmat, loss_sums, n_frames, frames, device):
    """Sum confusion matrices / loss sums / frame counts over ranks and gather the per-frame detections."""
    keys = sorted(loss_sums)
    t = torch.tensor([float(n_frames)] + [loss_sums[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    cm = torch.from_numpy(confmat).to(device)
    dist.all_reduce(cm)
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, frames)
    all_frames = [f for part in gathered for f in part]
    return cm.cpu().numpy(), dict(zip(keys, t[1:].tolist())), int(t[0].item()), all_frames


def score(metrics: dict[str, Any]) -> float:
    """Model-selection score for best.pt: semantic mIoU + detection mAP."""
    return float(metrics.get("miou") or 0.0) + float(metrics.get("map") or 0.0)


def flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metrics -> flat ``prefix/key/sub`` dict (metrics.jsonl rows; ``mtl viz`` groups by key).

    ``per_class_iou`` becomes ``iou/<class>``; ``ap_by_threshold`` becomes ``ap_by_threshold/<cls>/<th>``."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        name = "iou" if k == "per_class_iou" else k
        key = f"{prefix}{name}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v.item() if isinstance(v, np.generic) else v
    return out


def format_table(metrics: dict[str, Any], cfg: Config) -> str:
    """Human-readable table: per-class IoU, per-class AP, then mIoU / pixel acc / mAP."""
    lines = [f"{'semantic class':<16} {'IoU':>7}"]
    for name, iou in metrics["per_class_iou"].items():
        lines.append(f"{name:<16} {'-' if iou is None else f'{iou:.3f}':>7}")
    lines.append("")
    lines.append(f"{'detection class':<16} {'AP':>7}")
    for name in cfg.classes.det_classes:
        ap = metrics["ap"].get(name)
        lines.append(f"{name:<16} {'-' if ap is None else f'{ap:.3f}':>7}")
    lines.append("")
    lines.append(f"mIoU {metrics['miou']:.4f}   pixel acc {metrics['pixel_acc']:.4f}   mAP {metrics['map']:.4f}"
                 f"   ({metrics['frames']} frames, {metrics['samples_per_s']:.1f} frames/s)")
    return "\n".join(lines)


def evaluate_checkpoint(checkpoint: str, data: str, batch_size: int = 4, workers: int = 0,
                        device: str | None = None, progress: bool = True, skip_bad: bool = False
                        ) -> tuple[dict[str, Any], Config]:
    """Load a checkpoint and evaluate it on a chunk directory (no augmentation, no losses weighting changes)."""
    from torch.utils.data import DataLoader

    from .dataset import ChunkDataset, collate
    from .model import load_checkpoint

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, cfg, _ = load_checkpoint(checkpoint, map_location=dev)
    model.to(dev)
    ds = ChunkDataset(data, cfg, augment=False, skip_bad=skip_bad)
    for path, reason in ds.bad_files.items():
        print(f"warning: skipped bad chunk {path}: {reason}", flush=True)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate)
    sem_w = torch.tensor(cfg.loss.sem_weights, dtype=torch.float32, device=dev) if cfg.loss.sem_weights else None
    return evaluate(model, loader, cfg, dev, sem_weights=sem_w, progress=progress), cfg
