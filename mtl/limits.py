"""Resource caps on untrusted input (chunks, raw A2D2 files), checked before anything big is allocated.
Torch-free.

The defaults are generous for real A2D2 (1920x1208 camera images, up to a few 100k LiDAR points and a few
dozen boxes per frame, coordinates within 200 m); a file beyond a cap is refused with one line naming it,
the cap and the environment variable that raises it (docs/DATA.md, "Resource caps").
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace

from .errors import ConfigError


@dataclass(frozen=True)
class Limits:
    max_image_pixels: int = 40_000_000         # width x height of one PNG, read from its header
    max_points: int = 2_000_000                # LiDAR points of one frame (raw npz or chunk frame)
    max_npz_member_bytes: int = 2 << 30        # one array inside an .npz, from its zip + .npy headers
    max_boxes: int = 1000                      # 3D boxes of one frame (label3D JSON or chunk frame)
    max_coordinate: float = 1e4                # |value| of a label3D number (metres; radians for rot_angle)
    max_json_bytes: int = 64 << 20             # a raw JSON file (label3D, cams_lidars.json)


# field -> environment variable that overrides it (read by ``limits()`` on every call)
ENV = {f.name: "MTL_" + f.name.upper() for f in fields(Limits)}


def limits() -> Limits:
    """The caps in force: the defaults, each overridden by its ``MTL_MAX_*`` environment variable.

    Read on every call (a few ``getenv``s), so worker processes and tests see the current environment."""
    out = Limits()
    for f in fields(Limits):
        raw = os.environ.get(ENV[f.name])
        if raw is None or raw.strip() == "":
            continue
        try:
            value = float(raw) if f.type in (float, "float") else int(raw)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value <= 0:
            raise ConfigError(None, f"{ENV[f.name]}={raw!r}: expected a positive "
                                    f"{'number' if f.type in (float, 'float') else 'integer'}")
        out = replace(out, **{f.name: value})
    return out


def over_limit(field: str, lim: Limits) -> str:
    """``over the limit of 2000000 (MTL_MAX_POINTS)``: the tail of every cap refusal."""
    cap = getattr(lim, field)
    return f"over the limit of {cap:g} ({ENV[field]})" if isinstance(cap, float) else \
        f"over the limit of {cap} ({ENV[field]})"


__all__ = ["ENV", "Limits", "limits", "over_limit"]
