"""The fused LiDAR + camera multi-task network.

    image (B,3,H,W) -> camera encoder (strides 2,4,8,16) -> FPN decoder -> sem_logits (B,n_sem,H,W)
                                  \\ stride-8 features -> 1x1 -> grid_sample(fixed BEV grid) -> (B,F,128,128)
    bev (B,C,256,256) -> BEV encoder (strides 2,4,8) -> FPN up to stride 2 -> (B,Cb,128,128)
    concat -> fuse conv -> heads -> bbox_heatmap (B,n_det,128,128) logits, bbox_reg (B,8,128,128)

The camera->BEV grid is a fixed buffer from ``geometry.bev_to_image_grid`` (camera calibration scaled to
``camera.image_hw``, BEV cell centres on the plane z = ``model.fusion_height``): each BEV cell reads the
image feature at the pixel where that ground point projects. No data-dependent control flow, so the
module exports with ``torch.export`` / the dynamo ONNX exporter.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import Config
from .geometry import bev_to_image_grid, cam_matrix, scale_cam_matrix


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


def _stages(c_in: int, widths: tuple[int, ...], depth: int) -> nn.ModuleList:
    """One stride-2 stage per width: a strided conv then ``depth - 1`` stride-1 convs."""
    stages = []
    for w in widths:
        layers = [conv_bn_relu(c_in, w, stride=2)] + [conv_bn_relu(w, w) for _ in range(depth - 1)]
        stages.append(nn.Sequential(*layers))
        c_in = w
    return nn.ModuleList(stages)


class FPNDecoder(nn.Module):
    """Top-down path: 1x1 laterals, bilinear x2 upsampling + add, one 3x3 conv per level (bilinear + conv
    instead of transposed convs: no checkerboard artefacts). Returns the finest requested level."""

    def __init__(self, in_channels: tuple[int, ...], width: int):
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels)
        self.smooth = nn.ModuleList(conv_bn_relu(width, width) for _ in in_channels[:-1])

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        # feats: fine -> coarse, each level half the size of the previous one
        x = self.laterals[-1](feats[-1])
        for i in range(len(feats) - 2, -1, -1):
            lat = self.laterals[i](feats[i])
            x = F.interpolate(x, size=lat.shape[-2:], mode="bilinear", align_corners=False) + lat
            x = self.smooth[i](x)
        return x


class Head(nn.Module):
    """3x3 conv + ReLU + 1x1 (CenterPoint separate head)."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, bias: float = 0.0):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(c_in, c_mid, 3, padding=1), nn.ReLU(inplace=True))
        self.out = nn.Conv2d(c_mid, c_out, 1)
        nn.init.constant_(self.out.bias, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.conv(x))


def fusion_grid(cfg: Config) -> torch.Tensor:
    """(1, Hh, Wh, 2) grid_sample coords of each head-map BEV cell in the model image (fixed buffer)."""
    k = scale_cam_matrix(cam_matrix(cfg.camera), tuple(cfg.camera.resolution_wh), tuple(cfg.camera.image_hw))
    g = bev_to_image_grid(cfg.grid, k, tuple(cfg.camera.image_hw), height=cfg.model.fusion_height)
    return torch.from_numpy(g)[None]


