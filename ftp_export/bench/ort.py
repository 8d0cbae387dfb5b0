"""``ftp-export bench --runtime onnxruntime``: the exported graphs, routed against dense, in
onnxruntime's CPU provider.

What is timed. For a random-weight model of a named shape, the routed model at each overall
sparsity (routers that score a random direction of each token's hidden state, so picks spread over
the prompt as trained routers' do, :func:`~.models.bench_schedule`; uniform schedule with block 0 dense) and a **dense baseline** are each
exported by the ``onnx`` target, the code ``ftp-export --target onnx`` runs, with its default
``logits='last'`` prefill graph (:mod:`.artefacts`). The dense baseline is the same pipeline with
every block sparsity 0: same exporter, opset, attention code, graph inputs/outputs and logits
policy. Chosen over Hugging Face's model exported with sdpa because that would change two things
at once (the attention lowering and the routing), and at opset 18 the dynamo exporter lowers sdpa
to the same MatMul/Softmax ops anyway; the ratio here is what routing changes in the product. A
faster attention in the routed code (being worked on) speeds up this dense baseline as well.

How. Sessions use the CPU provider with ``threads`` intra-op threads (default 1: reproducible on
a shared machine). Dense and routed run **interleaved**, alternating which goes first, so a load
change on the machine hits both; median, min and max over ``iters`` iterations after ``warmup``.
Prefill: one call on ``seq`` random tokens per row. Decode: ``steps`` consecutive one-token
decode calls, dense and routed interleaved step by step (:func:`~.timing.time_steps_interleaved`;
each step's ``present`` fed back as the next ``past_key_values``; with
``kv_cache='append'``, both sides' graphs exported in that layout, written into a buffer of
``context + steps`` positions, :class:`~ftp_export.runtimes.kv_buffer.AppendBuffer`) after a prefill
of ``context`` random tokens, reported per step. Decode thresholds are calibrated on those very
prompts (:mod:`.decode_calibration`), and the skip rate the decode graph realised on the timed
steps is read from its ``routing.N.rows`` outputs: per block and the mean, beside every decode
figure.

Ideal speedups (dense / routed FLOPs): linear layers only (:func:`~ftp_export.flops.routed_linear_flop_ratio`)
and every matmul (:func:`~ftp_export.flops.routed_matmul_flop_ratio`: attention products and the
LM head too); prefill at the scheduled sparsities, decode at the realised per-block skip rates.
A measured speedup above the all-matmul ideal is flagged (``above_ideal``): it is timing noise or
a slow dense side, not a success.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ftp_export.bench.artefacts import ExportedPair, export_model, ort_runtime
from ftp_export.bench.decode_calibration import calibrated_routed, decode_prompts
from ftp_export.bench.ideals import decode_ideals, prefill_ideals
from ftp_export.bench.memory import MemoryRow, measure, ort_args
from ftp_export.bench.timing import time_interleaved, time_steps_interleaved
from ftp_export.graph_io import DEFAULT_LOGITS
from ftp_export.routed.cache import DEFAULT_KV_CACHE
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.runtimes.kv_buffer import AppendBuffer
from ftp_export.runtimes.ort import OrtRuntime
from ftp_export.schedule import new_schedule


@dataclass
class OrtPrefillRow:
    batch: int
    seq_len: int
    sparsity: float
    dense_ms: float  # median
    routed_ms: float
    dense_range_ms: tuple[float, float]  # min, max
    routed_range_ms: tuple[float, float]
    speedup: float  # dense / routed
    ideal: float  # linear FLOPs
    ideal_matmul: float  # every matmul: attention and LM head too
    of_ideal: float  # speedup / ideal
    of_ideal_matmul: float
    above_ideal: bool  # speedup > ideal_matmul: noise or a slow dense side, not a success
    load_1m: float  # os.getloadavg()[0] when the case started


@dataclass
class OrtDecodeRow:
    batch: int
    context: int
    sparsity: float
    steps: int  # decode steps per timed iteration; times are per step
    dense_ms: float
    routed_ms: float
    dense_range_ms: tuple[float, float]
    routed_range_ms: tuple[float, float]
    speedup: float
    ideal: float  # at the realised per-block skip rates
    ideal_matmul: float
    of_ideal: float
    of_ideal_matmul: float
    above_ideal: bool
    skip_rate: float | None  # realised, mean over routed blocks
    skip_rate_per_block: dict[int, float]
    load_1m: float


@dataclass
class OrtSettings:
    batches: list[int]
    seqs: list[int]
    sparsities: list[float]
    decode_batches: list[int]
    decode_contexts: list[int]
    decode_steps: int = 8
    warmup: int = 1
    iters: int = 5
    threads: int = 1
    dtype: str = "float32"
    memory: int = 0  # fresh processes per side for peak memory (0: not measured)
    logits: str = DEFAULT_LOGITS
    kv_cache: str = DEFAULT_KV_CACHE  # both sides' decode cache layout (routed/cache.py)


def prefill_feeds(ids: np.ndarray) -> dict[str, np.ndarray]:
    batch, seq = ids.shape
    pos = np.tile(np.arange(seq, dtype=np.int64), (batch, 1))
    return {"input_ids": ids.astype(np.int64), "attention_mask": np.ones_like(ids, dtype=np.int64), "position_ids": pos}


class DecodeRun:
    """``tokens.shape[1]`` one-token decode calls of ``rt`` after ``context`` tokens, one per
    :meth:`step` (a :class:`~.timing.Stepper`). ``past``: the prompt's ``past_key_values`` (concat
    layout: each step's present is the next past), or the ``append`` layout's buffer, rewound to the
    prompt by :meth:`reset` (each step writes its present into it: the app's work, timed with the step)."""

    def __init__(self, rt: OrtRuntime, past: dict[str, Any] | AppendBuffer, tokens: np.ndarray, context: int) -> None:
        self.rt, self.tokens, self.context = rt, tokens, context
        self.sig = rt.signatures["decode"]
        self.buffer = past if isinstance(past, AppendBuffer) else None
        self.prompt_past = None if self.buffer is not None else past
        self.past = self.prompt_past
        self.one = np.ones((tokens.shape[0], 1), dtype=np.int64)

    def reset(self) -> None:
        if self.buffer is not None:
            self.buffer.rewind(self.context)
        self.past = self.prompt_past

    def step(self, i: int) -> dict[str, np.ndarray]:
        """Decode call ``i`` (after calls 0..i-1 since :meth:`reset`); its routing outputs."""
        batch, pos = self.tokens.shape[0], self.context + i
        feeds = {"input_ids": self.tokens[:, i : i + 1], "position_ids": np.full((batch, 1), pos, dtype=np.int64)}
        if self.buffer is None:
            outs = self.rt.run("decode", {**feeds, "attention_mask": np.ones((batch, pos + 1), dtype=np.int64), **self.past})
            self.past = self.sig.past_feeds(outs)
        else:
            outs = self.rt.run("decode", {**feeds, **self.buffer.feeds(self.one)})
            self.buffer.append(self.sig.past_feeds(outs), self.one)
        return {k: v for k, v in outs.items() if k.startswith("routing.")}


def decode_steps(rt: OrtRuntime, past: dict[str, Any] | AppendBuffer, tokens: np.ndarray, context: int) -> list[dict[str, np.ndarray]]:
    """Every step of a :class:`DecodeRun` from the prompt; each call's routing outputs."""
    run = DecodeRun(rt, past, tokens, context)
    run.reset()
    return [run.step(i) for i in range(tokens.shape[1])]


def realised_skip_rates(routing: list[dict[str, np.ndarray]], tokens: int) -> dict[int, float]:
    """Per threshold block: 1 - kept rows / decoded tokens over the steps (``routing.N.rows``)."""
    kept: dict[int, int] = {}
    for step in routing:
        for name, rows in step.items():
            if name.endswith(".rows"):
                b = int(name.split(".")[1])
                kept[b] = kept.get(b, 0) + int(np.asarray(rows).size)
    return {b: round(1.0 - k / (tokens * len(routing)), 4) for b, k in sorted(kept.items())}


def bench_prefill_ort(dense: OrtRuntime, routed: OrtRuntime, config: Any, block_sparsity: list[float], sparsity: float,
                      batch: int, seq: int, warmup: int, iters: int, logits: str = DEFAULT_LOGITS) -> OrtPrefillRow:
    load = os.getloadavg()[0]
    ids = np.random.default_rng(seq * 1000 + batch).integers(0, config.vocab_size, (batch, seq), dtype=np.int64)
    feeds = prefill_feeds(ids)
    (d, d_lo, d_hi), (r, r_lo, r_hi) = time_interleaved(lambda: dense.run("prefill", feeds), lambda: routed.run("prefill", feeds),
                                                        warmup, iters)
    linear, matmul = prefill_ideals(config, block_sparsity, seq, logits)
    speed = d / r
    return OrtPrefillRow(batch, seq, sparsity, d, r, (d_lo, d_hi), (r_lo, r_hi), speed, linear, matmul, speed / linear,
                         speed / matmul, speed > matmul, load)


def bench_decode_ort(dense: OrtRuntime, routed: OrtRuntime, config: Any, block_sparsity: list[float], sparsity: float,
                     ids: np.ndarray, context: int, warmup: int, iters: int) -> OrtDecodeRow:
    """``ids`` [batch, context + steps]: the prompt, then the decoded tokens."""
    load = os.getloadavg()[0]
    batch, steps = ids.shape[0], ids.shape[1] - context
    prompt, tokens = prefill_feeds(ids[:, :context]), np.ascontiguousarray(ids[:, context:])
    pasts: dict[str, Any] = {name: rt.signatures["prefill"].past_feeds(rt.run("prefill", prompt)) for name, rt in (("dense", dense), ("routed", routed))}
    if dense.signatures["decode"].kv_cache == "append":  # a buffer the size of the run, as an app sizes it
        pasts = {name: AppendBuffer(p, prompt["attention_mask"], context + steps) for name, p in pasts.items()}
    per_block = realised_skip_rates(decode_steps(routed, pasts["routed"], tokens, context), batch)
    (d, d_lo, d_hi), (r, r_lo, r_hi) = time_steps_interleaved(
        DecodeRun(dense, pasts["dense"], tokens, context), DecodeRun(routed, pasts["routed"], tokens, context), steps, warmup, iters)
    linear, matmul = decode_ideals(config, block_sparsity, per_block, context, steps)
    speed = d / r
    skip = sum(per_block.values()) / len(per_block) if per_block else None
    return OrtDecodeRow(batch, context, sparsity, steps, d, r, (d_lo, d_hi), (r_lo, r_hi),
                        speed, linear, matmul, speed / linear, speed / matmul, speed > matmul, skip, per_block, load)


def time_cases(dense: Any, routed: Any, config: Any, block_sparsity: list[float], sparsity: float, s: OrtSettings,
               prompts: dict[int, Any], bar: Any) -> tuple[list[OrtPrefillRow], list[OrtDecodeRow]]:
    """Every prefill (batch x length) and decode (batch x context) case of one sparsity, dense
    against routed on one runtime (any with ``run(graph, feeds)`` and the graphs' signatures)."""
    prefill, decode = [], []
    for b in s.batches:
        for seq in s.seqs:
            bar.set_postfix_str(f"s={sparsity} prefill B={b} L={seq}")
            prefill.append(bench_prefill_ort(dense, routed, config, block_sparsity, sparsity, b, seq, s.warmup, s.iters, s.logits))
            bar.update()
    for b in s.decode_batches:
        for c, ids in prompts.items():
            bar.set_postfix_str(f"s={sparsity} decode B={b} ctx={c}")
            decode.append(bench_decode_ort(dense, routed, config, block_sparsity, sparsity, ids[:b].numpy(), c, s.warmup, s.iters))
            bar.update()
    return prefill, decode


def run_onnxruntime(model: Any, s: OrtSettings, workdir: Path | None = None) -> dict[str, Any]:
    """Export dense and routed graphs, time them; returns the rows and what was run."""
    cfg = model.config
    n = int(cfg.num_hidden_layers)
    prompts = decode_prompts(int(cfg.vocab_size), s.decode_contexts, max(s.decode_batches), s.decode_steps)
    cases = len(s.sparsities) * (len(s.batches) * len(s.seqs) + len(s.decode_batches) * len(prompts))
    prefill: list[OrtPrefillRow] = []
    decode: list[OrtDecodeRow] = []
    memory: list[MemoryRow] = []
    with tempfile.TemporaryDirectory(prefix="ftp-bench-ort-", dir=workdir) as tmp:
        bar = tqdm(total=1 + len(s.sparsities) + cases, desc="onnxruntime bench", unit="step")
        bar.set_postfix_str("export dense")
        dense_pair = export_model(RoutedCausalLM(model, new_schedule(cfg, [0.0] * n)).eval(), Path(tmp) / "dense", s.dtype, s.logits,
                                  s.kv_cache)
        dense = ort_runtime(dense_pair, s.threads)
        bar.update()
        dense_mib = _rise(dense_pair, s, cfg) if s.memory else None
        for sp in s.sparsities:
            bar.set_postfix_str(f"s={sp}: decode thresholds, export")
            routed_model = calibrated_routed(model, sp, prompts, s.decode_steps)
            schedule = routed_model.schedule
            pair = export_model(routed_model, Path(tmp) / f"s{sp}", s.dtype, s.logits, s.kv_cache)
            routed = ort_runtime(pair, s.threads)
            bar.update()
            rows = time_cases(dense, routed, cfg, schedule.block_sparsity, sp, s, prompts, bar)
            prefill += rows[0]
            decode += rows[1]
            if dense_mib is not None:
                routed_mib = _rise(pair, s, cfg)
                memory.append(MemoryRow.of("onnxruntime", max(s.seqs), s.batches[0], sp, dense_mib, routed_mib))
            del routed
        bar.close()
    return {"prefill": prefill, "decode": decode, "memory": memory, "opset": dense_pair.opset}


def _rise(pair: ExportedPair, s: OrtSettings, cfg: Any) -> list[float]:
    return measure(ort_args(pair.prefill_file, max(s.seqs), s.batches[0], s.threads, int(cfg.vocab_size)), s.memory)
