"""mtl.losses against hand-worked numbers of the CenterNet focal loss and small hand calculations."""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from mtl.config import LossConfig
from mtl.losses import compute_losses, focal_heatmap_loss, reg_l1_loss, semantic_loss


def _logit(p: list[float]) -> torch.Tensor:
    p_t = torch.tensor(p, dtype=torch.float64)
    return torch.log(p_t / (1 - p_t))


def _map(values: list[float]) -> torch.Tensor:
    """One-channel flattened map as (B=1, C=1, H=1, W=n)."""
    return torch.tensor(values, dtype=torch.float64).view(1, 1, 1, -1)


# ------------------------------------------------------------------------------------------ focal heatmap


@pytest.mark.parametrize("gt, pred, expected", [
    ([1, 0.5, 0], [0.8, 0.3, 0.1], 0.011985644),            # N = 1
    ([0.5, 0], [0.3, 0.1], 0.003059902),                    # N = 0: un-normalised negative sum
    ([1, 1, 0, 0], [0.9, 0.5, 0.2, 0.6], 0.256565403),      # N = 2
])
def test_focal_matches_references_rows(gt, pred, expected):
    loss = focal_heatmap_loss(_logit(pred).view(1, 1, 1, -1), _map(gt))
    assert loss.item() == pytest.approx(expected, abs=1e-8)


def test_focal_row1_terms_by_hand():
    pos = math.log(0.8) * 0.2 ** 2
    neg = math.log(0.7) * 0.3 ** 2 * 0.5 ** 4 + math.log(0.9) * 0.1 ** 2
    loss = focal_heatmap_loss(_logit([0.8, 0.3, 0.1]).view(1, 1, 1, -1), _map([1, 0.5, 0]))
    assert loss.item() == pytest.approx(-(pos + neg), abs=1e-12)


def test_focal_normalises_by_positives_over_the_whole_batch():
    # image 0 holds row 1 of the table (N=1), image 1 only negatives: one batch sum divided by N = 1,
    # not a mean of per-image losses
    logits = torch.stack([_logit([0.8, 0.3, 0.1]), _logit([0.3, 0.1, 0.1])]).view(2, 1, 1, 3)
    target = torch.tensor([[1, 0.5, 0], [0.5, 0, 0]], dtype=torch.float64).view(2, 1, 1, 3)
    extra = -(math.log(0.7) * 0.3 ** 2 * 0.5 ** 4 + 2 * math.log(0.9) * 0.1 ** 2)
    assert focal_heatmap_loss(logits, target).item() == pytest.approx(0.011985644 + extra, abs=1e-8)


def test_focal_alpha_beta_are_used():
    # alpha=1, beta=1 on row 1: pos = 0.2 ln 0.8, neg = 0.3 * 0.5 ln 0.7 + 0.1 ln 0.9
    expected = -(0.2 * math.log(0.8) + 0.15 * math.log(0.7) + 0.1 * math.log(0.9))
    loss = focal_heatmap_loss(_logit([0.8, 0.3, 0.1]).view(1, 1, 1, -1), _map([1, 0.5, 0]), alpha=1, beta=1)
    assert loss.item() == pytest.approx(expected, abs=1e-10)


def test_focal_clamp_keeps_saturated_logits_finite():
    logits = torch.tensor([20.0, -20.0, 20.0, -20.0]).view(1, 1, 2, 2).requires_grad_()
    target = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 2, 2)
    loss = focal_heatmap_loss(logits, target)
    loss.backward()
    # the clamp is active on the wrong-way pixels: -ln(1e-4) * (1-1e-4)^2 dominates
    assert math.isfinite(loss.item()) and loss.item() > 0
    assert loss.item() == pytest.approx(-math.log(1e-4) * (1 - 1e-4) ** 2, rel=1e-3)
    assert torch.isfinite(logits.grad).all()
    assert logits.min().item() == -20.0        # out-of-place sigmoid: input untouched


def test_focal_extra_confident_negatives_change_nothing():
    base = focal_heatmap_loss(_logit([0.8, 0.3, 0.1]).view(1, 1, 1, -1), _map([1, 0.5, 0]))
    padded = focal_heatmap_loss(_logit([0.8, 0.3, 0.1, 1e-4, 1e-4]).view(1, 1, 1, -1), _map([1, 0.5, 0, 0, 0]))
    assert abs(padded.item() - base.item()) < 1e-11


