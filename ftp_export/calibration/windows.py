"""Fixed-length token windows cut from a token stream (calibration and evaluation share it)."""

from __future__ import annotations

import torch

from ftp_export.errors import FTPError


def windows(ids: list[int], seq_len: int, count: int | None) -> torch.Tensor:
    """``count`` windows of ``seq_len`` tokens spread evenly over ``ids`` (all disjoint windows if
    ``count`` is None; overlapping when the text is too short for ``count`` disjoint ones)."""
    if len(ids) < seq_len:
        raise FTPError(f"calibration text has {len(ids)} tokens, fewer than --seq-len {seq_len}; give more text or a smaller --seq-len")
    t = torch.tensor(ids, dtype=torch.int64)
    disjoint = len(ids) // seq_len
    if count is None or count <= disjoint:
        n = disjoint if count is None else count
        step = disjoint // n if n else 1
        starts = [i * step * seq_len for i in range(n)]
    else:
        span = len(ids) - seq_len
        starts = [round(i * span / max(count - 1, 1)) for i in range(count)]
    return torch.stack([t[s : s + seq_len] for s in starts])
