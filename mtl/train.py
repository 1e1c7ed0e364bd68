"""Training loop (`mtl train`), laid out like torchvision's detection reference (``engine.py``):

    train():  build data (ChunkDataset + samplers), model, AdamW + warmup/cosine (per step), AMP scaler
              for each epoch: train_one_epoch (AMP on CUDA, grad clip, non-finite check, mid-epoch
              checkpoints) -> evaluate(val) -> last.pt / best.pt -> metrics.jsonl row -> debug images / curves

Run layout: RUN/config.json, RUN/last.pt (every epoch), RUN/best.pt (best val mIoU + mAP), RUN/metrics.jsonl
(one flat JSON object per epoch), RUN/debug/epoch_NNN/*.png, RUN/curves.png.

Reproducibility: model init from ``train.seed``; the shuffling order comes from the sampler seeded by
(seed, epoch) and augmentation from (seed, epoch, index), so resuming from last.pt -- written at every
epoch end and, with ``train.ckpt_every_steps``, every N steps mid-epoch (it then holds an ``EpochProgress``:
how many batches of the epoch are done and the epoch's running loss sums) -- continues exactly where the
uninterrupted run would be (bit-exact on CPU with ``--deterministic``), also after a SIGKILL.
DDP: under ``torchrun`` (RANK / WORLD_SIZE set) the same code runs one process per device; the batch size
is per process, only rank 0 writes files, and metrics are reduced over ranks (each validation frame is
scored once, see ``evaluate.ShardSampler``).
"""
from __future__ import annotations

import itertools
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from .config import Config
from .dataset import ChunkDataset, collate, semantic_class_counts
from .errors import ConfigError, TrainingDivergedError
from .evaluate import ShardSampler, evaluate, flatten, score, to_device
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


# -------------------------------------------------------------------------------------- run records


@dataclass(frozen=True)
class Run:
    """Where this process stands in the run: resolved config, run directory, rank, world size, device."""

    cfg: Config
    out: Path
    rank: int
    world: int
    device: torch.device


@dataclass
class Data:
    train_ds: ChunkDataset
    sampler: ResumableSampler
    train_loader: DataLoader
    val_loader: DataLoader | None
    steps_per_epoch: int


@dataclass
class Training:
    """The optimisation state: model (and its DDP wrapper ``net``), optimizer, schedule, AMP, counters."""

    model: torch.nn.Module
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    use_amp: bool                          # autocast (CUDA only)
    amp_dtype: torch.dtype
    sem_weights: torch.Tensor | None
    step: int = 0                          # optimizer steps so far (the schedule's position)
    best: float = -math.inf                # best model-selection score so far


@dataclass
class EpochProgress:
    """How far an epoch got: what a mid-epoch ``last.pt`` stores (key ``progress``) to resume it exactly.

    ``loss_sums`` are frame-weighted sums per loss term (+ ``total``). In a checkpoint the sums and counts
    cover all ranks; on resume rank 0 carries them on and the other ranks start from zero."""

    epoch: int                             # 0-based index of the epoch
    batch_in_epoch: int = 0                # batches of it done (per rank; every rank does the same number)
    loss_sums: dict[str, float] = field(default_factory=dict)
    n_seen: int = 0                        # frames trained on
    n_bad: int = 0                         # frames dropped by skip_bad
    time_s: float = 0.0                    # training time of the epoch so far

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> EpochProgress:
        return EpochProgress(int(d["epoch"]), int(d["batch_in_epoch"]),
                             {k: float(v) for k, v in d["loss_sums"].items()}, int(d["n_seen"]), int(d["n_bad"]),
                             float(d["time_s"]))

    @staticmethod
    def from_checkpoint(ckpt: dict[str, Any]) -> EpochProgress | None:
        """The record of a mid-epoch checkpoint; None at an epoch end. Also reads the older keys
        ``batch_in_epoch`` + ``partial_epoch``."""
        if "progress" in ckpt:
            return EpochProgress.from_dict(ckpt["progress"])
        if int(ckpt.get("batch_in_epoch", 0)) > 0:
            p = ckpt["partial_epoch"]
            return EpochProgress(int(ckpt["epoch"]), int(ckpt["batch_in_epoch"]), dict(p["sums"]), int(p["n_seen"]),
                                 int(p["bad"]), float(p["time"]))
        return None


# ----------------------------------------------------------------------------------------------- loop


