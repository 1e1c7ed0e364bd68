"""Shared fixtures and the tiny config / tiny chunk writer every test module uses.

Real A2D2 sample files are read in place from $MTL_A2D2_SAMPLE (default: ``shared/a2d2_sample`` next to
the repository; never copied); tests that need them skip with the reason when the folder is absent."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from mtl.config import Config
from mtl.data.chunk import HAS_ALL, HAS_IMAGE, HAS_LIDAR, HAS_SEMANTIC, Frame, write_chunk
from mtl.geometry import cam_matrix, scale_cam_matrix
from mtl.io import encode_png

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


TINY_HW = (32, 64)


def tiny_cfg(**overrides) -> Config:
    """64x64 BEV grid (head 32x32), 32x64 images, a few-thousand-parameter model."""
    cfg = Config().override(**{
        "grid.x_max": 12.8, "grid.y_min": -6.4, "grid.y_max": 6.4,
        "camera.image_hw": TINY_HW,
        "model.cam_channels": (4, 8, 8, 8), "model.bev_channels": (8, 8, 8), "model.cam_depth": 1,
        "model.bev_depth": 1, "model.bev_decoder_channels": 8, "model.fuse_channels": 4,
        "model.head_channels": 8, "model.sem_decoder_channels": 8,
        "train.warmup_steps": 2, "train.viz_every": 0, "train.batch_size": 2,
    })
    return cfg.override(**overrides)


def tiny_frame(cfg: Config, rng: np.random.Generator, fid: str, hw=TINY_HW, mask: int = HAS_ALL) -> Frame:
    """A random but learnable frame: image colour encodes the semantic class, LiDAR points fill the boxes."""
    h, w = hw
    n_sem = cfg.classes.n_sem
    sem = np.zeros((h, w), np.uint8)
    for _ in range(4):  # a few rectangles of random classes
        r0, c0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
        sem[r0: r0 + rng.integers(3, h // 2), c0: c0 + rng.integers(3, w // 2)] = rng.integers(0, 6)
    sem[0, 0] = 255
    palette = (np.arange(n_sem)[:, None] * np.array([37, 91, 151]) % 256).astype(np.uint8)
    img = palette[np.minimum(sem, n_sem - 1)] + rng.integers(0, 20, (h, w, 3)).astype(np.uint8)
    m = int(rng.integers(1, 4))
    boxes = np.column_stack([
        rng.uniform(2.0, 11.0, m), rng.uniform(-5.0, 5.0, m), np.full(m, -0.9),
        rng.uniform(3.5, 4.5, m), rng.uniform(1.6, 2.0, m), np.full(m, 1.5), rng.uniform(-np.pi, np.pi, m),
    ]).astype(np.float32)
    cls = rng.integers(0, cfg.classes.n_det, m).astype(np.int16)
    pts = [np.column_stack([rng.uniform(0, 12.8, 200), rng.uniform(-6.4, 6.4, 200), np.full(200, -1.7),
                            rng.uniform(0, 1, 200)])]
    for b in boxes:  # points inside each box (local frame -> world)
        lx, ly = rng.uniform(-0.45, 0.45, (2, 80)) * b[3:5, None]
        c, s = np.cos(b[6]), np.sin(b[6])
        pts.append(np.column_stack([b[0] + c * lx - s * ly, b[1] + s * lx + c * ly,
                                    b[2] + rng.uniform(-0.7, 0.7, 80), np.full(80, 0.8)]))
    k = scale_cam_matrix(cam_matrix(cfg.camera), cfg.camera.resolution_wh, hw).astype(np.float32)
    return Frame(
        frame_id=fid,
        image_png=encode_png(img) if mask & HAS_IMAGE else b"",
        semantic_png=encode_png(sem) if mask & HAS_SEMANTIC else b"",
        points=np.concatenate(pts).astype(np.float32) if mask & HAS_LIDAR else np.zeros((0, 4), np.float32),
        boxes=boxes, box_class=cls, cam_matrix=k, modality_mask=mask,
    )


def write_tiny_chunks(out: Path, cfg: Config, n_frames: int = 4, per_chunk: int = 2, seed: int = 0,
                      hw=TINY_HW, masks: dict[int, int] | None = None) -> Path:
    rng = np.random.default_rng(seed)
    frames = [tiny_frame(cfg, rng, f"tiny/{seed}_{i:03d}", hw, (masks or {}).get(i, HAS_ALL))
              for i in range(n_frames)]
    for j in range(0, n_frames, per_chunk):
        write_chunk(out / f"chunk_{j // per_chunk:05d}.npz", frames[j: j + per_chunk], {"source": "test"})
    return out


@pytest.fixture
def tiny_chunks(tmp_path) -> tuple[Config, Path]:
    """(tiny config, a directory of 4 tiny frames in 2 chunks)."""
    cfg = tiny_cfg()
    return cfg, write_tiny_chunks(tmp_path / "chunks", cfg)


# ------------------------------------------------------------------------------------ GPU skip helpers


def tensorrt_or_skip():
    """(tensorrt module, GPU info) or ``pytest.skip`` with the reason. Unlike ``pytest.importorskip`` this also
    skips when the wheel is present but its libraries do not load (an OSError, not an ImportError), when
    cuda-python or a device is missing, and when CUDA does not start (trt.Builder's nullptr TypeError)."""
    from mtl.errors import BackendUnavailableError
    from mtl.gpu import gpu_info, import_tensorrt, trt_create

    try:
        trt = import_tensorrt("tests")
        gpu = gpu_info()
        trt_create(trt.Builder, trt.Logger(trt.Logger.ERROR), what="builder (trt.Builder)")
    except BackendUnavailableError as e:
        pytest.skip(f"TensorRT is not usable here: {e}")
    return trt, gpu


def ort_gpu_or_skip(provider: str = "CUDAExecutionProvider") -> None:
    """Skip unless this onnxruntime has ``provider`` (the session itself may still fail: tests report that)."""
    try:
        import onnxruntime as ort
    except Exception as e:  # noqa: BLE001 - ImportError or a broken install
        pytest.skip(f"onnxruntime does not import: {e}")
    if provider not in ort.get_available_providers():
        pytest.skip(f"this onnxruntime has no {provider} (CPU build, or both onnxruntime and onnxruntime-gpu "
                    f"installed): {ort.get_available_providers()}")
