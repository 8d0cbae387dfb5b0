"""Decode-threshold calibration: skip rate matches the schedule, thresholds avoid observed scores."""

from __future__ import annotations

import torch

from ftp_export.calibration import calibrate_decode_thresholds, threshold_between
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.schedule import new_schedule, uniform_sparsity


def test_threshold_sits_between_observed_scores():
    scores = torch.tensor([1 / n for n in range(1, 41)])  # static router's decode scores
    t = threshold_between(scores, 0.4)
    assert not torch.isclose(scores.double(), torch.tensor(t, dtype=torch.float64), rtol=0, atol=1e-9).any()
    assert abs(float((scores < t).double().mean()) - 0.4) <= 1 / 40
    assert threshold_between(torch.ones(5), 0.5) < 1.0  # all tied: keep them all


def test_calibrated_skip_rate_matches_schedule(tiny_model):
    n = tiny_model.config.num_hidden_layers
    sch = new_schedule(tiny_model.config, uniform_sparsity(n, 0.3))
    sch.routers.blocks[2].fc1.weight.data.normal_()  # a router whose scores vary with all factors
    routed = RoutedCausalLM(tiny_model, sch).eval()
    seqs = torch.randint(3, 259, (6, 40), generator=torch.Generator().manual_seed(4))
    thresholds, rates = calibrate_decode_thresholds(routed, seqs, prompt_len=10, passes=2)
    assert thresholds[0] is None and all(t is not None for t in thresholds[1:])
    for b in range(1, n):
        assert abs(rates[b] - sch.block_sparsity[b]) < 0.1, (b, rates[b])
