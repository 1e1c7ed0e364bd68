"""Training loop (`mtl train`): one readable function, no trainer classes.

    cfg -> data (ChunkDataset + DistributedSampler) -> model -> AdamW + warmup/cosine (per step)
    for epoch: train steps (AMP on CUDA, grad clip, non-finite check) -> evaluate(val) -> last.pt / best.pt
               -> metrics.jsonl row -> debug images / curves

Run layout: RUN/config.json, RUN/last.pt (every epoch), RUN/best.pt (best val mIoU + mAP), RUN/metrics.jsonl
(one flat JSON object per epoch), RUN/debug/epoch_NNN/*.png, RUN/curves.png.

Reproducibility: model init from ``train.seed``; the shuffling order comes from the sampler seeded by
(seed, epoch) and augmentation from (seed, epoch, index), so resuming from last.pt -- written at every
epoch end and, with ``train.ckpt_every_steps``, every N steps mid-epoch (it then records how many batches
of the epoch are done and the epoch's running loss sums) -- continues exactly where the uninterrupted run
would be (bit-exact on CPU with ``--deterministic``), also after a SIGKILL.
DDP: under ``torchrun`` (RANK / WORLD_SIZE set) the same code runs one process per device; the batch size
is per process, only rank 0 writes files, and metrics are reduced over ranks.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from .config import Config
from .dataset import ChunkDataset, collate, semantic_class_counts
from .errors import ConfigError, TrainingDivergedError
from .evaluate import evaluate, flatten, score, to_device
from .io import atomic_path, write_json_atomic
from .model import build_model, count_parameters

# ---------------------------------------------------------------------------------------------- setup


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world_size, device). Initialises the process group when launched by torchrun."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        cuda = torch.cuda.is_available()
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if cuda else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        if cuda:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            return rank, world, torch.device("cuda", local)
        return rank, world, torch.device("cpu")
    return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_sem_weights(cfg: Config, train_dir: str | Path) -> Config:
    """Fill ``loss.sem_weights`` from the training chunks' class pixel counts (or clear it for "none")."""
    from dataclasses import replace

    kind = cfg.loss.sem_class_weights
    if kind == "none":
        return replace(cfg, loss=replace(cfg.loss, sem_weights=()))
    from .metrics import clip_weights, enet_weights, median_freq_weights

    total, per_image = semantic_class_counts(train_dir, cfg.classes.n_sem, cfg.classes.ignore_index,
                                             skip_bad=cfg.train.skip_bad)
    if kind == "enet":
        w = np.asarray(enet_weights(total), np.float64)
    else:   # "median_freq" (the config admits only SEM_CLASS_WEIGHTS)
        w = np.asarray(median_freq_weights(per_image), np.float64)
    w = clip_weights(w, cfg.loss.sem_weight_clip)
    return replace(cfg, loss=replace(cfg.loss, sem_weights=tuple(float(x) for x in w)))


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that can start an epoch part-way: ``skip`` first indices of this rank are
    dropped (resuming a mid-epoch checkpoint); the order is the uninterrupted epoch's (seed + epoch)."""

    skip = 0

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return max(0, super().__len__() - self.skip)


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1 over ``warmup`` steps, then cosine down to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             # numpy arrays are not allowed by torch.load(weights_only=True): store the key as a tensor
             "numpy": {"name": np_state[0], "key": torch.from_numpy(np_state[1].astype(np.int64)),
                       "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, obj: dict) -> None:
    """torch.save to a temp file in the same folder, then os.replace: a crash never leaves half a file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _log(rank: int, msg: str) -> None:
    if rank == 0:
        print(msg, flush=True)


# ----------------------------------------------------------------------------------------------- loop


def train(cfg: Config, data: str | Path, out: str | Path, val: str | Path | None = None,
          resume: bool = False, progress: bool = True, resume_epochs: int | None = None) -> dict[str, Any]:
    """Train ``cfg`` on the chunks in ``data``; returns the last metrics row. See the module docstring.

    ``resume``: continue ``out/last.pt`` with the run's own config (``cfg`` is ignored), optionally with a
    new total epoch budget ``resume_epochs``."""
    from .losses import compute_losses

    rank, world, device = setup_distributed()
    out = Path(out)
    tc = cfg.train
    ckpt = None
    if resume:
        last = out / "last.pt"
        if not last.is_file():
            raise ConfigError(last, "--resume given but there is no last.pt in the run directory")
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        # the run's own config wins (resolved class weights, model shape); only the epoch budget may grow
        try:
            cfg = Config.from_dict(ckpt["config"]).override(**{"train.epochs": resume_epochs})
        except ConfigError as e:
            raise ConfigError(last, f"checkpoint config is invalid ({e})") from None
        tc = cfg.train
    elif cfg.loss.sem_class_weights != "none":
        cfg = resolve_sem_weights(cfg, data)

    if tc.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    random.seed(tc.seed)
    np.random.seed(tc.seed)
    torch.manual_seed(tc.seed)

    # data: the sampler (seeded by seed + epoch) also handles world == 1, so there is a single code path
    train_ds = ChunkDataset(data, cfg, augment=tc.augment, seed=tc.seed, skip_bad=tc.skip_bad)
    train_sampler = ResumableSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=tc.seed,
                                     drop_last=True)
    loader_kw = {"collate_fn": collate, "num_workers": tc.num_workers, "pin_memory": device.type == "cuda"}
    train_loader = DataLoader(train_ds, batch_size=tc.batch_size, sampler=train_sampler, drop_last=True,
                              **loader_kw)
    val_loader = None
    if val is not None:
        val_ds = ChunkDataset(val, cfg, augment=False, skip_bad=tc.skip_bad)
        val_sampler = DistributedSampler(val_ds, num_replicas=world, rank=rank, shuffle=False)
        val_loader = DataLoader(val_ds, batch_size=tc.batch_size, sampler=val_sampler, **loader_kw)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ConfigError(data, f"{len(train_ds)} frames are fewer than one batch of {tc.batch_size} x {world}")

    model = build_model(cfg).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    total_steps = tc.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, tc.warmup_steps, total_steps, tc.min_lr_ratio))
    use_amp = tc.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    sem_weights = torch.tensor(cfg.loss.sem_weights, dtype=torch.float32, device=device) \
        if cfg.loss.sem_weights else None

    start_epoch, step, best = 0, 0, -math.inf
    done_batches, partial = 0, {"sums": {}, "n_seen": 0, "bad": 0, "time": 0.0}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, step, best = int(ckpt["epoch"]), int(ckpt["step"]), float(ckpt.get("best_score", -math.inf))
        set_rng_state(ckpt["rng"])
        done_batches = int(ckpt.get("batch_in_epoch", 0))
        if done_batches and rank == 0:
            partial = ckpt["partial_epoch"]
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)

    metrics_path = out / "metrics.jsonl"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".*.pt.*.tmp"):     # left by a run killed while writing a checkpoint
            stale.unlink(missing_ok=True)
        write_json_atomic(out / "config.json", cfg.to_dict())
        _truncate_metrics(metrics_path, start_epoch)
    for path, reason in train_ds.bad_files.items():
        _log(rank, f"warning: skipped bad chunk {path}: {reason}")
    if done_batches:
        _log(rank, f"resuming epoch {start_epoch + 1} after batch {done_batches}/{steps_per_epoch} (step {step})")
    _log(rank, f"train: {len(train_ds)} frames ({train_ds.skipped} skipped), "
               f"{'no val' if val_loader is None else f'{len(val_loader.dataset)} val frames'}, "
               f"{count_parameters(model) / 1e6:.2f} M params, {world} process(es) on {device}, "
               f"{steps_per_epoch} steps/epoch x {tc.epochs} epochs")

    row: dict[str, Any] = {}
    for epoch in range(start_epoch, tc.epochs):
        train_sampler.set_epoch(epoch)
        train_ds.set_epoch(epoch)
        # a mid-epoch checkpoint: skip the batches it already trained on, keep its running sums
        train_sampler.skip = done_batches * tc.batch_size
        sums: dict[str, float] = dict(partial["sums"])
        n_seen, n_bad, prior_time = int(partial["n_seen"]), int(partial["bad"]), float(partial["time"])
        batch_in_epoch = done_batches
        done_batches, partial = 0, {"sums": {}, "n_seen": 0, "bad": 0, "time": 0.0}
        net.train()
        t0 = time.perf_counter()
        it = train_loader
        if progress and rank == 0:
            from tqdm import tqdm

            it = tqdm(train_loader, desc=f"epoch {epoch + 1}/{tc.epochs}", dynamic_ncols=True, leave=False,
                      initial=batch_in_epoch, total=steps_per_epoch)
        for batch in it:
            batch_in_epoch += 1
            if batch["bad"]:
                n_bad += len(batch["bad"])
                for reason in batch["bad"]:
                    _log(rank, f"warning: skipped bad frame: {reason}")
            if tc.skip_bad and not _all_ranks_have_data(batch, device, world):
                continue
            b = to_device(batch, device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                outputs = net(b["image"], b["bev"])
            # losses in fp32: focal / log terms are fragile in half precision
            outputs = {k: v.float() for k, v in outputs.items()}
            terms = compute_losses(outputs, b, cfg.loss, sem_weights, ignore_index=cfg.classes.ignore_index)
            loss = sum(terms.values())
            _check_finite(loss, terms, out, epoch, step, world)

            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            if not scaler.is_enabled() and not torch.isfinite(grad_norm):   # (AMP skips such steps itself)
                raise TrainingDivergedError(out, f"non-finite gradient norm at epoch {epoch + 1} step {step}; "
                                                 "last good checkpoint kept (lower --lr?)")
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1

            bs = b["image"].shape[0]
            n_seen += bs
            # one device->host copy for all logged values (each float() on a CUDA tensor is a sync)
            *term_vals, loss_val = torch.stack([*(v.detach() for v in terms.values()), loss.detach()]).tolist()
            for k, v in zip(terms, term_vals):
                sums[k] = sums.get(k, 0.0) + v * bs
            sums["total"] = sums.get("total", 0.0) + loss_val * bs
            if it is not train_loader:
                it.set_postfix(loss=f"{loss_val:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if tc.ckpt_every_steps and step % tc.ckpt_every_steps == 0 and batch_in_epoch < steps_per_epoch:
                # running sums over all ranks so far; on resume rank 0 carries them, the others start at 0
                g_seen, g_sums = _reduce_sums(n_seen, {**sums, "bad": float(n_bad)}, device, world)
                g_bad = int(g_sums.pop("bad"))
                if rank == 0:
                    save_checkpoint(out / "last.pt", {
                        **_state(model, optimizer, scheduler, scaler, cfg, epoch, step, best), "metrics": {},
                        "batch_in_epoch": batch_in_epoch,
                        "partial_epoch": {"sums": g_sums, "n_seen": g_seen, "bad": g_bad,
                                          "time": prior_time + time.perf_counter() - t0}})
        train_time = prior_time + time.perf_counter() - t0
        n_seen, sums = _reduce_sums(n_seen, {**sums, "bad": float(n_bad)}, device, world)
        n_bad = int(sums.pop("bad"))

        row = {"epoch": epoch + 1, "step": step, "lr": scheduler.get_last_lr()[0]}
        row.update({f"train/{k}": v / max(n_seen, 1) for k, v in sums.items()})
        row.update({"train/frames": n_seen, "train/skipped_bad": n_bad})
        row.update(epoch_time=train_time, samples_per_s=n_seen / max(train_time, 1e-9))
        if val_loader is not None:
            metrics = evaluate(model, val_loader, cfg, device, sem_weights=sem_weights,
                               progress=progress and rank == 0)
            row.update(flatten(metrics, "val/"))
            current = score(metrics)
        else:
            current = -row["train/total"]
        row["score"] = current
        is_best = current > best
        best = max(best, current)

        if rank == 0:
            ckpt_out = {**_state(model, optimizer, scheduler, scaler, cfg, epoch + 1, step, best), "metrics": row}
            save_checkpoint(out / "last.pt", ckpt_out)
            if is_best:
                save_checkpoint(out / "best.pt", ckpt_out)
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            _log(rank, _summary(row))
            if tc.viz_every and (epoch + 1) % tc.viz_every == 0:
                _debug_images(model, val_loader or train_loader, cfg, device, out, epoch + 1)
    if world > 1:
        dist.barrier()
        # drop DDP's reference to the process group first, so the group (and gloo's worker threads) is torn
        # down inside destroy_process_group, not later during interpreter shutdown (a rare SIGABRT at exit)
        del net
        dist.destroy_process_group()
    return row


def _state(model, optimizer, scheduler, scaler, cfg: Config, epoch: int, step: int, best: float) -> dict:
    """What a checkpoint needs to continue exactly; ``epoch`` counts completed epochs."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "epoch": epoch, "step": step, "rng": rng_state(),
            "config": cfg.to_dict(), "best_score": best}


