"""Flat-tensor wrappers of the routed model for graph export (optimum's input/output names).

``decoder_model`` (prefill, top-k routing, no past) and ``decoder_with_past_model`` (decode,
threshold routing, past_key_values.N.key/value in). Besides ``logits`` and
``present.N.key/value`` they output the routing decisions (``routing.N.indices`` and
``routing.N.active`` for prefill, ``routing.N.rows`` for decode) so parity can compare them;
runtimes that look outputs up by name ignore the extra ones.
"""

from __future__ import annotations

import torch
from torch import nn

from ftp_export.routed.model import RoutedCausalLM, TensorCache

PREFILL_FILE = "decoder_model.onnx"
DECODE_FILE = "decoder_with_past_model.onnx"
INPUTS = ["input_ids", "attention_mask", "position_ids"]


def past_names(num_layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def routing_names(model: RoutedCausalLM, mode: str) -> list[str]:
    names: list[str] = []
    for b in range(len(model.layers)):
        kind = model.block_mode(b, mode)
        if kind == "topk":
            names += [f"routing.{b}.indices", f"routing.{b}.active"]
        elif kind == "threshold":
            names.append(f"routing.{b}.rows")
    return names


def _flatten(model: RoutedCausalLM, out, cache: TensorCache) -> tuple[torch.Tensor, ...]:
    flat = [out.logits]
    for k, v in cache.present:
        flat += [k, v]
    for r in out.routing:
        if r is None:
            continue
        if r.rows is not None:
            flat.append(r.rows)
        else:
            flat += [r.indices, r.active]
    return tuple(flat)


class PrefillGraph(nn.Module):
    def __init__(self, model: RoutedCausalLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids):
        cache = TensorCache(None)
        out = self.model(input_ids, attention_mask, position_ids, past_key_values=cache, mode="prefill")
        return _flatten(self.model, out, cache)


class DecodeGraph(nn.Module):
    def __init__(self, model: RoutedCausalLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, *past):
        cache = TensorCache([(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)])
        out = self.model(input_ids, attention_mask, position_ids, past_key_values=cache, mode="decode")
        return _flatten(self.model, out, cache)
