"""Flags the commands share, so every command follows the same rules:

- progress bars only when stderr is a terminal, unless ``--progress`` forces them (``--no-progress`` hides them);
- notes about what happened on the way (e.g. which backend ``auto`` fell back to) only with ``-v/--verbose``;
- ``--ray [ADDRESS|local]`` + ``--ray-workers N`` for the batch commands that can run on a Ray cluster.

Used as decorators (``@progress_option``) plus ``want_progress(progress)`` in the command body.
"""
from __future__ import annotations

import sys
from collections.abc import Callable

import click


def progress_option(f: Callable) -> Callable:
    """``--progress/--no-progress`` -> a ``progress`` argument: True, False or None (not given)."""
    return click.option("--progress/--no-progress", "progress", default=None,
                        help="Show progress bars  [default: only when stderr is a terminal].")(f)


def want_progress(progress: bool | None) -> bool:
    """Whether to draw progress bars: the flag when given, else whether stderr is a terminal (a log file or a
    pipe gets no bars)."""
    return bool(progress) if progress is not None else sys.stderr.isatty()


def verbose_option(f: Callable) -> Callable:
    """``-v/--verbose`` -> a ``verbose`` argument."""
    return click.option("-v", "--verbose", is_flag=True,
                        help="Also print notes, e.g. which backend `auto` fell back to and why.")(f)


def note_printer(verbose: bool) -> Callable[[str], None]:
    """A ``log`` callback that prints notes to stderr with ``--verbose`` and drops them otherwise."""
    def log(message: str) -> None:
        if verbose:
            click.echo(message, err=True)
    return log


def ray_options(f: Callable) -> Callable:
    """``--ray [ADDRESS|local]`` -> ``ray_address`` (None, "local" when given alone, or the address) and
    ``--ray-workers N`` -> ``ray_workers`` (mtl.fleet; needs the ``[fleet]`` extra)."""
    f = click.option("--ray-workers", "ray_workers", default=None, type=click.IntRange(min=1),
                     help="Ray tasks in flight [default: local: min(2, CPUs); a cluster: all its CPUs].")(f)
    return click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
                        metavar="[ADDRESS|local]",
                        help="Run on Ray (pip install 'mtl[fleet]'): 'local' (the default when given alone) starts a "
                             "cluster on this machine, an address (host:port of `ray start --head`, auto, "
                             "ray://host:10001) joins one. Inputs and --out must be on a file system every node "
                             "mounts at the same path.")(f)
