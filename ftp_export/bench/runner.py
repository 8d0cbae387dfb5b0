"""Timing of dense vs routed prefill and decode steps on one runtime, in one process.

Prefill computes logits the same way on both sides: by default only the last position's
(``logits='last'``: the routed model's ``logits='last'``, the Hugging Face model's
``logits_to_keep=1``), as a generation prefill and the exported graphs do; ``'all'`` computes
every position's on both sides. The bench prompts are unpadded, so the last position is each
row's last valid token on both sides."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ftp_export.bench.models import bench_schedule
from ftp_export.calibration.thresholds import threshold_between
from ftp_export.flops import routed_linear_flop_ratio
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.routing.decode_thresholds import DecodeThresholds


@dataclass
class PrefillRow:
    batch: int
    seq_len: int
    sparsity: float
    dense_ms: float  # median
    routed_ms: float  # median
    dense_range_ms: tuple[float, float]  # min, max over the timed iterations
    routed_range_ms: tuple[float, float]
    speedup: float
    ideal: float
    of_ideal: float
    dense_peak_mib: float | None
    routed_peak_mib: float | None
    memory_overhead: float | None


@dataclass
class DecodeRow:
    batch: int
    context: int
    sparsity: float
    dense_ms: float  # median
    routed_ms: float  # median
    dense_range_ms: tuple[float, float]
    routed_range_ms: tuple[float, float]
    speedup: float
    skip_rate: float | None = None  # realised: decoded tokens that skipped a routed block, over routed blocks
    skip_rate_per_block: dict[int, float] | None = None


def time_ms(fn: Callable[[], Any], device: str, warmup: int, iters: int) -> tuple[float, float, float]:
    """Median, min and max milliseconds of ``fn`` after warm-up (CUDA events on GPU, perf_counter on CPU)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples), min(samples), max(samples)


def _peak_mib(fn: Callable[[], Any], device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def _maybe_compile(fn: Callable[..., Any], runtime: str) -> Callable[..., Any]:
    if runtime == "compile":
        return torch.compile(fn, dynamic=False)
    return fn


@torch.no_grad()
def bench_prefill(
    model: Any, batch: int, seq: int, sparsity: float, runtime: str, device: str, warmup: int, iters: int, logits: str = "last"
) -> PrefillRow:
    """Dense vs routed prefill; ``logits`` 'last' (default) or 'all' positions, the same on both sides."""
    if logits not in ("last", "all"):
        raise ValueError(f"logits={logits!r}: expected 'last' or 'all'")
    keep = {"logits_to_keep": 1} if logits == "last" else {}
    cfg = model.config
    schedule = bench_schedule(cfg, sparsity)
    routed = RoutedCausalLM(model, schedule).eval()
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
    mask = torch.ones_like(ids)
    dense_fn = _maybe_compile(lambda: model(input_ids=ids, attention_mask=mask, use_cache=False, **keep).logits, runtime)
    routed_fn = _maybe_compile(lambda: routed(ids, mask, mode="prefill", logits=logits).logits, runtime)
    dense, d_lo, d_hi = time_ms(dense_fn, device, warmup, iters)
    rout, r_lo, r_hi = time_ms(routed_fn, device, warmup, iters)
    dpeak, rpeak = _peak_mib(dense_fn, device), _peak_mib(routed_fn, device)
    ideal = routed_linear_flop_ratio(cfg, schedule.block_sparsity)
    speed = dense / rout
    return PrefillRow(
        batch, seq, sparsity, dense, rout, (d_lo, d_hi), (r_lo, r_hi), speed, ideal, speed / ideal, dpeak, rpeak,
        None if dpeak is None else (rpeak - dpeak) / dpeak,
    )


@torch.no_grad()
def bench_decode(model: Any, batch: int, context: int, sparsity: float, device: str, warmup: int, iters: int) -> DecodeRow:
    """One decode step at a ``context``-token cache; routed thresholds skip ``sparsity`` of tokens
    (set from the step's own scores, as calibration would)."""
    from transformers import DynamicCache

    cfg = model.config
    schedule = bench_schedule(cfg, sparsity)
    routed = RoutedCausalLM(model, schedule).eval()
    ids = torch.randint(0, cfg.vocab_size, (batch, context), device=device)
    mask = torch.ones(batch, context + 1, dtype=torch.long, device=device)
    nxt = ids[:, -1:]
    pos = torch.full((batch, 1), context, device=device)
    dense_cache = DynamicCache()
    model(input_ids=ids, past_key_values=dense_cache, use_cache=True)
    routed_cache = DynamicCache()
    routed(ids, past_key_values=routed_cache, mode="prefill")
    keep_all = [None] + [float("-inf")] * (cfg.num_hidden_layers - 1)
    schedule.decode_thresholds = DecodeThresholds.constant(keep_all)
    probe = routed(nxt, mask, pos, past_key_values=_clone(routed_cache), mode="decode", keep_scores=True)
    schedule.decode_thresholds = DecodeThresholds.constant(
        [None if r is None else threshold_between(r.scores.float().flatten(), sparsity) for r in probe.routing])

    def dense_step():
        c = _clone(dense_cache)
        return model(input_ids=nxt, attention_mask=mask, position_ids=pos, past_key_values=c, use_cache=True).logits

    def routed_step():
        return routed(nxt, mask, pos, past_key_values=_clone(routed_cache), mode="decode").logits

    kept = {b: r.rows.numel() for b, r in enumerate(routed(nxt, mask, pos, past_key_values=_clone(routed_cache), mode="decode").routing)
            if r is not None and r.rows is not None}
    per_block = {b: round(1 - k / batch, 4) for b, k in kept.items()}
    skip = sum(per_block.values()) / len(per_block) if per_block else None

    clone_ms = time_ms(lambda: _clone(dense_cache), device, warmup, iters)[0]
    dense, d_lo, d_hi = (t - clone_ms for t in time_ms(dense_step, device, warmup, iters))
    rout, r_lo, r_hi = (t - clone_ms for t in time_ms(routed_step, device, warmup, iters))
    return DecodeRow(batch, context, sparsity, dense, rout, (d_lo, d_hi), (r_lo, r_hi), dense / rout, skip, per_block)


def _clone(cache: Any) -> Any:
    from transformers import DynamicCache

    new = DynamicCache()
    for i, layer in enumerate(cache.layers):
        new.update(layer.keys.clone(), layer.values.clone(), i)
    return new


def rows_to_json(rows: list[Any]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
