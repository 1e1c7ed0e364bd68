"""Model: output contract, heatmap prior init, fixed fusion grid, torch.export traceability, checkpoints."""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import tiny_cfg

from mtl.errors import ModelMismatchError


def _inputs(cfg, b=2):
    h, w = cfg.camera.image_hw
    return torch.randn(b, 3, h, w), torch.rand(b, cfg.grid.n_channels, *cfg.grid.shape)


def test_output_shapes_and_names():
    from mtl.contract import OUTPUTS
    from mtl.model import build_model

    cfg = tiny_cfg()
    model = build_model(cfg).eval()
    out = model(*_inputs(cfg, 3))
    assert tuple(out) == OUTPUTS
    hh, ww = cfg.grid.head_shape
    assert out["bbox_heatmap"].shape == (3, cfg.classes.n_det, hh, ww)
    assert out["bbox_reg"].shape == (3, 8, hh, ww)
    assert out["sem_logits"].shape == (3, cfg.classes.n_sem, *cfg.camera.image_hw)


def test_default_model_shapes():
    from mtl.config import Config
    from mtl.model import build_model, count_parameters

    cfg = Config()
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(*_inputs(cfg, 1))
    assert out["bbox_heatmap"].shape == (1, 4, 128, 128)
    assert out["bbox_reg"].shape == (1, 8, 128, 128)
    assert out["sem_logits"].shape == (1, cfg.classes.n_sem, 320, 512)
    assert 1e5 < count_parameters(model) < 5e6


def test_heatmap_bias_init_is_prior():
    from mtl.model import build_model

    cfg = tiny_cfg(**{"model.heatmap_prior": 0.1})
    model = build_model(cfg)
    bias = model.heatmap_head.out.bias.detach()
    np.testing.assert_allclose(bias.numpy(), -math.log(1 / 0.1 - 1), rtol=1e-6)
    # with zero weights in the last layer the predicted probability is exactly the prior
    torch.nn.init.zeros_(model.heatmap_head.out.weight)
    prob = torch.sigmoid(model.eval()(*_inputs(cfg))["bbox_heatmap"])
    np.testing.assert_allclose(prob.detach().numpy(), 0.1, rtol=1e-5)


def test_fusion_grid_is_a_fixed_buffer_from_the_calibration():
    from mtl.geometry import bev_to_image_grid, cam_matrix, scale_cam_matrix
    from mtl.model import build_model

    cfg = tiny_cfg(**{"model.fusion_height": -1.7})
    model = build_model(cfg)
    k = scale_cam_matrix(cam_matrix(cfg.camera), cfg.camera.resolution_wh, cfg.camera.image_hw)
    expect = bev_to_image_grid(cfg.grid, k, cfg.camera.image_hw, height=-1.7)
    assert "bev_grid" in dict(model.named_buffers())
    assert not model.bev_grid.requires_grad
    np.testing.assert_array_equal(model.bev_grid[0].numpy(), expect)
    # some cells see the image (ground in front of the camera), cells outside the view read zeros (2.0)
    assert (np.abs(expect) <= 1).all(-1).any() and (expect == 2.0).all(-1).any()


def test_torch_export_traces_with_dynamic_batch():
    from mtl.model import build_model

    cfg = tiny_cfg()
    model = build_model(cfg).eval()
    image, bev = _inputs(cfg, 2)
    batch = torch.export.Dim("batch", min=1, max=16)
    ep = torch.export.export(model, (image, bev), dynamic_shapes=({0: batch}, {0: batch}))
    ref = model(image, bev)
    got = ep.module()(image, bev)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k])
    got3 = ep.module()(*_inputs(cfg, 3))
    assert got3["bbox_heatmap"].shape[0] == 3


def test_load_checkpoint_roundtrip_and_errors(tmp_path):
    from mtl.model import build_model, load_checkpoint

    cfg = tiny_cfg()
    model = build_model(cfg).eval()
    path = tmp_path / "m.pt"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "epoch": 1, "step": 3, "metrics": {}}, path)
    m2, cfg2, ckpt = load_checkpoint(path)
    assert cfg2 == cfg and ckpt["epoch"] == 1 and not m2.training
    x = _inputs(cfg)
    torch.testing.assert_close(m2(*x)["bbox_reg"], model(*x)["bbox_reg"])

    with pytest.raises(ModelMismatchError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ModelMismatchError, match="not a readable checkpoint"):
        load_checkpoint(bad)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ModelMismatchError, match="not an mtl checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    wider = tiny_cfg(**{"model.head_channels": 16})
    torch.save({"model": model.state_dict(), "config": wider.to_dict()}, tmp_path / "mismatch.pt")
    with pytest.raises(ModelMismatchError, match="do not match"):
        load_checkpoint(tmp_path / "mismatch.pt")
