"""Training loop (`mtl train`), laid out like torchvision's detection reference (``engine.py``):

    train():  build data (ChunkDataset + samplers), model, AdamW + warmup/cosine (per step), AMP scaler
              for each epoch: train_one_epoch (AMP on CUDA, grad clip, non-finite check, mid-epoch
              checkpoints) -> evaluate(val) -> last.pt / best.pt -> metrics.jsonl row -> debug images / curves

Run layout: RUN/config.json, RUN/last.pt (every epoch), RUN/last.prev.pt (the one before), RUN/best.pt (best val
mIoU + mAP), RUN/metrics.jsonl (one flat JSON object per epoch), RUN/debug/epoch_NNN/*.png, RUN/curves.png. One
`mtl train` writes a run at a time (``OutputLock``); an epoch end is one commit and ``--resume`` reconciles
(``mtl.rundir``): it falls back to an older checkpoint when last.pt is unreadable, refuses a changed config or
changed data unless forced, and repairs metrics.jsonl.

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

import io
import itertools
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from . import rundir
from .config import Config
from .dataset import ChunkDataset, collate, semantic_class_counts
from .errors import ConfigError, ModelMismatchError, TrainingDivergedError
from .evaluate import ShardSampler, evaluate, flatten, score, to_device
from .io import OutputLock, write_bytes_atomic, write_json_atomic
from .model import build_model, count_parameters, read_checkpoint

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


def checkpoint_bytes(obj: dict) -> bytes:
    """A checkpoint serialised in memory: a failed write then raises the OSError (with its path and errno) from
    ``write_bytes_atomic``, not torch's "basic_ios::clear: iostream error"."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_checkpoint(path: Path, obj: dict) -> None:
    """Write a checkpoint atomically (temp file in the same folder, fsync, os.replace): never half a file."""
    write_bytes_atomic(path, checkpoint_bytes(obj))


def _log(rank: int, msg: str) -> None:
    if rank == 0:
        print(msg, flush=True)


# -------------------------------------------------------------------------------------- run records


@dataclass(frozen=True)
class Run:
    """Where this process stands in the run: resolved config, run directory, rank, world size, device, and
    the record of the data it trains on (``rundir.data_record`` of train / val, stored in every checkpoint)."""

    cfg: Config
    out: Path
    rank: int
    world: int
    device: torch.device
    data: dict[str, Any] = field(default_factory=dict)


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
    best_epoch: int = 0                    # the epoch best.pt holds (0: none yet)


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


@dataclass(frozen=True)
class Start:
    """Where ``--resume`` continues: a checkpoint (``ckpt`` read from ``path``), or, for a run stopped before its
    first checkpoint, nothing but its config.json (``ckpt`` None). ``best``: (score, epoch) of a best.pt newer
    than the checkpoint (after a fallback), so a redone epoch replaces it only when it scores higher."""

    path: Path
    ckpt: dict | None
    best: tuple[float, int] | None = None


