"""How gather/scatter of token rows are lowered: the only thing export targets change.

:class:`TorchLowering` uses plain torch ops (exported as standard ONNX Gather/ScatterElements/
NonZero/ScatterND). The ``trt`` target swaps in custom ops that export as ``ftp`` domain nodes
with the same semantics (:mod:`ftp_export.trt.custom_ops`).

``decode`` says how a decode (threshold) block is lowered:

- ``"dynamic"`` (default): the kept tokens are gathered into N rows (N data dependent: NonZero, or
  TensorRT's size tensor), computed, and scattered back; ``routing.N.rows`` lists them ([N]).
- ``"static"``: every one of the B*T rows runs the block and a device-side mask keeps the computed
  row or the incoming one (``where(keep, out, h)``): fixed shapes, no gather, scatter, NonZero or size
  tensor, so no host sync per block and CUDA graphs are possible, at the cost of computing the skipped
  rows. ``routing.N.rows`` is then [B*T]: the flat index where kept, -1 where skipped (parity drops
  the -1 entries). K/V are projected for every token in both (docs/routing.md), so the present cache,
  the logits and the routing are those of the dynamic lowering.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ftp_export.routing.selection import threshold_select, topk_select

DECODE_LOWERINGS = ("dynamic", "static")


class Lowering(Protocol):
    decode: str  # one of DECODE_LOWERINGS
    # a dynamic decode block that keeps no row runs no attention (ftp_export/routed/decode_rows.py)
    empty_decode_attention: bool
    # traced prefill attention is the ftp_export::attention custom op (routed/attention_op.py)
    attention_op: bool

    def topk_gather(
        self, hidden: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor, q16: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> gathered [B, K, D], indices [B, K] int64 ascending, active [B, K] bool."""
        ...

    def topk_scatter(
        self, residual: torch.Tensor, rows: torch.Tensor, indices: torch.Tensor, active: torch.Tensor
    ) -> torch.Tensor:
        """-> residual with active rows written back at their indices."""
        ...

    def threshold_gather(
        self, hidden: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor, threshold: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> gathered [N, D], flat row indices [N] int64 ascending."""
        ...

    def row_scatter(self, residual: torch.Tensor, rows_data: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """-> residual with flat rows replaced."""
        ...

    def query_count(self, indices: torch.Tensor, weight: torch.Tensor, seq_len: int) -> torch.Tensor:
        """:func:`~ftp_export.routing.factors.query_count` for queries at distinct token indices."""
        ...


def check_decode_lowering(decode: str) -> str:
    if decode not in DECODE_LOWERINGS:
        raise ValueError(f"decode lowering {decode!r}: expected one of {', '.join(DECODE_LOWERINGS)}")
    return decode


def suffix_count(w: torch.Tensor) -> torch.Tensor:
    """``sum over t' >= t of w[:, t']`` [B, T]. With ``w`` a weight per token, how many weighted
    queries can see token t (:func:`~ftp_export.routing.factors.query_count` without its [B, Q, T]
    comparison). Exact for 0/1 weights (integer sums below 2^24)."""
    return w.sum(-1, keepdim=True) - torch.cumsum(w, dim=-1) + w


def flat_rows(indices: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Per-row token indices [B, K] -> flat row indices ``b * T + t`` [B*K] of a [B*T, D] view."""
    offsets = torch.arange(indices.shape[0], device=indices.device).unsqueeze(-1) * seq_len
    return (indices + offsets).reshape(-1)


def take_rows(t: torch.Tensor, flat: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Rows ``flat`` of ``t`` [B, T, D] viewed as [B*T, D], shaped [*shape, D]."""
    return t.reshape(-1, t.shape[-1]).index_select(0, flat).view(*shape, t.shape[-1])


class TorchLowering:
    """Reference lowering in standard torch ops. Rows move whole: a [B*T, D] view is indexed by
    flat row (ONNX Gather / ScatterND on axis 0), not element by element (GatherElements /
    ScatterElements with a [B, K, D] int64 index, which cost onnxruntime 3-4% of a prefill)."""

    def __init__(self, decode: str = "dynamic", empty_decode_attention: bool = True, attention_op: bool = False) -> None:
        self.decode = check_decode_lowering(decode)
        # False for AOTInductor: Inductor cannot lower the reshapes of a data-dependent query count
        self.empty_decode_attention = empty_decode_attention
        # True for AOTInductor packages that may call Python (the compile target's default)
        self.attention_op = attention_op

    def topk_gather(self, hidden, scores, valid, q16):
        indices, active = topk_select(scores, valid, q16)
        return take_rows(hidden, flat_rows(indices, hidden.shape[1]), indices.shape), indices, active

    def topk_scatter(self, residual, rows, indices, active):
        b, t, d = residual.shape
        flat = flat_rows(indices, t)
        base = residual.reshape(b * t, d)
        # inactive slots (padding rows' surplus) write their old row back: the scatter has no duplicates
        src = torch.where(active.reshape(-1, 1), rows.reshape(-1, d), base.index_select(0, flat))
        return base.index_copy(0, flat, src).view(b, t, d)

    def threshold_gather(self, hidden, scores, valid, threshold):
        rows = threshold_select(scores, valid, threshold)
        flat = hidden.reshape(-1, hidden.shape[-1])
        return torch.index_select(flat, 0, rows), rows

    def row_scatter(self, residual, rows_data, rows):
        flat = residual.reshape(-1, residual.shape[-1])
        return flat.index_copy(0, rows, rows_data).reshape(residual.shape)

    def query_count(self, indices, weight, seq_len):
        # the weights scattered to their tokens (indices are distinct), then summed from the end
        flags = weight.new_zeros(weight.shape[0], seq_len).scatter(1, indices, weight)
        return suffix_count(flags)
