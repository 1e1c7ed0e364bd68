"""Shared fixtures. Real A2D2 files are read in place from ../shared/a2d2_sample/ (never copied)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
A2D2_SAMPLE = Path(os.environ.get("MTL_A2D2_SAMPLE", REPO.parent / "shared" / "a2d2_sample"))


@pytest.fixture(scope="session")
def a2d2_sample() -> Path:
    if not (A2D2_SAMPLE / "cams_lidars.json").is_file():
        pytest.skip(f"real A2D2 sample files not found at {A2D2_SAMPLE} (set MTL_A2D2_SAMPLE)")
    return A2D2_SAMPLE


@pytest.fixture(scope="session")
def cfg():
    from mtl.config import Config

    return Config()
