"""Training losses (torch): CenterNet heatmap focal loss, masked L1 box regression, semantic CE / focal.

The heatmap loss is CornerNet / CenterNet ``_neg_loss`` (alpha 2, beta 4, summed over the batch and divided by
the batch's number of positives; no normalisation without positives). ``compute_losses`` returns the
already-weighted terms ``{"hm", "reg", "sem"}``; the training loop sums them.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from .config import LossConfig

_PROB_EPS = 1e-4          # CenterNet / CenterPoint clamp of the heatmap probability


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    # AMP hands us fp16 / bf16 logits: log(1 - p) near the clamp needs fp32 to stay accurate
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def focal_heatmap_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0,
                       beta: float = 4.0) -> torch.Tensor:
    """CenterNet / CornerNet penalty-reduced pixel-wise focal loss (CenterNet ``_neg_loss``).

    logits, target: (B, C, H, W); target holds Gaussians with peaks exactly 1. With p =
    clamp(sigmoid(logits), 1e-4, 1 - 1e-4), positives are pixels with target == 1:
    ``loss = -(sum (1-p)^a ln p  [pos]  +  sum (1-Y)^b p^a ln(1-p)  [neg]) / N_pos`` where N_pos counts
    positives over the whole batch; with no positive at all the negative sum is returned un-normalised.
    """
    if logits.shape != target.shape:
        raise ValueError(f"heatmap logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    logits = _at_least_fp32(logits)
    target = target.to(logits.dtype)
    p = torch.sigmoid(logits).clamp(_PROB_EPS, 1.0 - _PROB_EPS)
    pos = target.eq(1).to(p.dtype)
    neg = target.lt(1).to(p.dtype)
    pos_sum = (torch.log(p) * (1 - p).pow(alpha) * pos).sum()
    neg_sum = (torch.log(1 - p) * p.pow(alpha) * (1 - target).pow(beta) * neg).sum()
    # N == 0 -> pos_sum == 0, so dividing by max(N, 1) gives the un-normalised negative sum, no branch
    return -(pos_sum + neg_sum) / pos.sum().clamp_min(1.0)


def reg_l1_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked L1 on the box regression at object centre cells.

    pred, target: (B, D, H, W); mask: (B, H, W), 1 at centre cells. CenterNet ``RegL1Loss``
    normalisation: sum of |pred - target| over masked pixels and all D channels, divided by
    ``num_masked * D + 1e-4`` (a per-element mean). With no objects it is 0 and still part of the graph.
    """
    if pred.shape != target.shape or pred.shape[:1] + pred.shape[2:] != mask.shape:
        raise ValueError(f"bbox_reg {tuple(pred.shape)}, target {tuple(target.shape)} and reg_mask "
                         f"{tuple(mask.shape)} do not match ((B,D,H,W), (B,D,H,W), (B,H,W))")
    pred = _at_least_fp32(pred)
    m = mask.to(pred.dtype).unsqueeze(1)                                   # (B, 1, H, W)
    abs_err = (torch.abs(pred - target.to(pred.dtype)) * m).sum()
    return abs_err / (m.sum() * pred.shape[1] + 1e-4)


def semantic_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                  ignore_index: int = 255, kind: str = "ce", gamma: float = 2.0) -> torch.Tensor:
    """Per-pixel semantic loss; logits (B, C, H, W), target (B, H, W) int64 with ``ignore_index``.

    ``kind="ce"``: cross-entropy with class ``weight`` (C,), exactly ``F.cross_entropy`` (weighted mean:
    sum w[t]·nll / sum w[t] over non-ignored pixels). ``kind="focal"``: the same with each pixel's nll
    scaled by (1 - p_t)^gamma, normalised the same way, so gamma = 0 is CE. If every pixel is ignored the
    loss is 0 (F.cross_entropy would give NaN).
    """
    if logits.dim() != 4 or target.dim() != 3 or logits.shape[0] != target.shape[0]:
        raise ValueError(f"sem_logits must be (B,C,H,W) and semantic (B,H,W); got {tuple(logits.shape)} "
                         f"and {tuple(target.shape)}")
    if logits.shape[2:] != target.shape[1:]:
        raise ValueError(f"sem_logits spatial size {tuple(logits.shape[2:])} != semantic target size "
                         f"{tuple(target.shape[1:])} (no silent resize: fix the model or the dataset image_hw)")
    if kind not in ("ce", "focal"):
        raise ValueError(f"semantic loss kind must be 'ce' or 'focal', got {kind!r}")
    logits = _at_least_fp32(logits)
    target = target.long()
    nll = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")   # (B, H, W), 0 if ignored
    valid = target.ne(ignore_index)
    if weight is None:
        w = valid.to(logits.dtype)
    else:
        w = weight.to(logits)[torch.where(valid, target, 0)] * valid       # (B, H, W)
    if kind == "focal":
        nll = (1 - torch.exp(-nll)).pow(gamma) * nll
    # where every weight is 0 the numerator is exactly 0 too, so the clamp only avoids 0/0
    return (w * nll).sum() / w.sum().clamp_min(1e-12)


def compute_losses(outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor], loss_cfg: LossConfig,
                   sem_weights: torch.Tensor | None = None, ignore_index: int = 255) -> dict[str, torch.Tensor]:
    """Weighted loss terms ``{"hm": λ_hm·focal, "reg": λ_reg·L1, "sem": λ_sem·semantic}`` (the loop sums them).

    outputs: ``bbox_heatmap`` logits (B, n_det, Hh, Wh), ``bbox_reg`` (B, 8, Hh, Wh), ``sem_logits``
    (B, n_sem, H, W). batch: ``heatmap``, ``reg``, ``reg_mask``, ``semantic`` (see docs/DEVELOPING.md).
    """
    hm = focal_heatmap_loss(outputs["bbox_heatmap"], batch["heatmap"], loss_cfg.focal_alpha, loss_cfg.focal_beta)
    reg = reg_l1_loss(outputs["bbox_reg"], batch["reg"], batch["reg_mask"])
    sem = semantic_loss(outputs["sem_logits"], batch["semantic"], weight=sem_weights, ignore_index=ignore_index,
                        kind=loss_cfg.sem_loss, gamma=loss_cfg.sem_focal_gamma)
    return {"hm": loss_cfg.lambda_hm * hm, "reg": loss_cfg.lambda_reg * reg, "sem": loss_cfg.lambda_sem * sem}


__all__ = ["compute_losses", "focal_heatmap_loss", "reg_l1_loss", "semantic_loss"]
