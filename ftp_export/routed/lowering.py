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


def check_decode_lowering(decode: str) -> str:
    if decode not in DECODE_LOWERINGS:
        raise ValueError(f"decode lowering {decode!r}: expected one of {', '.join(DECODE_LOWERINGS)}")
    return decode


class TorchLowering:
    """Reference lowering in standard torch ops."""

    def __init__(self, decode: str = "dynamic") -> None:
        self.decode = check_decode_lowering(decode)

    def topk_gather(self, hidden, scores, valid, q16):
        indices, active = topk_select(scores, valid, q16)
        idx = indices.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        return torch.gather(hidden, 1, idx), indices, active

    def topk_scatter(self, residual, rows, indices, active):
        idx = indices.unsqueeze(-1).expand(-1, -1, residual.shape[-1])
        keep_old = torch.gather(residual, 1, idx)
        src = torch.where(active.unsqueeze(-1), rows, keep_old)
        return residual.scatter(1, idx, src)

    def threshold_gather(self, hidden, scores, valid, threshold):
        rows = threshold_select(scores, valid, threshold)
        flat = hidden.reshape(-1, hidden.shape[-1])
        return torch.index_select(flat, 0, rows), rows

    def row_scatter(self, residual, rows_data, rows):
        flat = residual.reshape(-1, residual.shape[-1])
        return flat.index_copy(0, rows, rows_data).reshape(residual.shape)
