"""Per-token skip costs: how much the output distribution moves when one token skips one block.

For block b and token t of a calibration window, skipping replaces the block's output
h_out[t] by its input h_in[t], a perturbation ``-delta`` with ``delta = h_out[t] - h_in[t]``
(its K/V are unchanged: skipped tokens still write them). At the dense model the KL to dense
has zero gradient, so the first change is second order:

    cost[b, t] = 1/2 * delta^T F delta,   F = Fisher of the model's next-token distributions
                                          with respect to h_out[t]

estimated without forming F: for y sampled from the dense model at every position,
``E[(grad_{h_out[t]} log p(y) . delta)^2] = delta^T F delta`` (samples at different positions
are independent and their score functions have mean 0, so cross terms vanish). One backward
pass per sample gives the costs of every token in every block at once.

Why not the straight-through gradient: at a token the block computes, the loss is flat in the
gate (the tangent at g = 1 predicted -7e-6 for a real +1.3e-3 KL change on the embedded model,
see ``scripts/diagnose_router_gradient.py``), so gradient training cannot tell which kept
tokens are cheap to skip. These costs measure exactly that.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ftp_export.evaluation.baselines import layer_io
from ftp_export_trainer import distributed as dist


def _batch_costs(hf: Any, ids: torch.Tensor, samples: int, seed: int) -> torch.Tensor:
    layers = hf.model.layers
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(i: int) -> Callable[..., None]:
        def fn(module: torch.nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            h_in, h_out = layer_io(args, kwargs, out)
            h_out.retain_grad()
            seen[i] = (h_in, h_out)

        return fn

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    cost = torch.zeros(len(layers), *ids.shape, dtype=torch.float32, device=ids.device)
    gen = torch.Generator(device=ids.device).manual_seed(seed)
    try:
        for _ in range(samples):
            seen.clear()
            with torch.enable_grad():
                emb = hf.model.embed_tokens(ids).detach().requires_grad_(True)  # weights are frozen
                logits = hf(inputs_embeds=emb, use_cache=False).logits.float()
                logp = torch.log_softmax(logits, dim=-1)
                y = torch.multinomial(logp.detach().exp().reshape(-1, logp.shape[-1]), 1, generator=gen).view(ids.shape)
                logp.gather(-1, y.unsqueeze(-1)).sum().backward()
            for i, (h_in, h_out) in seen.items():
                delta = (h_out - h_in).detach().float()
                cost[i] += (h_out.grad.float() * delta).sum(-1).square()
    finally:
        for h in handles:
            h.remove()
    return cost / (2 * samples)


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
        mine[i] = _batch_costs(hf, ids, samples, seed + i).reshape(-1)
        if progress:
            progress(1)
    n_layers = len(hf.model.layers)
    sizes = [min(batch_size, len(data) - s) for s in starts]
    like = torch.zeros(n_layers * batch_size * data.shape[1], device=data.device)
    rows = dist.gather_items(len(starts), {i: torch.nn.functional.pad(v, (0, like.numel() - v.numel())) for i, v in mine.items()}, like)
    parts = [r[: n_layers * k * data.shape[1]].view(n_layers, k, data.shape[1]) for r, k in zip(rows, sizes)]
    return torch.cat(parts, dim=1)
