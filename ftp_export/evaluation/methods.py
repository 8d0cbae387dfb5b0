"""The model variants an evaluation compares, each as a :data:`~.scoring.Forward`.

- ``dense``: the Hugging Face model itself.
- ``ftp``: a schedule file (trained routers + per-block sparsity) on the routed model.
- ``uniform-static``: the same mean sparsity spread evenly (block 0 dense) with the static
  position-priority router - exactly the same linear FLOPs as the FTP schedule.
- ``shortgpt``: the blocks with the lowest ShortGPT block influence dropped. Whole blocks rarely
  hit the routed model's FLOPs exactly, so the harness evaluates the two drop counts that bracket
  them (:func:`ftp_export.evaluation.baselines.bracketing_drop_counts`) and compares FTP with the two mixed
  over requests to FTP's FLOPs (:func:`ftp_export.evaluation.harness.add_equal_flop_comparison`).
- ``greedy-drop``: the first blocks of the greedy KL removal order that ``ftp-train`` searched
  on its calibration windows and stored in the schedule (``produced_by.block_removal``; SLEB's
  method). It uses the same block search FTP's GA starts from, so FTP against it isolates what
  token routing adds over choosing blocks well.

Prefill routing (exact top-k) is used for every forward: it is what a prompt's log-likelihood
goes through at inference. Each method also carries a ``decoder``, the routed model that
decode-mode perplexity runs (:func:`decode_logits`: prompt by prefill, the rest of the window
teacher-forced through the decode path with the KV cache, as generation runs): the schedule
itself for FTP, a schedule of 0s and 1s for layer dropping (docs/routing.md: exactly layer
dropping, whose cache keeps every layer's length) and no schedule for dense. The static
uniform baseline has no calibrated decode thresholds (its decode would compute every token),
so it has no decoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ftp_export.evaluation.baselines import bracketing_drop_counts, drop_blocks, shortgpt_blocks
from ftp_export.evaluation.scoring import Forward
from ftp_export.flops import counted_routers, routed_linear_flop_ratio
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.routing.router import RouterBank
from ftp_export.schedule import Schedule, new_schedule, uniform_sparsity


@dataclass
class Method:
    name: str
    kind: str  # dense | ftp | uniform-static | shortgpt | greedy-drop
    sparsity: float  # mean block sparsity (ShortGPT: dropped blocks / blocks)
    flop_ratio: float  # dense / pruned linear FLOPs
    forward: Forward = field(repr=False)
    detail: dict[str, Any] = field(default_factory=dict)
    decoder: RoutedCausalLM | None = field(default=None, repr=False)  # for decode-mode perplexity
    decode_note: str = ""  # why there is no decoder


@torch.no_grad()
def decode_logits(model: RoutedCausalLM, ids: torch.Tensor, prefill: int) -> torch.Tensor:
    """Logits [B, L, V] of ``ids`` [B, L] run as generation runs: ``ids[:, :prefill]`` by prefill,
    then ``ids[:, prefill:]`` teacher-forced through the decode path in ONE call with the KV cache.

    A call with a past routes every new token in decode (threshold) mode and is causal, so it
    equals ``L - prefill`` one-token decode steps (docs/routing.md; :func:`stepwise_decode_logits`
    is that loop). Columns ``prefill - 1 ..`` are decode-mode predictions; the columns before
    are the prompt's own prefill (routed over ``prefill`` tokens, not over the window)."""
    from transformers import DynamicCache

    if not 1 <= prefill < ids.shape[1]:
        raise ValueError(f"prefill {prefill} must be in [1, {ids.shape[1] - 1}] for windows of {ids.shape[1]} tokens")
    cache = DynamicCache()
    mask = torch.ones_like(ids)
    first = model(ids[:, :prefill], mask[:, :prefill], past_key_values=cache, mode="prefill").logits
    rest = model(ids[:, prefill:], mask, past_key_values=cache, mode="decode").logits
    return torch.cat([first, rest], dim=1)


@torch.no_grad()
def stepwise_decode_logits(model: RoutedCausalLM, ids: torch.Tensor, prefill: int) -> torch.Tensor:
    """:func:`decode_logits` the slow way: one decode call per token (what greedy generation
    does, teacher-forced). The reference that the one-call form must equal."""
    from transformers import DynamicCache

    cache = DynamicCache()
    mask = torch.ones_like(ids)
    out = [model(ids[:, :prefill], mask[:, :prefill], past_key_values=cache, mode="prefill").logits]
    for t in range(prefill, ids.shape[1]):
        out.append(model(ids[:, t : t + 1], mask[:, : t + 1], past_key_values=cache, mode="decode").logits)
    return torch.cat(out, dim=1)


