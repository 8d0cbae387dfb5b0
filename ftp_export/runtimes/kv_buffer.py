"""The app's side of the ``append`` cache layout (:mod:`ftp_export.routed.cache`): one
preallocated buffer per layer's keys and values, which the graph reads in place as its past.

Each call's ``present.*`` (only the call's tokens' K/V) is written at the buffer's next free
positions; the past fed to the next call is the whole buffer, and its ``attention_mask`` marks the
unused tail 0, so the tail costs masked scores but no copy. The buffer grows (doubling, one copy)
when a call would overflow it. The graph never copies the cache: a concat-layout step copies all
of it, in the dense model as in the routed one (docs/performance.md).

Sliding-window models cannot use it: a window counts cache positions, and the masked tail would
sit between the past and the new tokens (the export refuses them).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class AppendBuffer:
    """Per-layer K/V buffers [B, Hkv, capacity, Dh] and the mask of their filled positions [B, capacity].

    ``past``: the ``past_key_values.*`` names with the prompt's K/V (a prefill's ``present.*``, as
    :meth:`~ftp_export.graph_io.GraphSignature.past_feeds` names them); ``mask`` [B, T] the prompt's
    attention mask; ``capacity``: positions to allocate (at least the prompt's)."""

    def __init__(self, past: dict[str, Any], mask: np.ndarray, capacity: int) -> None:
        if not past:
            raise ValueError("AppendBuffer needs the prompt's past_key_values.* arrays")
        self.length = int(mask.shape[1])
        self.capacity = max(int(capacity), self.length)
        self.buffers: dict[str, np.ndarray] = {}
        for name, value in past.items():
            arr = np.asarray(value)
            if arr.ndim != 4 or arr.shape[2] != self.length:
                raise ValueError(f"{name}: expected [batch, kv_heads, {self.length}, head_dim], got {list(arr.shape)}")
            self.buffers[name] = _widened(arr, 2, self.length, self.capacity)
        self.mask = _widened(mask.astype(np.int64), 1, self.length, self.capacity)

    def feeds(self, new_mask: np.ndarray) -> dict[str, np.ndarray]:
        """A call's ``past_key_values.*`` (the whole buffers) and ``attention_mask`` [B, capacity + T]
        for new tokens with mask ``new_mask`` [B, T]."""
        self._reserve(new_mask.shape[1])
        return {**self.buffers, "attention_mask": np.concatenate([self.mask, new_mask.astype(np.int64)], axis=1)}

    def append(self, present: dict[str, Any], new_mask: np.ndarray) -> None:
        """Write a call's ``present.*`` (keyed by the ``past_key_values.*`` name they feed) at the next
        positions, ``new_mask`` [B, T] their attention mask."""
        t = int(new_mask.shape[1])
        self._reserve(t)
        end = self.length + t
        for name, buf in self.buffers.items():
            value = np.asarray(present[name])
            if value.shape[2] != t:
                raise ValueError(f"{name}: the call had {t} tokens, its present has {value.shape[2]} (a concat-layout graph?)")
            buf[:, :, self.length : end] = value
        self.mask[:, self.length : end] = new_mask
        self.length = end

    def rewind(self, length: int) -> None:
        """Forget every position from ``length`` on (a benchmark replays the same steps)."""
        self.mask[:, length:] = 0
        self.length = length

    def _reserve(self, tokens: int) -> None:
        """Make room for ``tokens`` more positions: at least double the capacity, one copy."""
        if self.length + tokens <= self.capacity:
            return
        capacity = max(2 * self.capacity, self.length + tokens)
        self.buffers = {name: _widened(buf, 2, self.length, capacity) for name, buf in self.buffers.items()}
        self.mask, self.capacity = _widened(self.mask, 1, self.length, capacity), capacity


def _widened(arr: np.ndarray, axis: int, filled: int, capacity: int) -> np.ndarray:
    """Zeros like ``arr`` with ``capacity`` positions along ``axis``, its first ``filled`` copied in."""
    shape = list(arr.shape)
    shape[axis] = capacity
    out = np.zeros(shape, dtype=arr.dtype)
    keep = (slice(None),) * axis + (slice(0, filled),)
    out[keep] = arr[keep]
    return out
