"""Decode-threshold calibration: per routed block, a threshold curve over context lengths under
which a decoded token skips, set so the skip rate on calibration text matches the block's
sparsity at every length (docs/routing.md, "Decode selection").

For each knot length, windows of calibration text are prefilled (top-k routing) and then
``decode_tokens`` more tokens are fed in one decode call, which by the routing definition
equals feeding them one per step (teacher-forced decoding as generation runs it). The decoded
tokens' context lengths straddle the knot. Blocks are calibrated in order, each with the
thresholds of the blocks before it in force (their skips change its hidden states and attention
signals): block b's threshold at the knot is the s_b-quantile of its scores there, placed
midway between two observed scores (see :func:`threshold_between`). Between knots the curve is
linear in the context length (:mod:`ftp_export.routing.decode_thresholds`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from ftp_export.errors import FTPError
from ftp_export.routed.cache import TensorCache
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.routing.decode_thresholds import DecodeThresholds

MIN_CONTEXT = 16
DEFAULT_MAX_CONTEXT = 2048


def context_grid(max_context: int, min_context: int = MIN_CONTEXT) -> list[int]:
    """Target knot lengths: ``min_context`` times powers of 2^(1/4) below ``max_context``, then it.
    Quarter-octave spacing because a router's decode scores can shift abruptly with the context
    length (on the default model one block's threshold moves by 2 between 256 and 512 tokens,
    and half-octave knots left it 0.1 off its sparsity between them)."""
    if max_context < 2:
        raise FTPError(f"decode calibration needs a context of at least 2 tokens, got {max_context}")
    grid: list[int] = []
    k = 0
    while (n := round(min(min_context, max_context) * 2 ** (k / 4))) < max_context:
        if not grid or n > grid[-1]:
            grid.append(n)
        k += 1
    return grid + [max_context]


def default_max_context(config: object) -> int:
    """The longest context calibrated by default: the model's limit, at most 2048 tokens (the
    curve is constant beyond its last knot)."""
    limit = getattr(config, "max_position_embeddings", None) or DEFAULT_MAX_CONTEXT
    return int(min(int(limit), DEFAULT_MAX_CONTEXT))


@dataclass
class KnotWindows:
    """Windows for one knot: ``ids`` [W, prompt + decode]; decoded context lengths prompt+1..prompt+decode."""

    ids: torch.Tensor
    prompt: int
    decode: int

    @property
    def knot(self) -> int:
        """The knot length: the mean context length of the decoded tokens (rounded down)."""
        return self.prompt + (self.decode + 1) // 2


def knot_windows(stream: torch.Tensor, length: int, decode_tokens: int, windows: int, max_context: int) -> KnotWindows | None:
    """``windows`` windows spread evenly over ``stream`` whose decoded tokens straddle ``length``
    (None when the stream is too short for one)."""
    decode = max(1, min(decode_tokens, length // 2))
    prompt = min(length - decode // 2, max_context - decode)
    if prompt < 1 or stream.numel() < prompt + decode:
        return None
    span = stream.numel() - (prompt + decode)
    starts = [round(i * span / max(windows - 1, 1)) for i in range(windows)]
    return KnotWindows(torch.stack([stream[s : s + prompt + decode] for s in starts]), prompt, decode)


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


@dataclass
class CalibrationResult:
    """Thresholds set on the schedule, and what was measured while setting them."""

    thresholds: DecodeThresholds
    rates: list[list[float] | None]  # per block, skip rate of the final threshold at each knot
    tokens: list[int] = field(default_factory=list)  # decoded tokens per knot
    decode_tokens: int = 0
    windows: int = 0

    def record(self) -> dict:
        """What the schedule's ``produced_by.calibration.decode_thresholds`` keeps."""
        return {
            "context_lengths": self.thresholds.lengths,
            "windows_per_length": self.windows,
            "decode_tokens_per_window": self.decode_tokens,
            "decoded_tokens_per_length": self.tokens,
            "order": "block by block",
            "measured_skip_rate": [None if r is None else [round(x, 4) for x in r] for r in self.rates],
        }