class MultiTaskNet(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        m = cfg.model
        self.n_det, self.n_sem = cfg.classes.n_det, cfg.classes.n_sem
        self.image_hw = tuple(cfg.camera.image_hw)
        self.head_hw = tuple(cfg.grid.head_shape)
        cam, bev = tuple(m.cam_channels), tuple(m.bev_channels)

        # camera branch: strides 2, 4, 8, 16 ...
        self.cam_stages = _stages(3, cam, m.cam_depth)
        # semantic decoder from stride 4 (levels 1..) up; logits upsampled bilinearly to the input size
        self.sem_decoder = FPNDecoder(cam[1:], m.sem_decoder_channels)
        self.sem_classifier = nn.Conv2d(m.sem_decoder_channels, self.n_sem, 1)
        # camera features lifted into BEV: the stride-8 map (index 2)
        self.cam_to_bev = conv_bn_relu(cam[2], m.fuse_channels, k=1)
        self.register_buffer("bev_grid", fusion_grid(cfg), persistent=True)  # (1, Hh, Wh, 2)

        # LiDAR branch: strides 2 (= head resolution), 4, 8 and a top-down path back to stride 2
        self.bev_stages = _stages(cfg.grid.n_channels, bev, m.bev_depth)
        self.bev_decoder = FPNDecoder(bev, m.bev_decoder_channels)

        c_fused = m.bev_decoder_channels + m.fuse_channels
        self.fuse = conv_bn_relu(c_fused, m.head_channels)
        prior_bias = -math.log(1.0 / m.heatmap_prior - 1.0)
        self.heatmap_head = Head(m.head_channels, m.head_channels, self.n_det, bias=prior_bias)
        self.reg_head = Head(m.head_channels, m.head_channels, 8)

    def forward(self, image: torch.Tensor, bev: torch.Tensor) -> dict[str, torch.Tensor]:
        # camera: list of (B, C_i, H/2^(i+1), W/2^(i+1))
        cam_feats = []
        x = image
        for stage in self.cam_stages:
            x = stage(x)
            cam_feats.append(x)
        sem = self.sem_classifier(self.sem_decoder(cam_feats[1:]))             # (B, n_sem, H/4, W/4)
        sem_logits = F.interpolate(sem, size=image.shape[-2:], mode="bilinear", align_corners=False)

        cam_bev = self.cam_to_bev(cam_feats[2])                                # (B, F, H/8, W/8)
        grid = self.bev_grid.expand(image.shape[0], -1, -1, -1).to(cam_bev.dtype)
        cam_bev = F.grid_sample(cam_bev, grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False)                           # (B, F, 128, 128)

        bev_feats = []
        y = bev
        for stage in self.bev_stages:
            y = stage(y)
            bev_feats.append(y)
        lidar = self.bev_decoder(bev_feats)                                    # (B, Cb, 128, 128)

        fused = self.fuse(torch.cat([lidar, cam_bev], dim=1))                  # (B, head, 128, 128)
        return {
            "bbox_heatmap": self.heatmap_head(fused),                          # logits
            "bbox_reg": self.reg_head(fused),
            "sem_logits": sem_logits,
        }


# a sane bound for this model family (the default has 0.41 M): a crafted checkpoint config (widths 4096, depth 32)
# is refused before anything is allocated instead of asking for terabytes
MAX_PARAMETERS = 250_000_000


def parameter_count(cfg: Config) -> int:
    """The number of parameters ``MultiTaskNet(cfg)`` has, computed from the config alone (no allocation)."""
    m, n_det, n_sem = cfg.model, cfg.classes.n_det, cfg.classes.n_sem

    def cbr(c_in: int, c_out: int, k: int = 3) -> int:          # conv (no bias) + BatchNorm weight and bias
        return c_out * c_in * k * k + 2 * c_out

    def stages(c_in: int, widths: tuple[int, ...], depth: int) -> int:
        n = 0
        for w in widths:
            n += cbr(c_in, w) + (depth - 1) * cbr(w, w)
            c_in = w
        return n

    def fpn(in_channels: tuple[int, ...], width: int) -> int:
        return sum(width * c + width for c in in_channels) + (len(in_channels) - 1) * cbr(width, width)

    def head(c: int, c_out: int) -> int:
        return c * c * 9 + c + c_out * c + c_out

    cam, bev = tuple(m.cam_channels), tuple(m.bev_channels)
    return (stages(3, cam, m.cam_depth) + fpn(cam[1:], m.sem_decoder_channels)
            + n_sem * m.sem_decoder_channels + n_sem + cbr(cam[2], m.fuse_channels, k=1)
            + stages(cfg.grid.n_channels, bev, m.bev_depth) + fpn(bev, m.bev_decoder_channels)
            + cbr(m.bev_decoder_channels + m.fuse_channels, m.head_channels)
            + head(m.head_channels, n_det) + head(m.head_channels, 8))


def build_model(cfg: Config) -> MultiTaskNet:
    """The network for ``cfg`` (widths/depths from ``cfg.model``); ``ConfigError`` before any allocation when
    it would have more than ``MAX_PARAMETERS`` parameters."""
    check_model_size(cfg)
    return MultiTaskNet(cfg)


def check_model_size(cfg: Config) -> None:
    from .errors import ConfigError

    n = parameter_count(cfg)
    if n > MAX_PARAMETERS:
        raise ConfigError(None, f"model: these widths and depths make a model of {n / 1e6:,.0f} M parameters, "
                                f"more than the {MAX_PARAMETERS / 1e6:.0f} M this tool builds")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """The dict of a checkpoint written by ``mtl train``, loaded as data (``weights_only``: never code), its
    config validated. ``ModelMismatchError`` (exit 5) naming the file when it is missing, empty, truncated,
    not a PyTorch archive, holds Python objects other than tensors and plain containers, or is not an mtl
    checkpoint; ``ConfigError`` (exit 2) when its config is invalid or out of bounds."""
    from .errors import ConfigError, ModelMismatchError

    path = Path(path)
    _check_archive(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001  torch raises many unrelated types for corrupt or foreign files
        raise ModelMismatchError(path, f"not a readable checkpoint: {_load_failure(e)}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ModelMismatchError(path, "not an mtl checkpoint (needs 'model' and 'config' entries)")
    try:
        check_model_size(Config.from_dict(ckpt["config"]))
    except ConfigError as e:
        raise ConfigError(path, f"checkpoint config is invalid ({e})") from None
    return ckpt


def _check_archive(path: Path) -> None:
    """What can be told from the file before torch reads it: present, not empty, a complete zip archive (the
    format ``torch.save`` writes) whose members fit in the file (no member that inflates on load)."""
    import zipfile

    from .errors import ModelMismatchError

    if not path.is_file():
        raise ModelMismatchError(path, "checkpoint not found" if not path.exists() else "not a file")
    size = path.stat().st_size
    if size == 0:
        raise ModelMismatchError(path, "not a readable checkpoint: the file is empty (0 bytes)")
    try:
        with zipfile.ZipFile(path) as z:
            declared = sum(info.file_size for info in z.infolist())
    except (zipfile.BadZipFile, EOFError, ValueError):
        raise ModelMismatchError(path, "not a readable checkpoint: truncated, or not a PyTorch checkpoint "
                                       "(no complete zip archive)") from None
    if declared > size:
        raise ModelMismatchError(path, f"not a readable checkpoint: its members unpack to {declared} bytes, more "
                                       f"than the file's {size} (torch.save never compresses)")


def _load_failure(e: Exception) -> str:
    """A one-line reason for a failed ``torch.load`` (never torch's advice to load without weights_only)."""
    import pickle

    if isinstance(e, pickle.UnpicklingError):
        return "it holds Python objects other than tensors and plain containers (a checkpoint is loaded as data, " \
               "never as code)"
    if isinstance(e, (EOFError, RuntimeError)):
        return "truncated or corrupt archive"
    first = (str(e).strip().splitlines() or [""])[0]
    return type(e).__name__ + ("" if not first or "weights_only" in first else f": {first[:200]}")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"
                    ) -> tuple[MultiTaskNet, Config, dict]:
    """Rebuild the model from a checkpoint written by ``mtl train``: (model in eval mode, cfg, raw dict).

    Checkpoint: {"model", "optimizer", "scheduler", "epoch", "step", "rng", "config", "metrics"}.
    """
    from .errors import ModelMismatchError

    ckpt = read_checkpoint(path, map_location)
    cfg = Config.from_dict(ckpt["config"])
    model = build_model(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, AttributeError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelMismatchError(path, f"weights do not match the config's model ({reason})") from None
    model.eval()
    return model, cfg, ckpt
