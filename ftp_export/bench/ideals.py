"""The two ideal speedups every bench row sits beside (dense / routed FLOPs, :mod:`ftp_export.flops`):
linear layers only, and every matmul (attention products and the LM head too). One place for
every runtime's bench, so their rows mean the same thing."""

from __future__ import annotations

from typing import Any

from ftp_export.flops import routed_linear_flop_ratio, routed_matmul_flop_ratio
from ftp_export.routing.sparsity import dropped_sparsity


def prefill_ideals(config: Any, block_sparsity: list[float], seq: int, logits: str) -> tuple[float, float]:
    """(linear, all-matmul) of a ``seq``-token prefill at the scheduled sparsities; ``logits``
    'last' runs the LM head on one row, 'all' on every token."""
    rows = 1 if logits == "last" else seq
    return routed_linear_flop_ratio(config, block_sparsity), routed_matmul_flop_ratio(config, block_sparsity, seq, seq, rows)


def realised_sparsity(block_sparsity: list[float], per_block: dict[int, float]) -> list[float]:
    """Each block's decode skip rate for the ideals: measured for a routed block, 1 for a dropped
    block, 0 for a dense one."""
    return [per_block.get(b, 1.0 if dropped_sparsity(s) else 0.0) for b, s in enumerate(block_sparsity)]


def decode_ideals(config: Any, block_sparsity: list[float], per_block: dict[int, float], context: int, steps: int) -> tuple[float, float]:
    """(linear, all-matmul) of one decode step at the realised per-block skip rates ``per_block``,
    against the mean key count of ``steps`` steps after ``context`` tokens."""
    realised = realised_sparsity(block_sparsity, per_block)
    return routed_linear_flop_ratio(config, realised), routed_matmul_flop_ratio(config, realised, 1, context + (steps + 1) // 2, 1)
