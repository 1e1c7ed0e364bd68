"""`mtl export`, `mtl infer`, `mtl bench`."""
from __future__ import annotations

COMMANDS: list = []
