"""Greedy generation over the routed model with a Hugging Face cache (prefill top-k, then
threshold-routed decode steps)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ftp_export.routed.model import BlockRouting, RoutedCausalLM


@dataclass
class GenerationResult:
    tokens: torch.Tensor  # [B, new] generated ids
    step_logits: list[torch.Tensor] = field(default_factory=list)  # prefill [B,T,V] ([B,1,V] with logits='last'), then [B,1,V] per step
    step_routing: list[list[BlockRouting | None]] = field(default_factory=list)


def next_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position id of the next token for each row: number of valid tokens so far."""
    return attention_mask.to(torch.int64).sum(-1, keepdim=True)


@torch.no_grad()
def greedy_generate(
    model: RoutedCausalLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    keep_logits: bool = True,
    logits: str = "all",
) -> GenerationResult:
    """Greedy decoding; sequences keep going after EOS (fixed-length output, as parity needs).
    ``logits`` is the prefill's ('all' or 'last'); the next token is read at the last position."""
    from transformers import DynamicCache

    cache = DynamicCache()
    position_ids = (torch.cumsum(attention_mask, -1) - 1).clamp(min=0)
    out = model(input_ids, attention_mask, position_ids, past_key_values=cache, mode="prefill", logits=logits)
    result = GenerationResult(tokens=input_ids.new_zeros(input_ids.shape[0], 0))
    logits = out.logits
    for step in range(max_new_tokens):
        if keep_logits:
            result.step_logits.append(logits)
        result.step_routing.append(out.routing)
        nxt = logits[:, -1, :].argmax(-1, keepdim=True)
        result.tokens = torch.cat([result.tokens, nxt], dim=1)
        if step == max_new_tokens - 1:
            break
        pos = next_positions(attention_mask)
        attention_mask = torch.cat([attention_mask, torch.ones_like(nxt)], dim=1)
        out = model(nxt, attention_mask, pos, past_key_values=cache, mode="decode")
        logits = out.logits
    return result
