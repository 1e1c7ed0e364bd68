"""`mtl train`, `mtl eval`, `mtl viz`."""
from __future__ import annotations

COMMANDS: list = []
