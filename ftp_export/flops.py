"""FLOPs of a Llama-family decoder, dense and routed: linear layers only, or every matmul.

Per token, a block's linear layers cost ``2 * in * out`` FLOPs each: q and o (hidden x heads*head_dim),
k and v (hidden x kv_heads*head_dim, GQA), gate, up and down (hidden x intermediate). Attention
score/value products, norms and the LM head are not counted. In a routed block a skipped token
still pays the K/V projections (it writes the KV cache), so only q, o and the MLP scale with the
keep ratio ``1 - s_b``. A dropped block (``s_b = 1``) costs nothing: no query reads its cache.

:func:`routed_matmul_flop_ratio` counts every matmul of one call instead: the linear layers as
above, the attention score/value products of the kept queries and the LM head (not routed).
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


def attention_flops_per_query(config: Any, keys: int) -> int:
    """Attention score and value products of one query against ``keys`` keys, all heads:
    ``2 * heads * head_dim * keys`` for Q K^T and as much again for P V."""
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or int(config.hidden_size) // heads)
    return 2 * 2 * heads * head_dim * int(keys)


def lm_head_flops(config: Any) -> int:
    """The LM head's FLOPs for one row of logits (``hidden x vocab``)."""
    return 2 * int(config.hidden_size) * int(config.vocab_size)


def call_matmul_flops(config: Any, block_sparsity: list[float], new_tokens: int, keys: int, logits_rows: int) -> float:
    """Every matmul of one forward call of one sequence: per block, the K/V projections of all
    ``new_tokens``, and for the kept fraction ``1 - s_b`` of them the q/o projections, the MLP and
    the attention products against ``keys`` keys (counted as computed: every key of the context,
    masked keys included, as the exported graphs do); plus the LM head over ``logits_rows`` rows.
    Routers (385 parameters a block), norms, softmax and RoPE are not counted. Dense:
    ``block_sparsity`` all 0. A dropped block (``s_b = 1``) costs nothing."""
    f = block_linear_flops(config)
    attn = attention_flops_per_query(config, keys)
    blocks = sum(0.0 if dropped_sparsity(s) else new_tokens * (f.kv + (1.0 - s) * (f.rest + attn)) for s in block_sparsity)
    return blocks + logits_rows * lm_head_flops(config)


def routed_matmul_flop_ratio(config: Any, block_sparsity: list[float], new_tokens: int, keys: int, logits_rows: int) -> float:
    """Dense / routed :func:`call_matmul_flops` of one call (> 1 means the routed model is cheaper):
    the ideal speedup counting attention and the LM head, which :func:`routed_linear_flop_ratio`
    leaves out. Prefill of T tokens returning the last position's logits: ``(T, T, 1)``; a decode
    step at a context of n tokens: ``(1, n, 1)``."""
    n = int(config.num_hidden_layers)
    if len(block_sparsity) != n:
        raise ValueError(f"{len(block_sparsity)} sparsities for {n} blocks")
    dense = call_matmul_flops(config, [0.0] * n, new_tokens, keys, logits_rows)
    return dense / call_matmul_flops(config, block_sparsity, new_tokens, keys, logits_rows)
