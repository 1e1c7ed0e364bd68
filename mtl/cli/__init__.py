"""`mtl` command line. Each stage's commands live in its own torch-free-at-import module
(mtl.cli.data, mtl.cli.train, mtl.cli.deploy, mtl.cli.doctor); heavy imports happen inside the command bodies
so `mtl --help` is fast.
"""
from __future__ import annotations

import sys

import click

from .. import __version__
from ..errors import MtlError


class _Group(click.Group):
    """Turns mtl's own errors into one line on stderr and a documented exit code (docs/TROUBLESHOOTING.md)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MtlError as e:
            _fail(e)
        except OSError as e:
            from ..io import storage_error

            err = storage_error(e)
            if err is None:
                raise                 # not the environment's refusal: a bug, keep the traceback
            _fail(err)
        except KeyboardInterrupt:
            click.echo("error: interrupted (Ctrl-C); finished outputs are intact, nothing half-written was kept",
                       err=True)
            sys.exit(130)


def _fail(e: MtlError) -> None:
    click.echo(f"error: {e}", err=True)
    sys.exit(e.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mtl")
def main() -> None:
    """mtl: fused LiDAR + camera multi-task perception (train -> export -> torch-free runtime)."""


def _register() -> None:
    from . import data, deploy, doctor, train

    main.add_command(data.data)
    for mod in (train, deploy, doctor):
        for cmd in mod.COMMANDS:
            main.add_command(cmd)


_register()