def _all_ranks_have_data(batch: dict, device: torch.device, world: int) -> bool:
    """False when this rank's (or, under DDP, any rank's) batch lost every frame to ``skip_bad``: all ranks
    then skip the step together (a rank that stepped alone would hang in DDP's all-reduce)."""
    has = "image" in batch
    if world == 1:
        return has
    t = torch.tensor([1.0 if has else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0)


def _check_finite(loss: torch.Tensor, terms: dict, out: Path, epoch: int, step: int, world: int) -> None:
    ok = torch.isfinite(loss.detach()).float()
    if world > 1:  # every rank must stop together, or the others hang in the next all-reduce
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    if ok.item() < 1:
        detail = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
        raise TrainingDivergedError(out, f"non-finite loss at epoch {epoch + 1} step {step} ({detail}); "
                                         "last good checkpoint kept (lower --lr?)")


def _reduce_sums(n: int, sums: dict[str, float], device: torch.device, world: int) -> tuple[int, dict]:
    if world == 1:
        return n, sums
    keys = sorted(sums)
    t = torch.tensor([float(n)] + [sums[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return int(t[0].item()), dict(zip(keys, t[1:].tolist()))


def _truncate_metrics(path: Path, epoch: int) -> None:
    """Drop rows after ``epoch`` (a resumed run rewrites them); a fresh run starts an empty file."""
    if not path.is_file():
        return
    rows = [ln for ln in path.read_text().splitlines() if ln.strip()]
    keep = [ln for ln in rows if epoch > 0 and json.loads(ln).get("epoch", 0) <= epoch]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(ln + "\n" for ln in keep))


def _summary(row: dict) -> str:
    s = (f"epoch {row['epoch']}: train loss {row['train/total']:.4f} "
         f"({row['samples_per_s']:.1f} samples/s, {row['epoch_time']:.0f} s)")
    if "val/miou" in row:
        s += (f" | val loss {row['val/loss/total']:.4f} mIoU {row['val/miou']:.3f} "
              f"pixel acc {row['val/pixel_acc']:.3f} mAP {row['val/map']:.3f}")
    return s


@torch.no_grad()
def _debug_images(model: torch.nn.Module, loader: DataLoader, cfg: Config, device: torch.device,
                  out: Path, epoch: int) -> None:
    """Debug PNGs of the first batch + the metric curves (mtl.viz), when that module is installed."""
    try:
        from .viz import plot_curves, write_debug_images
    except ImportError:
        return
    was_training = model.training
    model.eval()
    batch = next((b for b in loader if "image" in b), None)
    if batch is None:
        return
    outputs = model(batch["image"].to(device), batch["bev"].to(device))
    outputs = {k: v.float().cpu() for k, v in outputs.items()}
    write_debug_images(out / "debug", epoch, batch, outputs, cfg)
    plot_curves(out)
    model.train(was_training)
