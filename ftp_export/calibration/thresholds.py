"""Decode-threshold calibration: per block, the score threshold under which a decoded token
skips, set so the skip rate on calibration text matches the block's sparsity.

Teacher-forced decoding: each calibration sequence is prefilled for ``prompt_len`` tokens
(top-k routing), then its remaining tokens are fed one per step in decode mode, as generation
would. Blocks are calibrated in order, each with the final thresholds of the blocks before it in
force (their skips change its hidden states and attention signals), taking the s_b-quantile of
its scores. Each threshold is set midway between two observed scores (see
:func:`threshold_between`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ftp_export.routed.model import RoutedCausalLM


@torch.no_grad()
def collect_decode_scores(
    model: RoutedCausalLM, sequences: torch.Tensor, prompt_len: int, stop_after_block: int | None = None
) -> list[list[torch.Tensor]]:
    """Scores of every decoded token per block (empty for dense blocks; blocks after
    ``stop_after_block`` are not run)."""
    from transformers import DynamicCache

    bsz, total = sequences.shape
    if not 0 < prompt_len < total:
        raise ValueError(f"prompt_len must be in (0, {total}), got {prompt_len}")
    per_block: list[list[torch.Tensor]] = [[] for _ in model.layers]
    cache = DynamicCache()
    mask = torch.ones(bsz, prompt_len, dtype=torch.int64, device=sequences.device)
    model(sequences[:, :prompt_len], mask, past_key_values=cache, mode="prefill", stop_after_block=stop_after_block)
    for t in range(prompt_len, total):
        mask = torch.cat([mask, torch.ones(bsz, 1, dtype=torch.int64, device=sequences.device)], dim=1)
        pos = torch.full((bsz, 1), t, dtype=torch.int64, device=sequences.device)
        out = model(sequences[:, t : t + 1], mask, pos, past_key_values=cache, mode="decode", keep_scores=True,
                    stop_after_block=stop_after_block)
        for b, r in enumerate(out.routing):
            if r is not None and r.scores is not None:
                per_block[b].append(r.scores.reshape(-1).float().cpu())
    return per_block


def threshold_between(scores: torch.Tensor, skip_rate: float) -> float:
    """Threshold that skips ``skip_rate`` of ``scores``, placed midway between two observed
    score values so that no observed score sits on it: a score computed 1 ulp apart by another
    runtime must not flip its keep/skip decision."""
    s = torch.sort(scores.double()).values
    j = min(int(round(skip_rate * s.numel())), s.numel() - 1)
    q = s[j]
    below = s[s < q]
    if below.numel() == 0:
        return float(q) - 1.0  # skip nothing below the smallest score
    return float(((below[-1] + q) / 2).float())


@torch.no_grad()
def calibrate_decode_thresholds(
    model: RoutedCausalLM,
    sequences: torch.Tensor,
    prompt_len: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[float | None], list[float | None]]:
    """Set ``model.schedule.decode_thresholds`` in place. Returns (thresholds, measured skip rates).

    Block by block, in order: block b's router sees only what blocks < b computed, so once their
    thresholds are final, one teacher-forced pass (blocks >= b keeping every token) gives exactly
    the scores block b will see in use (blocks after b are not run). The measured rate is the skip rate of the final threshold
    on those scores - the rate decode will have on this text, not an estimate.
    """
    schedule = model.schedule
    if schedule is None:
        raise ValueError("calibration needs a schedule")
    n = schedule.num_blocks
    routed = [b for b in range(n) if schedule.is_routed(b)]
    thresholds: list[float | None] = [float("-inf") if schedule.is_routed(b) else None for b in range(n)]
    rates: list[float | None] = [None] * n
    for k, b in enumerate(routed):
        schedule.decode_thresholds = list(thresholds)
        scores = collect_decode_scores(model, sequences, prompt_len, stop_after_block=b)[b]
        if scores:
            s = torch.cat(scores).double()
            thresholds[b] = threshold_between(s, schedule.block_sparsity[b])
            rates[b] = float((s < thresholds[b]).double().mean())
        if progress:
            progress(k + 1, len(routed))
    schedule.decode_thresholds = thresholds
    return thresholds, rates
