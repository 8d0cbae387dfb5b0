"""The four router input factors, defined once (docs/routing.md has the same text).

For every token t of the current forward call (prefill: the prompt; decode: the new tokens)
and block b, with ``n_ctx`` = number of valid tokens in the whole context (past + current) in
prefill, and in decode the number of valid tokens up to and including t (t's own context
length, so that a call of several new tokens routes each as if it were decoded alone):

1. ``position``  = position_id(t) / n_ctx, in [0, 1).
2. ``attention`` = log1p(a_t * n_ctx), where a_t is the *attention signal*: the mean, over
   heads and over the computed queries of the most recent computed block that can see t
   (causal: query position >= t's position), of the softmax probability those queries put on
   t. Dividing by the number of such queries is the causal correction (early tokens are seen
   by more queries). Multiplying by n_ctx makes uniform attention 1 for every length. If no
   computed query of the previous block could see t, its signal is carried over from the
   block before (block 0 is dense, so every token has one; a routed block 0 sees 0).
   In decode the only query counted is t's own (its weight on itself), so a token's factors
   never depend on tokens after it.
3. ``attention_rank`` = rank of the attention factor among the call's valid tokens (0 = most
   attended; ranked with :func:`~ftp_export.routing.selection.order_key`) divided by the number
   of valid tokens in the call. Always 0 in decode.
4. ``sparsity``  = the block's scheduled sparsity s_b.

All factors are float32 whatever the model dtype, so every runtime scores identically.
"""

from __future__ import annotations

import torch

from ftp_export.routing.selection import order_key

FEATURES: tuple[str, ...] = ("position", "attention", "attention_rank", "sparsity")


def router_features(
    signal: torch.Tensor,
    position_ids: torch.Tensor,
    n_ctx: torch.Tensor,
    valid: torch.Tensor,
    sparsity: float,
    rank: bool = True,
) -> torch.Tensor:
    """Stack the four factors: ``signal`` [B, T], ``position_ids`` [B, T], ``n_ctx`` [B] (one
    context length per row, prefill) or [B, T] (per token, decode) -> [B, T, 4]. ``rank=False``
    (decode) makes the rank factor 0."""
    n = torch.clamp(n_ctx, min=1).to(torch.float32)
    n = n.unsqueeze(-1) if n.dim() == 1 else n
    position = position_ids.to(torch.float32) / n
    attention = torch.log1p(signal.to(torch.float32) * n)
    sp = torch.full_like(position, float(sparsity))
    if not rank:
        return torch.stack([position, attention, torch.zeros_like(position), sp], dim=-1)
    seq_len = signal.shape[-1]
    # rank by the attention factor with the same unique key as token selection
    order = torch.topk(order_key(attention, valid), seq_len, dim=-1, largest=True, sorted=True).indices
    ranks = torch.arange(seq_len, device=signal.device, dtype=torch.float32).unsqueeze(0).expand_as(attention)
    token_rank = torch.zeros_like(attention).scatter(1, order, ranks)
    n_call = torch.clamp(valid.sum(-1), min=1).to(torch.float32).unsqueeze(-1)
    return torch.stack([position, attention, token_rank / n_call, sp], dim=-1)


def query_count(q_token: torch.Tensor, q_weight: torch.Tensor, seq_len: int) -> torch.Tensor:
    """How many weighted queries can see each current token (causal: the query's token index
    within the call at or after the token's). ``q_token`` [G, Q] token index of each query within
    the call, ``q_weight`` [G, Q] 1 for a computed (active, valid) query, else 0 (soft mode: the
    gate) -> [G, seq_len]. The attention signal's sum is the attention's column sum
    (:func:`ftp_export.routed.attention.attend`); its mean divides by this count."""
    tok = torch.arange(seq_len, device=q_token.device).view(1, 1, seq_len)
    sees = (q_token.unsqueeze(-1) >= tok).to(torch.float32)
    return torch.einsum("gq,gqt->gt", q_weight.to(torch.float32), sees)


def update_signal(signal: torch.Tensor, total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Mean received attention where some computed query saw the token, else the carried signal.
    ``count`` is a query count per token, or (decode) a bool mask of the tokens computed, each its
    own only query: the mean is then ``total`` itself, in one Where."""
    if count.dtype == torch.bool:
        return torch.where(count, total, signal)
    mean = total / torch.clamp(count, min=1.0)
    return torch.where(count > 0, mean, signal)
