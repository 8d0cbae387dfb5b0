"""FLOPs of a Llama-family decoder, dense and routed: linear layers only, or every matmul.

Per token, a block's linear layers cost ``2 * in * out`` FLOPs each: q and o (hidden x heads*head_dim),
k and v (hidden x kv_heads*head_dim, GQA), gate, up and down (hidden x intermediate). Attention
score/value products, norms and the LM head are not counted. In a routed block a skipped token
still pays the K/V projections (it writes the KV cache), so only q, o and the MLP scale with the
keep ratio ``1 - s_b``. A dropped block (``s_b = 1``) costs nothing: no query reads its cache.

Routers: a routed block's router scores every token of the call, so it costs
:func:`router_flops` per token whatever the keep ratio (four factors: 640; a hidden-state router of
rank r over width D adds ``2 D r + 2 * 64 r``). Pass the schedule's ``routers`` to the functions
below to count them; without it the router is not counted. Reports and equal-FLOP comparisons
pass :func:`counted_routers` (hidden-state routers). :func:`check_router_budget` refuses a hidden-state router above
``ROUTER_BUDGET`` (0.5%) of its block's linear FLOPs.

:func:`routed_matmul_flop_ratio` counts every matmul of one call instead: the linear layers as
above, the attention score/value products of the kept queries and the LM head (not routed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ftp_export.errors import ScheduleError
from ftp_export.routing.sparsity import dropped_sparsity, routed_sparsity

ROUTER_BUDGET = 0.005  # a router may cost at most this share of its block's linear FLOPs per token


@dataclass(frozen=True)
class BlockFlops:
    """Per-token linear FLOPs of one block, split into the K/V part and the routed rest (q, o
    and the MLP; ``mlp`` is the MLP's part of it)."""

    kv: int
    rest: int
    mlp: int

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
    return BlockFlops(kv=k + v, rest=q + o + mlp, mlp=mlp)


def router_flops(routers: Any) -> int:
    """Per-token FLOPs of one block's router (``2 * in * out`` per linear layer, as the block's are)
    of a :class:`~ftp_export.routing.router.RouterBank`, its skip adapter included (counted on every
    token: the graphs compute it for all rows); 0 for None."""
    if routers is None:
        return 0
    from ftp_export.routing.factors import FEATURES

    hidden, rank = int(routers.hidden), int(routers.state_rank)
    return 2 * (len(FEATURES) + rank) * hidden + 2 * hidden + 2 * int(routers.state_size) * rank + adapter_flops(routers)


def counted_routers(routers: Any) -> Any:
    """The routers whose FLOPs the reported ratios (ftp-train's report, ftp-export eval) count:
    ``routers`` when they read the hidden state or carry a skip adapter, else None. The four-factor router (640 FLOPs per
    token, under 0.2% of a block of the embedded model) was never counted, and is still not, so
    the figures of four-factor schedules stay comparable with earlier ones."""
    return routers if routers is not None and (getattr(routers, "state_rank", 0) or getattr(routers, "adapter_rank", 0)) else None


def _router_cost(routers: Any, s: float) -> int:
    """Per-token router FLOPs of a block at sparsity ``s``: the router and adapter of a routed
    block; a dropped block's skip adapter (every token takes it); else 0."""
    if routed_sparsity(s):
        return router_flops(routers)
    return adapter_flops(routers) if dropped_sparsity(s) else 0


def adapter_flops(routers: Any) -> int:
    """Per-token FLOPs of a bank's skip adapter (``U silu(A x)``: ``4 D a``); 0 without one."""
    return 4 * int(getattr(routers, "adapter_size", 0) or 0) * int(getattr(routers, "adapter_rank", 0) or 0) if routers is not None else 0


def max_router_rank(config: Any, hidden: int = 64) -> int:
    """The largest hidden-state rank whose router (MLP width ``hidden``) stays within the budget (0: none)."""
    from ftp_export.routing.factors import FEATURES

    dim = int(config.hidden_size)
    spare = ROUTER_BUDGET * block_linear_flops(config).total - (2 * len(FEATURES) * hidden + 2 * hidden)
    return max(0, int(spare // (2 * dim + 2 * hidden)))


def max_adapter_rank(config: Any, state_rank: int = 0, state_size: int = 0, hidden: int = 64) -> int:
    """The largest skip-adapter rank whose adapter, beside a router of hidden-state rank
    ``state_rank`` (0: the four-factor router), stays within the budget (0: none fits)."""
    from ftp_export.routing.router import RouterBank

    spare = ROUTER_BUDGET * block_linear_flops(config).total - router_flops(RouterBank(1, hidden, state_rank, state_size))
    return max(0, int(spare // (4 * int(config.hidden_size))))


def check_router_budget(config: Any, routers: Any) -> None:
    """Raise :class:`ScheduleError` when a hidden-state router (with its skip adapter, if any) or a
    skip adapter costs more than 0.5% of a block's linear FLOPs. The four-factor router alone (640
    FLOPs) is always allowed: 0.17% of a block of the embedded model, 0.009% of SmolLM2-135M's;
    only toy test models make it more than 0.5%."""
    if counted_routers(routers) is None:
        return
    block = block_linear_flops(config).total
    cost = router_flops(routers)
    if cost > ROUTER_BUDGET * block:
        adapter = getattr(routers, "adapter_rank", 0)
        if adapter:
            raise ScheduleError(
                f"a router with hidden-state rank {routers.state_rank} and skip adapter rank {adapter} costs {cost} FLOPs per "
                f"token, {100 * cost / block:.2f}% of a block's {block}; the limit is {100 * ROUTER_BUDGET:g}%: lower the "
                "adapter rank (ftp-train --skip-adapter) or the router rank"
            )
        raise ScheduleError(
            f"a router with hidden-state rank {routers.state_rank} costs {cost} FLOPs per token, {100 * cost / block:.2f}% of a "
            f"block's {block}; the limit is {100 * ROUTER_BUDGET:g}%: use a rank of at most {max_router_rank(config, routers.hidden)} "
            "for this model (ftp-train --router-rank), or the four-factor router (--router factors)"
        )


def routed_linear_flops(config: Any, block_sparsity: list[float], routers: Any = None) -> float:
    """Per-token linear FLOPs of all blocks when block b computes a fraction ``1 - s_b`` of tokens
    (with ``routers``: plus each routed block's router, which scores every token, and the skip
    adapter of every routed or dropped block)."""
    f = block_linear_flops(config)
    return sum(_router_cost(routers, s) + (0.0 if dropped_sparsity(s) else f.kv + (1.0 - s) * f.rest) for s in block_sparsity)


def dense_linear_flops(config: Any) -> int:
    """Per-token linear FLOPs of all decoder blocks, every token computed."""
    return int(config.num_hidden_layers) * block_linear_flops(config).total


def routed_linear_flop_ratio(config: Any, block_sparsity: list[float], routers: Any = None) -> float:
    """Dense / routed linear FLOPs (> 1 means the routed model is cheaper; ``routers`` counted when given)."""
    if len(block_sparsity) != int(config.num_hidden_layers):
        raise ValueError(f"{len(block_sparsity)} sparsities for {config.num_hidden_layers} blocks")
    return dense_linear_flops(config) / routed_linear_flops(config, block_sparsity, routers)


def attention_flops_per_query(config: Any, keys: int) -> int:
    """Attention score and value products of one query against ``keys`` keys, all heads:
    ``2 * heads * head_dim * keys`` for Q K^T and as much again for P V."""
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or int(config.hidden_size) // heads)
    return 2 * 2 * heads * head_dim * int(keys)


def lm_head_flops(config: Any) -> int:
    """The LM head's FLOPs for one row of logits (``hidden x vocab``)."""
    return 2 * int(config.hidden_size) * int(config.vocab_size)


def call_matmul_flops(
    config: Any, block_sparsity: list[float], new_tokens: int, keys: int, logits_rows: int, routers: Any = None
) -> float:
    """Every matmul of one forward call of one sequence: per block, the K/V projections of all
    ``new_tokens``, and for the kept fraction ``1 - s_b`` of them the q/o projections, the MLP and
    the attention products against ``keys`` keys (counted as computed: every key of the context,
    masked keys included, as the exported graphs do); plus the LM head over ``logits_rows`` rows.
    Routers are counted when ``routers`` is given (every token of a routed block); norms, softmax
    and RoPE are not. Dense: ``block_sparsity`` all 0. A dropped block (``s_b = 1``) costs nothing."""
    f = block_linear_flops(config)
    attn = attention_flops_per_query(config, keys)
    blocks = sum(
        new_tokens * (_router_cost(routers, s) + (0.0 if dropped_sparsity(s) else f.kv + (1.0 - s) * (f.rest + attn))) for s in block_sparsity
    )
    return blocks + logits_rows * lm_head_flops(config)


def routed_matmul_flop_ratio(
    config: Any, block_sparsity: list[float], new_tokens: int, keys: int, logits_rows: int, routers: Any = None
) -> float:
    """Dense / routed :func:`call_matmul_flops` of one call (> 1 means the routed model is cheaper):
    the ideal speedup counting attention and the LM head, which :func:`routed_linear_flop_ratio`
    leaves out. Prefill of T tokens returning the last position's logits: ``(T, T, 1)``; a decode
    step at a context of n tokens: ``(1, n, 1)``."""
    n = int(config.num_hidden_layers)
    if len(block_sparsity) != n:
        raise ValueError(f"{len(block_sparsity)} sparsities for {n} blocks")
    dense = call_matmul_flops(config, [0.0] * n, new_tokens, keys, logits_rows)
    return dense / call_matmul_flops(config, block_sparsity, new_tokens, keys, logits_rows, routers)
