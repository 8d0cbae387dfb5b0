"""What a block sparsity means: 0 dense, 1 dropped, in between routed (re-exported by
:mod:`ftp_export.schedule`; here so that :mod:`ftp_export.flops` reads them without importing the
schedule, which checks router budgets with it)."""

from __future__ import annotations


def routed_sparsity(s: float) -> bool:
    """A block with this sparsity is routed: 0 < s < 1 (0 = dense, 1 = dropped)."""
    return 0.0 < s < 1.0


def dropped_sparsity(s: float) -> bool:
    """A block with this sparsity is dropped: every token skips it, K/V projections included."""
    return s >= 1.0
