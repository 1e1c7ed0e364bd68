"""`mtl data synth|convert|inspect`."""
from __future__ import annotations

import click

from ..config import build_config
from .options import progress_option, ray_options, want_progress
from .train import set_option


@click.group()
def data() -> None:
    """Make, convert and inspect datasets (raw A2D2 layout -> NPZ chunks)."""


@data.command("convert")
@click.option("--a2d2", "root", required=True, type=click.Path(file_okay=False, readable=False),
              help="Raw A2D2 camera_lidar_semantic_bboxes root (holds cams_lidars.json and the scene folders).")
@click.option("--out", required=True, type=click.Path(readable=False),
              help="Output directory for chunk_*.npz, summary.json and manifest.json.")
@click.option("--chunk-size", default=64, show_default=True, type=click.IntRange(min=1), help="Frames per chunk.")
@click.option("--image-size", default=None, metavar="HxW|original",
              help="Stored image size, e.g. 320x512, or 'original' (undistorted 1208x1920). "
                   "Default: camera.image_hw of the config (320x512).")
@click.option("--partial", is_flag=True,
              help="Keep frames that have a camera image OR LiDAR; chunk modality_mask records what each has.")
@click.option("--skip-bad", is_flag=True, help="Log and count corrupt files instead of aborting.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier conversion in --out (only once this one succeeds).")
@click.option("--workers", default=None, type=click.IntRange(min=1), help="Worker processes [default: min(2, CPUs)].")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="Config JSON (classes, camera.image_hw); default config when omitted.")
@set_option("Applied after --config; --image-size wins over camera.image_hw.")
@ray_options
@progress_option
def convert_cmd(root, out, chunk_size, image_size, partial, skip_bad, overwrite, workers, config_path, assignments,
                ray_address, ray_workers, progress):
    """Convert a raw A2D2 front-centre tree into NPZ chunks (images undistorted + resized).

    Frames are paired by scene and frame id; by default a frame needs camera, label, lidar and label3D
    (others are skipped and counted per reason). Writes DIR/summary.json and DIR/manifest.json (every file
    of the set with its size and sha256) and prints a one-line summary. The whole set is switched in by one
    commit once the conversion succeeded: a failed, interrupted or killed run leaves DIR as it was.

    With --ray the frames are converted by Ray tasks, one per scene piece of at most --chunk-size frames: the
    same chunks as one machine, byte for byte. A failed, interrupted or killed --ray run keeps its finished
    shards in a hidden folder of DIR; the same command again converts only the missing ones.
    """
    from ..data.convert import convert, format_summary

    summary = convert(root, out, build_config(config_path, assignments), chunk_size=chunk_size, image_size=image_size,
                      partial=partial, skip_bad=skip_bad, overwrite=overwrite, workers=workers,
                      progress=want_progress(progress), ray_address=ray_address, ray_workers=ray_workers)
    click.echo(format_summary(summary))


@data.command("inspect")
@click.argument("path", type=click.Path(readable=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect_cmd(path, as_json):
    """Validate chunks (a chunk file or a directory of chunks) and print their statistics.

    Decodes every PNG; any problem is reported as one line naming the file, with a non-zero exit code.
    """
    import json

    from ..data.inspect import format_report, inspect_chunks

    report = inspect_chunks(path)
    click.echo(json.dumps(report, indent=1) if as_json else format_report(report))


@data.command("synth")
@click.option("--out", required=True, type=click.Path(file_okay=False, readable=False),
              help="Output root (raw A2D2 layout).")
@click.option("--frames", default=200, show_default=True, type=click.IntRange(min=1), help="Number of frames.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Same seed -> byte-identical files (for any --workers).")
@click.option("--workers", default=None, type=click.IntRange(min=1), help="Worker processes [default: min(2, CPUs)].")
@click.option("--scene-size", default=50, show_default=True, type=click.IntRange(min=1),
              help="Frames per scene folder (one street per scene).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier synthetic dataset in --out.")
@progress_option
def synth_cmd(out, frames, seed, workers, scene_size, overwrite, progress):
    """Generate a synthetic dataset in the real raw A2D2 layout (camera, label, lidar, label3D).

    Camera, semantic label, LiDAR and 3D boxes are ray-cast from one procedural street scene per frame,
    so `mtl data convert --a2d2 OUT` reads it like real A2D2. Writes OUT/synth_summary.json.
    """
    from ..data.synth import generate

    s = generate(out, frames, seed, workers=workers, scene_size=scene_size, overwrite=overwrite,
                 progress=want_progress(progress))
    boxes = ", ".join(f"{n} {c}" for c, n in s["objects_per_class"].items() if n)
    click.echo(f"synth: {s['frames']} frames in {len(s['scenes'])} scenes -> {out} "
               f"({s['elapsed_s']:.1f} s, {s['frames_per_s']:.1f} frames/s, "
               f"{s['points_per_frame']['mean']:.0f} points/frame, boxes: {boxes})")
