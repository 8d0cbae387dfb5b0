"""Linear-layer FLOPs of a Llama-family decoder block, dense and routed.

Per token, a block's linear layers cost ``2 * in * out`` FLOPs each: q and o (hidden x heads*head_dim),
k and v (hidden x kv_heads*head_dim, GQA), gate, up and down (hidden x intermediate). Attention
score/value products, norms and the LM head are not counted. In a routed block a skipped token
still pays the K/V projections (it writes the KV cache), so only q, o and the MLP scale with the
keep ratio ``1 - s_b``. A dropped block (``s_b = 1``) costs nothing: no query reads its cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ftp_export.schedule import dropped_sparsity


@dataclass(frozen=True)
class BlockFlops:
    """Per-token linear FLOPs of one block, split into the K/V part and the routed rest."""

    kv: int
    rest: int

    @property
    def total(self) -> int:
        return self.kv + self.rest


def block_linear_flops(config: Any) -> BlockFlops:
    """Per-token linear FLOPs of one decoder block for ``config`` (GQA shapes)."""
    hidden = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    inter = int(config.intermediate_size)
    q = o = 2 * hidden * heads * head_dim
    k = v = 2 * hidden * kv_heads * head_dim
    mlp = 3 * 2 * hidden * inter
    return BlockFlops(kv=k + v, rest=q + o + mlp)


def routed_linear_flops(config: Any, block_sparsity: list[float]) -> float:
    """Per-token linear FLOPs of all blocks when block b computes a fraction ``1 - s_b`` of tokens."""
    f = block_linear_flops(config)
    return sum(0.0 if dropped_sparsity(s) else f.kv + (1.0 - s) * f.rest for s in block_sparsity)


def dense_linear_flops(config: Any) -> int:
    """Per-token linear FLOPs of all decoder blocks, every token computed."""
    return int(config.num_hidden_layers) * block_linear_flops(config).total


def routed_linear_flop_ratio(config: Any, block_sparsity: list[float]) -> float:
    """Dense / routed linear FLOPs (> 1 means the routed model is cheaper)."""
    if len(block_sparsity) != int(config.num_hidden_layers):
        raise ValueError(f"{len(block_sparsity)} sparsities for {config.num_hidden_layers} blocks")
    return dense_linear_flops(config) / routed_linear_flops(config, block_sparsity)
