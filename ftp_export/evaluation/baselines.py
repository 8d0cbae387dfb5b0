"""Layer-dropping baseline (ShortGPT, arXiv 2403.03853) at equal linear FLOPs.

Block influence (BI) of block b = 1 - mean cosine(input hidden, output hidden) over real tokens;
the blocks with the lowest BI are removed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ftp_export.flops import block_linear_flops, routed_linear_flops


def layer_io(args: tuple, kwargs: dict, out: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, output) hidden states of a decoder layer, from a ``with_kwargs`` forward hook."""
    h_in = args[0] if args else kwargs["hidden_states"]
    return h_in, out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def block_influence(
    model: nn.Module, sequences: torch.Tensor, mask: torch.Tensor | None = None, batch_size: int = 8
) -> list[float]:
    """ShortGPT block influence per decoder block on ``sequences`` [B, T] (``mask`` 1 = real token)."""
    layers = model.model.layers
    n = len(layers)
    sums = [0.0] * n
    count = 0
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(idx: int) -> Callable[..., None]:
        def fn(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            captured[idx] = layer_io(args, kwargs, out)

        return fn

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        for start in range(0, sequences.shape[0], batch_size):
            ids = sequences[start : start + batch_size]
            m = torch.ones_like(ids) if mask is None else mask[start : start + batch_size]
            captured.clear()
            model(input_ids=ids, attention_mask=m, use_cache=False)
            valid = m.to(torch.bool)
            for i in range(n):
                h_in, h_out = captured[i]
                cos = torch.nn.functional.cosine_similarity(h_in.float(), h_out.float(), dim=-1)
                sums[i] += float(cos[valid].double().sum())
            count += int(valid.sum())
    finally:
        for h in handles:
            h.remove()
    return [1.0 - s / max(count, 1) for s in sums]


def _shallow(module: nn.Module) -> nn.Module:
    """A copy of ``module`` sharing parameters, with its own child/parameter dicts."""
    c = copy.copy(module)
    c._modules = dict(module._modules)
    c._parameters = dict(module._parameters)
    c._buffers = dict(module._buffers)
    return c


def drop_blocks(model: nn.Module, blocks: list[int]) -> nn.Module:
    """A forward-only view of the Hugging Face causal LM ``model`` without decoder ``blocks``.

    Weights are shared with ``model`` (nothing is copied); call it with ``use_cache=False``.
    """
    drop = set(int(b) for b in blocks)
    n = len(model.model.layers)
    if any(b < 0 or b >= n for b in drop) or len(drop) >= n:
        raise ValueError(f"cannot drop blocks {sorted(drop)} of a {n}-block model")
    new = _shallow(model)
    inner = _shallow(model.model)
    inner.layers = nn.ModuleList(layer for i, layer in enumerate(model.model.layers) if i not in drop)
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = n - len(drop)
    if getattr(config, "layer_types", None):
        config.layer_types = [t for i, t in enumerate(config.layer_types) if i not in drop]
    inner.config = config
    new.model = inner
    new.config = config
    return new


def equal_flops_dropped_blocks(config: Any, block_sparsity: list[float], rounding: str = "nearest", routers: Any = None) -> int:
    """Blocks to drop so the pruned model's linear FLOPs are closest to the routed model's
    (``rounding='ceil'``: the fewest drops that cost no more than the routed model).

    Routed skipped tokens still pay the K/V projections (see :mod:`ftp_export.flops`); counted
    ``routers`` (hidden-state routers, skip adapters) add their FLOPs to the routed model's.
    """
    n = int(config.num_hidden_layers)
    drop = _fractional_drop(config, block_sparsity, routers)
    count = math.ceil(drop - 1e-9) if rounding == "ceil" else math.floor(drop + 0.5)
    return max(0, min(n - 1, int(count)))


def _fractional_drop(config: Any, block_sparsity: list[float], routers: Any = None) -> float:
    """How many whole blocks' linear FLOPs the routed model saves (not rounded)."""
    n = int(config.num_hidden_layers)
    return n - routed_linear_flops(config, block_sparsity, routers) / block_linear_flops(config).total


def bracketing_drop_counts(config: Any, block_sparsity: list[float], routers: Any = None) -> list[int]:
    """The drop counts whose linear FLOPs bracket the routed model's (with ``routers``, as
    :func:`~ftp_export.flops.counted_routers` gives them: 12 drops of 30 with skip adapters cost a
    little more than 12 plain drops, so 11 and 12 bracket them): ``[floor, ceil]`` of the
    fractional equal-FLOP count (one count when it is a whole number)."""
    hi = equal_flops_dropped_blocks(config, block_sparsity, rounding="ceil", routers=routers)
    exact = _fractional_drop(config, block_sparsity, routers)
    return [hi] if abs(exact - hi) < 1e-9 or hi == 0 else [hi - 1, hi]


def mixing_weight(flop_ratio: float, x0: float, x1: float) -> float:
    """The share of requests served at ``x1`` (dense/pruned FLOPs) and the rest at ``x0`` that
    costs as much as ``flop_ratio``: linear in cost (= 1 / flop_ratio)."""
    return (1.0 / flop_ratio - 1.0 / x0) / (1.0 / x1 - 1.0 / x0)


def interpolate_at_flops(flop_ratio: float, points: list[tuple[float, float]], log: bool = False) -> float:
    """A metric of layer dropping at ``flop_ratio`` from the bracketing drop counts'
    ``(flop_ratio, value)`` points (one point is returned as is).

    Whole blocks rarely match a routed model's FLOPs. Serving a fraction of requests with each
    of the two drop counts reaches any cost in between, with mean-over-tokens metrics (KL, NLL,
    accuracy) mixing linearly, so this line is what layer dropping achieves at equal FLOPs. The
    mixing weight is linear in cost (:func:`mixing_weight`); ``log=True`` mixes log(value)
    (perplexity, whose log is the mean NLL)."""
    pts = sorted(points)
    if len(pts) == 1:
        return pts[0][1]
    (x0, y0), (x1, y1) = pts[0], pts[-1]
    w = mixing_weight(flop_ratio, x0, x1)
    if log:
        return math.exp(math.log(y0) + w * (math.log(y1) - math.log(y0)))
    return y0 + w * (y1 - y0)


def interpolate_replicates(flop_ratio: float, points: list[tuple[float, np.ndarray]], log: bool = False) -> np.ndarray:
    """:func:`interpolate_at_flops` of bootstrap replicates ``[R]`` per point (same weight in every
    resample, so the mixture is resampled with the same windows and items as its rows)."""
    pts = sorted(points, key=lambda p: p[0])
    if len(pts) == 1:
        return np.asarray(pts[0][1], np.float64)
    (x0, y0), (x1, y1) = pts[0], pts[-1]
    w = mixing_weight(flop_ratio, x0, x1)
    y0, y1 = np.asarray(y0, np.float64), np.asarray(y1, np.float64)
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.exp(np.log(y0) + w * (np.log(y1) - np.log(y0)))
    return y0 + w * (y1 - y0)


def interpolate_metrics(flop_ratio: float, points: list[tuple[float, dict[str, Any]]], keys: tuple[str, ...]) -> dict[str, float]:
    """:func:`interpolate_at_flops` of each metric in ``keys`` that every ``(flop_ratio, metrics)``
    point has (not None); perplexities (and their retention: any key naming perplexity) mix in
    log space."""
    return {k: interpolate_at_flops(flop_ratio, [(x, m[k]) for x, m in points], log="perplexity" in k)
            for k in keys if all(m.get(k) is not None for _, m in points)}


def shortgpt_blocks(influence: list[float], count: int) -> list[int]:
    """The ``count`` blocks with the lowest influence (ties: lower index first), ascending."""
    order = sorted(range(len(influence)), key=lambda i: (influence[i], i))
    return sorted(order[:count])
