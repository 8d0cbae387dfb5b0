"""Router-training losses (defaults in :data:`DEFAULT_WEIGHTS`).

- distillation: KL(dense || routed) of next-token distributions, mean over real tokens;
- guide: BCE between each routed block's relaxed keep probability
  ``sigmoid((score - tau) / temperature)`` (tau = the top-k cut, the same relaxation as the
  soft gate's gradient) and the static router's hard top-k decision for that block;
- sparsity: per block, squared gap between the mean relaxed keep rate and ``1 - s_b``.

Default weights: distill 1.0 (the objective), guide 0.01, sparsity 0.1, with router lr 3e-3.
Measured on the embedded 6-block model at sparsity 0.4 (held-out KL to dense after the full
pipeline): guide 0.1 / sparsity 1.0 / lr 1e-2 gave 0.798 (worse than GA + static routers, 0.697:
the guide term's logits grow with the score scale and dominate); guide 0 / lr 1e-3 gave 0.728;
guide 0.01 / sparsity 0.1 / lr 3e-3 gave 0.655, the best routed row. None of these trained
routers beat the static ones on the calibration windows' hard-routed KL, so router training now
keeps the best routers it scores (``--select-every``); on that model it keeps the starting ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ftp_export.evaluation.metrics import kl_to_dense
from ftp_export.routing.selection import soft_topk_logit

DEFAULT_WEIGHTS = {"distill": 1.0, "guide": 0.01, "sparsity": 0.1}


def distill_loss(logits: torch.Tensor, dense_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return kl_to_dense(logits, dense_logits, mask)


relaxed_logit = soft_topk_logit  # the one definition lives in ftp_export.routing.selection


def guide_loss(logit: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """BCE of the relaxed keep probability toward the static router's 0/1 decisions."""
    bce = F.binary_cross_entropy_with_logits(logit, target.float(), reduction="none")
    v = valid.float()
    return (bce * v).sum() / v.sum().clamp(min=1)


def sparsity_loss(logit: torch.Tensor, valid: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    v = valid.float()
    rate = (torch.sigmoid(logit) * v).sum() / v.sum().clamp(min=1)
    return (rate - keep_ratio) ** 2