def train(cfg: Config | None, data: str | Path, out: str | Path, val: str | Path | None = None,
          resume: bool = False, progress: bool = True, resume_epochs: int | None = None, *,
          overwrite: bool = False, force_config: bool = False,
          requested: Callable[[Config], Config] | None = None) -> dict[str, Any]:
    """Train ``cfg`` on the chunks in ``data`` into the run directory ``out``; returns the last metrics row.

    ``out`` must not hold a run unless ``resume`` (continue it: its checkpoint and config, ``cfg`` ignored) or
    ``overwrite`` (replace it: ``rundir.remove_run`` once data and model are set up). On resume,
    ``requested(base)`` is the config the user asked for on top of the run's (--config / --set / flags): a change
    beyond ``rundir.FREE_ON_RESUME`` or changed data is refused unless ``force_config``; without ``requested``
    only ``resume_epochs`` (a new epoch budget) applies. See the module docstring."""
    rank, world, device = setup_distributed()
    out = Path(out)
    if resume and overwrite:
        raise ConfigError(out, "--resume and --overwrite exclude each other (continue the run, or replace it)")
    lock = claim_run_dir(out, rank, world, resume, overwrite)
    try:
        start = find_resume(out, rank) if resume else None
        run = Run(run_config(cfg, data, start, requested, resume_epochs, force_config, rank), out, rank, world,
                  device)
        seed_everything(run.cfg.train)
        d = build_data(run, data, val)
        run = replace(run, data=check_data(start, data, val, force_config, rank))
        tr = build_training(run, d.steps_per_epoch)
        start_epoch, resumed = restore(tr, start, run.cfg.train, rank)
        if world > 1:
            tr.net = torch.nn.parallel.DistributedDataParallel(
                tr.model, device_ids=[device.index] if device.type == "cuda" else None)
        rows = prepare_run_dir(run, start_epoch, overwrite)
        log_start(run, d, tr, resumed, start_epoch)
        row = train_epochs(tr, d, run, start_epoch, resumed, rows, progress)
    finally:
        if lock is not None:
            lock.release()
    if world > 1:
        dist.barrier()
        # drop DDP's reference to the process group first, so the group (and gloo's worker threads) is torn
        # down inside destroy_process_group, not later during interpreter shutdown (a rare SIGABRT at exit)
        tr.net = tr.model
        dist.destroy_process_group()
    return row


def train_epochs(tr: Training, d: Data, run: Run, start_epoch: int, resumed: EpochProgress | None,
                 rows: list[str], progress: bool) -> dict[str, Any]:
    """Epochs ``start_epoch`` .. ``train.epochs``: train, validate, commit (rank 0); returns the last row."""
    row: dict[str, Any] = {}
    for epoch in range(start_epoch, run.cfg.train.epochs):
        prog = resumed if resumed is not None and resumed.epoch == epoch else EpochProgress(epoch)
        prog = reduce_progress(train_one_epoch(tr, d, run, prog, progress and run.rank == 0), run)
        row = epoch_row(prog, tr)
        if d.val_loader is not None:
            sync_buffers(tr.model, run.world)
            metrics = evaluate(tr.model, d.val_loader, run.cfg, run.device, sem_weights=tr.sem_weights,
                               progress=progress and run.rank == 0)
            row.update(flatten(metrics, "val/"))
            current = score(metrics)
        else:
            current = -row["train/total"]
        row["score"] = current
        is_best = current > tr.best
        if is_best:
            tr.best, tr.best_epoch = current, epoch + 1
        if run.rank == 0:
            end_epoch(tr, d, run, row, is_best, rows)
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


def end_epoch(tr: Training, d: Data, run: Run, row: dict[str, Any], is_best: bool, rows: list[str]) -> None:
    """Rank 0 at an epoch end: ONE commit of last.pt, best.pt (when best) and metrics.jsonl with the new row
    (``rundir.commit_epoch``), then the summary line and the debug images. ``rows``: the committed rows."""
    tc = run.cfg.train
    ckpt = {**_state(tr, run, row["epoch"]), "metrics": row}
    text = "".join(line + "\n" for line in [*rows, json.dumps(row)])
    rundir.commit_epoch(run.out, checkpoint_bytes(ckpt), text.encode(), is_best)
    rows.append(json.dumps(row))
    _log(run.rank, _summary(row))
    if tc.viz_every and row["epoch"] % tc.viz_every == 0:
        _debug_images(tr.model, d.val_loader or d.train_loader, run.cfg, run.device, run.out, row["epoch"])


def save_mid_epoch(tr: Training, run: Run, prog: EpochProgress) -> None:
    """last.pt part-way through an epoch: ``epoch`` counts completed epochs, ``progress`` the rest. The
    replaced last.pt is kept as last.prev.pt."""
    total = reduce_progress(prog, run)
    if run.rank == 0:
        rundir.rotate_last(run.out)
        save_checkpoint(run.out / "last.pt", {**_state(tr, run, prog.epoch), "metrics": {},
                                              "progress": total.to_dict()})