@torch.no_grad()
def calibrate_decode_thresholds(
    model: RoutedCausalLM,
    stream: torch.Tensor,
    max_context: int | None = None,
    windows: int = 256,
    decode_tokens: int = 2,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> CalibrationResult:
    """Set ``model.schedule.decode_thresholds`` (a curve per routed block) from the token
    ``stream`` (1-D int64, calibration text). Knots at :func:`context_grid` lengths up to
    ``max_context`` (default :func:`default_max_context`) that the stream is long enough for."""
    schedule = model.schedule
    if schedule is None:
        raise ValueError("calibration needs a schedule")
    if windows < 1 or decode_tokens < 1:
        raise FTPError(f"decode calibration needs windows >= 1 and decode tokens >= 1, got {windows} and {decode_tokens}")
    max_context = max_context or default_max_context(model.config)
    n = schedule.num_blocks
    routed = [b for b in range(n) if schedule.is_routed(b)]
    if not routed:  # dense and dropped blocks only: decode has nothing to threshold
        schedule.decode_thresholds = DecodeThresholds.unset(n)
        return CalibrationResult(schedule.decode_thresholds, [None] * n, [], decode_tokens, windows)
    stream = stream.reshape(-1).to(torch.int64)
    plans = [w for w in (knot_windows(stream, L, decode_tokens, windows, max_context) for L in context_grid(max_context)) if w]
    if not plans:
        raise FTPError(f"calibration text has {stream.numel()} tokens; decode calibration needs at least {MIN_CONTEXT + 8}")
    plans = [p for i, p in enumerate(plans) if i == 0 or p.knot > plans[i - 1].knot]
    per_knot: list[list[float | None]] = []
    rates: list[list[float | None]] = []
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress:
            progress(done[0], len(plans) * len(routed))

    for plan in plans:
        thr, rate = _calibrate_knot(model, plan.ids.to(model.device), plan.prompt, routed, batch_size, tick)
        per_knot.append(thr)
        rates.append(rate)
    values = [None if b not in routed else [per_knot[k][b] for k in range(len(plans))] for b in range(n)]
    result = DecodeThresholds([p.knot for p in plans], values)
    schedule.decode_thresholds = result
    block_rates = [None if b not in routed else [rates[k][b] for k in range(len(plans))] for b in range(n)]
    return CalibrationResult(result, block_rates, [p.ids.shape[0] * p.decode for p in plans], decode_tokens, windows)


def _prefilled(model: RoutedCausalLM, ids: torch.Tensor, prompt: int, batch_size: int, last: int) -> Iterator[tuple[torch.Tensor, list]]:
    """Windows ``ids`` in batches: (the batch, its cache after prefilling ``prompt`` tokens). Blocks
    after ``last`` (the last routed block) and the LM head are never needed, so never run."""
    for i in range(0, ids.shape[0], batch_size):
        part = ids[i : i + batch_size]
        cache = TensorCache()
        model(part[:, :prompt], torch.ones_like(part[:, :prompt]), past_key_values=cache, mode="prefill", stop_after_block=last)
        yield part, cache.present


def _calibrate_knot(model, ids, prompt, routed, batch_size, tick) -> tuple[list[float | None], list[float | None]]:
    """Block-by-block thresholds at one knot: the windows are prefilled once; per block, the
    decode call runs up to that block (its threshold at -inf, i.e. keeping every token)."""
    schedule = model.schedule
    n = schedule.num_blocks
    thr: list[float | None] = [None] * n
    rate: list[float | None] = [None] * n
    chunks = list(_prefilled(model, ids, prompt, batch_size, routed[-1]))
    for b in routed:
        schedule.decode_thresholds = DecodeThresholds.constant([thr[j] if j < b else (-math.inf if j == b else None) for j in range(n)])
        scores = []
        for part, past in chunks:
            out = model(part[:, prompt:], torch.ones_like(part), past_key_values=TensorCache(past), mode="decode",
                        keep_scores=True, stop_after_block=b)
            scores.append(out.routing[b].scores.reshape(-1).double().cpu())
        s = torch.cat(scores)
        thr[b] = threshold_between(s, schedule.block_sparsity[b])
        rate[b] = float((s < thr[b]).double().mean())
        tick()
    return thr, rate


@dataclass
class DecodeRates:
    """Realised decode skip rate per block at each context length (None for unrouted blocks)."""

    lengths: list[int]
    rates: list[list[float] | None]
    tokens: list[int]  # decoded tokens per length

    def worst(self, sparsity: list[float]) -> float:
        """Largest |realised - scheduled| over routed blocks and lengths."""
        return max((abs(r - sparsity[b]) for b, rs in enumerate(self.rates) if rs for r in rs), default=0.0)

    def to_json(self) -> dict:
        return {"context_lengths": self.lengths, "decoded_tokens": self.tokens,
                "skip_rate": [None if r is None else [round(x, 4) for x in r] for r in self.rates]}


@torch.no_grad()
def measure_decode_skip_rates(
    model: RoutedCausalLM,
    stream: torch.Tensor,
    lengths: list[int],
    windows: int = 32,
    decode_tokens: int = 32,
    batch_size: int = 8,
) -> DecodeRates:
    """Teacher-forced decoding of ``windows`` x ``decode_tokens`` tokens of ``stream`` around each
    context length (as :func:`calibrate_decode_thresholds` cuts them), with the schedule's
    thresholds in force: the fraction of decoded tokens each routed block skipped."""
    schedule = model.schedule
    n = schedule.num_blocks
    routed = [b for b in range(n) if model.block_mode(b, "decode") == "threshold"]
    if not routed:  # dense and dropped blocks only: nothing decides per token, nothing to decode
        return DecodeRates(list(lengths), [None] * n, [0] * len(lengths))
    last = max(routed)
    stream = stream.reshape(-1).to(torch.int64)
    skipped = [[0] * len(lengths) for _ in range(n)]
    tokens = []
    for k, length in enumerate(lengths):
        plan = knot_windows(stream, length, decode_tokens, windows, max(lengths))
        if plan is None:
            raise FTPError(f"text has {stream.numel()} tokens; measuring decode at context {length} needs more")
        ids = plan.ids.to(model.device)
        tokens.append(ids.shape[0] * plan.decode)
        for part, past in _prefilled(model, ids, plan.prompt, batch_size, last):
            out = model(part[:, plan.prompt :], torch.ones_like(part), past_key_values=TensorCache(past), mode="decode",
                        stop_after_block=last)
            for b, r in enumerate(out.routing):
                if r is not None and r.rows is not None:
                    skipped[b][k] += part.shape[0] * plan.decode - int(r.rows.numel())
    rates = [[s / t for s, t in zip(skipped[b], tokens, strict=True)] if model.block_mode(b, "decode") == "threshold" else None
             for b in range(n)]
    return DecodeRates(list(lengths), rates, tokens)
