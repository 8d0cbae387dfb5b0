"""The KV cache of exported graphs: past and present as flat tensors, in one of two layouts.

- ``concat`` (optimum's and onnxruntime-genai's): ``present`` is the past with the call's K/V
  appended, so an app feeds one step's outputs straight back. Every step copies the whole cache
  (2 x 1.5 MB a block at 2048 tokens of SmolLM2-135M's shape), in the dense model and the routed one.
- ``append``: ``present`` is only the call's tokens' K/V [B, Hkv, T, Dh]; the app writes it into
  its own cache buffer (:class:`~ftp_export.runtimes.kv_buffer.AppendBuffer`), which it feeds as
  the past, unused tail included (masked by ``attention_mask``). Attention reads the past and the
  new keys where they are (:class:`CachedKV`): nothing in the graph copies the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KV_CACHE_CHOICES = ("concat", "append")
DEFAULT_KV_CACHE = "concat"


def check_kv_cache(layout: str) -> str:
    if layout not in KV_CACHE_CHOICES:
        raise ValueError(f"kv_cache={layout!r}: expected one of {', '.join(KV_CACHE_CHOICES)}")
    return layout


@dataclass(frozen=True)
class CachedKV:
    """One layer's keys (or values) [B, Hkv, P + T, Dh] as its two parts, the past [B, Hkv, P, Dh]
    and the call's [B, Hkv, T, Dh], never concatenated in a graph (attention's score and value
    products run on each part: :mod:`ftp_export.routed.attention`)."""

    past: torch.Tensor
    new: torch.Tensor

    def joined(self) -> torch.Tensor:
        return torch.cat([self.past, self.new], dim=2)


class TensorCache:
    """A minimal KV cache over flat tensors (the exported graphs' past/present), with the
    ``update``/``get_seq_length`` interface of Hugging Face's DynamicCache. ``kv_cache``: the
    layout of ``present`` (module docstring); with ``append`` and a past, :meth:`update` returns
    :class:`CachedKV` pairs."""

    def __init__(self, past: list[tuple[torch.Tensor, torch.Tensor]] | None = None, kv_cache: str = DEFAULT_KV_CACHE) -> None:
        self.past = past
        self.append = check_kv_cache(kv_cache) == "append"
        self.present: list[tuple[torch.Tensor, torch.Tensor]] = []

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if not self.past else self.past[0][0].shape[2]

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor | CachedKV, torch.Tensor | CachedKV]:
        if not self.past:
            self.present.append((k, v))
            return k, v
        pk, pv = self.past[layer_idx]
        if self.append:
            self.present.append((k, v))
            return CachedKV(pk, k), CachedKV(pv, v)
        k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
        self.present.append((k, v))
        return k, v