def reduce_progress(prog: EpochProgress, run: Run) -> EpochProgress:
    """``prog`` with its sums and counts summed over all ranks."""
    n_seen, sums = _reduce_sums(prog.n_seen, {**prog.loss_sums, "bad": float(prog.n_bad)}, run.device, run.world)
    n_bad = int(sums.pop("bad"))
    return replace(prog, loss_sums=sums, n_seen=n_seen, n_bad=n_bad)


# ---------------------------------------------------------------------------------------------- build


def claim_run_dir(out: Path, rank: int, world: int, resume: bool, overwrite: bool) -> OutputLock | None:
    """Rank 0 takes the run directory's lock (held until the run ends), finishes an interrupted epoch commit,
    removes dead writers' leftovers and refuses to start over a run without ``--resume`` / ``--overwrite``.
    The other ranks wait for it (then read the same, settled checkpoint)."""
    lock = None
    if resume and not out.is_dir():
        raise ConfigError(out / "last.pt", "--resume given but there is no last.pt in the run directory")
    if rank == 0:
        rundir.refuse_existing_run(out, resume=True, overwrite=False)      # --out is a directory (or absent)
        lock = OutputLock(out, "mtl train").acquire()
        try:
            rundir.tidy(out)
            rundir.refuse_existing_run(out, resume, overwrite)
        except BaseException:
            lock.release()
            raise
    if world > 1:
        dist.barrier()
    return lock


def find_resume(out: Path, rank: int) -> Start:
    """What ``--resume`` continues: last.pt, else (one-line warning) the newest readable of last.prev.pt and
    best.pt, else a run's config.json when it stopped before its first checkpoint. A run with checkpoints none
    of which is readable: the error of the first one (exit 5, or 2 for an invalid config), one line."""
    present = [out / n for n in rundir.CHECKPOINTS if (out / n).exists()]
    if not present:
        if (out / "config.json").is_file():
            _log(rank, f"warning: {out}: the run stopped before its first checkpoint; starting it over with its "
                       "config.json")
            return Start(out / "config.json", None)
        raise ConfigError(out / "last.pt", "--resume given but there is no last.pt in the run directory")
    errors: dict[Path, Exception] = {}
    found: list[tuple[Path, dict]] = []
    for path in present:
        try:
            found.append((path, _resumable(path)))
        except (ModelMismatchError, ConfigError) as e:
            errors[path] = e
        if found and found[0][0].name == "last.pt":
            return Start(*found[0])
    if not found:
        first = errors[present[0]]
        others = "; ".join(f"{p.name}: {e.reason}" for p, e in errors.items() if p != present[0])
        raise type(first)(first.path, f"{first.reason}" + (f" (and {others})" if others else
                                                            " (no other checkpoint in the run to fall back on)"))
    path, ckpt = max(found, key=lambda pc: int(pc[1]["step"]))
    last = out / "last.pt"
    why = errors[last].reason if last in errors else "missing"
    _log(rank, f"warning: {last}: {why}; resuming from {path.name} instead (epoch {ckpt['epoch']}, step "
               f"{ckpt['step']})")
    best = next((ck for p, ck in found if p.name == "best.pt" and int(ck["epoch"]) > int(ckpt["epoch"])), None)
    return Start(path, ckpt, (float(best["best_score"]), int(best["epoch"])) if best else None)


def _resumable(path: Path) -> dict:
    """``model.read_checkpoint`` plus the training state a resume needs."""
    ckpt = read_checkpoint(path)
    lacks = [k for k in ("optimizer", "scheduler", "epoch", "step", "rng", "best_score") if k not in ckpt]
    if lacks:
        raise ModelMismatchError(path, f"not a resumable checkpoint (lacks {', '.join(lacks)})")
    if not all(isinstance(ckpt[k], int) and ckpt[k] >= 0 for k in ("epoch", "step")):
        raise ModelMismatchError(path, "not a resumable checkpoint (epoch / step are not counts)")
    return ckpt


