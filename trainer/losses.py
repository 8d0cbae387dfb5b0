"""Router-training losses (defaults in :data:`DEFAULT_WEIGHTS`).

- distillation: KL(dense || routed) of next-token distributions, mean over real tokens;
- guide: BCE between each routed block's relaxed keep probability
  ``sigmoid((score - tau) / temperature)`` (tau = the top-k cut, the same relaxation as the
  soft gate's gradient) and the static router's hard top-k decision for that block;
- sparsity: per block, squared gap between the mean relaxed keep rate and ``1 - s_b``.

Default weights: distill 1.0 (the objective), guide 0.1 (a weak pull toward the static solution,
which is already good; 0.5 held the routers there and the distillation loss did not fall on a
trained 6-layer byte-level Llama), sparsity 1.0 (keeps the scores spread around the cut so the
relaxation stays informative).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ftp_export.metrics import kl_to_dense
from ftp_export.routing.selection import soft_topk_logit

DEFAULT_WEIGHTS = {"distill": 1.0, "guide": 0.1, "sparsity": 1.0}


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