def train(cfg: Config, data: str | Path, out: str | Path, val: str | Path | None = None,
          resume: bool = False, progress: bool = True, resume_epochs: int | None = None) -> dict[str, Any]:
    """Train ``cfg`` on the chunks in ``data``; returns the last metrics row. See the module docstring.

    ``resume``: continue ``out/last.pt`` with the run's own config (``cfg`` is ignored), optionally with a
    new total epoch budget ``resume_epochs``."""
    rank, world, device = setup_distributed()
    out = Path(out)
    ckpt = load_last(out) if resume else None
    run = Run(run_config(cfg, data, ckpt, resume_epochs), out, rank, world, device)
    tc = run.cfg.train
    seed_everything(tc)
    d = build_data(run, data, val)
    tr = build_training(run, d.steps_per_epoch)
    start_epoch, resumed = restore(tr, ckpt, rank)
    if world > 1:
        tr.net = torch.nn.parallel.DistributedDataParallel(
            tr.model, device_ids=[device.index] if device.type == "cuda" else None)
    prepare_run_dir(run, start_epoch)
    log_start(run, d, tr, resumed)

    row: dict[str, Any] = {}
    for epoch in range(start_epoch, tc.epochs):
        prog = resumed if resumed is not None and resumed.epoch == epoch else EpochProgress(epoch)
        prog = reduce_progress(train_one_epoch(tr, d, run, prog, progress and rank == 0), run)
        row = epoch_row(prog, tr)
        if d.val_loader is not None:
            sync_buffers(tr.model, world)
            metrics = evaluate(tr.model, d.val_loader, run.cfg, device, sem_weights=tr.sem_weights,
                               progress=progress and rank == 0)
            row.update(flatten(metrics, "val/"))
            current = score(metrics)
        else:
            current = -row["train/total"]
        row["score"] = current
        is_best = current > tr.best
        tr.best = max(tr.best, current)
        if rank == 0:
            end_epoch(tr, d, run, row, is_best)
    if world > 1:
        dist.barrier()
        # drop DDP's reference to the process group first, so the group (and gloo's worker threads) is torn
        # down inside destroy_process_group, not later during interpreter shutdown (a rare SIGABRT at exit)
        tr.net = tr.model
        dist.destroy_process_group()
    return row


def train_one_epoch(tr: Training, d: Data, run: Run, prog: EpochProgress, show_bar: bool) -> EpochProgress:
    """Train epoch ``prog.epoch`` from batch ``prog.batch_in_epoch`` on (a mid-epoch checkpoint: the batches
    it already trained on are skipped, its running sums kept); returns this rank's record of the epoch."""
    tc = run.cfg.train
    d.sampler.set_epoch(prog.epoch)
    d.train_ds.set_epoch(prog.epoch)
    d.sampler.skip = prog.batch_in_epoch * tc.batch_size
    prog = replace(prog, loss_sums=dict(prog.loss_sums))
    tr.net.train()
    t0, prior_time = time.perf_counter(), prog.time_s
    it = d.train_loader
    if show_bar:
        from tqdm import tqdm

        it = tqdm(d.train_loader, desc=f"epoch {prog.epoch + 1}/{tc.epochs}", dynamic_ncols=True, leave=False,
                  initial=prog.batch_in_epoch, total=d.steps_per_epoch)
    for batch in it:
        prog.batch_in_epoch += 1
        if batch["bad"]:
            prog.n_bad += len(batch["bad"])
            for reason in batch["bad"]:
                _log(run.rank, f"warning: skipped bad frame: {reason}")
        if tc.skip_bad and not _all_ranks_have_data(batch, run.device, run.world):
            continue
        terms, loss_val, bs = train_step(tr, batch, run, prog.epoch)
        prog.n_seen += bs
        for k, v in terms.items():
            prog.loss_sums[k] = prog.loss_sums.get(k, 0.0) + v * bs
        prog.loss_sums["total"] = prog.loss_sums.get("total", 0.0) + loss_val * bs
        if it is not d.train_loader:
            it.set_postfix(loss=f"{loss_val:.3f}", lr=f"{tr.scheduler.get_last_lr()[0]:.2e}")
        if tc.ckpt_every_steps and tr.step % tc.ckpt_every_steps == 0 and prog.batch_in_epoch < d.steps_per_epoch:
            save_mid_epoch(tr, run, replace(prog, time_s=prior_time + time.perf_counter() - t0))
    prog.time_s = prior_time + time.perf_counter() - t0
    return prog


