"""Evaluation: one implementation for `mtl eval` and the validation pass of `mtl train`.

The model's outputs go into ``metrics.MetricsAccumulator`` frame by frame: semantic argmax -> confusion
matrix -> mIoU, pixel accuracy, per-class IoU; sigmoid heatmap -> ``metrics.metric_detections`` (decode at
``decode.eval_score_threshold``, top ``decode.max_detections``) -> nuScenes-style BEV AP per class and mAP.
Under DDP every rank evaluates its own contiguous shard of the frames (``ShardSampler``: no padding, so no
frame is scored twice); the per-rank accumulators are gathered and merged in rank order, i.e. in dataset
order, and the loss sums all-reduced, so every rank returns the single-process result.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from .config import Config
from .data.chunk import HAS_ALL
from .dataset import scored_tasks
from .metrics import MetricsAccumulator, metric_detections


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class ShardSampler(Sampler[int]):
    """Rank ``rank``'s contiguous slice of ``range(n)``, shards differing by at most one frame (the lower
    ranks get the longer ones, so rank 0, which draws the debug images, has a frame whenever n > 0).

    Unlike ``DistributedSampler`` it never pads a shard with repeated frames (a padded frame would be scored
    twice), and rank order is dataset order, so merged results match a single process frame for frame."""

    def __init__(self, n: int, rank: int = 0, world: int = 1):
        base, extra = divmod(n, world)
        self.start = rank * base + min(rank, extra)
        self.stop = self.start + base + (rank < extra)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Iterable[dict], cfg: Config, device: torch.device | str = "cpu",
             sem_weights: torch.Tensor | None = None, with_losses: bool = True, progress: bool = False
             ) -> dict[str, Any]:
    """Run ``model`` over ``loader`` and return
    ``{"loss": {term: mean, "total": mean}, "miou", "pixel_acc", "mean_acc", "per_class_iou": {name: iou|None},
    "map", "ap": {cls: ap}, "ap_by_threshold": {...}, "n_gt", "frames", "semantic_frames", "detection_frames",
    "skipped_bad", "time_s", "samples_per_s"}`` (see ``MetricsAccumulator.compute``). A frame whose
    ``modality_mask`` lacks what a task needs (``dataset.scored_tasks``) is scored on the other task only."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    acc = MetricsAccumulator.from_config(cfg)
    loss_sums: dict[str, float] = {}
    n_bad = 0
    t0 = time.perf_counter()
    for batch in _bar(loader, progress):
        n_bad += len(batch.get("bad", ()))
        if "image" not in batch:            # every frame of the batch was bad (skip_bad)
            continue
        b = to_device(batch, device)
        out = model(b["image"], b["bev"])
        if with_losses:
            _add_losses(loss_sums, out, b, cfg, sem_weights)
        _add_batch(acc, out, batch, cfg)
    if dist.is_available() and dist.is_initialized():
        acc, loss_sums, n_bad = _gather(acc, loss_sums, n_bad)
    metrics = acc.compute()
    elapsed = time.perf_counter() - t0
    model.train(was_training)
    result: dict[str, Any] = {}
    if with_losses:
        result["loss"] = {k: v / max(acc.frames, 1) for k, v in loss_sums.items()}
    result.update(metrics)
    result.update(semantic_frames=acc.n_semantic_frames, detection_frames=acc.n_detection_frames,
                  skipped_bad=n_bad, time_s=elapsed, samples_per_s=acc.frames / max(elapsed, 1e-9))
    return result


def _bar(loader: Iterable[dict], progress: bool) -> Iterable[dict]:
    if not progress:
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc="eval", leave=False, dynamic_ncols=True)


def _add_losses(loss_sums: dict[str, float], out: dict, b: dict, cfg: Config, sem_weights) -> None:
    """Frame-weighted loss sums of one batch (the losses are batch means)."""
    from .losses import compute_losses

    bs = b["image"].shape[0]
    terms = compute_losses(out, b, cfg.loss, sem_weights, ignore_index=cfg.classes.ignore_index)
    for k, v in terms.items():
        loss_sums[k] = loss_sums.get(k, 0.0) + float(v) * bs
    loss_sums["total"] = loss_sums.get("total", 0.0) + float(sum(terms.values())) * bs


