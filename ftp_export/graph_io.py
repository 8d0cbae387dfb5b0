"""The exported graphs' signatures: one object per graph owns its input/output names, dynamic
axes, example inputs and the flattening of the routed model's cache and routing outputs.

Every exporter (ONNX, AOTInductor, the TensorRT build), every runtime and parity read names
from here, the way optimum's OnnxConfig owns I/O for export and validation alike:

- ``prefill`` (``decoder_model``): ``input_ids``, ``attention_mask``, ``position_ids`` ->
  ``logits``, ``present.N.key/value``, ``routing.N.indices/active`` for top-k blocks. ``logits``
  is [B, 1, V] at each row's last valid token by default (what generation reads; TensorRT-LLM's
  default too) or [B, T, V] for every token (``--logits all``, e.g. for perplexity).
- ``decode`` (``decoder_with_past_model``): the same + ``past_key_values.N.key/value`` ->
  ``logits`` [B, T, V] (every new token: a call may carry several), ``present.N.key/value``,
  ``routing.N.rows`` for threshold blocks.
  ``present`` is the past with the call's K/V appended (``kv_cache='concat'``, optimum's layout), or
  only the call's K/V (``'append'``: the app keeps the cache, :mod:`ftp_export.routed.cache`).
- ``model`` (the single graph, ``--target onnx``): decode's inputs; prefill when the past is
  empty, else decode (:mod:`ftp_export.export.onnx_merge`); both graphs' outputs. Runtimes step
  it through the ``prefill`` and ``decode`` signatures.

The ``routing.*`` outputs are extra (parity compares them); runtimes that look outputs up by
name ignore them. ``present`` outputs are contiguous, so in the concat layout an app can feed one
step's outputs straight into the next step's ``past_key_values`` inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ftp_export.routed.cache import DEFAULT_KV_CACHE, TensorCache, check_kv_cache
from ftp_export.routed.model import RoutedCausalLM, RoutedOutput
from ftp_export.routing.selection import MAX_TOKENS, Q16

INPUTS: tuple[str, ...] = ("input_ids", "attention_mask", "position_ids")
LOGITS = "logits"
GRAPH_FILES = {"prefill": "decoder_model", "decode": "decoder_with_past_model"}  # graph -> file stem (optimum)
MERGED = "model"  # the single decoder graph (``model.onnx``): prefill when the past is empty, else decode
LOGITS_CHOICES = ("last", "all")  # prefill logits: each row's last valid token, or every token
DEFAULT_LOGITS = "last"
# dynamic dimension names, as optimum names them (shared by every layer's cache)
BATCH = "batch_size"
SEQUENCE = "sequence_length"
PAST = "past_sequence_length"
TOTAL = f"{PAST} + {SEQUENCE}"
LOGITS_LENGTH = "logits_sequence_length"  # the single graph's logits dim 1 when a prefill returns one per row


def past_names(num_layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def routing_names(model: RoutedCausalLM, mode: str) -> list[str]:
    """Routing outputs of a graph: ``routing.b.indices/active`` (top-k) or ``routing.b.rows`` (threshold)."""
    names: list[str] = []
    for b in range(len(model.layers)):
        kind = model.block_mode(b, mode)
        if kind == "topk":
            names += [f"routing.{b}.indices", f"routing.{b}.active"]
        elif kind == "threshold":
            names.append(f"routing.{b}.rows")
    return names


@dataclass(frozen=True)
class GraphSignature:
    """Inputs and outputs of one exported graph: ``prefill``, ``decode``, or ``model`` (the single
    graph: decode's inputs, both graphs' outputs, :func:`merged_signature`). ``logits``: what a
    prefill returns, 'last' ([B, 1, V], each row's last valid token of the call) or 'all' ([B, T, V]);
    a decode step returns 'all'."""

    graph: str
    num_layers: int
    routing: tuple[str, ...]
    logits: str = "all"
    kv_cache: str = DEFAULT_KV_CACHE  # present: the whole cache ('concat') or the call's K/V ('append')

    @property
    def with_past(self) -> bool:
        return self.graph != "prefill"

    @property
    def stem(self) -> str:
        """File name without extension: optimum's ``decoder_model`` / ``decoder_with_past_model`` / ``model``."""
        return GRAPH_FILES.get(self.graph, self.graph)

    @property
    def inputs(self) -> list[str]:
        return [*INPUTS, *(past_names(self.num_layers) if self.with_past else [])]

    @property
    def present(self) -> list[str]:
        return present_names(self.num_layers)

    @property
    def outputs(self) -> list[str]:
        return [LOGITS, *self.present, *self.routing]

    def dynamic_shapes(self) -> dict[str, Any]:
        """torch.export dynamic shapes: batch and length of every input, batch and past length of the cache."""
        from torch.export import Dim

        shapes: dict[str, Any] = {name: {0: Dim.DYNAMIC, 1: Dim.DYNAMIC} for name in INPUTS}
        if self.with_past:
            shapes["past"] = tuple({0: Dim.DYNAMIC, 2: Dim.DYNAMIC} for _ in range(2 * self.num_layers))
        return shapes

    def axis_names(self) -> dict[str, dict[int, str]]:
        """Names of the dynamic dimensions of every input and output, as optimum names them:
        ``batch_size``, ``sequence_length`` (the call's tokens), ``past_sequence_length`` (every
        layer's cache), ``past_sequence_length + sequence_length`` (the attention mask and the
        present cache of a call with a past; the present is ``sequence_length`` long in the
        ``append`` layout); the prefill's mask and present are ``sequence_length`` long. Routing outputs: batch, and ``routed_tokens_<block>`` for a decode block's rows. The
        single graph's logits are ``logits_sequence_length`` long when its prefill returns one per row."""
        total = TOTAL if self.with_past else SEQUENCE
        names: dict[str, dict[int, str]] = {
            "input_ids": {0: BATCH, 1: SEQUENCE},
            "attention_mask": {0: BATCH, 1: total},
            "position_ids": {0: BATCH, 1: SEQUENCE},
            LOGITS: {0: BATCH, 1: SEQUENCE} if self.logits == "all" else {0: BATCH, 1: LOGITS_LENGTH} if self.graph == MERGED else {0: BATCH},
        }
        if self.with_past:
            names.update({name: {0: BATCH, 2: PAST} for name in past_names(self.num_layers)})
        present = SEQUENCE if self.kv_cache == "append" else total
        names.update({name: {0: BATCH, 2: present} for name in self.present})
        for name in self.routing:
            block = name.split(".")[1]
            names[name] = {0: f"routed_tokens_{block}"} if name.endswith(".rows") else {0: BATCH}
        return names

    def named(self, values: Sequence[Any]) -> dict[str, Any]:
        """Positional outputs (as a runtime returns them) -> {output name: value}."""
        if len(values) != len(self.outputs):
            raise ValueError(f"{self.graph} graph returned {len(values)} outputs, its signature has {len(self.outputs)}")
        return dict(zip(self.outputs, values))

    def past_feeds(self, outputs: dict[str, Any]) -> dict[str, Any]:
        """The ``past_key_values.*`` feeds of the next decode step from this graph's ``present.*``
        outputs (``concat`` layout; with ``append`` an app writes them into its cache buffer,
        :class:`~ftp_export.runtimes.kv_buffer.AppendBuffer`)."""
        return {past: outputs[present] for past, present in zip(past_names(self.num_layers), self.present)}

    def manifest_entry(self, file: str) -> dict[str, Any]:
        routing = {
            "prefill": "top-k per sequence (static shapes per length)",
            "decode": "per-block score threshold (data-dependent token count)",
            MERGED: "top-k per sequence when the past is empty, else per-block score threshold",
        }[self.graph]
        return {"file": file, "inputs": self.inputs, "outputs": self.outputs, "routing": routing, "logits": self.logits_shape,
                "kv_cache": self.kv_cache}

    @property
    def logits_shape(self) -> str:
        """What the ``logits`` output holds, for the manifest."""
        if self.logits == "all":
            return "[batch, tokens, vocab]"
        last = "[batch, 1, vocab] at each row's last valid token"
        return f"empty past: {last}; with a past: [batch, tokens, vocab]" if self.graph == MERGED else last


def check_logits(logits: str) -> str:
    if logits not in LOGITS_CHOICES:
        raise ValueError(f"logits={logits!r}: expected one of {', '.join(LOGITS_CHOICES)}")
    return logits


def signatures(model: RoutedCausalLM, logits: str = DEFAULT_LOGITS, kv_cache: str = DEFAULT_KV_CACHE) -> dict[str, GraphSignature]:
    """The prefill and decode signatures of ``model`` (routing outputs depend on its schedule);
    ``logits`` applies to the prefill graph, decode returns logits for every new token;
    ``kv_cache``: the present layout (:mod:`ftp_export.routed.cache`)."""
    n = int(model.config.num_hidden_layers)
    which = {"prefill": check_logits(logits), "decode": "all"}
    layout = check_kv_cache(kv_cache)
    return {g: GraphSignature(g, n, tuple(routing_names(model, g)), which[g], layout) for g in GRAPH_FILES}


def merged_signature(pair: dict[str, GraphSignature]) -> GraphSignature:
    """The single graph's signature from the prefill and decode signatures: decode's inputs; logits,
    present, then the prefill's routing outputs and the decode's."""
    prefill, decode = pair["prefill"], pair["decode"]
    return GraphSignature(MERGED, prefill.num_layers, prefill.routing + decode.routing, prefill.logits, decode.kv_cache)


def flatten_outputs(out: RoutedOutput, cache: TensorCache) -> tuple[torch.Tensor, ...]:
    """The routed forward's results in signature order: logits, present (contiguous), routing."""
    flat = [out.logits]
    for k, v in cache.present:
        # contiguous: AOTInductor packages assume the strides they were traced with, so a
        # transposed view fed back as past_key_values would be read wrongly
        flat += [k.contiguous(), v.contiguous()]
    for r in out.routing:
        if r is None:
            continue
        flat += [r.rows] if r.rows is not None else [r.indices, r.active]
    return tuple(flat)


class PrefillGraph(nn.Module):
    """Flat-tensor wrapper of the routed prefill (what exporters trace); ``logits`` 'last' or 'all'."""

    def __init__(self, model: RoutedCausalLM, logits: str = DEFAULT_LOGITS) -> None:
        super().__init__()
        self.model = model
        self.logits = check_logits(logits)

    def forward(self, input_ids, attention_mask, position_ids):
        cache = TensorCache(None)
        out = self.model(input_ids, attention_mask, position_ids, past_key_values=cache, mode="prefill", logits=self.logits)
        return flatten_outputs(out, cache)


class DecodeGraph(nn.Module):
    """Flat-tensor wrapper of one routed decode step with past (what exporters trace); ``kv_cache``
    the layout of its ``present`` (:mod:`ftp_export.routed.cache`)."""

    def __init__(self, model: RoutedCausalLM, kv_cache: str = DEFAULT_KV_CACHE) -> None:
        super().__init__()
        self.model = model
        self.kv_cache = check_kv_cache(kv_cache)

    def forward(self, input_ids, attention_mask, position_ids, *past):
        cache = TensorCache([(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)], self.kv_cache)
        out = self.model(input_ids, attention_mask, position_ids, past_key_values=cache, mode="decode")
        return flatten_outputs(out, cache)


def example_inputs(model: RoutedCausalLM, batch: int, seq: int, past: int) -> tuple[torch.Tensor, ...]:
    """Deterministic tracing inputs on the model's device (cache in the model's dtype)."""
    cfg = model.config
    device = model.device
    dtype = next(model.hf.parameters()).dtype
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=g).to(device)
    mask = torch.ones(batch, past + seq, dtype=torch.int64, device=device)
    pos = (torch.arange(seq, device=device) + past).unsqueeze(0).expand(batch, seq).contiguous()
    if past == 0:
        return ids, mask, pos
    n_kv = model.layers[0].self_attn.k_proj.out_features // model.head_dim
    kv = [
        torch.randn(batch, n_kv, past, model.head_dim, generator=g).to(device=device, dtype=dtype)
        for _ in range(2 * cfg.num_hidden_layers)
    ]
    return (ids, mask, pos, *kv)


