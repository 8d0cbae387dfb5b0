"""Decode-threshold calibration: per-length skip rates match the schedule, thresholds avoid
observed scores, the curve is exact at its knots."""

from __future__ import annotations

import pytest
import torch

from ftp_export.calibration.thresholds import (
    calibrate_decode_thresholds,
    context_grid,
    measure_decode_skip_rates,
    threshold_between,
)
from ftp_export.errors import FTPError
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.routing.decode_thresholds import DecodeThresholds
from ftp_export.schedule import new_schedule, uniform_sparsity


def test_threshold_sits_between_observed_scores():
    scores = torch.tensor([1 / n for n in range(1, 41)])  # static router's decode scores
    t = threshold_between(scores, 0.4)
    assert not torch.isclose(scores.double(), torch.tensor(t, dtype=torch.float64), rtol=0, atol=1e-9).any()
    assert abs(float((scores < t).double().mean()) - 0.4) <= 1 / 40
    assert threshold_between(torch.ones(5), 0.5) < 1.0  # all tied: keep them all


def test_context_grid_is_quarter_octaves_up_to_the_limit():
    assert context_grid(64) == [16, 19, 23, 27, 32, 38, 45, 54, 64]
    assert context_grid(100)[-2:] == [91, 100]
    assert context_grid(8) == [8]
    with pytest.raises(FTPError):
        context_grid(1)


def test_curve_is_exact_at_knots_linear_between_and_flat_outside():
    curve = DecodeThresholds([16, 64, 256], [None, [1.0, 2.0, -1.0]])
    n = torch.tensor([1, 16, 40, 64, 160, 256, 5000])
    got = curve.at(1, n).tolist()
    assert got[:2] == [1.0, 1.0] and got[3] == 2.0 and got[5:] == [-1.0, -1.0]
    assert got[2] == pytest.approx(1.5) and got[4] == pytest.approx(0.5)
    assert curve.value(1, 40) == got[2]
    assert torch.isinf(curve.at(0, n)).all()  # no threshold: decode computes every token


@pytest.mark.parametrize("lengths", [[16, 64, 256], [32]])
def test_table_of_every_block_is_each_blocks_curve_bit_for_bit(lengths):
    """The once-per-call lookup of every block's curve (decode graphs) equals each block's own
    lookup exactly, on and between knots, below and above them, for [B, T] context lengths."""
    gen = torch.Generator().manual_seed(4)
    values = [None, *([float(v) for v in torch.randn(len(lengths), generator=gen) * 3] for _ in range(3))]
    curve = DecodeThresholds(lengths, values)
    n = torch.tensor([[1, 16, 17, 40, 63], [64, 65, 200, 256, 9000]])
    table = curve.table(n)
    assert table.shape == (2, 5, 4) and table.dtype == torch.float32
    for b in range(1, 4):
        assert torch.equal(table[..., b], curve.at(b, n)), b
    assert torch.equal(table[..., 0], torch.zeros(2, 5))  # an unset block: never read


def _random_routers(schedule, seed):
    gen = torch.Generator().manual_seed(seed)
    for b in range(1, schedule.num_blocks):
        for w in (schedule.routers.blocks[b].fc1.weight, schedule.routers.blocks[b].fc2.weight):
            w.data.copy_(torch.randn(w.shape, generator=gen))


@pytest.mark.parametrize("seed", range(2))
def test_realised_rate_at_each_knot_is_the_calibrated_one(tiny_model, seed):
    """Decoding again with the final curves (one decoded token per window, so its context length
    is the knot) skips exactly the rate calibration measured, within 1/windows of the sparsity,
    for routers whose scores depend on every factor."""
    n = tiny_model.config.num_hidden_layers
    sch = new_schedule(tiny_model.config, uniform_sparsity(n, 0.3))
    _random_routers(sch, seed)
    routed = RoutedCausalLM(tiny_model, sch).eval()
    stream = torch.randint(3, 259, (3000,), generator=torch.Generator().manual_seed(4))
    res = calibrate_decode_thresholds(routed, stream, max_context=64, windows=40, decode_tokens=1)
    assert res.thresholds.lengths == [17, 20, 24, 28, 33, 39, 46, 55, 64]  # the decoded token's context length per target
    assert res.thresholds[0] is None and all(t is not None for t in res.thresholds[1:])
    real = measure_decode_skip_rates(routed, stream, context_grid(64), windows=40, decode_tokens=1)
    for b in range(1, n):
        assert real.rates[b] == res.rates[b], b
        assert max(abs(r - sch.block_sparsity[b]) for r in real.rates[b]) <= 1 / 40 + 1e-9, (b, real.rates[b])


def test_a_schedule_without_routed_blocks_has_no_decode_rates(tiny_model):
    """Dense and dropped blocks only (e.g. drops with skip adapters): no block decides per token,
    so there is nothing to measure, and nothing is decoded (an empty stream would fail otherwise)."""
    sch = new_schedule(tiny_model.config, [0.0, 1.0, 0.0, 1.0])
    rates = measure_decode_skip_rates(RoutedCausalLM(tiny_model, sch).eval(), torch.zeros(0, dtype=torch.int64), [64, 256])
    assert rates.rates == [None] * 4 and rates.tokens == [0, 0] and rates.worst(sch.block_sparsity) == 0.0


def test_stopping_after_a_block_gives_that_blocks_scores(tiny_model):
    """Calibration runs each decode pass only up to the block it calibrates: same scores, later blocks not run."""
    n = tiny_model.config.num_hidden_layers
    sch = new_schedule(tiny_model.config, uniform_sparsity(n, 0.3), decode_thresholds=[None, -1.0, 0.5, 0.2])
    routed = RoutedCausalLM(tiny_model, sch).eval()
    ids = torch.randint(3, 259, (2, 16), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)

    def decode(stop):
        from ftp_export.routed.cache import TensorCache

        cache = TensorCache()
        routed(ids[:, :6], mask[:, :6], past_key_values=cache, mode="prefill")
        return routed(ids[:, 6:], mask, past_key_values=TensorCache(cache.present), mode="decode", keep_scores=True,
                      stop_after_block=stop).routing

    full, part = decode(None), decode(2)
    for b in (1, 2):
        assert torch.equal(part[b].scores, full[b].scores)
    assert len(part) == 3 and full[3].scores.shape == (2, 10)
