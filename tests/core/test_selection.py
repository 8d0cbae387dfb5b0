"""Token selection rules (docs/routing.md): counts, ties, padding, thresholds."""

from __future__ import annotations

import math

import pytest
import torch

from ftp_export.routing.selection import keep_q16, kept_count, order_key, slot_count, threshold_select, topk_select


def test_keep_counts_are_exact_integers():
    # float32 ceil(0.6 * 10) is 7; the quantised integer rule gives the intended 6
    q = keep_q16(0.6)
    assert slot_count(10, q) == 6
    assert kept_count(torch.tensor([10, 3, 1, 0]), q).tolist() == [6, 2, 1, 0]
    for n in range(1, 300):
        for r in (0.22, 0.4, 0.6, 0.78, 0.3333, 1.0):
            # ceil(r * n) exactly, for ratios given to 4 decimals
            assert slot_count(n, keep_q16(r)) == min(n, max(1, math.ceil(round(r * n, 9))))


def test_keep_ratio_validation():
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            keep_q16(bad)


def test_topk_picks_highest_scores_in_ascending_order():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.2]])
    valid = torch.ones_like(scores, dtype=torch.bool)
    idx, active = topk_select(scores, valid, keep_q16(0.6))
    assert idx.tolist() == [[1, 2, 3]]
    assert active.all()


def test_ties_go_to_lower_position():
    scores = torch.full((2, 6), 0.25)
    valid = torch.ones_like(scores, dtype=torch.bool)
    idx, _ = topk_select(scores, valid, keep_q16(0.5))
    assert idx.tolist() == [[0, 1, 2], [0, 1, 2]]
    scores = torch.tensor([[1.0, 3.0, 3.0, 1.0, 3.0, 1.0]])
    idx, _ = topk_select(scores, torch.ones_like(scores, dtype=torch.bool), keep_q16(4 / 6))
    assert idx.tolist() == [[0, 1, 2, 4]]


def test_order_key_is_unique_and_preserves_order():
    torch.manual_seed(0)
    scores = torch.randn(3, 500) * 4
    scores[:, 100:150] = 1.5  # ties
    valid = torch.ones_like(scores, dtype=torch.bool)
    key = order_key(scores, valid)
    for row in key:
        assert row.unique().numel() == row.numel()
    strictly = scores[:, :, None] > scores[:, None, :]
    assert ((key[:, :, None] > key[:, None, :]) | ~strictly).all()


def test_padding_never_changes_a_rows_routing():
    torch.manual_seed(1)
    scores = torch.randn(1, 9)
    valid = torch.ones(1, 9, dtype=torch.bool)
    idx_ref, act_ref = topk_select(scores, valid, keep_q16(0.6))
    ref = set(idx_ref[act_ref].tolist())
    for pad, side in ((3, "left"), (4, "right")):
        padded = torch.cat([torch.randn(1, pad) + 10, scores], 1) if side == "left" else torch.cat([scores, torch.randn(1, pad) + 10], 1)
        v = torch.ones_like(padded, dtype=torch.bool)
        if side == "left":
            v[:, :pad] = False
        else:
            v[:, -pad:] = False
        idx, act = topk_select(padded, v, keep_q16(0.6))
        offset = pad if side == "left" else 0
        assert {i - offset for i in idx[act].tolist()} == ref
        assert v.gather(1, idx)[act].all()  # padding is never an active slot


def test_threshold_select_flat_rows():
    scores = torch.tensor([[0.5], [0.1], [0.9]])
    valid = torch.tensor([[True], [True], [False]])
    assert threshold_select(scores, valid, 0.3).tolist() == [0]
    assert threshold_select(scores, valid, 0.5).tolist() == [0]  # >= keeps equality
    assert threshold_select(scores, valid, float("-inf")).tolist() == [0, 1]
