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
from ftp_export.devices import module_device
from ftp_export.errors import ScheduleError
from ftp_export.flops import check_router_budget
from ftp_export.routed.attention import mask_bias, tracing
from ftp_export.routed.block import attention_mask_for, compute_rows, finish_rows, project_kv, query_mask, zero_kv
from ftp_export.routed.decode_rows import attend_kept_rows
from ftp_export.routed.lowering import Lowering, TorchLowering, flat_rows, suffix_count, take_rows
from ftp_export.routing.factors import router_features, update_signal
from ftp_export.routing.selection import decode_dither, keep_q16, soft_topk_gate
from ftp_export.schedule import ALL_DROPPED, Schedule, all_dropped

Mode = Literal["prefill", "decode", "soft"]


@dataclass
class BlockRouting:
    """What one routed block selected: prefill ``indices``/``active`` [B, K], decode ``rows`` [N]."""

    indices: torch.Tensor | None = None
    active: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    gate: torch.Tensor | None = None  # soft mode: [B, T] differentiable keep gate


@dataclass
class _Call:
    """Per-call routing inputs shared by every block of one forward."""

    mode: str
    past: int
    position_ids: torch.Tensor  # [B, T]
    key_valid: torch.Tensor  # [B, past + T] bool
    valid: torch.Tensor  # [B, T] bool
    n_ctx: torch.Tensor  # [B] valid tokens in the whole context
    n_tok: torch.Tensor  # [B, T] valid tokens up to and including each new token (decode's context length)
    all_tok: torch.Tensor  # [B, T] token index within the call
    input_ids: torch.Tensor  # [B, T]
    unpadded: bool = False  # eager only: every key valid (lets attention run causal SDPA)
    signal: bool = True  # the current block's attention signal is read by a later routed block
    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None
    masks: dict[int | None, torch.Tensor] = field(default_factory=dict)  # per window: every token's allowed keys
    thresholds: torch.Tensor | None = None  # decode thresholds of every block at n_tok [B, T, blocks]
    biases: dict[int | None, torch.Tensor] = field(default_factory=dict)  # per window: additive masks (decode)
    dither: torch.Tensor | None = None  # decode's tie-break [B, T], shared by blocks

    def allowed(self, window: int | None) -> torch.Tensor:
        """Allowed keys [B, T, S] of the call's own tokens (cache index ``past + t``), built once
        per window and shared by every block that attends with all of them."""
        if window not in self.masks:
            self.masks[window] = attention_mask_for(self.key_valid, self.all_tok + self.past, window)
        return self.masks[window]

    def bias(self, window: int | None, dtype: torch.dtype) -> torch.Tensor:
        """:func:`~ftp_export.routed.attention.mask_bias` of :meth:`allowed`, once per call and window:
        decode blocks slice it (routed/decode_rows.py), so a graph runtime cannot share the
        per-block copies (unsliced ones it merges itself)."""
        if window not in self.biases:
            self.biases[window] = mask_bias(self.allowed(window), dtype)
        return self.biases[window]

    def threshold(self, thresholds: Any, block: int) -> torch.Tensor:
        """Block ``block``'s decode threshold at each token's context length [B, T]; the curves of
        all blocks are looked up once per call (:meth:`DecodeThresholds.table`)."""
        if self.thresholds is None:
            self.thresholds = thresholds.table(self.n_tok)
        return self.thresholds[..., block]

    def tie_break(self) -> torch.Tensor:
        """Decode's tie-break [B, T] (:func:`decode_dither`: the same for every block), once per call."""
        if self.dither is None:
            self.dither = decode_dither(self.position_ids, self.input_ids)
        return self.dither


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
            check_router_budget(config, schedule.routers)  # every path that routes with a schedule
            if all_dropped(schedule.block_sparsity):
                where = f"schedule {schedule.path}" if schedule.path else "schedule"
                raise ScheduleError(f"{where}: {ALL_DROPPED}")
        self.hf = hf_model
        self.config = config
        self.schedule = schedule
        # Placement is done here, once, for every caller (export, bench, eval, trainer): the
        # routers follow the Hugging Face model's device and stay float32 whatever its dtype.
        self.routers = schedule.routers.to(device=module_device(hf_model), dtype=torch.float32) if schedule is not None else None
        self.lowering = lowering or TorchLowering()
        self.windows = sliding_windows(config)
        attn0 = hf_model.model.layers[0].self_attn
        self.head_dim = attn0.head_dim
        self.scaling = attn0.scaling
        n = config.num_hidden_layers
        self.q16 = [keep_q16(schedule.keep_ratio(b)) if schedule and schedule.is_routed(b) else 65536 for b in range(n)]

    @property
    def device(self) -> torch.device:
        return module_device(self.hf)

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
        return "threshold" if self.schedule.decode_thresholds.is_set(block) else "dense"

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
        logits: Literal["all", "last"] = "all",
    ) -> RoutedOutput:
        """Routed forward. ``mode`` defaults to 'prefill' without past and 'decode' with past.

        'decode' routes every new token by its block's threshold at the token's own context
        length, with features that depend only on the token and what precedes it, so one call
        carrying D new tokens after a past equals D one-token calls (chunked prefill, multi-turn
        chat and assisted decoding included; docs/routing.md).

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

        ``logits='all'`` returns logits [B, T, V] for every token of the call; ``'last'`` returns
        [B, 1, V] for each row's last valid token of the call (``attention_mask[:, past:]``; left
        or right padding; position T - 1 for a row with none): the final hidden state is gathered
        before the final norm and the LM head, so only B rows pay the vocabulary projection.
        """
        from transformers import DynamicCache

        cache = past_key_values if past_key_values is not None else DynamicCache()
        call = self._call_state(input_ids, attention_mask, position_ids, cache, mode)
        h = self.hf.model.embed_tokens(input_ids)
        call.cos, call.sin = self.hf.model.rotary_emb(h, call.position_ids)
        signal = torch.zeros(input_ids.shape, dtype=torch.float32, device=h.device)
        routing: list[BlockRouting | None] = []
        kinds = [self.block_mode(b, call.mode) for b in range(len(self.layers))]
        for b, layer in enumerate(self.layers):
            kind = kinds[b]
            # only a block some later routed block reads needs its attention signal
            call.signal = any(k not in ("dense", "dropped") for k in kinds[b + 1 :])
            if kind == "dropped":
                # No query ever reads this block's cache, so nothing is projected: zeros keep
                # the cache layout (every layer the same length) at no FLOPs; the attention
                # signal passes through unchanged, and h too unless a skip adapter gives every
                # (skipped) token its update.
                cache.update(*zero_kv(layer, h, self.head_dim), b)
                if getattr(self.routers, "adapter_rank", 0):
                    h = h + self.routers.adapt(b, layer.input_layernorm(h)).to(h.dtype)
                routing.append(None)
            else:
                x = layer.input_layernorm(h)  # normed once: K/V of every token, and the rows a block computes
                k_new, v_new = project_kv(layer, x, call.cos, call.sin, self.head_dim)
                keys, values = cache.update(k_new, v_new, b)
                scores, skip_to = None, h
                if kind != "dense":
                    scores = self._scores(b, kind, signal, call, x)
                    if getattr(self.routers, "adapter_rank", 0):  # what a skipped token becomes (router.py)
                        skip_to = h + self.routers.adapt(b, x).to(h.dtype)
                run = {"dense": self._full_block, "soft": self._full_block, "topk": self._topk_block}.get(kind, self._threshold_block)
                h, total, count, routed = run(b, layer, h, x, keys, values, scores, call, temperature, skip_to)
                if routed is not None and keep_scores and kind != "soft":
                    routed.scores = scores
                routing.append(routed)
                if total is not None:
                    signal = update_signal(signal, total, count)
            if stop_after_block is not None and b >= stop_after_block:
                return RoutedOutput(logits=None, past_key_values=cache, routing=routing)
        out = self.hf.lm_head(self.hf.model.norm(_logit_rows(h, call, logits)))
        return RoutedOutput(logits=out, past_key_values=cache, routing=routing)

    def _call_state(self, input_ids, attention_mask, position_ids, cache, mode) -> _Call:
        bsz, seq = input_ids.shape
        past = cache.get_seq_length()
        if attention_mask is None:
            attention_mask = torch.ones(bsz, past + seq, dtype=torch.long, device=input_ids.device)
        if position_ids is None:
            position_ids = (torch.cumsum(attention_mask, dim=-1) - 1).clamp(min=0)[:, past:]
        key_valid = attention_mask.to(torch.bool)
        # only a prefill can run causal SDPA; a decode step skips the host read
        unpadded = past == 0 and not torch.compiler.is_compiling() and not key_valid.is_meta and bool(key_valid.all())
        return _Call(
            mode=mode or ("prefill" if past == 0 else "decode"),
            past=past,
            position_ids=position_ids,
            key_valid=key_valid,
            valid=key_valid[:, past:],
            n_ctx=attention_mask.to(torch.int64).sum(-1),
            n_tok=torch.cumsum(attention_mask.to(torch.int64), dim=-1)[:, past:],
            all_tok=torch.arange(seq, device=input_ids.device).unsqueeze(0).expand(bsz, seq),
            input_ids=input_ids,
            unpadded=unpadded,
        )

    def _scores(self, b: int, kind: str, signal: torch.Tensor, call: _Call, x: torch.Tensor) -> torch.Tensor:
        """Router scores [B, T] float32 (decode: per-token context lengths, no rank factor, plus
        the positional tie-break :func:`~ftp_export.routing.selection.decode_dither`). A router
        that sees the token (``state_rank`` > 0) also gets ``x``, the block's normalised input
        ``input_layernorm(h)``, which it casts to float32; a four-factor router never reads it."""
        sparsity = self.schedule.block_sparsity[b]
        extra = (x,) if getattr(self.routers, "state_rank", 0) else ()
        if kind != "threshold":
            return self.routers(b, router_features(signal, call.position_ids, call.n_ctx, call.valid, sparsity), *extra)
        feats = router_features(signal, call.position_ids, call.n_tok, call.valid, sparsity, rank=False)
        return self.routers(b, feats, *extra) + call.tie_break()

    def _full_block(self, b, layer, h, x, keys, values, scores, call: _Call, temperature, skip_to):
        """Dense and soft blocks: every token runs the block (soft: the update is gated between
        ``skip_to``, what a skipped token becomes, and the block's output)."""
        q_index = call.all_tok + call.past
        if scores is None:
            gate, q_weight = None, call.valid
        else:
            gate = soft_topk_gate(scores, call.valid, self.q16[b], temperature)
            q_weight = gate * call.valid
        # decode is causal per token: a token's signal is its own query's weight on itself
        decode = call.mode == "decode"
        causal = call.unpadded and call.past == 0 and self.windows[b] is None
        # traced graphs keep the call's one shared mask tensor (as before KeyMask); eager gets its parts
        shared = decode or tracing()
        allowed = call.allowed(self.windows[b]) if shared else query_mask(call.key_valid, q_index, self.windows[b])
        full, colsum, own = compute_rows(
            layer, h, call.cos, call.sin, keys, values, allowed, q_index, self.head_dim, self.scaling,
            col_weight=q_weight if call.signal and not decode else None, own=call.signal and decode, causal=causal, normed=x,
            op=self.lowering.attention_op and not decode, decode=decode,
        )
        if gate is None:
            h, routed = full, None
        else:
            h = skip_to + gate.unsqueeze(-1).to(h.dtype) * (full - skip_to)
            routed = BlockRouting(scores=scores, gate=gate)
        if not call.signal:
            return h, None, None, routed
        if decode:
            return h, own, call.valid, routed
        return h, colsum[:, call.past :], suffix_count(q_weight.to(torch.float32)), routed

    def _topk_block(self, b, layer, h, x, keys, values, scores, call: _Call, temperature, skip_to):
        """Prefill routing: the top-k tokens per sequence are gathered, computed and scattered back
        into ``skip_to`` (``h``, or ``h`` plus the skip adapter's update)."""
        rows, idx, active = self.lowering.topk_gather(h, scores, call.valid, self.q16[b])
        # the normed rows, cos and sin of the kept tokens are gathered, not recomputed (per-row ops)
        flat = flat_rows(idx, h.shape[1])
        x_rows, r_cos, r_sin = (take_rows(t, flat, idx.shape) for t in (x, call.cos, call.sin))
        q_index = idx + call.past
        allowed = query_mask(call.key_valid, q_index, self.windows[b])
        q_weight = active & torch.gather(call.valid, 1, idx)
        out, colsum, _ = compute_rows(
            layer, rows, r_cos, r_sin, keys, values, allowed, q_index, self.head_dim, self.scaling,
            col_weight=q_weight if call.signal else None, normed=x_rows, op=self.lowering.attention_op,
        )
        h = self.lowering.topk_scatter(skip_to, out, idx, active)
        if not call.signal:
            return h, None, None, BlockRouting(indices=idx, active=active)
        count = self.lowering.query_count(idx, q_weight.to(torch.float32), h.shape[1])
        return h, colsum[:, call.past :], count, BlockRouting(indices=idx, active=active)

    def _threshold_block(self, b, layer, h, x, keys, values, scores, call: _Call, temperature, skip_to):
        """Decode routing: the tokens whose score reaches the threshold, as flat rows of the batch.

        Only the kept rows run the block's queries, o_proj and MLP; attention runs for the call's
        rows against their own caches in place, and not at all when no row is kept
        (:mod:`~ftp_export.routed.decode_rows`): a skipped token of a one-row step attends to nothing."""
        # the threshold at each token's context length is subtracted in the graph, so the
        # gather (and its TensorRT plugin) compares with a plain 0
        margin = scores - call.threshold(self.schedule.decode_thresholds, b)
        if self.lowering.decode == "static":
            return self._threshold_block_static(b, layer, h, x, keys, values, margin, call, skip_to)
        rows, flat = self.lowering.threshold_gather(h, margin, call.valid, 0.0)
        window = self.windows[b]
        out_rows, own = attend_kept_rows(
            layer, x, flat, call, keys, values, (call.allowed(window), call.bias(window, x.dtype)), self.head_dim, self.scaling,
            self.lowering, own=call.signal,
        )
        # rows as [N, 1, D], as the other blocks' [G, Q, D]: the linear layers export as MatMul (which
        # --quantize int8 rewrites), not the Gemm a 2-D input gives
        h = self.lowering.row_scatter(skip_to, finish_rows(layer, rows.unsqueeze(1), out_rows).squeeze(1), flat)
        if not call.signal:
            return h, None, None, BlockRouting(rows=flat)
        # threshold_select's test (the threshold is already subtracted): the rows just computed
        return h, own, call.valid & (margin >= 0), BlockRouting(rows=flat)

    def _threshold_block_static(self, b, layer, h, x, keys, values, margin, call: _Call, skip_to):
        """The static-shape lowering of a decode block (lowering.py): every row runs the block (as a
        dense block would: same queries, mask and cache indices), a device-side mask keeps the kept
        rows' outputs. The kept set, the attention signal (each kept token's weight on itself) and the
        cache (K/V were projected for every token before routing) are those of the dynamic lowering."""
        bsz, seq = h.shape[:2]
        keep = call.valid & (margin >= 0)  # threshold_select's test (the threshold is already subtracted)
        full, _, own = compute_rows(
            layer, h, call.cos, call.sin, keys, values, call.allowed(self.windows[b]), call.all_tok + call.past, self.head_dim,
            self.scaling, own=call.signal, normed=x, decode=True,
        )
        h = torch.where(keep.unsqueeze(-1), full, skip_to)
        flat = torch.arange(bsz * seq, device=h.device)
        routed = BlockRouting(rows=torch.where(keep.reshape(-1), flat, torch.full_like(flat, -1)))
        if not call.signal:
            return h, None, None, routed
        return h, own, keep, routed  # a skipped token keeps its carried signal, as in the dynamic lowering


def _logit_rows(h: torch.Tensor, call: _Call, logits: str) -> torch.Tensor:
    """The hidden rows the LM head runs on: every token (``'all'``) or each row's last valid one."""
    if logits == "all":
        return h
    if logits != "last":
        raise ValueError(f"logits={logits!r}: expected 'all' or 'last'")
    # valid tokens' keys (t + T) all exceed invalid ones' (t): argmax = last valid, else T - 1
    key = call.all_tok + call.valid * (call.all_tok[:, -1:] + 1)
    last = key.argmax(-1, keepdim=True)  # [B, 1]
    return torch.gather(h, 1, last.unsqueeze(-1).expand(-1, -1, h.shape[-1]))

