"""Decode thresholds as a function of context length (docs/routing.md, "Decode selection").

A decoded token's router factors drift with the context length ``n`` (its position factor is
``(n - 1) / n``, its attention factor the weight it puts on itself times ``n``), so one threshold
per block holds its skip rate only near the length it was calibrated at. Each routed block
therefore has a threshold curve: values at shared knot lengths, linear in ``n`` between knots,
constant beyond the first and last knot. A token with ``n`` valid tokens of context (itself
included) is computed iff ``score - threshold(n) >= 0``; the subtraction happens inside every
graph, so the gather (and the ``FtpThresholdGather`` plugin) keeps a plain threshold of 0.

The curve is evaluated with one segment lookup and three float32 operations
(``value + slope * (n - knot)``) whose inputs are exact (``n`` < 2^24), so every runtime gets the
same threshold bit for bit; a knot length gives its calibrated value exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class DecodeThresholds:
    """``lengths``: ascending knot context lengths (>= 1), shared by all blocks; ``values[b]``:
    block b's threshold at each knot, or None when decode computes every token of block b."""

    lengths: list[int]
    values: list[list[float] | None]

    @classmethod
    def unset(cls, num_blocks: int) -> DecodeThresholds:
        return cls([1], [None] * num_blocks)

    @classmethod
    def constant(cls, per_block: Sequence[float | None]) -> DecodeThresholds:
        """One threshold per block at every length (format 1 schedules; calibration in progress)."""
        return cls([1], [None if t is None else [float(t)] for t in per_block])

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self):  # per block: the values at the knots, or None
        return iter(self.values)

    def __getitem__(self, block):
        return self.values[block]

    def is_set(self, block: int) -> bool:
        return self.values[block] is not None

    def value(self, block: int, n: int) -> float:
        """Block ``block``'s threshold at context length ``n`` (float32 arithmetic, as in the graphs)."""
        out = self.at(block, torch.tensor([n], dtype=torch.int64))
        return float(out[0])

    def locate(self, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The clamped length ``x`` (float32) and segment index ``seg`` of context lengths ``n``
        (the knots are shared by all blocks: :meth:`table` looks up every block from one call)."""
        x = torch.clamp(n.to(torch.float32), float(self.lengths[0]), float(self.lengths[-1]))
        # segment i starts at knot i; the last "segment" is the last knot itself (slope 0)
        seg = (x.unsqueeze(-1) >= torch.tensor(self.lengths[1:], dtype=torch.float32, device=n.device)).to(torch.int64).sum(-1)
        return x, seg

    def at(self, block: int, n: torch.Tensor) -> torch.Tensor:
        """Thresholds [same shape as ``n``] float32 for context lengths ``n`` (int64 tensor)."""
        vals = self.values[block]
        if vals is None:
            return torch.full(n.shape, float("-inf"), dtype=torch.float32, device=n.device)
        if len(self.lengths) == 1:
            return torch.full(n.shape, vals[0], dtype=torch.float32, device=n.device)
        knots, slopes = self._segments(vals)
        x, seg = self.locate(n)
        lo = torch.tensor(knots, dtype=torch.float32, device=n.device)[seg]
        v0 = torch.tensor(vals, dtype=torch.float32, device=n.device)[seg]
        sl = torch.tensor(slopes, dtype=torch.float32, device=n.device)[seg]
        return v0 + sl * (x - lo)

    def table(self, n: torch.Tensor) -> torch.Tensor:
        """Every block's threshold at once, [*n.shape, blocks] float32: ``table(n)[..., b]`` equals
        ``at(b, n)`` bit for bit (the same three float32 operations per element) for a set block,
        0 for an unset one. A decode forward looks the curves up once instead of once per block
        (three graph nodes fewer per routed block: docs/performance.md)."""
        zeros = [0.0] * len(self.lengths)
        vals = [v if v is not None else zeros for v in self.values]
        slopes = [self._segments(v)[1] if v is not None else zeros for v in self.values]
        dev = n.device
        x, seg = self.locate(n)
        lo = torch.tensor([float(k) for k in self.lengths], dtype=torch.float32, device=dev)[seg]
        v0 = torch.tensor(vals, dtype=torch.float32, device=dev).T[seg]  # [*n.shape, blocks]
        sl = torch.tensor(slopes, dtype=torch.float32, device=dev).T[seg]
        return v0 + sl * (x - lo).unsqueeze(-1)

    def _segments(self, vals: list[float]) -> tuple[list[float], list[float]]:
        """Segment starts (every knot) and float32 slopes (0 after the last knot)."""
        f32 = np.float32
        starts = [float(x) for x in self.lengths]
        slopes = [
            float(f32((f32(vals[i + 1]) - f32(vals[i])) / f32(self.lengths[i + 1] - self.lengths[i])))
            for i in range(len(self.lengths) - 1)
        ]
        return starts, slopes + [0.0]

    def to_json(self) -> dict:
        return {"context_lengths": list(self.lengths), "per_block": [None if v is None else list(v) for v in self.values]}


def check_curve(lengths: object, per_block: object, num_blocks: int) -> str | None:
    """What is wrong with a format-2 ``decode_thresholds`` object, or None when it is valid."""
    if not isinstance(lengths, list) or not lengths:
        return "'decode_thresholds.context_lengths' must be a non-empty list of increasing integers >= 1"
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in lengths):
        return "'decode_thresholds.context_lengths' must hold integers >= 1"
    if any(b <= a for a, b in zip(lengths, lengths[1:], strict=False)) or lengths[-1] >= 1 << 24:
        return "'decode_thresholds.context_lengths' must be strictly increasing and below 2^24"
    if not isinstance(per_block, list) or len(per_block) != num_blocks:
        return f"'decode_thresholds.per_block' must be a list of {num_blocks} entries (a list per routed block, or null)"
    for i, vals in enumerate(per_block):
        if vals is None:
            continue
        if not isinstance(vals, list) or len(vals) != len(lengths):
            return f"'decode_thresholds.per_block[{i}]' must be null or {len(lengths)} numbers, one per context length"
        for v in vals:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                return f"'decode_thresholds.per_block[{i}]' holds {v!r}; thresholds must be finite numbers"
    return None
