"""The oracle with attention and MLP routed apart (issue 16: "try separate attention/MLP routing"):
sublayer skip costs, the per-row choice under a FLOP saving, and the masked forward whose
skip-both case is exactly block routing."""

from __future__ import annotations

import pytest
import torch

from ftp_export.evaluation.baselines import drop_blocks
from ftp_export.evaluation.metrics import kl_per_token
from ftp_export.evaluation.skip_costs import fisher_skip_costs
from ftp_export.evaluation.split_oracle import (
    SPLIT_ORACLE_TITLE,
    choose_skips,
    masked_forward,
    split_oracle_method,
    sublayer_savings,
)
from ftp_export.flops import routed_linear_flop_ratio
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.schedule import new_schedule


@pytest.fixture()
def ids():
    return torch.randint(3, 250, (2, 24), generator=torch.Generator().manual_seed(7))


def test_sublayer_costs(default_model, ids):
    costs = fisher_skip_costs(default_model, ids, samples=2, seed=3, sublayers=True)
    whole = fisher_skip_costs(default_model, ids, samples=2, seed=3)
    assert costs.shape == (default_model.config.num_hidden_layers, 3, *ids.shape)
    assert torch.allclose(costs[:, 2], whole, rtol=1e-5, atol=1e-12)  # the whole-block cost is the block oracle's
    assert bool((costs >= 0).all()) and bool((costs[:, 0] > 0).any()) and bool((costs[:, 1] > 0).any())
    assert not torch.allclose(costs[:, 0], costs[:, 1])


def test_savings_split_a_blocks_skippable_flops(default_model):
    attention, mlp = sublayer_savings(default_model.config)
    cfg = default_model.config
    d, i = cfg.hidden_size, cfg.intermediate_size
    assert attention + mlp == pytest.approx(1.0)
    assert attention / mlp == pytest.approx((2 * d * d) / (3 * d * i))  # q + o against gate, up, down (4 heads x 32 = D)


def test_choice_meets_the_saving_at_least_cost():
    bsz, seq, share = 2, 20, 0.25
    gen = torch.Generator().manual_seed(0)
    both = torch.rand(bsz, seq, generator=gen) + 1.0
    cheap_attention = torch.stack([torch.zeros(bsz, seq) + 1e-6, both * 10, both])  # attention nearly free
    keep_a, keep_m = choose_skips(cheap_attention, 0.25, share)
    assert not keep_a.any() and keep_m.all()  # skipping every token's attention saves exactly 0.25
    block_a, block_m = choose_skips(cheap_attention, 0.25, share, split=False)
    assert torch.equal(block_a, block_m)
    skipped = ~block_a
    assert (skipped.sum(-1) == 5).all()  # ceil(0.25 x 20) whole tokens per row
    for r in range(bsz):  # the cheapest ones
        assert set(both[r].argsort()[:5].tolist()) == set(torch.nonzero(skipped[r]).flatten().tolist())
    for s in (0.1, 0.5, 0.9):
        gen_costs = torch.rand(3, bsz, seq, generator=gen)
        a, m = choose_skips(gen_costs, s, share)
        saved = (~a).double() * share + (~m).double() * (1 - share)
        assert (saved.sum(-1) >= s * seq - 1e-9).all() and (saved.sum(-1) <= s * seq + 1.0).all()
    valid = torch.ones(bsz, seq, dtype=torch.bool)
    valid[0, :6] = False
    a, m = choose_skips(torch.rand(3, bsz, seq, generator=gen), 0.5, share, valid=valid)
    assert a[0, :6].all() and m[0, :6].all()  # padding is never skipped
    assert ((~a[0]).double() * share + (~m[0]).double() * (1 - share)).sum() >= 0.5 * 14 - 1e-9


def test_masked_forward_is_block_routing_when_both_are_skipped(default_model, ids):
    cfg = default_model.config
    n = cfg.num_hidden_layers
    ones = torch.ones(ids.shape, dtype=torch.bool)
    with torch.no_grad():
        dense = default_model(ids).logits
        assert torch.allclose(masked_forward(default_model, ids, None, {b: (ones, ones) for b in range(n)}), dense, atol=1e-5)
        dropped = masked_forward(default_model, ids, None, {2: (~ones, ~ones)})
        assert torch.allclose(dropped, drop_blocks(default_model, [2])(ids, use_cache=False).logits, atol=1e-4)
        sp = [0.0, 0.0, 0.0, 0.5, 0.0, 0.0]
        out = RoutedCausalLM(default_model, new_schedule(cfg, sp)).eval()(ids, mode="prefill")
        kept = torch.zeros(ids.shape, dtype=torch.bool).scatter(1, out.routing[3].indices, True)
        assert torch.allclose(masked_forward(default_model, ids, None, {3: (kept, kept)}), out.logits, atol=1e-4)
        mlp_only = masked_forward(default_model, ids, None, {3: (ones, kept)})
    assert not torch.allclose(mlp_only, out.logits, atol=1e-3) and not torch.allclose(mlp_only, dense, atol=1e-3)


def test_split_oracle_row(default_model, ids):
    cfg = default_model.config
    sp = [0.0, 0.4, 1.0, 0.4, 0.4, 0.2]
    split = split_oracle_method(default_model, sp, samples=2)
    block = split_oracle_method(default_model, sp, samples=2, split=False)
    assert split.name == SPLIT_ORACLE_TITLE and split.kind == "oracle" and split.decoder is None
    assert split.flop_ratio == pytest.approx(routed_linear_flop_ratio(cfg, sp))
    with torch.no_grad():
        dense = default_model(ids).logits
        kl = {m.name: float(kl_per_token(m.forward(ids, None), dense).mean()) for m in (split, block)}
        static = float(kl_per_token(RoutedCausalLM(default_model, new_schedule(cfg, sp)).eval()(ids, mode="prefill").logits, dense).mean())
    assert all(0 < v < static for v in kl.values()), (kl, static)  # both oracles beat the static router