def _decodes_every_routed_block(model: RoutedCausalLM) -> bool:
    """True unless a routed block lacks decode thresholds (its decode would compute every token)."""
    sched = model.schedule
    n = int(model.config.num_hidden_layers)
    return sched is None or all(model.block_mode(b, "decode") != "dense" for b in range(n) if sched.is_routed(b))


def hf_forward(model: Any) -> Forward:
    return lambda ids, mask: model(input_ids=ids, attention_mask=mask, use_cache=False).logits


def routed_forward(model: RoutedCausalLM) -> Forward:
    return lambda ids, mask: model(ids, attention_mask=mask, mode="prefill").logits


def dense(hf: Any) -> Method:
    return Method("dense", "dense", 0.0, 1.0, hf_forward(hf), decoder=RoutedCausalLM(hf, None).eval())


def ftp(hf: Any, schedule: Schedule, label: str) -> Method:
    sp = list(schedule.block_sparsity)
    model = RoutedCausalLM(hf, schedule).eval()
    return Method(f"FTP {label}", "ftp", schedule.target_sparsity, routed_linear_flop_ratio(hf.config, sp, counted_routers(schedule.routers)),
                  routed_forward(model), {"block_sparsity": sp}, decoder=model)


def routed(hf: Any, name: str, kind: str, block_sparsity: list[float], routers: RouterBank | None = None) -> Method:
    """``block_sparsity`` on the routed model with ``routers`` (None: the static router); no
    decode thresholds, so no decoder."""
    sp = list(block_sparsity)
    model = RoutedCausalLM(hf, new_schedule(hf.config, sp, routers=routers)).eval()
    ok = _decodes_every_routed_block(model)
    flops = routed_linear_flop_ratio(hf.config, sp, counted_routers(routers))
    return Method(name, kind, sum(sp) / len(sp), flops, routed_forward(model), {"block_sparsity": sp},
                  decoder=model if ok else None, decode_note="" if ok else "no calibrated decode thresholds")


def uniform_static(hf: Any, sparsity: float) -> Method:
    """``sparsity`` spread evenly over blocks 1.., with the static router."""
    sp = uniform_sparsity(int(hf.config.num_hidden_layers), sparsity)
    return routed(hf, f"uniform + static s={sparsity:.2f}", "uniform-static", sp)


DROP_TITLES = {"shortgpt": "ShortGPT", "greedy-drop": "greedy KL"}  # layer-dropping kind -> title


def _layer_drop(hf: Any, kind: str, blocks: list[int], detail: dict[str, Any]) -> Method:
    """``blocks`` removed from ``hf``: a layer-dropping row named '<title> drop <count>/<blocks>'."""
    n, count = int(hf.config.num_hidden_layers), len(blocks)
    pruned = drop_blocks(hf, blocks) if blocks else hf
    zero_one = new_schedule(hf.config, [1.0 if b in blocks else 0.0 for b in range(n)])
    return Method(f"{DROP_TITLES[kind]} drop {count}/{n}", kind, count / n, n / (n - count), hf_forward(pruned),
                  {"dropped_blocks": blocks, **detail}, decoder=RoutedCausalLM(hf, zero_one).eval())


def shortgpt(hf: Any, influence: list[float], count: int) -> Method:
    """The ``count`` least influential blocks dropped."""
    return _layer_drop(hf, "shortgpt", shortgpt_blocks(influence, count), {"block_influence": influence})


def greedy_drop(hf: Any, order: list[int], count: int) -> Method:
    """The first ``count`` blocks of a greedy removal order dropped."""
    return _layer_drop(hf, "greedy-drop", sorted(order[:count]), {"removal_order": list(order)})


def layer_drops(hf: Any, block_sparsity: list[float], influence: list[float], order: list[int], routers: Any = None) -> list[Method]:
    """Layer dropping at the drop counts that bracket ``block_sparsity``'s linear FLOPs (with the
    counted ``routers``' FLOPs): ShortGPT's blocks, then the first blocks of the greedy removal
    ``order`` at each count it covers."""
    counts = bracketing_drop_counts(hf.config, block_sparsity, counted_routers(routers))
    return [shortgpt(hf, influence, c) for c in counts] + [greedy_drop(hf, order, c) for c in counts if c <= len(order)]