def train_step(tr: Training, batch: dict[str, Any], run: Run, epoch: int) -> tuple[dict[str, float], float, int]:
    """One optimizer step on ``batch``: ({loss term: value}, total loss, batch size)."""
    from .losses import compute_losses

    cfg, device = run.cfg, run.device
    b = to_device(batch, device)
    with torch.autocast(device.type, dtype=tr.amp_dtype, enabled=tr.use_amp):
        outputs = tr.net(b["image"], b["bev"])
    # losses in fp32: focal / log terms are fragile in half precision
    outputs = {k: v.float() for k, v in outputs.items()}
    terms = compute_losses(outputs, b, cfg.loss, tr.sem_weights, ignore_index=cfg.classes.ignore_index)
    loss = sum(terms.values())
    _check_finite(loss, terms, run.out, epoch, tr.step, run.world)

    tr.optimizer.zero_grad(set_to_none=True)
    tr.scaler.scale(loss).backward()
    tr.scaler.unscale_(tr.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(tr.model.parameters(), cfg.train.grad_clip)
    if not tr.scaler.is_enabled() and not torch.isfinite(grad_norm):   # (AMP skips such steps itself)
        raise TrainingDivergedError(run.out, f"non-finite gradient norm at epoch {epoch + 1} step {tr.step}; "
                                             "last good checkpoint kept (lower --lr?)")
    tr.scaler.step(tr.optimizer)
    tr.scaler.update()
    tr.scheduler.step()
    tr.step += 1
    # one device->host copy for all logged values (each float() on a CUDA tensor is a sync)
    *term_vals, loss_val = torch.stack([*(v.detach() for v in terms.values()), loss.detach()]).tolist()
    return dict(zip(terms, term_vals)), loss_val, b["image"].shape[0]


def sync_buffers(model: torch.nn.Module, world: int) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank. DDP broadcasts them at the start of
    each training forward, so after an epoch's last step every rank holds its own; validation must score
    all shards with the model rank 0 saves."""
    if world > 1:
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def epoch_row(prog: EpochProgress, tr: Training) -> dict[str, Any]:
    """The metrics.jsonl row of a finished epoch (all ranks' totals), before validation."""
    row = {"epoch": prog.epoch + 1, "step": tr.step, "lr": tr.scheduler.get_last_lr()[0]}
    row.update({f"train/{k}": v / max(prog.n_seen, 1) for k, v in prog.loss_sums.items()})
    row.update({"train/frames": prog.n_seen, "train/skipped_bad": prog.n_bad})
    row.update(epoch_time=prog.time_s, samples_per_s=prog.n_seen / max(prog.time_s, 1e-9))
    return row


def end_epoch(tr: Training, d: Data, run: Run, row: dict[str, Any], is_best: bool) -> None:
    """Rank 0 at an epoch end: last.pt (+ best.pt), the metrics.jsonl row, the summary line, debug images."""
    tc = run.cfg.train
    ckpt = {**_state(tr, run.cfg, row["epoch"]), "metrics": row}
    save_checkpoint(run.out / "last.pt", ckpt)
    if is_best:
        save_checkpoint(run.out / "best.pt", ckpt)
    with open(run.out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    _log(run.rank, _summary(row))
    if tc.viz_every and row["epoch"] % tc.viz_every == 0:
        _debug_images(tr.model, d.val_loader or d.train_loader, run.cfg, run.device, run.out, row["epoch"])


def save_mid_epoch(tr: Training, run: Run, prog: EpochProgress) -> None:
    """last.pt part-way through an epoch: ``epoch`` counts completed epochs, ``progress`` the rest."""
    total = reduce_progress(prog, run)
    if run.rank == 0:
        save_checkpoint(run.out / "last.pt", {**_state(tr, run.cfg, prog.epoch), "metrics": {},
                                              "progress": total.to_dict()})


def reduce_progress(prog: EpochProgress, run: Run) -> EpochProgress:
    """``prog`` with its sums and counts summed over all ranks."""
    n_seen, sums = _reduce_sums(prog.n_seen, {**prog.loss_sums, "bad": float(prog.n_bad)}, run.device, run.world)
    n_bad = int(sums.pop("bad"))
    return replace(prog, loss_sums=sums, n_seen=n_seen, n_bad=n_bad)


# ---------------------------------------------------------------------------------------------- build


def load_last(out: Path) -> dict[str, Any]:
    last = out / "last.pt"
    if not last.is_file():
        raise ConfigError(last, "--resume given but there is no last.pt in the run directory")
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    try:
        Config.from_dict(ckpt["config"])
    except ConfigError as e:
        raise ConfigError(last, f"checkpoint config is invalid ({e})") from None
    return ckpt


def run_config(cfg: Config, data: str | Path, ckpt: dict | None, resume_epochs: int | None) -> Config:
    """The config the run trains with: a resumed run's own (resolved class weights, model shape; only the
    epoch budget may grow), else ``cfg`` with its semantic class weights resolved from ``data``."""
    if ckpt is not None:
        cfg = Config.from_dict(ckpt["config"]).override(**{"train.epochs": resume_epochs})
    elif cfg.loss.sem_class_weights != "none":
        cfg = resolve_sem_weights(cfg, data)
    return cfg


def seed_everything(tc) -> None:
    if tc.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    random.seed(tc.seed)
    np.random.seed(tc.seed)
    torch.manual_seed(tc.seed)


def build_data(run: Run, data: str | Path, val: str | Path | None) -> Data:
    """Loaders: the training sampler (seeded by seed + epoch) also handles world == 1, so there is a single
    code path; validation frames are split over the ranks without repeats (``ShardSampler``)."""
    cfg, tc, device = run.cfg, run.cfg.train, run.device
    train_ds = ChunkDataset(data, cfg, augment=tc.augment, seed=tc.seed, skip_bad=tc.skip_bad)
    sampler = ResumableSampler(train_ds, num_replicas=run.world, rank=run.rank, shuffle=True, seed=tc.seed,
                               drop_last=True)
    loader_kw = {"collate_fn": collate, "num_workers": tc.num_workers, "pin_memory": device.type == "cuda"}
    train_loader = DataLoader(train_ds, batch_size=tc.batch_size, sampler=sampler, drop_last=True, **loader_kw)
    val_loader = None
    if val is not None:
        val_ds = ChunkDataset(val, cfg, augment=False, skip_bad=tc.skip_bad)
        val_loader = DataLoader(val_ds, batch_size=tc.batch_size,
                                sampler=ShardSampler(len(val_ds), run.rank, run.world), **loader_kw)
    if len(train_loader) == 0:
        raise ConfigError(data, f"{len(train_ds)} frames are fewer than one batch of {tc.batch_size} x {run.world}")
    return Data(train_ds, sampler, train_loader, val_loader, len(train_loader))


def build_training(run: Run, steps_per_epoch: int) -> Training:
    """Model, AdamW, warmup + cosine per step, AMP (CUDA only: bf16 where supported, else fp16 + GradScaler)."""
    cfg, tc, device = run.cfg, run.cfg.train, run.device
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
    return Training(model, model, optimizer, scheduler, scaler, use_amp, amp_dtype, sem_weights)


def restore(tr: Training, ckpt: dict | None, rank: int) -> tuple[int, EpochProgress | None]:
    """Load a resumed checkpoint into ``tr`` (weights, optimizer, schedule, scaler, RNG, step, best score).
    Returns (completed epochs, the mid-epoch record or None); ranks other than 0 get the record's position
    only (rank 0 carries the running sums of all ranks)."""
    if ckpt is None:
        return 0, None
    tr.model.load_state_dict(ckpt["model"])
    tr.optimizer.load_state_dict(ckpt["optimizer"])
    tr.scheduler.load_state_dict(ckpt["scheduler"])
    if "scaler" in ckpt:
        tr.scaler.load_state_dict(ckpt["scaler"])
    tr.step, tr.best = int(ckpt["step"]), float(ckpt.get("best_score", -math.inf))
    set_rng_state(ckpt["rng"])
    prog = EpochProgress.from_checkpoint(ckpt)
    if prog is not None and rank != 0:
        prog = EpochProgress(prog.epoch, prog.batch_in_epoch)
    return int(ckpt["epoch"]), prog


def prepare_run_dir(run: Run, start_epoch: int) -> None:
    if run.rank != 0:
        return
    run.out.mkdir(parents=True, exist_ok=True)
    for stale in run.out.glob(".*.pt.*.tmp"):     # left by a run killed while writing a checkpoint
        stale.unlink(missing_ok=True)
    write_json_atomic(run.out / "config.json", run.cfg.to_dict())
    _truncate_metrics(run.out / "metrics.jsonl", start_epoch)


def log_start(run: Run, d: Data, tr: Training, resumed: EpochProgress | None) -> None:
    for path, reason in d.train_ds.bad_files.items():
        _log(run.rank, f"warning: skipped bad chunk {path}: {reason}")
    if resumed is not None:
        _log(run.rank, f"resuming epoch {resumed.epoch + 1} after batch {resumed.batch_in_epoch}/{d.steps_per_epoch} "
                       f"(step {tr.step})")
    val_loader, tc = d.val_loader, run.cfg.train
    _log(run.rank, f"train: {len(d.train_ds)} frames ({d.train_ds.skipped} skipped), "
                   f"{'no val' if val_loader is None else f'{len(val_loader.dataset)} val frames'}, "
                   f"{count_parameters(tr.model) / 1e6:.2f} M params, {run.world} process(es) on {run.device}, "
                   f"{d.steps_per_epoch} steps/epoch x {tc.epochs} epochs")


def _state(tr: Training, cfg: Config, epoch: int) -> dict:
    """What a checkpoint needs to continue exactly; ``epoch`` counts completed epochs."""
    return {"model": tr.model.state_dict(), "optimizer": tr.optimizer.state_dict(),
            "scheduler": tr.scheduler.state_dict(), "scaler": tr.scaler.state_dict(), "epoch": epoch,
            "step": tr.step, "rng": rng_state(), "config": cfg.to_dict(), "best_score": tr.best}


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
