"""`mtl train`, `mtl eval`, `mtl viz`."""
from __future__ import annotations

import json

import click

from ..config import SEM_CLASS_WEIGHTS, SEM_LOSSES, Config, build_config
from .options import progress_option, want_progress

COMMANDS: list = []


# -------------------------------------------------------------------------------------------- train

_DEFAULTS = Config()      # torch-free and light: the help text shows the real default of each flag


def config_default(key: str) -> str:
    """The default value of a dotted config key, as the help text shows it: ``"train.epochs"`` -> ``"10"``."""
    section, _, name = key.partition(".")
    value = getattr(getattr(_DEFAULTS, section), name)
    return json.dumps(value) if isinstance(value, (bool, list, tuple)) else str(value)


def config_option(flag: str, key: str, text: str, **kw):
    """A flag that sets one config field: no click default (an absent flag keeps the --config / --set
    value), help ending with ``(KEY)  [default: <Config() value>]``. Ranges are checked by the config."""
    return click.option(flag, key.partition(".")[2], default=None,
                        help=f"{text} ({key})  [default: {config_default(key)}]", **kw)


def set_option(precedence: str):
    """``--set SECTION.KEY=VALUE`` (repeatable) for any config field (``mtl.config.build_config``)."""
    return click.option(
        "--set", "assignments", multiple=True, metavar="SECTION.KEY=VALUE",
        help="Set any config field, e.g. --set train.lr=0.001 --set camera.image_hw=[160,256] (repeatable). "
             "VALUE is parsed as JSON when it parses, else taken as a string; then type- and range-checked. "
             + precedence)


@click.command("train")
@click.option("--data", required=True, type=click.Path(file_okay=False), help="Training chunk directory.")
@click.option("--val", default=None, type=click.Path(file_okay=False),
              help="Validation chunk directory (metrics and best.pt selection: val mIoU + mAP).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run directory (one holding a run is refused without --resume or --overwrite).")
@config_option("--epochs", "train.epochs", "Training epochs, with --resume the new total", type=int)
@config_option("--batch-size", "train.batch_size", "Batch size per process", type=int)
@config_option("--lr", "train.lr", "Peak learning rate", type=float)
@config_option("--lambda-hm", "loss.lambda_hm", "Heatmap loss weight", type=float)
@config_option("--lambda-reg", "loss.lambda_reg", "Box regression loss weight", type=float)
@config_option("--lambda-sem", "loss.lambda_sem", "Semantic loss weight", type=float)
@config_option("--sem-loss", "loss.sem_loss", "Semantic loss", type=click.Choice(SEM_LOSSES))
@config_option("--class-weights", "loss.sem_class_weights", "Semantic class weights computed from the training chunks",
               type=click.Choice(SEM_CLASS_WEIGHTS))
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="Config JSON (full or partial); --set and the flags override it.")
@set_option("Applied after --config; the named flags win over it.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out exactly: RUN/last.pt (if it is unreadable, the newest readable of "
                   "RUN/last.prev.pt and RUN/best.pt, with a warning) and the run's own config. --epochs may extend "
                   "it and --workers, --viz-every, --ckpt-every-steps, --skip-bad, --deterministic may change; any "
                   "other change from --config / --set / flags, or other training / validation chunks, is refused "
                   "(listed as key old -> new) unless --force-config.")
@click.option("--force-config", is_flag=True,
              help="With --resume: continue with the changed options (or data) it would refuse. Model, grid, camera "
                   "and class settings can never change on resume.")
@click.option("--overwrite", is_flag=True,
              help="Replace the run in --out (without it, a directory holding a run is refused): once the new run's "
                   "config, data and model are set up, before its first epoch, the old run's config.json, last.pt, "
                   "last.prev.pt, best.pt, metrics.jsonl, curves.png and debug/epoch_* are deleted; other files in "
                   "the directory are kept.")
@config_option("--seed", "train.seed", "Seed of the model init, shuffling and augmentation", type=int)
@config_option("--workers", "train.num_workers", "DataLoader workers", type=int)
@config_option("--viz-every", "train.viz_every", "Epochs between debug images (0 = never)", type=int)
@config_option("--deterministic", "train.deterministic", "Deterministic algorithms (bit-exact resume on CPU)",
               is_flag=True)
@config_option("--ckpt-every-steps", "train.ckpt_every_steps",
               "Also write RUN/last.pt every N steps mid-epoch, so a killed run loses at most N steps "
               "(0 = at epoch ends only)", type=int)
@config_option("--skip-bad", "train.skip_bad",
               "Log and count corrupt chunks / frames (train/skipped_bad in metrics.jsonl) instead of stopping",
               is_flag=True)
