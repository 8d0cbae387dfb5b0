"""Decode thresholds for a random-weight bench model, calibrated on the prompts the bench decodes.

The project's calibration (:mod:`ftp_export.calibration.thresholds`) prefills windows of
calibration text at every quarter-octave knot up to the longest context and, block by block,
with the thresholds of the blocks before in force, sets each routed block's threshold at the
``s_b``-quantile of its decode scores there (:func:`~ftp_export.calibration.thresholds.threshold_between`).
A random-weight model has no calibration text, and on a CPU an eager prefill of 2048 tokens of
SmolLM2-135M's shape takes about 30 s, so its 29 knots up to 2048 tokens would take longer than
the bench. This does the same, block by block, at the bench's own decode contexts only, on the
random-token prompts it then times: knot ``c + (steps + 1) // 2`` (the mean context length of
the ``steps`` decoded tokens, as the calibration's ``KnotWindows.knot``), linear between knots.
The decode skip rate the exported graph then realises on those tokens is near each block's
sparsity (within the 1 / (rows x steps) a quantile of so few tokens can hit); the bench measures
and prints it from the graph's routing outputs either way.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ftp_export.calibration.thresholds import threshold_between
from ftp_export.routed.cache import TensorCache
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.routing.decode_thresholds import DecodeThresholds


def decode_prompts(vocab: int, contexts: list[int], rows: int, steps: int) -> dict[int, torch.Tensor]:
    """Random prompts per decode context: ids [rows, context + steps] (seeded; smaller decode
    batches use the first rows)."""
    g = torch.Generator().manual_seed(17)
    return {c: torch.randint(0, vocab, (rows, c + steps), generator=g) for c in sorted(set(contexts))}


def decode_knot(context: int, steps: int) -> int:
    """The knot of a context's prompts: the mean context length of its decoded tokens."""
    return context + (steps + 1) // 2


def calibrated_routed(model: Any, sparsity: float, prompts: dict[int, torch.Tensor], steps: int) -> RoutedCausalLM:
    """The bench's routed model at overall ``sparsity`` (:func:`~.models.bench_schedule`) with its
    decode thresholds calibrated on the timed ``prompts`` (:func:`calibrate_on_prompts`)."""
    from ftp_export.bench.models import bench_schedule

    routed = RoutedCausalLM(model, bench_schedule(model.config, sparsity)).eval()
    calibrate_on_prompts(routed, prompts, steps)
    return routed


@torch.no_grad()
def calibrate_on_prompts(model: RoutedCausalLM, prompts: dict[int, torch.Tensor], steps: int) -> DecodeThresholds:
    """Set ``model.schedule.decode_thresholds`` from ``prompts`` {context c: ids [rows, c + steps]}:
    prefill the first c tokens, decode the last ``steps`` in one call (by the routing definition,
    the same as one call per step), thresholds block by block as the project's calibration does."""
    schedule = model.schedule
    n = schedule.num_blocks
    routed = [b for b in range(n) if schedule.is_routed(b)]
    if not routed:
        schedule.decode_thresholds = DecodeThresholds.unset(n)
        return schedule.decode_thresholds
    contexts = sorted(prompts)
    per_knot = [_knot_thresholds(model, prompts[c].to(model.device), c, routed) for c in contexts]
    values = [None if b not in routed else [thr[b] for thr in per_knot] for b in range(n)]
    schedule.decode_thresholds = DecodeThresholds([decode_knot(c, steps) for c in contexts], values)
    return schedule.decode_thresholds


def _knot_thresholds(model: RoutedCausalLM, ids: torch.Tensor, context: int, routed: list[int]) -> list[float | None]:
    schedule = model.schedule
    n = schedule.num_blocks
    cache = TensorCache()
    prompt = ids[:, :context]
    model(prompt, torch.ones_like(prompt), past_key_values=cache, mode="prefill", stop_after_block=routed[-1])
    thr: list[float | None] = [None] * n
    for b in routed:  # the blocks before b with their thresholds in force, b keeping every token
        schedule.decode_thresholds = DecodeThresholds.constant([thr[j] if j < b else (-math.inf if j == b else None) for j in range(n)])
        out = model(ids[:, context:], torch.ones_like(ids), past_key_values=TensorCache(cache.present), mode="decode",
                    keep_scores=True, stop_after_block=b)
        thr[b] = threshold_between(out.routing[b].scores.reshape(-1).double(), schedule.block_sparsity[b])
    return thr
