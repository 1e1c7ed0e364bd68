"""`mtl train`, `mtl eval`, `mtl viz`."""
from __future__ import annotations

import click

COMMANDS: list = []


# -------------------------------------------------------------------------------------------- train


def _train_config(config_path, overrides: dict):  # -> mtl.config.Config (imported lazily)
    """defaults <- --config FILE <- CLI flags (only the flags given)."""
    from ..config import Config
    from ..errors import ConfigError

    try:
        cfg = Config.load(config_path) if config_path else Config()
        return cfg.override(**overrides)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(config_path, str(e)) from None


@click.command("train")
@click.option("--data", required=True, type=click.Path(file_okay=False), help="Training chunk directory.")
@click.option("--val", default=None, type=click.Path(file_okay=False),
              help="Validation chunk directory (metrics and best.pt selection: val mIoU + mAP).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="[default: train.epochs]")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Per process [default: train.batch_size]")
@click.option("--lr", type=float, default=None, help="Peak learning rate [default: train.lr]")
@click.option("--lambda-hm", type=float, default=None, help="Heatmap loss weight [default: loss.lambda_hm]")
@click.option("--lambda-reg", type=float, default=None, help="Box regression loss weight [default: loss.lambda_reg]")
@click.option("--lambda-sem", type=float, default=None, help="Semantic loss weight [default: loss.lambda_sem]")
@click.option("--sem-loss", type=click.Choice(["ce", "focal"]), default=None, help="[default: loss.sem_loss]")
@click.option("--class-weights", type=click.Choice(["none", "enet", "median_freq"]), default=None,
              help="Semantic class weights computed from the training chunks [default: loss.sem_class_weights]")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="Config JSON (full or partial); CLI flags override it.")
@click.option("--resume", is_flag=True, help="Continue RUN/last.pt exactly (its config; --epochs may extend).")
@click.option("--seed", type=int, default=None, help="[default: train.seed]")
@click.option("--workers", type=click.IntRange(min=0), default=None, help="DataLoader workers [default: train.num_workers]")
@click.option("--viz-every", type=click.IntRange(min=0), default=None,
              help="Epochs between debug images (0 = never) [default: train.viz_every]")
@click.option("--deterministic", is_flag=True, default=None, help="Deterministic algorithms (bit-exact resume on CPU).")
@click.option("--ckpt-every-steps", type=click.IntRange(min=0), default=None,
              help="Also write RUN/last.pt every N steps mid-epoch, so a killed run loses at most N steps "
                   "[default: train.ckpt_every_steps; 0 = epoch ends only].")
@click.option("--skip-bad", is_flag=True, default=None,
              help="Log and count corrupt chunks / frames (train/skipped_bad in metrics.jsonl) instead of stopping.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bars.")
def train_cmd(data, val, out, epochs, batch_size, lr, lambda_hm, lambda_reg, lambda_sem, sem_loss, class_weights,
              config_path, resume, seed, workers, viz_every, deterministic, ckpt_every_steps, skip_bad, no_progress):
    """Train the fused multi-task model on NPZ chunks.

    Writes RUN/config.json, RUN/last.pt (every epoch), RUN/best.pt, RUN/metrics.jsonl (one JSON line per
    epoch) and debug images. Under `torchrun --nproc_per_node=N` it trains with DDP (no other change).
    """
    from ..train import train

    cfg = _train_config(config_path, {
        "train.epochs": epochs, "train.batch_size": batch_size, "train.lr": lr, "train.seed": seed,
        "train.num_workers": workers, "train.viz_every": viz_every, "train.deterministic": deterministic,
        "train.ckpt_every_steps": ckpt_every_steps, "train.skip_bad": skip_bad,
        "loss.lambda_hm": lambda_hm, "loss.lambda_reg": lambda_reg, "loss.lambda_sem": lambda_sem,
        "loss.sem_loss": sem_loss, "loss.sem_class_weights": class_weights,
    })
    train(cfg, data, out, val=val, resume=resume, progress=not no_progress, resume_epochs=epochs)


COMMANDS.append(train_cmd)


# --------------------------------------------------------------------------------------------- eval


@click.command("eval")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="A .pt from `mtl train`.")
@click.option("--data", required=True, type=click.Path(file_okay=False), help="Chunk directory.")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Metrics JSON to write.")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--skip-bad", is_flag=True, help="Log and count corrupt chunks / frames instead of stopping.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def eval_cmd(checkpoint, data, out, batch_size, workers, skip_bad, no_progress):
    """Evaluate a checkpoint: per-class IoU / AP table, mIoU, mAP, pixel accuracy (+ JSON with --out)."""
    from ..evaluate import evaluate_checkpoint, format_table
    from ..io import write_json_atomic

    metrics, cfg = evaluate_checkpoint(checkpoint, data, batch_size=batch_size, workers=workers,
                                       progress=not no_progress, skip_bad=skip_bad)
    click.echo(format_table(metrics, cfg))
    if out:
        write_json_atomic(out, {"checkpoint": str(checkpoint), "data": str(data), **metrics})
        click.echo(f"wrote {out}")


COMMANDS.append(eval_cmd)


# ---------------------------------------------------------------------------------------------- viz


@click.command("viz")
@click.argument("run", type=click.Path())
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Output PNG [default: RUN/curves.png].")
def viz_cmd(run, out):
    """Plot the metric curves of a training run (RUN/metrics.jsonl) into RUN/curves.png.

    Every numeric key is plotted against the epoch, grouped into panels: losses, segmentation,
    detection, throughput (and other). Prints the PNG path. (Per-epoch debug images are written during
    `mtl train` by mtl.viz.write_debug_images, in epoch_NNN/ folders under the run.)
    """
    from ..viz import plot_curves

    click.echo(str(plot_curves(run, out=out)))


COMMANDS.append(viz_cmd)
