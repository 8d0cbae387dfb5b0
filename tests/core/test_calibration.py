"""Decode-threshold calibration: skip rate matches the schedule, thresholds avoid observed scores."""

from __future__ import annotations

import pytest
import torch

from ftp_export.calibration.thresholds import calibrate_decode_thresholds, collect_decode_scores, threshold_between
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.schedule import new_schedule, uniform_sparsity


def test_threshold_sits_between_observed_scores():
    scores = torch.tensor([1 / n for n in range(1, 41)])  # static router's decode scores
    t = threshold_between(scores, 0.4)
    assert not torch.isclose(scores.double(), torch.tensor(t, dtype=torch.float64), rtol=0, atol=1e-9).any()
    assert abs(float((scores < t).double().mean()) - 0.4) <= 1 / 40
    assert threshold_between(torch.ones(5), 0.5) < 1.0  # all tied: keep them all


@pytest.mark.parametrize("seed", range(2))
def test_calibrated_skip_rate_matches_schedule(tiny_model, seed):
    """The rate decode really has with the final thresholds (measured by decoding again) is the
    block's sparsity, for routers whose scores depend on every factor (seeded, not global RNG)."""
    n = tiny_model.config.num_hidden_layers
    sch = new_schedule(tiny_model.config, uniform_sparsity(n, 0.3))
    gen = torch.Generator().manual_seed(seed)
    for b in (1, 2, 3):
        for w in (sch.routers.blocks[b].fc1.weight, sch.routers.blocks[b].fc2.weight):
            w.data.copy_(torch.randn(w.shape, generator=gen))
    routed = RoutedCausalLM(tiny_model, sch).eval()
    seqs = torch.randint(3, 259, (6, 40), generator=torch.Generator().manual_seed(4))
    thresholds, rates = calibrate_decode_thresholds(routed, seqs, prompt_len=10)
    assert thresholds[0] is None and all(t is not None for t in thresholds[1:])
    scores = collect_decode_scores(routed, seqs, prompt_len=10)  # a fresh decode with all thresholds in force
    for b in range(1, n):
        real = float((torch.cat(scores[b]).double() < thresholds[b]).double().mean())
        assert real == rates[b], (b, real, rates[b])
        assert abs(real - sch.block_sparsity[b]) <= 1 / 180 + 1e-9, (b, real)  # 6 x 30 decoded tokens


def test_stopping_after_a_block_gives_that_blocks_scores(tiny_model):
    """Calibration runs each pass only up to the block it calibrates: same scores, later blocks not run."""
    n = tiny_model.config.num_hidden_layers
    sch = new_schedule(tiny_model.config, uniform_sparsity(n, 0.3), decode_thresholds=[None, -1.0, 0.5, 0.2])
    routed = RoutedCausalLM(tiny_model, sch).eval()
    seqs = torch.randint(3, 259, (2, 16), generator=torch.Generator().manual_seed(5))
    full = collect_decode_scores(routed, seqs, prompt_len=6)
    part = collect_decode_scores(routed, seqs, prompt_len=6, stop_after_block=2)
    for b in (1, 2):
        assert torch.equal(torch.cat(part[b]), torch.cat(full[b]))
    assert part[3] == [] and len(full[3]) == 10
