"""The oracle with attention and MLP routed apart: would separate sublayer routing beat block routing?

Issue 16 asks to try routing a block's attention and MLP sublayers separately. Before building a
second router per block into every target, this row measures what it could win at most, the way
:mod:`.oracle` does for block routing: every token of a routed block picks one of four options,

    compute all | skip attention | skip MLP | skip both (= skip the block)

by its own first-order skip costs on the scored text (:func:`~.skip_costs.fisher_skip_costs` with
``sublayers=True``), under the same per-block linear-FLOP saving as the schedule's block sparsity
(``s x (q + o + MLP)`` FLOPs per token; K and V are always computed, as in block routing). Each
row of the batch meets its saving on its own, as top-k does. The choice minimises the summed cost
for the saving by a Lagrange multiplier found by bisection per row (:func:`choose_skips`).

The scored forward is the Hugging Face model with each sublayer's residual update multiplied by
its keep mask (:func:`masked_forward`): a skipped sublayer adds nothing to the token's residual
stream, its K/V still written, exactly block routing's semantics when both are skipped. The
block-routing oracle restricted to {compute all, skip both} is the same code
(``split=False``), so the two rows differ only in the options.
Prefill only, like :mod:`.oracle`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from ftp_export.evaluation import methods as M
from ftp_export.evaluation.oracle import SkipCostMemo
from ftp_export.flops import block_linear_flops, routed_linear_flop_ratio
from ftp_export.schedule import dropped_sparsity, routed_sparsity

SPLIT_ORACLE_TITLE = "oracle router, attention and MLP apart (skip costs of the scored text)"
BISECTION_STEPS = 60


def sublayer_savings(config: Any) -> tuple[float, float]:
    """Fractions of a block's skippable linear FLOPs (q, o and MLP) saved by skipping its
    attention (q and o projections) and its MLP; they sum to 1."""
    f = block_linear_flops(config)
    return (f.rest - f.mlp) / f.rest, f.mlp / f.rest


def choose_skips(
    costs: torch.Tensor, sparsity: float, attention_share: float, split: bool = True, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep masks (attention, MLP) [B, T] bool for one block from its ``costs`` [3, B, T]
    (attention, MLP, both): per row, the options of least summed cost whose saving is at least
    ``sparsity`` of the row's skippable FLOPs. ``split=False`` allows only compute-all and skip-both
    (block routing). ``valid`` [B, T] (default all): padding is never skipped nor counted."""
    _, bsz, seq = costs.shape
    valid = torch.ones(bsz, seq, dtype=torch.bool, device=costs.device) if valid is None else valid.to(torch.bool)
    zero = torch.zeros(1, bsz, seq, dtype=torch.float64, device=costs.device)
    option_cost = torch.cat([zero, costs.to(torch.float64).masked_fill(~valid, float("inf"))])  # none, attention, MLP, both
    saving = torch.tensor([0.0, attention_share, 1.0 - attention_share, 1.0], dtype=torch.float64, device=costs.device)
    allowed = torch.tensor([True, split, split, True], device=costs.device)
    need = sparsity * valid.sum(-1).to(torch.float64) - 1e-9

    def pick(lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        value = option_cost - lam.view(1, -1, 1) * saving.view(-1, 1, 1)
        value = value.masked_fill(~allowed.view(-1, 1, 1), float("inf"))
        choice = value.argmin(0)  # ties go to the option listed first: less skipping
        return choice, saving[choice].sum(-1)

    finite = option_cost.masked_fill(option_cost.isinf(), 0.0)
    top = finite.amax(dim=(0, 2)).clamp_min(1e-30) * 4.0 / min(attention_share, 1.0 - attention_share)
    lo, hi = torch.zeros(bsz, dtype=torch.float64, device=costs.device), top.clone()
    for _ in range(BISECTION_STEPS):  # the least multiplier whose choice saves enough, per row
        mid = (lo + hi) / 2
        _, saved = pick(mid)
        enough = saved >= need
        hi = torch.where(enough, mid, hi)
        lo = torch.where(enough, lo, mid)
    choice, _ = pick(hi)
    return (choice == 0) | (choice == 2), (choice == 0) | (choice == 1)


@contextlib.contextmanager
def masked_sublayers(hf: Any, keep: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Within the block, the attention and MLP outputs of block b are multiplied by ``keep[b]``'s
    masks [B, T] (False: the token's residual stream gets nothing from that sublayer)."""

    def scale(mask: torch.Tensor) -> Any:
        def fn(module: torch.nn.Module, args: tuple, out: Any) -> Any:
            if isinstance(out, tuple):
                return (out[0] * mask.unsqueeze(-1).to(out[0].dtype), *out[1:])
            return out * mask.unsqueeze(-1).to(out.dtype)

        return fn

    handles = []
    for b, (attention, mlp) in keep.items():
        layer = hf.model.layers[b]
        handles += [layer.self_attn.register_forward_hook(scale(attention)), layer.mlp.register_forward_hook(scale(mlp))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def masked_forward(hf: Any, ids: torch.Tensor, mask: torch.Tensor | None, keep: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Logits [B, T, V] of ``hf`` with the sublayer keep masks of :func:`masked_sublayers`."""
    with torch.no_grad(), masked_sublayers(hf, keep):
        return hf(input_ids=ids, attention_mask=mask, use_cache=False).logits


def split_oracle_method(
    hf: Any, block_sparsity: list[float], samples: int, seed: int = 0, split: bool = True, memo: SkipCostMemo | None = None
) -> M.Method:
    """The oracle row at ``block_sparsity``'s per-block FLOP savings: attention and MLP routed
    apart (``split``), or as whole blocks. Its FLOP ratio is the schedule's (no router counted).
    ``memo`` shares the costs with the block oracle's row."""
    share, _ = sublayer_savings(hf.config)
    sp = list(block_sparsity)
    memo = memo if memo is not None else SkipCostMemo(hf, samples, seed)

    def forward(ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        costs = memo(ids, mask)
        keep = {}
        for b, s in enumerate(sp):
            if dropped_sparsity(s):
                none = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
                keep[b] = (none, none)
            elif routed_sparsity(s):
                keep[b] = choose_skips(costs[b], s, share, split, mask)
        return masked_forward(hf, ids, mask, keep)

    name = SPLIT_ORACLE_TITLE if split else "oracle router, whole blocks by the same choice"
    return M.Method(name, "oracle", sum(sp) / len(sp), routed_linear_flop_ratio(hf.config, sp), forward, {"block_sparsity": sp},
                    decode_note="prefill only: a decoded token's cost needs its future")