def run_config(cfg: Config | None, data: str | Path, start: Start | None,
               requested: Callable[[Config], Config] | None, resume_epochs: int | None, force: bool,
               rank: int) -> Config:
    """The config the run trains with: a fresh run's ``cfg`` with its semantic class weights resolved from
    ``data``; a resumed run's own, with what the user asked for on top (``rundir.resume_config``)."""
    if start is not None:
        base = Config.load(start.path) if start.ckpt is None else Config.from_dict(start.ckpt["config"])
        asked = requested(base) if requested is not None else base.override(**{"train.epochs": resume_epochs})
        cfg, forced = rundir.resume_config(base, asked, force, start.path)
        prog = EpochProgress.from_checkpoint(start.ckpt) if start.ckpt is not None else None
        if prog is not None and cfg.train.batch_size != base.train.batch_size:
            raise ConfigError(start.path, f"train.batch_size cannot change in the middle of an epoch (the "
                                          f"checkpoint is at batch {prog.batch_in_epoch} of epoch {prog.epoch + 1})")
        if forced:
            _log(rank, f"warning: --force-config: the run continues with {', '.join(map(str, forced))}")
        if start.ckpt is not None:     # the run's resolved weights, or (forced) those of another kind
            changed = cfg.loss.sem_class_weights != base.loss.sem_class_weights
            return resolve_sem_weights(cfg, data) if changed else cfg
    if cfg.loss.sem_class_weights != "none":
        cfg = resolve_sem_weights(cfg, data)
    return cfg


def check_data(start: Start | None, data: str | Path, val: str | Path | None, force: bool, rank: int
               ) -> dict[str, Any]:
    """The record of this run's data (``rundir.data_record``); on resume compared with the checkpoint's:
    other chunks (names, sizes, manifest) are refused without ``force``, other modification times noted."""
    record = {"train": rundir.data_record(data), "val": rundir.data_record(val) if val is not None else None}
    old = start.ckpt.get("data") if start is not None and start.ckpt is not None else None
    if not isinstance(old, dict):          # a fresh run, or a checkpoint written before data records
        return record
    for split in ("train", "val"):
        differs, note = rundir.compare_data(old.get(split), record[split], split)
        if differs and not force:
            raise ConfigError(start.path, f"--resume with other data: {differs}; resuming would train one run on "
                                          "two datasets (--force-config to resume anyway)")
        if differs or note:
            _log(rank, f"warning: {differs or note}")
    return record


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


def restore(tr: Training, start: Start | None, tc, rank: int) -> tuple[int, EpochProgress | None]:
    """Load a resumed checkpoint into ``tr`` (weights, optimizer, schedule, scaler, RNG, step, best score).
    Returns (completed epochs, the mid-epoch record or None); ranks other than 0 get the record's position
    only (rank 0 carries the running sums of all ranks)."""
    if start is None or start.ckpt is None:
        return 0, None
    ckpt = start.ckpt
    try:
        tr.model.load_state_dict(ckpt["model"])
        tr.optimizer.load_state_dict(ckpt["optimizer"])
        tr.scheduler.load_state_dict(ckpt["scheduler"])
        if "scaler" in ckpt:
            tr.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        prog = EpochProgress.from_checkpoint(ckpt)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ModelMismatchError(start.path, f"the training state does not load ({reason})") from None
    tr.step, tr.best = int(ckpt["step"]), float(ckpt["best_score"])
    tr.best_epoch = int(ckpt.get("best_epoch", 0))
    if start.best is not None and start.best[0] > tr.best:     # a best.pt newer than a fallback checkpoint
        tr.best, tr.best_epoch = start.best
    old = ckpt["config"].get("train", {})
    if any(old.get(k) != getattr(tc, k) for k in ("lr", "weight_decay", "warmup_steps", "min_lr_ratio")):
        _apply_schedule(tr, tc)                              # --force-config changed the optimisation
    if prog is not None and rank != 0:
        prog = EpochProgress(prog.epoch, prog.batch_in_epoch)
    return int(ckpt["epoch"]), prog


