"""`mtl data synth|convert|inspect`."""
from __future__ import annotations

import click


@click.group()
def data() -> None:
    """Make, convert and inspect datasets (raw A2D2 layout -> NPZ chunks)."""
