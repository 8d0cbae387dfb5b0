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


def fisher_skip_costs(
    hf: Any, ids: torch.Tensor, samples: int, seed: int, attention_mask: torch.Tensor | None = None, sublayers: bool = False
) -> torch.Tensor:
    """Skip costs [blocks, B, T] (float32) of every token of ``ids`` [B, T] in every block of the
    frozen Hugging Face causal LM ``hf``, from ``samples`` sampled next tokens per position
    (seeded). ``attention_mask`` [B, T] (1 = real token, left or right padding): padded positions
    are left out of the sampled log-likelihood and positions count real tokens, as the routed
    model's do.

    ``sublayers=True`` returns [blocks, 3, B, T]: the costs of a token skipping only the attention
    sublayer (perturbation ``-(h_mid - h_in)`` at ``h_mid``, the residual stream after attention,
    whose gradient carries the MLP's reaction), only the MLP (``-(h_out - h_mid)`` at ``h_out``),
    and the whole block (index 2, the same numbers as ``sublayers=False``)."""
    layers = hf.model.layers
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    mid: dict[int, torch.Tensor] = {}

    def hook(i: int) -> Callable[..., None]:
        def fn(module: torch.nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            h_in, h_out = layer_io(args, kwargs, out)
            h_out.retain_grad()
            seen[i] = (h_in, h_out)

        return fn

    def mid_hook(i: int) -> Callable[..., None]:
        def fn(module: torch.nn.Module, args: tuple) -> None:  # the post-attention norm's input is h_mid
            args[0].retain_grad()
            mid[i] = args[0]

        return fn

    extra: dict[str, torch.Tensor] = {}
    if attention_mask is not None:
        extra = {"attention_mask": attention_mask, "position_ids": (torch.cumsum(attention_mask, -1) - 1).clamp(min=0)}
    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    if sublayers:
        handles += [layer.post_attention_layernorm.register_forward_pre_hook(mid_hook(i)) for i, layer in enumerate(layers)]
    cost = torch.zeros(len(layers), *((3,) if sublayers else ()), *ids.shape, dtype=torch.float32, device=ids.device)
    gen = torch.Generator(device=ids.device).manual_seed(seed)
    try:
        for _ in range(samples):
            seen.clear()
            with torch.enable_grad():
                emb = hf.model.embed_tokens(ids).detach().requires_grad_(True)  # weights are frozen
                logits = hf(inputs_embeds=emb, use_cache=False, **extra).logits.float()
                logp = torch.log_softmax(logits, dim=-1)
                y = torch.multinomial(logp.detach().exp().reshape(-1, logp.shape[-1]), 1, generator=gen).view(ids.shape)
                picked = logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
                if attention_mask is not None:
                    picked = picked * attention_mask.to(picked.dtype)
                picked.sum().backward()
            for i, (h_in, h_out) in seen.items():
                whole = _projected(h_out, h_out - h_in)
                if not sublayers:
                    cost[i] += whole
                    continue
                cost[i, 0] += _projected(mid[i], mid[i] - h_in)
                cost[i, 1] += _projected(h_out, h_out - mid[i])
                cost[i, 2] += whole
    finally:
        for h in handles:
            h.remove()
    return cost / (2 * samples)


def _projected(at: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``(grad(at) . delta)^2`` per token: one sample of ``delta^T F delta``."""
    return (at.grad.float() * delta.detach().float()).sum(-1).square()
