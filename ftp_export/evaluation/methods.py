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

Prefill routing (exact top-k) is used throughout: it is what a prompt's log-likelihood goes
through at inference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ftp_export.evaluation.baselines import bracketing_drop_counts, drop_blocks, shortgpt_blocks
from ftp_export.evaluation.scoring import Forward
from ftp_export.flops import routed_linear_flop_ratio
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


def hf_forward(model: Any) -> Forward:
    return lambda ids, mask: model(input_ids=ids, attention_mask=mask, use_cache=False).logits


def routed_forward(model: RoutedCausalLM) -> Forward:
    return lambda ids, mask: model(ids, attention_mask=mask, mode="prefill").logits


def dense(hf: Any) -> Method:
    return Method("dense", "dense", 0.0, 1.0, hf_forward(hf))


def ftp(hf: Any, schedule: Schedule, label: str) -> Method:
    sp = list(schedule.block_sparsity)
    return Method(f"FTP {label}", "ftp", schedule.target_sparsity, routed_linear_flop_ratio(hf.config, sp),
                  routed_forward(RoutedCausalLM(hf, schedule).eval()), {"block_sparsity": sp})


def routed(hf: Any, name: str, kind: str, block_sparsity: list[float], routers: RouterBank | None = None) -> Method:
    """``block_sparsity`` on the routed model with ``routers`` (None: the static router)."""
    sp = list(block_sparsity)
    model = RoutedCausalLM(hf, new_schedule(hf.config, sp, routers=routers)).eval()
    return Method(name, kind, sum(sp) / len(sp), routed_linear_flop_ratio(hf.config, sp), routed_forward(model), {"block_sparsity": sp})


def uniform_static(hf: Any, sparsity: float) -> Method:
    """``sparsity`` spread evenly over blocks 1.., with the static router."""
    sp = uniform_sparsity(int(hf.config.num_hidden_layers), sparsity)
    return routed(hf, f"uniform + static s={sparsity:.2f}", "uniform-static", sp)


DROP_TITLES = {"shortgpt": "ShortGPT", "greedy-drop": "greedy KL"}  # layer-dropping kind -> title


def _layer_drop(hf: Any, kind: str, blocks: list[int], detail: dict[str, Any]) -> Method:
    """``blocks`` removed from ``hf``: a layer-dropping row named '<title> drop <count>/<blocks>'."""
    n, count = int(hf.config.num_hidden_layers), len(blocks)
    pruned = drop_blocks(hf, blocks) if blocks else hf
    return Method(f"{DROP_TITLES[kind]} drop {count}/{n}", kind, count / n, n / (n - count), hf_forward(pruned),
                  {"dropped_blocks": blocks, **detail})


def shortgpt(hf: Any, influence: list[float], count: int) -> Method:
    """The ``count`` least influential blocks dropped."""
    return _layer_drop(hf, "shortgpt", shortgpt_blocks(influence, count), {"block_influence": influence})


def greedy_drop(hf: Any, order: list[int], count: int) -> Method:
    """The first ``count`` blocks of a greedy removal order dropped."""
    return _layer_drop(hf, "greedy-drop", sorted(order[:count]), {"removal_order": list(order)})


def layer_drops(hf: Any, block_sparsity: list[float], influence: list[float], order: list[int]) -> list[Method]:
    """Layer dropping at the drop counts that bracket ``block_sparsity``'s linear FLOPs: ShortGPT's
    blocks, then the first blocks of the greedy removal ``order`` at each count it covers."""
    counts = bracketing_drop_counts(hf.config, block_sparsity)
    return [shortgpt(hf, influence, c) for c in counts] + [greedy_drop(hf, order, c) for c in counts if c <= len(order)]
