"""Paired bootstrap standard errors (issue 16 item 4): deterministic, right in size, paired."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ftp_export.evaluation.baselines import interpolate_at_flops, interpolate_replicates
from ftp_export.evaluation.bootstrap import Resampler, standard_error
from ftp_export.evaluation.harness import add_equal_flop_comparison, add_retention, add_statistics


def test_draws_are_seeded_and_per_stream():
    a = Resampler(16, {"x": 50, "y": 30}, resamples=200, seed=3)
    b = Resampler(16, {"x": 50}, resamples=200, seed=3)
    c = Resampler(16, {"x": 50}, resamples=200, seed=4)
    assert np.array_equal(a.windows, b.windows) and np.array_equal(a.items["x"], b.items["x"])  # other tasks do not matter
    assert not np.array_equal(a.items["x"], c.items["x"])
    assert (a.windows.sum(1) == 16).all() and (a.items["y"].sum(1) == 30).all()  # each resample draws n of n


def test_item_mean_se_matches_the_binomial_formula():
    rng = np.random.default_rng(0)
    bits = (rng.random(400) < 0.8).astype(int)
    boot = Resampler(1, {"t": 400}, resamples=2000, seed=0)
    p = bits.mean()
    assert standard_error(boot.item_mean("t", bits)) == pytest.approx(math.sqrt(p * (1 - p) / 400), rel=0.08)


def test_window_ratio_is_the_pooled_ratio_and_its_se():
    nll = np.array([100.0, 120.0, 90.0, 130.0, 110.0, 95.0, 105.0, 115.0])
    boot = Resampler(8, {}, resamples=4000, seed=1)
    reps = boot.window_ratio(nll, [50] * 8)
    assert reps.mean() == pytest.approx(nll.sum() / 400, rel=0.01)
    assert standard_error(reps) == pytest.approx(nll.std(ddof=1) / 50 / math.sqrt(8), rel=0.15)
    assert standard_error(Resampler(1, {}, resamples=10).window_ratio([5.0], [2])) == 0.0


def _row(kind, group, flop_ratio, window_nll, bits, method=None):
    return {"kind": kind, "group": group, "method": method or kind, "flop_ratio": flop_ratio,
            "tasks": {"brown-cloze": {"acc": bits.count("1") / len(bits), "acc_norm": 0.0, "items": len(bits)}},
            "per_unit": {"window_nll": list(window_nll), "window_tokens": 100,
                         "items": {"brown-cloze": {"acc": bits, "acc_norm": "0" * len(bits)}}}}


def test_differences_are_paired():
    """Two rows that differ on a few items: the SE of their difference is far below each row's own
    SE (what they share cancels inside each resample); and the difference SE of an FTP row against a
    mix of two layer-drop rows is computed on the same resamples."""
    rng = np.random.default_rng(2)
    n = 400
    base = "".join("1" if x else "0" for x in rng.random(n) < 0.6)
    ftp = "".join(("1" if c == "0" else "0") if i % 40 == 0 else c for i, c in enumerate(base))  # 10 items flipped
    dense_w = rng.normal(300, 30, 32)
    w = dense_w + rng.normal(50, 2, 32)
    rows = [_row("dense", "dense", 1.0, dense_w, "1" * n),
            _row("ftp", "g", 1.5, w, ftp),
            _row("shortgpt", "g", 1.4, w + 5, base, "s1"),
            _row("shortgpt", "g", 1.6, w + 15, base, "s2")]
    boot = Resampler(32, {"brown-cloze": n}, resamples=1000, seed=0)
    reps = [add_statistics(r, boot) for r in rows]
    add_retention(rows, reps)
    add_equal_flop_comparison(rows, reps)
    ftp_row = rows[1]
    vs = ftp_row["vs_shortgpt"]
    for key in ("perplexity", "accuracy"):
        own = ftp_row["retention_se"][key]
        diff = vs[f"ftp_minus_shortgpt_{key}_se"]
        assert 0 < diff < own / 3, (key, diff, own)
    # the point estimate is the mixture of the two drop counts; the SEs are present and finite
    want = interpolate_at_flops(1.5, [(1.4, rows[2]["retention"]["perplexity"]), (1.6, rows[3]["retention"]["perplexity"])], log=True)
    assert vs["shortgpt_perplexity_retention"] == pytest.approx(want)
    assert vs["ftp_minus_shortgpt_perplexity"] == pytest.approx(ftp_row["retention"]["perplexity"] - want)
    assert ftp_row["perplexity"]["perplexity_se"] > 0 and ftp_row["tasks"]["brown-cloze"]["acc_se"] > 0
    # dense against itself: retention exactly 1 in every resample
    assert rows[0]["retention"]["perplexity"] == 1.0 and rows[0]["retention_se"]["perplexity"] == 0.0
    # deterministic: the same draws give the same figures
    again = [_row("dense", "dense", 1.0, dense_w, "1" * n), _row("ftp", "g", 1.5, w, ftp),
             _row("shortgpt", "g", 1.4, w + 5, base, "s1"), _row("shortgpt", "g", 1.6, w + 15, base, "s2")]
    boot2 = Resampler(32, {"brown-cloze": n}, resamples=1000, seed=0)
    reps2 = [add_statistics(r, boot2) for r in again]
    add_retention(again, reps2)
    add_equal_flop_comparison(again, reps2)
    assert again[1]["vs_shortgpt"] == vs


def test_interpolated_replicates_match_the_scalar_rule():
    a, b = np.array([0.5, 0.6, 0.7]), np.array([0.3, 0.2, 0.4])
    got = interpolate_replicates(1.5, [(1.6, b), (1.4, a)], log=True)
    want = [interpolate_at_flops(1.5, [(1.4, x), (1.6, y)], log=True) for x, y in zip(a, b)]
    assert got == pytest.approx(want)
    assert interpolate_replicates(1.5, [(1.5, a)]) == pytest.approx(a)


def test_standard_error_refuses_non_finite():
    assert standard_error(np.array([1.0, np.inf, 2.0])) is None
    assert standard_error(None) is None