def _fast_focal(logits: torch.Tensor, target: torch.Tensor, ind: torch.Tensor, cat: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
    """CenterPoint FastFocalLoss (det3d centernet_loss.py L26-54) re-typed for the comparison."""
    out = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    neg = (torch.log(1 - out) * out.pow(2) * (1 - target).pow(4)).sum()
    b, c, h, w = out.shape
    flat = out.view(b, c, h * w)
    pos_pred = flat[torch.arange(b)[:, None], cat, ind]                         # (B, M)
    pos = (torch.log(pos_pred) * (1 - pos_pred).pow(2) * mask).sum()
    n = mask.sum()
    return -neg if n == 0 else -(pos + neg) / n


def test_focal_masked_equals_fastfocal_on_unique_peaks():
    from mtl.geometry import draw_gaussian

    g = torch.Generator().manual_seed(0)
    target = torch.zeros(2, 2, 12, 12, dtype=torch.float64)
    objs = [(0, 0, 3, 4), (0, 1, 8, 8), (1, 0, 5, 6), (1, 1, 2, 9), (1, 0, 10, 1)]   # (b, cls, row, col)
    for b, c, r, col in objs:
        hm = target[b, c].numpy()
        draw_gaussian(hm, r, col, 2)
    ind = torch.zeros(2, 3, dtype=torch.long)
    cat = torch.zeros(2, 3, dtype=torch.long)
    mask = torch.zeros(2, 3, dtype=torch.float64)
    slot = [0, 0]
    for b, c, r, col in objs:
        ind[b, slot[b]], cat[b, slot[b]], mask[b, slot[b]] = r * 12 + col, c, 1
        slot[b] += 1
    logits = torch.randn(2, 2, 12, 12, generator=g, dtype=torch.float64)
    assert int(target.eq(1).sum()) == len(objs)
    assert focal_heatmap_loss(logits, target).item() == pytest.approx(
        _fast_focal(logits, target, ind, cat, mask).item(), abs=1e-10)


def test_focal_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        focal_heatmap_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 4, 4))


# ---------------------------------------------------------------------------------------------- reg L1


def test_reg_l1_references_example():
    # one object, D = 2, errors [0.1, 0.3] -> 0.4 / (1*2 + 1e-4)
    pred = torch.zeros(1, 2, 3, 3, dtype=torch.float64)
    target = torch.zeros_like(pred)
    mask = torch.zeros(1, 3, 3, dtype=torch.float64)
    mask[0, 1, 2] = 1
    pred[0, :, 1, 2] = torch.tensor([0.5, -0.2], dtype=torch.float64)
    target[0, :, 1, 2] = torch.tensor([0.4, 0.1], dtype=torch.float64)
    pred[0, :, 0, 0] = 100.0                       # unmasked pixels never count
    assert reg_l1_loss(pred, target, mask).item() == pytest.approx(0.4 / (2 + 1e-4), abs=1e-12)


def test_reg_l1_eight_channels_two_objects():
    pred = torch.zeros(2, 8, 4, 4)
    target = torch.zeros_like(pred)
    mask = torch.zeros(2, 4, 4)
    mask[0, 0, 0] = mask[1, 3, 3] = 1
    target[0, :, 0, 0] = 1.0                       # |err| = 1 in 8 channels
    target[1, :, 3, 3] = -0.5                      # |err| = 0.5 in 8 channels
    assert reg_l1_loss(pred, target, mask).item() == pytest.approx(12.0 / (16 + 1e-4), rel=1e-6)


def test_reg_l1_without_objects_is_zero_and_differentiable():
    pred = torch.randn(1, 8, 4, 4, requires_grad=True)
    loss = reg_l1_loss(pred, torch.ones(1, 8, 4, 4), torch.zeros(1, 4, 4))
    loss.backward()
    assert loss.item() == 0.0
    assert pred.grad is not None and torch.equal(pred.grad, torch.zeros_like(pred))


# -------------------------------------------------------------------------------------------- semantic


def _three_pixels() -> tuple[torch.Tensor, torch.Tensor]:
    """C = 3, three pixels in a 1x3 image; the middle pixel is ignored."""
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 5.0, 0.0], [0.5, 0.5, 1.5]], dtype=torch.float64)
    return logits.T.reshape(1, 3, 1, 3), torch.tensor([[[0, 255, 2]]])


def _nll(row: list[float], t: int) -> float:
    return -(row[t] - math.log(sum(math.exp(v) for v in row)))


def test_semantic_ce_with_ignore_and_weights_by_hand():
    logits, target = _three_pixels()
    n0, n2 = _nll([2.0, 0.0, -1.0], 0), _nll([0.5, 0.5, 1.5], 2)
    assert semantic_loss(logits, target).item() == pytest.approx((n0 + n2) / 2, abs=1e-12)
    w = torch.tensor([0.5, 3.0, 2.0], dtype=torch.float64)
    assert semantic_loss(logits, target, weight=w).item() == pytest.approx(
        (0.5 * n0 + 2.0 * n2) / (0.5 + 2.0), abs=1e-12)
    # hand values themselves (guards the helper): n0 = ln(1 + e^-2 + e^-3), n2 = ln(2 e^-1 + 1)
    assert n0 == pytest.approx(math.log(1 + math.exp(-2) + math.exp(-3)), abs=1e-12)
    assert n2 == pytest.approx(math.log(2 * math.exp(-1) + 1), abs=1e-12)