@dataclass
class TraceSpec:
    """What a graph exporter traces for one graph: wrapper module, example inputs, signature."""

    module: nn.Module
    args: tuple[torch.Tensor, ...]
    signature: GraphSignature


MIN_TRACE_LENGTH = 8


def prefill_trace_length(model: RoutedCausalLM, minimum: int = MIN_TRACE_LENGTH) -> int:
    """Shortest prompt length >= ``minimum`` at which every top-k block's slot count K
    (:func:`~ftp_export.routing.selection.slot_count`) is neither 1 nor T.

    torch.export specialises on the example's values wherever an op asks whether a size is 1
    (broadcasting, contiguity, the CPU matmul lowering). Traced at 8 tokens, a block at sparsity
    >= 0.875 has K = 1, the program carries the guard K == 1, AOTInductor does not check it, and
    its code then reads only the first slot whenever a prompt gives K >= 2: wrong or NaN rows
    (the shipped s40's block 3, s = 0.966, K = 1 up to T = 29). Traced where every K is in
    [2, T - 1], the code is generic in K (and still right where a prompt gives K = 1 or K = T).

    With ``m = 2 * keep_q16 - 1``, ``count(T) = ceil(T * m / 2**17)``: ``count(T) >= 2`` from
    ``T = 2**17 // m + 1`` on, ``count(T) <= T - 1`` from ``T = ceil(2**17 / (2**17 - m))`` on. A
    block whose K is 1 at every length a call may have (``MAX_TOKENS``) needs no generic trace.
    """
    lengths = [minimum]
    for b in range(len(model.layers)):
        if model.block_mode(b, "prefill") != "topk":
            continue
        m = 2 * model.q16[b] - 1
        two_slots = 2 * Q16 // m + 1
        if two_slots <= MAX_TOKENS:
            lengths.append(two_slots)
        lengths.append(-(-2 * Q16 // (2 * Q16 - m)))
    return min(max(lengths), MAX_TOKENS)


def trace_specs(model: RoutedCausalLM, logits: str = DEFAULT_LOGITS, kv_cache: str = DEFAULT_KV_CACHE) -> dict[str, TraceSpec]:
    """Per graph: the wrapper, example inputs and signature every exporter (ONNX, AOTInductor)
    uses; ``logits`` ('last' or 'all') is the prefill graph's, ``kv_cache`` the present layout."""
    sig = signatures(model, logits, kv_cache)
    prefill_args = example_inputs(model, batch=2, seq=prefill_trace_length(model), past=0)
    return {
        "prefill": TraceSpec(PrefillGraph(model, logits).eval(), prefill_args, sig["prefill"]),
        "decode": TraceSpec(DecodeGraph(model, kv_cache).eval(), example_inputs(model, batch=2, seq=2, past=6), sig["decode"]),
    }
