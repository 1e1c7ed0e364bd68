"""Charts of the report (matplotlib, object API + Agg, never pyplot), returned as PNG bytes."""
from __future__ import annotations

import io
import re
from collections.abc import Sequence

import numpy as np

from ..errors import BackendUnavailableError


def _figure(w: float, h: float):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise BackendUnavailableError(None, "mtl report draws its charts with matplotlib: pip install matplotlib "
                                            "(or the [train] extra)") from None
    return Figure(figsize=(w, h), dpi=100)


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return buf.getvalue()


def curves(rows: list[dict], title: str) -> bytes:
    """All metrics against the epoch (``mtl.viz.curves_figure``: grouped panels, integer epoch ticks)."""
    _figure(1, 1)                                    # the matplotlib check, with its one-line error
    from ..viz import curves_figure

    return png(curves_figure(rows, title))


def per_class(xs: np.ndarray, series: dict[str, np.ndarray], title: str, ylabel: str, xlabel: str = "epoch") -> bytes:
    """One line per class against the epoch (integer ticks), legend outside the axes."""
    from ..viz import integer_ticks

    fig = _figure(10.5, 4.8)
    ax = fig.add_axes([0.07, 0.12, 0.64, 0.8])
    for i, (name, ys) in enumerate(series.items()):
        ok = np.isfinite(ys)
        if ok.any():
            ax.plot(xs[ok], ys[ok], marker="o" if ok.sum() <= 30 else "", ms=4, lw=1.6,
                    ls="-" if i < 10 else "--", color=f"C{i % 10}", label=name)
    ax.set_title(title, fontsize=12)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    integer_ticks(ax)
    ax.grid(True, lw=0.3, alpha=0.6)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9 if len(series) <= 12 else 8,
              ncol=1 if len(series) <= 20 else 2)
    return png(fig)


_PCT = re.compile(r"^p(\d+(?:[._]\d+)?)$")


def percentile_points(stats: dict) -> list[tuple[float, float]]:
    """(latency ms, fraction of frames at or below it) from a stats dict with ``p50``, ``p90``, ``p99``,
    ``p99.9`` / ``p99_9`` (and ``min`` / ``max`` as 0 and 1), sorted by fraction."""
    pts = []
    for key, value in stats.items():
        m = _PCT.match(str(key))
        if m and isinstance(value, (int, float)):
            pts.append((float(value), float(m.group(1).replace("_", ".")) / 100.0))
    for key, q in (("min", 0.0), ("max", 1.0)):
        if isinstance(stats.get(key), (int, float)):
            pts.append((float(stats[key]), q))
    return sorted(pts, key=lambda p: p[1])


def latency_cdf(series: dict[str, tuple[str, Sequence[float] | list[tuple[float, float]]]], title: str) -> bytes:
    """Cumulative distribution of the end-to-end latency per backend. ``series``: backend -> ("samples",
    per-frame latencies) or ("percentiles", [(ms, fraction), ...]); percentile curves are drawn as marked
    points joined by dashed lines (only those quantiles are known)."""
    fig = _figure(9.5, 4.8)
    ax = fig.add_axes([0.08, 0.12, 0.62, 0.74])
    for i, (name, (kind, data)) in enumerate(series.items()):
        colour = f"C{i % 10}"
        if kind == "samples":
            v = np.sort(np.asarray(data, np.float64))
            ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", color=colour, lw=1.8,
                    label=f"{name} ({len(v)} frames)")
        else:
            x, q = zip(*data)
            ax.plot(x, q, "--o", color=colour, lw=1.2, ms=5, label=f"{name} (percentiles)")
    ax.set_xlabel("end-to-end latency per frame [ms]")
    ax.set_ylabel("fraction of frames at or below")
    ax.set_ylim(0, 1.02)
    ax.grid(True, lw=0.3, alpha=0.6)
    fig.suptitle(title, x=0.01, y=0.985, ha="left", va="top", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    return png(fig)
