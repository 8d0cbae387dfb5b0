"""One decoder block computed for a subset of query rows, on the HF layer's own weights.

K and V are produced for *every* token of the call (skipped ones included: their incoming
hidden state after the input norm, RoPE at their own position), so the cache stays dense and
aligned with positions. Queries, attention output, o_proj and the MLP run only for the rows
handed in. Attention is :mod:`ftp_export.routed.attention`'s: it returns the router's attention
signal with the output.
A dropped block (sparsity 1) never gets here: no query reads its cache, so it projects nothing
(:class:`~ftp_export.routed.model.RoutedCausalLM` fills its cache slot with zeros).
"""

from __future__ import annotations

from typing import Any

import torch

from ftp_export.routed.attention import KeyMask, attend, attention_mask_for, tracing
from ftp_export.routed.attention_op import attend_traced


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` [G, heads, Q, Dh]; ``cos``/``sin`` [G, Q, Dh]."""
    cos = cos.unsqueeze(1)
    sin = sin.unsqueeze(1)
    return (x * cos) + (rotate_half(x) * sin)


def project_kv(layer: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K (with RoPE) and V for all tokens: ``x`` [B, T, D] normed -> [B, Hkv, T, Dh] each."""
    attn = layer.self_attn
    bsz, seq, _ = x.shape
    n_kv = attn.k_proj.out_features // head_dim
    k = attn.k_proj(x).view(bsz, seq, n_kv, head_dim).transpose(1, 2)
    v = attn.v_proj(x).view(bsz, seq, n_kv, head_dim).transpose(1, 2)
    return apply_rope(k, cos, sin), v


def zero_kv(layer: Any, x: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero K and V with :func:`project_kv`'s shapes, for ``x`` [B, T, D]: a dropped block's cache slot."""
    z = x.new_zeros(x.shape[0], layer.self_attn.k_proj.out_features // head_dim, x.shape[1], head_dim)
    return z, z


def query_mask(key_valid: torch.Tensor, q_index: torch.Tensor, window: int | None) -> torch.Tensor | KeyMask:
    """Allowed keys of queries at cache indices ``q_index`` [G, Q]: the [G, Q, S] tensor in a traced
    graph, a :class:`~ftp_export.routed.attention.KeyMask` in eager PyTorch (the CPU kernel reads
    it without the tensor; :func:`~ftp_export.routed.attention.attend` forms it where needed)."""
    if tracing():
        return attention_mask_for(key_valid, q_index, window)
    return KeyMask(key_valid, q_index, window)


def query_states(layer: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Rotated queries [G, H, Q, Dh] of normed rows ``x`` [G, Q, D] at ``cos``/``sin`` [G, Q, Dh]."""
    return rotated_heads(layer.self_attn.q_proj(x), cos, sin, head_dim)


def rotated_heads(q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Projected queries ``q`` [G, Q, H*Dh] as rotated heads [G, H, Q, Dh]."""
    q = q.view(q.shape[0], -1, q.shape[-1] // head_dim, head_dim).transpose(1, 2)  # -1: a graph's row count is data dependent
    return apply_rope(q, cos, sin)


def finish_rows(layer: Any, rows: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    """The rest of the block for residual ``rows`` [..., D] and their attention output [..., H*Dh]:
    o_proj, residual, MLP, residual."""
    h = rows + layer.self_attn.o_proj(attn_out)
    return h + layer.mlp(layer.post_attention_layernorm(h))


def compute_rows(
    layer: Any,
    rows: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    allowed: torch.Tensor | KeyMask,
    q_index: torch.Tensor,
    head_dim: int,
    scaling: float,
    col_weight: torch.Tensor | None = None,
    own: bool = False,
    causal: bool = False,
    normed: torch.Tensor | None = None,
    op: bool = False,
    decode: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Run the block (attention + MLP, residuals) for ``rows`` [G, Q, D] at cache indices
    ``q_index`` [G, Q] against ``keys``/``values`` [G, Hkv, S, Dh]. Returns new rows [G, Q, D] and
    the attention signal :func:`~ftp_export.routed.attention.attend` was asked for: weighted
    column sums [G, S] (``col_weight``) or each query's weight on itself [G, Q] (``own``);
    ``causal``: ``allowed`` is exactly the lower triangle (attend's fast path). ``normed``: the
    rows after the input norm when the caller has them already (the norm is per row, so rows
    gathered from the normed call equal the gathered rows normed). ``op``: traced attention is the
    ``ftp_export::attention`` custom op (the lowering's ``attention_op``). ``decode``: the rows are
    a decode step's (:func:`~ftp_export.routed.attention.attend`)."""
    x = layer.input_layernorm(rows) if normed is None else normed
    q = query_states(layer, x, cos, sin, head_dim)
    if op and not own and tracing():
        out, colsum, own_w = attend_traced(q, keys, values, allowed, scaling, q_index, col_weight, causal)
    else:
        out, colsum, own_w = attend(q, keys, values, allowed, scaling, q_index, col_weight, own, causal, decode=decode)
    return finish_rows(layer, rows, out), colsum, own_w