def _add_batch(acc: MetricsAccumulator, out: dict[str, torch.Tensor], batch: dict[str, Any], cfg: Config) -> None:
    """Every frame of a batch into the accumulator (one host copy per output), each on the tasks its
    ``modality_mask`` allows."""
    sem = out["sem_logits"].argmax(1).cpu().numpy()                       # (B, H, W)
    heat = torch.sigmoid(out["bbox_heatmap"].float()).cpu().numpy()       # (B, n_det, Hh, Wh)
    reg = out["bbox_reg"].float().cpu().numpy()                           # (B, 8, Hh, Wh)
    gt_sem = batch["semantic"].numpy()
    masks = batch.get("modality_mask") or [HAS_ALL] * len(batch["frame_id"])
    for i, fid in enumerate(batch["frame_id"]):
        with_sem, with_det = scored_tasks(masks[i])
        acc.add_frame(fid, semantic_pred=sem[i] if with_sem else None, semantic_gt=gt_sem[i] if with_sem else None,
                      **(metric_detections(heat[i], reg[i], cfg) if with_det else {}),
                      gt_boxes=batch["boxes"][i] if with_det else None,
                      gt_labels=batch["box_class"][i] if with_det else None)


def _gather(acc: MetricsAccumulator, loss_sums: dict[str, float], n_bad: int
            ) -> tuple[MetricsAccumulator, dict[str, float], int]:
    """Every rank's accumulator merged in rank order, loss sums and bad-frame counts summed. Objects, not
    tensors: a rank whose shard is empty has no loss keys to all-reduce."""
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (acc, loss_sums, n_bad))
    merged = parts[0][0]
    for part_acc, _, _ in parts[1:]:
        merged.merge(part_acc)
    sums: dict[str, float] = {}
    for _, part_sums, _ in parts:
        for k, v in part_sums.items():
            sums[k] = sums.get(k, 0.0) + v
    return merged, sums, sum(part[2] for part in parts)


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
    """Human-readable table: per-class IoU, per-class AP, then mIoU / pixel acc / mAP; a task no frame could
    be scored on shows '-' (e.g. real A2D2 frames with semantic labels but no 3D boxes)."""
    n_sem = metrics.get("semantic_frames", metrics["frames"])
    n_det = metrics.get("detection_frames", metrics["frames"])
    lines = [f"{'semantic class':<16} {'IoU':>7}"]
    for name, iou in metrics["per_class_iou"].items():
        lines.append(f"{name:<16} {'-' if iou is None else f'{iou:.3f}':>7}")
    lines.append("")
    lines.append(f"{'detection class':<16} {'AP':>7}")
    for name in cfg.classes.det_classes:
        ap = metrics["ap"].get(name)
        lines.append(f"{name:<16} {'-' if ap is None else f'{ap:.3f}':>7}")
    lines.append("")

    def val(key: str, n: int) -> str:
        return f"{metrics[key]:.4f}" if n else "-"

    counts = "" if n_sem == n_det == metrics["frames"] else \
        f": {n_sem} scored for semantics, {n_det} for detection"
    lines.append(f"mIoU {val('miou', n_sem)}   pixel acc {val('pixel_acc', n_sem)}   mAP {val('map', n_det)}"
                 f"   ({metrics['frames']} frames{counts}, {metrics['samples_per_s']:.1f} frames/s)")
    return "\n".join(lines)


def evaluate_checkpoint(checkpoint: str, data: str, batch_size: int = 4, workers: int = 0,
                        device: str | None = None, progress: bool = True, skip_bad: bool = False
                        ) -> tuple[dict[str, Any], Config]:
    """Load a checkpoint and evaluate it on a chunk directory (no augmentation). Partial frames (chunks
    converted with ``--partial``) are scored on the tasks their labels allow (``dataset.scored_tasks``);
    ``partial_frames`` counts them, and the loss is left out when there are any."""
    from torch.utils.data import DataLoader

    from .dataset import ChunkDataset, collate
    from .model import load_checkpoint

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, cfg, _ = load_checkpoint(checkpoint, map_location=dev)
    model.to(dev)
    ds = ChunkDataset(data, cfg, augment=False, skip_bad=skip_bad, partial=True)
    for path, reason in ds.bad_files.items():
        print(f"warning: skipped bad chunk {path}: {reason}", flush=True)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate)
    sem_w = torch.tensor(cfg.loss.sem_weights, dtype=torch.float32, device=dev) if cfg.loss.sem_weights else None
    # a loss over stand-ins for missing labels would mean nothing: only complete data gets one
    metrics = evaluate(model, loader, cfg, dev, sem_weights=sem_w, progress=progress,
                       with_losses=ds.partial_frames == 0)
    return {**metrics, "partial_frames": ds.partial_frames}, cfg