def test_semantic_focal_by_hand_and_gamma0_is_ce():
    logits, target = _three_pixels()
    w = torch.tensor([0.5, 3.0, 2.0], dtype=torch.float64)
    n0, n2 = _nll([2.0, 0.0, -1.0], 0), _nll([0.5, 0.5, 1.5], 2)
    f0, f2 = (1 - math.exp(-n0)) ** 2 * n0, (1 - math.exp(-n2)) ** 2 * n2
    got = semantic_loss(logits, target, weight=w, kind="focal", gamma=2.0).item()
    assert got == pytest.approx((0.5 * f0 + 2.0 * f2) / 2.5, abs=1e-12)
    for weight in (None, w):
        ce = semantic_loss(logits, target, weight=weight, kind="ce")
        assert semantic_loss(logits, target, weight=weight, kind="focal", gamma=0.0).item() == pytest.approx(
            ce.item(), abs=1e-12)


def test_semantic_ce_equals_torch_cross_entropy():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 5, 6, generator=g)
    target = torch.randint(0, 4, (2, 5, 6), generator=g)
    target[0, 0, :3] = 255
    w = torch.tensor([1.0, 2.0, 0.5, 4.0])
    ref = torch.nn.functional.cross_entropy(logits, target, weight=w, ignore_index=255)
    assert semantic_loss(logits, target, weight=w).item() == pytest.approx(ref.item(), rel=1e-6)


def test_semantic_all_ignored_is_zero_not_nan():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = semantic_loss(logits, torch.full((1, 2, 2), 255), kind="focal")
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_semantic_spatial_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="spatial size"):
        semantic_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 8, 8, dtype=torch.long))


# ------------------------------------------------------------------------------------------ compute_losses


def _outputs_and_batch(requires_grad: bool = False) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(2)
    outputs = {"bbox_heatmap": torch.randn(2, 2, 8, 8, generator=g),
               "bbox_reg": torch.randn(2, 8, 8, 8, generator=g),
               "sem_logits": torch.randn(2, 3, 6, 10, generator=g)}
    if requires_grad:
        outputs = {k: v.requires_grad_() for k, v in outputs.items()}
    heat = torch.zeros(2, 2, 8, 8)
    heat[0, 1, 3, 4] = 1.0
    heat[0, 1, 3, 5] = 0.6
    mask = torch.zeros(2, 8, 8)
    mask[0, 3, 4] = 1.0
    batch = {"heatmap": heat, "reg": torch.randn(2, 8, 8, 8, generator=g), "reg_mask": mask,
             "semantic": torch.randint(0, 3, (2, 6, 10), generator=g)}
    return outputs, batch


def test_compute_losses_lambdas_scale_each_term():
    outputs, batch = _outputs_and_batch()
    hm = focal_heatmap_loss(outputs["bbox_heatmap"], batch["heatmap"])
    reg = reg_l1_loss(outputs["bbox_reg"], batch["reg"], batch["reg_mask"])
    sem = semantic_loss(outputs["sem_logits"], batch["semantic"])
    cfg = LossConfig(lambda_hm=0.5, lambda_reg=3.0, lambda_sem=7.0, sem_loss="ce")
    terms = compute_losses(outputs, batch, cfg)
    assert set(terms) == {"hm", "reg", "sem"}
    assert terms["hm"].item() == pytest.approx(0.5 * hm.item(), rel=1e-6)
    assert terms["reg"].item() == pytest.approx(3.0 * reg.item(), rel=1e-6)
    assert terms["sem"].item() == pytest.approx(7.0 * sem.item(), rel=1e-6)


def test_compute_losses_passes_weights_and_focal_kind():
    outputs, batch = _outputs_and_batch()
    w = torch.tensor([1.0, 5.0, 0.2])
    cfg = LossConfig(lambda_sem=1.0, sem_loss="focal", sem_focal_gamma=1.5)
    expected = semantic_loss(outputs["sem_logits"], batch["semantic"], weight=w, kind="focal", gamma=1.5)
    assert compute_losses(outputs, batch, cfg, w)["sem"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert expected.item() != pytest.approx(semantic_loss(outputs["sem_logits"], batch["semantic"]).item())


def test_compute_losses_gradient_reaches_every_output():
    outputs, batch = _outputs_and_batch(requires_grad=True)
    terms = compute_losses(outputs, batch, LossConfig())
    sum(terms.values()).backward()
    for name, t in outputs.items():
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0, name


def test_compute_losses_rejects_resized_semantic_logits():
    outputs, batch = _outputs_and_batch()
    outputs["sem_logits"] = torch.randn(2, 3, 3, 5)
    with pytest.raises(ValueError, match="no silent resize"):
        compute_losses(outputs, batch, LossConfig())