@progress_option
def train_cmd(data, val, out, epochs, batch_size, lr, lambda_hm, lambda_reg, lambda_sem, sem_loss, sem_class_weights,
              config_path, assignments, resume, force_config, overwrite, seed, num_workers, viz_every, deterministic,
              ckpt_every_steps, skip_bad, progress):
    """Train the fused multi-task model on NPZ chunks.

    Writes RUN/config.json, RUN/last.pt (every epoch; the one before is kept as RUN/last.prev.pt), RUN/best.pt,
    RUN/metrics.jsonl (one JSON line per epoch) and debug images; an epoch end is committed as one step, so a
    killed run resumes (--resume) from a consistent set. One `mtl train` per RUN at a time. Under
    `torchrun --nproc_per_node=N` it trains with DDP (no other change).
    """
    from functools import partial

    from ..train import train

    overrides = {
        "train.epochs": epochs, "train.batch_size": batch_size, "train.lr": lr, "train.seed": seed,
        "train.num_workers": num_workers, "train.viz_every": viz_every, "train.deterministic": deterministic,
        "train.ckpt_every_steps": ckpt_every_steps, "train.skip_bad": skip_bad,
        "loss.lambda_hm": lambda_hm, "loss.lambda_reg": lambda_reg, "loss.lambda_sem": lambda_sem,
        "loss.sem_loss": sem_loss, "loss.sem_class_weights": sem_class_weights,
    }
    if force_config and not resume:
        raise click.UsageError("--force-config only applies with --resume")
    # on resume the options apply on top of the run's own config (so the run's values are the baseline)
    requested = partial(build_config, config_path, assignments, overrides)
    cfg = None if resume else requested()
    train(cfg, data, out, val=val, resume=resume, progress=want_progress(progress), resume_epochs=epochs,
          overwrite=overwrite, force_config=force_config, requested=requested if resume else None)


COMMANDS.append(train_cmd)


# --------------------------------------------------------------------------------------------- eval


@click.command("eval")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="A .pt from `mtl train`.")
@click.option("--data", required=True, type=click.Path(file_okay=False), help="Chunk directory.")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Metrics JSON to write.")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--skip-bad", is_flag=True, help="Log and count corrupt chunks / frames instead of stopping.")
@progress_option
def eval_cmd(checkpoint, data, out, batch_size, workers, skip_bad, progress):
    """Evaluate a checkpoint: per-class IoU / AP table, mIoU, mAP, pixel accuracy (+ JSON with --out)."""
    from ..evaluate import evaluate_checkpoint, format_table
    from ..io import write_json_atomic

    metrics, cfg = evaluate_checkpoint(checkpoint, data, batch_size=batch_size, workers=workers,
                                       progress=want_progress(progress), skip_bad=skip_bad)
    click.echo(format_table(metrics, cfg))
    if out:
        write_json_atomic(out, {"checkpoint": str(checkpoint), "data": str(data), **metrics})
        click.echo(f"wrote {out}")


COMMANDS.append(eval_cmd)


# ---------------------------------------------------------------------------------------------- viz


@click.command("viz")
@click.argument("run", type=click.Path(), required=False)
@click.option("--data", default=None, type=click.Path(),
              help="Draw one data frame instead: NPZ chunks (a directory or one chunk) or a raw A2D2 tree.")
@click.option("--frame", "frame_id", default=None, metavar="ID",
              help="With --data: the frame id (e.g. 20180810_142822/000015196, or its file-name form "
                   "20180810_142822__000015196) [default: the first frame].")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="With --data: config JSON (classes, calibration, grid); default config when omitted.")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Output PNG [default: RUN/curves.png; with --data: frame_<id>.png in the current directory].")
def viz_cmd(run, data, frame_id, config_path, out):
    """Plot the metric curves of a training run (RUN/metrics.jsonl) into RUN/curves.png, or draw one data
    frame (--data): the camera with the ground-truth 3D boxes, the semantic ground truth in colour, and the
    LiDAR bird's-eye view with the boxes. A modality the frame lacks (e.g. a LiDAR-only A2D2 frame) is a grey
    panel saying so. Prints the PNG path.

    Curves: every numeric key is plotted against the epoch, grouped into panels: losses, segmentation,
    detection, throughput (and other). (Per-epoch debug images are written during `mtl train` by
    mtl.viz.write_debug_images, in epoch_NNN/ folders under the run.)
    """
    from ..errors import ConfigError

    if (run is None) == (data is None):
        raise ConfigError(None, "give exactly one of RUN (metric curves) and --data CHUNKS|RAW (one frame)")
    if data is None:
        if frame_id or config_path:
            raise ConfigError(None, "--frame and --config go with --data")
        from ..viz import plot_curves

        click.echo(str(plot_curves(run, out=out)))
        return
    from ..config import build_config
    from ..draw import save
    from ..runtime.frames import sanitise_frame_id
    from ..viz import find_frame, frame_sheet

    cfg = build_config(config_path, (), {})
    frame = find_frame(data, cfg, frame_id)
    click.echo(str(save(out or f"frame_{sanitise_frame_id(frame.frame_id)}.png", frame_sheet(frame, cfg))))


COMMANDS.append(viz_cmd)
