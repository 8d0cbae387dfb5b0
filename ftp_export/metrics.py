"""Held-out metrics on next-token prediction: loss, perplexity, KL to the dense model.

``mask`` [B, T] marks real tokens (1) as in Hugging Face's attention mask; position t predicts
token t + 1 and counts when both are real tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _target_mask(input_ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        mask = torch.ones_like(input_ids)
    m = mask.to(torch.bool)
    return m[:, :-1] & m[:, 1:]


def causal_lm_nll(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[float, int]:
    """(summed next-token NLL, number of predicted tokens), in float64."""
    m = _target_mask(input_ids, mask)
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return float(nll[m].double().sum()), int(m.sum())


def causal_lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over real tokens (differentiable)."""
    m = _target_mask(input_ids, mask)
    ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), input_ids[:, 1:], reduction="none")
    return (ce * m).sum() / m.sum().clamp(min=1)


def perplexity(nll_sum: float, count: int) -> float:
    """exp(mean NLL) from :func:`causal_lm_nll` sums."""
    return math.exp(nll_sum / max(count, 1))


def kl_per_token(logits: torch.Tensor, dense_logits: torch.Tensor) -> torch.Tensor:
    """KL(dense || routed) per position [B, T], in float32 (differentiable in ``logits``)."""
    logq = F.log_softmax(logits.float(), dim=-1)
    logp = F.log_softmax(dense_logits.float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def kl_to_dense(logits: torch.Tensor, dense_logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean KL(dense || routed) over real token positions (a scalar tensor)."""
    kl = kl_per_token(logits, dense_logits)
    if mask is None:
        return kl.mean()
    m = mask.to(kl.dtype)
    return (kl * m).sum() / m.sum().clamp(min=1)
