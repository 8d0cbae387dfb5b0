"""The routed causal LM: a Hugging Face Llama-family model plus a schedule.

One implementation of docs/routing.md used by the trainer, the PyTorch reference, generation
and every export target (targets only swap the :class:`~ftp_export.routed.lowering.Lowering`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from ftp_export.architectures import check_supported, fingerprint, sliding_windows
from ftp_export.routed.block import attention_mask_for, compute_rows, project_kv, zero_kv
from ftp_export.routed.lowering import Lowering, TorchLowering
from ftp_export.routing.factors import received_attention, router_features, update_signal
from ftp_export.routing.selection import keep_q16, soft_topk_gate
from ftp_export.schedule import Schedule

Mode = Literal["prefill", "decode", "soft"]


class TensorCache:
    """A minimal KV cache over flat tensors (the ONNX wrapper's past/present), with the
    ``update``/``get_seq_length`` interface of Hugging Face's DynamicCache."""

    def __init__(self, past: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        self.past = past
        self.present: list[tuple[torch.Tensor, torch.Tensor]] = []

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if not self.past else self.past[0][0].shape[2]

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.past:
            pk, pv = self.past[layer_idx]
            k = torch.cat([pk, k], dim=2)
            v = torch.cat([pv, v], dim=2)
        self.present.append((k, v))
        return k, v


@dataclass
class BlockRouting:
    """What one routed block selected: prefill ``indices``/``active`` [B, K], decode ``rows`` [N]."""

    indices: torch.Tensor | None = None
    active: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    gate: torch.Tensor | None = None  # soft mode: [B, T] differentiable keep gate


@dataclass
class RoutedOutput:
    logits: torch.Tensor | None  # None only when the forward stopped early (``stop_after_block``)
    past_key_values: Any
    routing: list[BlockRouting | None] = field(default_factory=list)


class RoutedCausalLM(nn.Module):
    """Wraps a loaded Hugging Face ``*ForCausalLM`` with per-block token routing.

    ``schedule=None`` (or all block sparsities 0) gives the dense model, which must equal the
    Hugging Face forward to float32 rounding.
    """

    def __init__(self, hf_model: nn.Module, schedule: Schedule | None, lowering: Lowering | None = None) -> None:
        super().__init__()
        config = hf_model.config
        check_supported(config)
        if schedule is not None:
            schedule.check_model(fingerprint(config))
        self.hf = hf_model
        self.config = config
        self.schedule = schedule
        self.routers = schedule.routers if schedule is not None else None
        self.lowering = lowering or TorchLowering()
        self.windows = sliding_windows(config)
        attn0 = hf_model.model.layers[0].self_attn
        self.head_dim = attn0.head_dim
        self.scaling = attn0.scaling
        n = config.num_hidden_layers
        self.q16 = [keep_q16(schedule.keep_ratio(b)) if schedule and schedule.is_routed(b) else 65536 for b in range(n)]

    @property
    def layers(self) -> nn.ModuleList:
        return self.hf.model.layers

    def block_mode(self, block: int, mode: Mode) -> str:
        """'dense', 'dropped', 'topk', 'soft' or 'threshold' for this block in this mode."""
        if self.schedule is not None and self.schedule.is_dropped(block):
            return "dropped"
        if self.schedule is None or not self.schedule.is_routed(block):
            return "dense"
        if mode == "prefill":
            return "topk"
        if mode == "soft":
            return "soft"
        return "threshold" if self.schedule.decode_thresholds[block] is not None else "dense"

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        mode: Mode | None = None,
        keep_scores: bool = False,
        temperature: float = 0.1,
        stop_after_block: int | None = None,
    ) -> RoutedOutput:
        """Routed forward. ``mode`` defaults to 'prefill' without past and 'decode' with past.

        ``mode='soft'`` is the training relaxation of prefill: every token runs the block, and
        its update is scaled by a straight-through gate whose forward value is exactly the hard
        top-k decision (so the loss sees the real routed model, up to float rounding of the
        un-gathered compute) and whose gradient is that of ``sigmoid((score - tau) / temperature)``,
        tau midway between the k-th and (k+1)-th valid scores of the row.

        ``attention_mask`` [B, past + T] (1 = real token), ``position_ids`` [B, T]; as in
        Hugging Face, left or right padding is expressed through the mask.

        ``stop_after_block=b`` returns after block b without logits (the cache then holds blocks
        0..b only, so every call on that cache must stop at the same block): calibration needs
        one block's scores and not the rest of the model.
        """
        from transformers import DynamicCache

        hf = self.hf.model
        bsz, seq = input_ids.shape
        cache = past_key_values if past_key_values is not None else DynamicCache()
        past = cache.get_seq_length()
        if mode is None:
            mode = "prefill" if past == 0 else "decode"
        if attention_mask is None:
            attention_mask = torch.ones(bsz, past + seq, dtype=torch.long, device=input_ids.device)
        key_valid = attention_mask.to(torch.bool)
        if position_ids is None:
            position_ids = (torch.cumsum(attention_mask, dim=-1) - 1).clamp(min=0)[:, past:]
        valid = key_valid[:, past:]
        n_ctx = attention_mask.to(torch.int64).sum(-1)

        h = hf.embed_tokens(input_ids)
        cos, sin = hf.rotary_emb(h, position_ids)
        signal = torch.zeros(bsz, seq, dtype=torch.float32, device=h.device)
        tok = torch.arange(seq, device=h.device)
        all_tok = tok.unsqueeze(0).expand(bsz, seq)
        routing: list[BlockRouting | None] = []

        for b, layer in enumerate(self.layers):
            kind = self.block_mode(b, mode)
            if kind == "dropped":
                # No query ever reads this block's cache, so nothing is projected: zeros keep
                # the cache layout (every layer the same length) at no FLOPs; h and the
                # attention signal pass through unchanged.
                cache.update(*zero_kv(layer, h, self.head_dim), b)
                routing.append(None)
                if stop_after_block is not None and b >= stop_after_block:
                    return RoutedOutput(logits=None, past_key_values=cache, routing=routing)
                continue
            k_new, v_new = project_kv(layer, layer.input_layernorm(h), cos, sin, self.head_dim)
            keys, values = cache.update(k_new, v_new, b)
            if kind != "dense":
                feats = router_features(signal, position_ids, n_ctx, valid, self.schedule.block_sparsity[b])
                scores = self.routers(b, feats)
            if kind in ("dense", "soft"):  # every token runs the block
                allowed = attention_mask_for(key_valid, all_tok + past, self.windows[b])
                full, probs = compute_rows(layer, h, cos, sin, keys, values, allowed, self.head_dim, self.scaling)
                if kind == "dense":
                    h, q_weight = full, valid
                    routing.append(None)
                else:
                    gate = soft_topk_gate(scores, valid, self.q16[b], temperature)
                    h = h + gate.unsqueeze(-1).to(h.dtype) * (full - h)
                    q_weight = gate * valid
                    routing.append(BlockRouting(scores=scores, gate=gate))
                total, count = received_attention(probs[:, :, past:], all_tok, q_weight)
            elif kind == "topk":
                rows, idx, active = self.lowering.topk_gather(h, scores, valid, self.q16[b])
                pos = torch.gather(position_ids, 1, idx)
                r_cos, r_sin = hf.rotary_emb(rows, pos)
                allowed = attention_mask_for(key_valid, idx + past, self.windows[b])
                out, probs = compute_rows(layer, rows, r_cos, r_sin, keys, values, allowed, self.head_dim, self.scaling)
                q_weight = active & torch.gather(valid, 1, idx)
                total, count = received_attention(probs[:, :, past:], idx, q_weight)
                h = self.lowering.topk_scatter(h, out, idx, active)
                routing.append(BlockRouting(indices=idx, active=active, scores=scores if keep_scores else None))
            else:
                rows, flat = self.lowering.threshold_gather(h, scores, valid, self.schedule.threshold(b))
                b_idx = torch.div(flat, seq, rounding_mode="floor")
                t_idx = flat - b_idx * seq
                pos = position_ids.reshape(-1).index_select(0, flat).unsqueeze(-1)
                rows = rows.unsqueeze(1)
                r_cos, r_sin = hf.rotary_emb(rows, pos)
                allowed = attention_mask_for(key_valid.index_select(0, b_idx), (t_idx + past).unsqueeze(-1), self.windows[b])
                out, probs = compute_rows(
                    layer,
                    rows,
                    r_cos,
                    r_sin,
                    keys.index_select(0, b_idx),
                    values.index_select(0, b_idx),
                    allowed,
                    self.head_dim,
                    self.scaling,
                )
                # rows -> their sequence: a [B, N] one-hot turns the flat queries into a batch
                owner = (b_idx.unsqueeze(0) == torch.arange(bsz, device=h.device).unsqueeze(-1)).to(torch.float32)
                col = probs[:, 0, past:].unsqueeze(0).expand(bsz, -1, -1)
                total, count = received_attention(col, t_idx.unsqueeze(0).expand(bsz, -1), owner)
                h = self.lowering.row_scatter(h, out.squeeze(1), flat)
                routing.append(BlockRouting(rows=flat, scores=scores if keep_scores else None))
            signal = update_signal(signal, total, count)
            if stop_after_block is not None and b >= stop_after_block:
                return RoutedOutput(logits=None, past_key_values=cache, routing=routing)

        h = hf.norm(h)
        logits = self.hf.lm_head(h)
        return RoutedOutput(logits=logits, past_key_values=cache, routing=routing)
