"""Per-token skip costs of the calibration windows, sharded over ranks: the costs themselves are
:func:`ftp_export.evaluation.skip_costs.fisher_skip_costs` (what they are and why)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ftp_export.evaluation.skip_costs import fisher_skip_costs
from ftp_export_trainer import distributed as dist


def skip_costs(
    hf: Any,
    data: torch.Tensor,
    samples: int = 4,
    batch_size: int = 8,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Fisher skip costs [blocks, N, T] (float32) of every token of ``data`` [N, T] in every
    block of the frozen Hugging Face causal LM ``hf``. Batches are sharded over ranks; the
    result is identical on every rank and for any number of ranks (each batch has its own seed)."""
    starts = list(range(0, len(data), batch_size))
    mine = {}
    for i in dist.shard(len(starts)):
        ids = data[starts[i] : starts[i] + batch_size]
        mine[i] = fisher_skip_costs(hf, ids, samples, seed + i).reshape(-1)
        if progress:
            progress(1)
    n_layers = len(hf.model.layers)
    sizes = [min(batch_size, len(data) - s) for s in starts]
    like = torch.zeros(n_layers * batch_size * data.shape[1], device=data.device)
    rows = dist.gather_items(len(starts), {i: torch.nn.functional.pad(v, (0, like.numel() - v.numel())) for i, v in mine.items()}, like)
    parts = [r[: n_layers * k * data.shape[1]].view(n_layers, k, data.shape[1]) for r, k in zip(rows, sizes)]
    return torch.cat(parts, dim=1)
