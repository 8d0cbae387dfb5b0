"""Forward passes and KL to dense shared by the GA fitness, block search, router training and
the final-step selection (the held-out table's perplexity is :func:`ftp_export.evaluation.metrics.perplexity`)."""

from __future__ import annotations

from typing import Any

import torch

from ftp_export.evaluation.metrics import kl_per_token
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.routing.router import RouterBank
from ftp_export.schedule import new_schedule


@torch.no_grad()
def dense_logits(hf: Any, data: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Dense Hugging Face logits [N, L, V] in float32 (on the data's device)."""
    out = [hf(input_ids=data[i : i + batch_size], use_cache=False).logits.float() for i in range(0, len(data), batch_size)]
    return torch.cat(out)


def routed_model(hf: Any, block_sparsity: list[float], routers: RouterBank | None) -> RoutedCausalLM:
    """``hf`` routed by ``block_sparsity`` with ``routers`` (None: the static router)."""
    return RoutedCausalLM(hf, new_schedule(hf.config, block_sparsity, routers=routers))


@torch.no_grad()
def mean_kl(forward: Any, data: torch.Tensor, reference: torch.Tensor, batch_size: int) -> float:
    """Mean KL(dense || forward) per token of ``forward(ids) -> logits`` on ``data``."""
    total, count = 0.0, 0
    for i in range(0, len(data), batch_size):
        kl = kl_per_token(forward(data[i : i + batch_size]), reference[i : i + batch_size])
        total += float(kl.double().sum())
        count += kl.numel()
    return total / max(count, 1)


def routed_kl(model: RoutedCausalLM, data: torch.Tensor, reference: torch.Tensor, batch_size: int) -> float:
    """Mean KL(dense || routed) per token of the hard-routed (prefill) model: the GA fitness."""
    return mean_kl(lambda ids: model(ids, mode="prefill").logits, data, reference, batch_size)
