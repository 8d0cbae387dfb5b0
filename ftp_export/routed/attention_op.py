"""Prefill attention with its signal as one PyTorch custom op, ``torch.ops.ftp_export.attention``,
for graphs compiled by Inductor (the compile target's AOTInductor packages).

Traced into the graph, a routed block's attention materialises its scores over every key and
makes separate passes for the mask, the softmax and the column-sum signal; Inductor's code for it
ran about 1.6x slower per query row than ATen's fused CPU flash kernel that the dense Hugging Face
model gets (docs/performance.md). Behind this op the compiled graph runs exactly what eager PyTorch
runs (:func:`~ftp_export.routed.attention.attend` outside tracing): on the CPU query chunks
against only the keys up to their last query, fused SDPA for a block without a signal, and on
CUDA the Triton kernel of :mod:`ftp_export.kernels.attention_signal`. Same arithmetic, so the
parity of the packages and the routing are unchanged.

The op's kernel is Python: a package that calls it runs where ``ftp_export`` is importable
(``AotiRuntime`` imports this module; a script loading the ``.pt2`` itself does
``import ftp_export.routed.attention_op`` first). ``ftp-export --target compile
--aoti-attention graph`` traces attention into the graph instead, for packages that load from
C++ without Python.
"""

from __future__ import annotations

import torch

from ftp_export.routed.attention import attend

OP = "ftp_export::attention"


@torch.library.custom_op(OP, mutates_args=())
def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    allowed: torch.Tensor,
    q_index: torch.Tensor,
    col_weight: torch.Tensor | None,
    scaling: float,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~ftp_export.routed.attention.attend` without ``own``: output [G, Q, H*Dh] and the
    column sums [G, S] (float32; [G, 0] without ``col_weight``)."""
    out, colsum, _ = attend(q, k, v, allowed, scaling, q_index, col_weight, False, causal)
    if colsum is None:
        colsum = q.new_empty(q.shape[0], 0, dtype=torch.float32)
    return out.contiguous(), colsum


@attention.register_fake
def _(q, k, v, allowed, q_index, col_weight, scaling, causal):
    g, n_heads, nq, dh = q.shape
    cols = 0 if col_weight is None else k.shape[2]
    return q.new_empty(g, nq, n_heads * dh), q.new_empty(g, cols, dtype=torch.float32)


def attend_traced(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    allowed: torch.Tensor,
    scaling: float,
    q_index: torch.Tensor,
    col_weight: torch.Tensor | None,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, None]:
    """:func:`~ftp_export.routed.attention.attend`'s result (without ``own``) as one op node, for a
    graph being traced."""
    out, colsum = attention(q, k, v, allowed, q_index, col_weight, scaling, causal)
    return out, (colsum if col_weight is not None else None), None
