"""``mtl report``: results a person can look at, as one static site (``site.build_report``).

One module per kind of input: ``training`` (run folders), ``export`` (export folders), ``infer`` (infer
outputs, read by ``infer.read_infer``), ``bench`` (bench results, read by ``bench.read_bench``); ``html`` has
the page pieces, ``charts`` the matplotlib charts. Pictures come from ``mtl.draw``."""
from __future__ import annotations

from .site import build_report, detect_kind

__all__ = ["build_report", "detect_kind"]
