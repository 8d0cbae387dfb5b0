"""Attention of a decode block's kept rows, each against its own sequence's cache in place.

A decode block computes the rows its threshold keeps (flat rows ``b * T + t`` of the call), and
attention runs for the call's rows against their own caches as the dense model does (gathering a
kept row's cache would copy it first): when some row of the call is kept, every row of the call
projects its query and attends (a row that is not kept has a result that is never read; its query
projection is about a tenth of its block's linear FLOPs at the SmolLM2 shape). When the block keeps no
row at all, nothing runs: the normed rows, cos/sin, mask and cache indices are sliced to zero
positions (a slice whose end is data dependent, one node each, where an ``If`` around attention
cost more than it saved in onnxruntime: docs/performance.md). So a skipped token of a one-row
step (plain generation) costs its block only the K/V projection and the router.

The TensorRT and AOTInductor graphs attend with every row (their lowering's
``empty_decode_attention`` is False: zero-size attention is untested in TensorRT engines, and
Inductor cannot lower the reshapes of a data-dependent query count); the kept rows' results are
the same. They project the kept rows' queries and scatter them into zeros.
"""

from __future__ import annotations

from typing import Any

import torch

from ftp_export.routed.attention import attend
from ftp_export.routed.block import query_states, rotated_heads
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
    says whether a block with no kept row skips attention (then the call's rows are the queries)
    or not (the kept rows' queries are scattered into zeros)."""
    bsz, seq = x.shape[:2]
    q_index, (allowed, bias), cos, sin = call.all_tok + call.past, mask, call.cos, call.sin
    empty = lowering.empty_decode_attention
    if empty:  # every position when some row is kept, none otherwise
        end = torch.sym_min(flat.shape[0], 1) * seq
        x, cos, sin, allowed, bias, q_index = (t[:, :end] for t in (x, cos, sin, allowed, bias, q_index))
        q = query_states(layer, x, cos, sin, head_dim)
    else:
        q_rows = layer.self_attn.q_proj(_row_view(x).index_select(0, flat)).squeeze(1)
        q = rotated_heads(lowering.row_scatter(q_rows.new_zeros(bsz, seq, q_rows.shape[-1]), q_rows, flat), cos, sin, head_dim)
    out, _, own_w = attend(q, keys, values, allowed, scaling, q_index, own=own, bias=bias, decode=True)
    if empty and own_w is not None:
        own_w = torch.nn.functional.pad(own_w, (0, seq - end))
    return _row_view(out).index_select(0, flat), own_w


def _row_view(t: torch.Tensor) -> torch.Tensor:
    """``t`` [B, T, D] as [B*T, 1, D]. The -1 keeps the shape a constant in the graph (a size
    computed from B and T is a Shape/Gather/Concat chain per use: a decode step's cost at batch 1)."""
    return t.reshape(-1, 1, t.shape[-1])
