"""Forward passes shared by the GA fitness and the held-out comparison."""

from __future__ import annotations

from typing import Any

import torch

from ftp_export.metrics import causal_lm_nll, kl_per_token, perplexity
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.routing.router import RouterBank
from ftp_export.schedule import new_schedule


@torch.no_grad()
def dense_logits(hf: Any, data: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Dense Hugging Face logits [N, L, V] in float32 (on the data's device)."""
    out = [hf(input_ids=data[i : i + batch_size], use_cache=False).logits.float() for i in range(0, len(data), batch_size)]
    return torch.cat(out)


def routed_model(hf: Any, block_sparsity: list[float], routers: RouterBank | None) -> RoutedCausalLM:
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


@torch.no_grad()
def held_out_metrics(forward: Any, data: torch.Tensor, reference: torch.Tensor, batch_size: int) -> dict[str, float]:
    """Perplexity and mean KL to dense of ``forward(ids) -> logits`` on held-out windows."""
    nll, n, kl_sum, kl_n = 0.0, 0, 0.0, 0
    for i in range(0, len(data), batch_size):
        ids = data[i : i + batch_size]
        logits = forward(ids)
        s, c = causal_lm_nll(logits, ids)
        nll, n = nll + s, n + c
        kl = kl_per_token(logits, reference[i : i + batch_size])
        kl_sum, kl_n = kl_sum + float(kl.double().sum()), kl_n + kl.numel()
    return {"perplexity": perplexity(nll, n), "kl_to_dense": kl_sum / max(kl_n, 1), "tokens": n}
