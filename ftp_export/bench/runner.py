"""Timing of dense vs routed prefill and decode steps on one runtime, in one process, the two sides
alternating (:mod:`ftp_export.bench.timing`, as the onnxruntime bench does).

Prefill computes logits the same way on both sides: by default only the last position's
(``logits='last'``: the routed model's ``logits='last'``, the Hugging Face model's
``logits_to_keep=1``), as a generation prefill and the exported graphs do; ``'all'`` computes
every position's on both sides. The bench prompts are unpadded, so the last position is each
row's last valid token on both sides."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ftp_export.bench.ideals import decode_ideals, prefill_ideals
from ftp_export.bench.models import bench_schedule
from ftp_export.bench.timing import time_interleaved, time_steps_interleaved
from ftp_export.routed.model import RoutedCausalLM


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
    ideal: float  # linear FLOPs
    of_ideal: float
    dense_peak_mib: float | None
    routed_peak_mib: float | None
    memory_overhead: float | None
    ideal_matmul: float | None = None  # every matmul: attention and the LM head too
    of_ideal_matmul: float | None = None
    above_ideal: bool = False  # speedup > ideal_matmul: noise or a slow dense side, not a success
    load_1m: float | None = None  # os.getloadavg()[0] when the case started


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
    # the ideals at the realised per-block skip rates, as the onnxruntime rows give them
    ideal: float | None = None
    ideal_matmul: float | None = None
    of_ideal: float | None = None
    of_ideal_matmul: float | None = None
    above_ideal: bool = False
    load_1m: float | None = None


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
    load = os.getloadavg()[0]
    cfg = model.config
    schedule = bench_schedule(cfg, sparsity)
    routed = RoutedCausalLM(model, schedule).eval()
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
    mask = torch.ones_like(ids)
    # use_cache=True: a generation prefill writes its KV cache, as the routed prefill does
    dense_fn = _maybe_compile(lambda: model(input_ids=ids, attention_mask=mask, use_cache=True, **keep).logits, runtime)
    routed_fn = _maybe_compile(lambda: routed(ids, mask, mode="prefill", logits=logits).logits, runtime)
    (dense, d_lo, d_hi), (rout, r_lo, r_hi) = time_interleaved(dense_fn, routed_fn, warmup, iters, device)
    dpeak, rpeak = _peak_mib(dense_fn, device), _peak_mib(routed_fn, device)
    ideal, matmul = prefill_ideals(cfg, schedule.block_sparsity, seq, logits)
    speed = dense / rout
    return PrefillRow(
        batch, seq, sparsity, dense, rout, (d_lo, d_hi), (r_lo, r_hi), speed, ideal, speed / ideal, dpeak, rpeak,
        None if dpeak is None else (rpeak - dpeak) / dpeak, matmul, speed / matmul, speed > matmul, load,
    )


@torch.no_grad()
def bench_decode(
    model: Any, batch: int, context: int, sparsity: float, device: str, warmup: int, iters: int, steps: int = 8
) -> DecodeRow:
    """``steps`` consecutive one-token decode steps after a ``context``-token prompt, dense vs
    routed, reported per step. The routed thresholds are calibrated block by block on these very
    prompts (:mod:`~ftp_export.bench.decode_calibration`, as the onnxruntime bench does), so the
    realised skip rate printed beside the timing is near the sparsity even at batch 1 (a
    threshold set from one step's own score would keep every token)."""
    from transformers import DynamicCache

    from ftp_export.bench.decode_calibration import calibrated_routed, decode_prompts

    load = os.getloadavg()[0]
    cfg = model.config
    ids = decode_prompts(int(cfg.vocab_size), [context], batch, steps)[context].to(device)
    routed = calibrated_routed(model, sparsity, {context: ids}, steps)
    prompt, tokens = ids[:, :context], ids[:, context:]
    dense_cache, routed_cache = DynamicCache(), DynamicCache()
    model(input_ids=prompt, past_key_values=dense_cache, use_cache=True)
    routed(prompt, past_key_values=routed_cache, mode="prefill")

    def dense_step(tok, mask, pos, cache):
        return model(input_ids=tok, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True).logits

    def routed_step(tok, mask, pos, cache):
        return routed(tok, mask, pos, past_key_values=cache, mode="decode")

    routed_run = _TorchDecode(routed_step, routed_cache, tokens, context)
    routed_run.reset()
    kept: dict[int, int] = {}
    for i in range(steps):
        for b, r in enumerate(routed_run.step(i).routing):
            if r is not None and r.rows is not None:
                kept[b] = kept.get(b, 0) + r.rows.numel()
    per_block = {b: round(1 - k / (batch * steps), 4) for b, k in kept.items()}
    skip = sum(per_block.values()) / len(per_block) if per_block else None

    (dense, d_lo, d_hi), (rout, r_lo, r_hi) = time_steps_interleaved(
        _TorchDecode(dense_step, dense_cache, tokens, context), routed_run, steps, warmup, iters, device)
    speed = dense / rout
    linear, matmul = decode_ideals(cfg, routed.schedule.block_sparsity, per_block, context, steps)
    return DecodeRow(batch, context, sparsity, dense, rout, (d_lo, d_hi), (r_lo, r_hi), speed, skip, per_block,
                     linear, matmul, speed / linear, speed / matmul, speed > matmul, load)


class _TorchDecode:
    """One-token decode steps of ``step_fn`` on a copy of the prompt's cache (a
    :class:`~.timing.Stepper`): :meth:`reset` copies the cache, untimed."""

    def __init__(self, step_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], Any], prompt_cache: Any,
                 tokens: torch.Tensor, context: int) -> None:
        self.step_fn, self.prompt_cache, self.tokens, self.context = step_fn, prompt_cache, tokens, context
        self.cache = None

    def reset(self) -> None:
        self.cache = _clone(self.prompt_cache)

    def step(self, i: int) -> Any:
        batch, device = self.tokens.shape[0], self.tokens.device
        mask = torch.ones(batch, self.context + i + 1, dtype=torch.long, device=device)
        pos = torch.full((batch, 1), self.context + i, device=device)
        return self.step_fn(self.tokens[:, i : i + 1], mask, pos, self.cache)


def _clone(cache: Any) -> Any:
    from transformers import DynamicCache

    new = DynamicCache()
    for i, layer in enumerate(cache.layers):
        new.update(layer.keys.clone(), layer.values.clone(), i)
    return new


def rows_to_json(rows: list[Any]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
