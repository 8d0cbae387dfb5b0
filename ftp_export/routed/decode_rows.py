"""Attention of a decode block's kept rows, each against its own sequence's cache in place.

A decode block computes the rows its threshold keeps (flat rows ``b * T + t`` of the call). Their
queries are scattered into zeros at their rows of the call, and attention runs for the call's
rows against their own caches as the dense model does (gathering a kept row's cache would copy it
first); a row that is not kept has a zero query whose result is never read. When the block keeps
no row at all, no query runs: the queries, mask and cache indices are sliced to zero positions
(a slice whose end is data dependent, one node each, where an ``If`` around attention cost more
than it saved in onnxruntime: docs/performance.md). So a skipped token of a one-row step (plain
generation) costs its block only the K/V projection and the router.

The TensorRT and AOTInductor graphs attend with every row (their lowering's
``empty_decode_attention`` is False: zero-size attention is untested in TensorRT engines, and
Inductor cannot lower the reshapes of a data-dependent query count); the kept rows' results are
the same.
"""

from __future__ import annotations

from typing import Any

import torch

from ftp_export.routed.attention import attend
from ftp_export.routed.block import apply_rope
from ftp_export.routed.lowering import Lowering


def attend_kept_rows(
    layer: Any,
    x: torch.Tensor,
    flat: torch.Tensor,
    call: Any,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: tuple[torch.Tensor, torch.Tensor],
    head_dim: int,
    scaling: float,
    lowering: Lowering,
    own: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention output [N, 1, H*Dh] of the kept flat rows ``flat`` [N] (ascending) of the normed
    call ``x`` [B, T, D], ``mask`` every token's allowed keys [B, T, S] and their additive bias
    (:func:`~ftp_export.routed.attention.mask_bias`, formed once per call); with ``own``, each token's
    head-mean weight on its own key [B, T] (only kept tokens' values are meaningful). The lowering
    scatters the queries and says whether a block with no kept row skips attention."""
    bsz, seq = x.shape[:2]
    q_rows = layer.self_attn.q_proj(_row_view(x).index_select(0, flat)).squeeze(1)
    n_heads = q_rows.shape[-1] // head_dim
    q = lowering.row_scatter(q_rows.new_zeros(bsz, seq, q_rows.shape[-1]), q_rows, flat)
    q = apply_rope(q.view(bsz, seq, n_heads, head_dim).transpose(1, 2), call.cos, call.sin)
    q_index = call.all_tok + call.past
    empty = lowering.empty_decode_attention
    allowed, bias = mask
    if empty:  # every position when some row is kept, none otherwise
        end = torch.sym_min(flat.shape[0], 1) * seq
        q, allowed, bias, q_index = q[:, :, :end], allowed[:, :end], bias[:, :end], q_index[:, :end]
    out, _, own_w = attend(q, keys, values, allowed, scaling, q_index, own=own, bias=bias)
    if empty and own_w is not None:
        own_w = torch.nn.functional.pad(own_w, (0, seq - end))
    return _row_view(out).index_select(0, flat), own_w


def _row_view(t: torch.Tensor) -> torch.Tensor:
    """``t`` [B, T, D] as [B*T, 1, D]. The -1 keeps the shape a constant in the graph (a size
    computed from B and T is a Shape/Gather/Concat chain per use: a decode step's cost at batch 1)."""
    return t.reshape(-1, 1, t.shape[-1])