def _apply_schedule(tr: Training, tc) -> None:
    """The optimizer's learning rate and weight decay from ``tc`` at the restored step (the schedule's
    shape comes from ``tc`` already: ``build_training``)."""
    factor = tr.scheduler.lr_lambdas[0](tr.scheduler.last_epoch)
    tr.scheduler.base_lrs = [tc.lr for _ in tr.optimizer.param_groups]
    for g in tr.optimizer.param_groups:
        g.update(initial_lr=tc.lr, lr=tc.lr * factor, weight_decay=tc.weight_decay)
    tr.scheduler._last_lr = [g["lr"] for g in tr.optimizer.param_groups]


def prepare_run_dir(run: Run, start_epoch: int, overwrite: bool) -> list[str]:
    """Rank 0, once data and model are set up: with ``overwrite`` remove the old run's files, write
    config.json, and bring metrics.jsonl in line with the checkpoint (``rundir.reconcile_metrics``).
    Returns the committed metrics rows (JSON lines) the next epoch commit extends."""
    if run.rank != 0:
        return []
    if overwrite:
        removed = rundir.remove_run(run.out)
        if removed:
            _log(run.rank, f"--overwrite: removed the previous run's {', '.join(removed)} from {run.out}")
    config = run.out / "config.json"
    text = json.dumps(run.cfg.to_dict(), indent=1) + "\n"
    if not config.is_file() or config.read_text(errors="replace") != text:
        write_json_atomic(config, run.cfg.to_dict())
    path = run.out / "metrics.jsonl"
    rows, warnings = rundir.reconcile_metrics(path, start_epoch)
    for w in warnings:
        _log(run.rank, w)
    if warnings:
        write_bytes_atomic(path, "".join(r + "\n" for r in rows).encode())
    return rows


def log_start(run: Run, d: Data, tr: Training, resumed: EpochProgress | None, start_epoch: int) -> None:
    for path, reason in d.train_ds.bad_files.items():
        _log(run.rank, f"warning: skipped bad chunk {path}: {reason}")
    if resumed is not None:
        _log(run.rank, f"resuming epoch {resumed.epoch + 1} after batch {resumed.batch_in_epoch}/{d.steps_per_epoch} "
                       f"(step {tr.step})")
    elif start_epoch > 0:
        _log(run.rank, f"resuming after epoch {start_epoch} (step {tr.step})")
    val_loader, tc = d.val_loader, run.cfg.train
    _log(run.rank, f"train: {len(d.train_ds)} frames ({d.train_ds.skipped} skipped), "
                   f"{'no val' if val_loader is None else f'{len(val_loader.dataset)} val frames'}, "
                   f"{count_parameters(tr.model) / 1e6:.2f} M params, {run.world} process(es) on {run.device}, "
                   f"{d.steps_per_epoch} steps/epoch x {tc.epochs} epochs")
    if start_epoch >= tc.epochs:
        _log(run.rank, f"the run has done {start_epoch} of {tc.epochs} epochs: nothing to train "
                       "(--epochs N extends it)")


def _state(tr: Training, run: Run, epoch: int) -> dict:
    """What a checkpoint needs to continue exactly; ``epoch`` counts completed epochs. ``best_epoch``: the
    epoch best.pt holds; ``data``: what the run trains on (``--resume`` compares it)."""
    return {"model": tr.model.state_dict(), "optimizer": tr.optimizer.state_dict(),
            "scheduler": tr.scheduler.state_dict(), "scaler": tr.scaler.state_dict(), "epoch": epoch,
            "step": tr.step, "rng": rng_state(), "config": run.cfg.to_dict(), "best_score": tr.best,
            "best_epoch": tr.best_epoch, "data": run.data}


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
