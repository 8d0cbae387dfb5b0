"""Greedy block-removal order judged by the GA's own criterion (KL to dense), a GA seed.

ShortGPT's block influence (1 - cosine of a block's input and output) ranks blocks one at a
time, each judged in the dense model. When many blocks go, that proxy picks sets whose joint
loss is far from the best: on SmolLM2-135M blocks whose influences differ by 0.001 gave
held-out perplexity 286 against 332 as the twelfth block dropped. This search removes blocks
one by one and each time keeps the removal that raises the calibration KL least, with the
blocks already removed gone (as SLEB, arXiv 2402.09025, does with perplexity). Removed blocks
are cut out of the Hugging Face model (:func:`ftp_export.evaluation.baselines.drop_blocks`), so each
candidate costs one plain forward over the windows, cheaper than a routed one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ftp_export.evaluation.baselines import drop_blocks
from ftp_export_trainer.evaluate import mean_kl

POOL = 8  # blocks re-scored per removal after the first (see greedy_removal_order)


def dropped_kl(hf: Any, blocks: list[int], data: torch.Tensor, reference: torch.Tensor, batch_size: int) -> float:
    """Mean KL(dense || model without ``blocks``) per token on ``data``."""
    model = drop_blocks(hf, blocks)
    return mean_kl(lambda ids: model(input_ids=ids, use_cache=False).logits.float(), data, reference, batch_size)


def greedy_removal_order(
    score: Callable[[list[list[int]]], list[float]], candidates: list[int], count: int, pool: int = POOL
) -> tuple[list[int], list[float]]:
    """Remove ``count`` of ``candidates`` one at a time, each time the block whose removal
    leaves the lowest score (``score`` maps block sets to KL, e.g. :func:`dropped_kl`; ties go
    to the lower index). Returns the blocks in removal order and the score after each removal.

    The first removal scores every candidate; later ones score only the ``pool`` blocks that
    scored lowest in the previous round (a block that was costly to remove stays costly), so
    the search costs ``len(candidates) + (count - 1) * pool`` forwards instead of
    ``count * len(candidates)``."""
    if not 0 <= count <= len(candidates):
        raise ValueError(f"cannot remove {count} of {len(candidates)} candidate blocks")
    removed: list[int] = []
    kls: list[float] = []
    ranked = list(candidates)  # previous round's order, cheapest first
    for step in range(count):
        tried = ranked if step == 0 else ranked[:pool]
        scores = score([removed + [b] for b in tried])
        order = sorted(zip(scores, tried))
        removed.append(order[0][1])
        kls.append(float(order[0][0]))
        ranked = [b for _, b in order[1:]] + [b for b in ranked if b not in tried]
    return removed, kls
