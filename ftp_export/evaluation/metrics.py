"""Held-out metrics on next-token prediction: NLL, perplexity, KL to the dense model.

``mask`` [B, T] marks real tokens (1) as in Hugging Face's attention mask; position t predicts
token t + 1 and counts when both are real tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm


def causal_lm_nll(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[float, int]:
    """(summed next-token NLL, number of predicted tokens), in float64."""
    m = (torch.ones_like(input_ids) if mask is None else mask).to(torch.bool)
    m = m[:, :-1] & m[:, 1:]
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return float(nll[m].double().sum()), int(m.sum())


@torch.no_grad()
def perplexity(
    forward: Callable[[torch.Tensor], torch.Tensor],
    windows: torch.Tensor,
    batch_size: int = 4,
    *,
    reference: torch.Tensor | None = None,
    device: str | torch.device | None = None,
    desc: str | None = None,
) -> dict[str, float]:
    """Token-level perplexity of ``forward(ids) -> logits`` on ``windows`` [N, L] (every token
    after the first is predicted): ``perplexity``, ``nll_per_token`` and ``tokens``; given
    ``reference`` (dense logits [N, L, V]) also ``kl_to_dense``, the mean KL(dense || forward)
    per position. Batches go to ``device`` when given; ``desc`` shows a progress bar."""
    nll, count, kl_sum, kl_count = 0.0, 0, 0.0, 0
    for start in tqdm(range(0, len(windows), batch_size), desc=desc, disable=desc is None, leave=False, dynamic_ncols=True):
        ids = windows[start : start + batch_size]
        ids = ids if device is None else ids.to(device)
        logits = forward(ids)
        s, c = causal_lm_nll(logits, ids)
        nll, count = nll + s, count + c
        if reference is not None:
            kl = kl_per_token(logits, reference[start : start + batch_size])
            kl_sum, kl_count = kl_sum + float(kl.double().sum()), kl_count + kl.numel()
    out = {"perplexity": math.exp(nll / max(count, 1)), "nll_per_token": nll / max(count, 1), "tokens": count}
    if reference is not None:
        out["kl_to_dense"] = kl_sum / max(kl_count, 1)
    return out


@torch.no_grad()
def token_nll(
    forward: Callable[[torch.Tensor], torch.Tensor],
    windows: torch.Tensor,
    batch_size: int = 4,
    *,
    device: str | torch.device | None = None,
    desc: str | None = None,
) -> torch.Tensor:
    """Next-token NLL at every position of ``windows`` [N, L] under ``forward(ids) -> logits``:
    [N, L - 1] float64, column t = -log p(token t + 1 | tokens <= t). Summing columns gives
    per-window NLLs, the unit the evaluation's bootstrap resamples."""
    out = []
    for start in tqdm(range(0, len(windows), batch_size), desc=desc, disable=desc is None, leave=False, dynamic_ncols=True):
        ids = windows[start : start + batch_size]
        ids = ids if device is None else ids.to(device)
        logp = F.log_softmax(forward(ids)[:, :-1].float(), dim=-1)
        out.append(-logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1).double().cpu())
    return torch.cat(out) if out else torch.zeros(0, max(windows.shape[-1] - 1, 0), dtype=torch.float64)


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
