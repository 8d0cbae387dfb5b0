"""Linear FLOPs accounting (ftp_export.flops) and the equal-FLOPs layer-drop count."""

from types import SimpleNamespace

import pytest

from ftp_export.evaluation.baselines import equal_flops_dropped_blocks
from ftp_export.flops import block_linear_flops, dense_linear_flops, routed_linear_flop_ratio, routed_linear_flops

CFG = SimpleNamespace(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=160, num_hidden_layers=4)


def test_block_flops_gqa_shapes():
    f = block_linear_flops(CFG)
    head_dim = 16
    assert f.kv == 2 * (2 * 64 * 2 * head_dim)  # k and v: 2 kv heads
    assert f.rest == 2 * (2 * 64 * 64) + 3 * (2 * 64 * 160)  # q, o, gate, up, down
    assert dense_linear_flops(CFG) == 4 * f.total


def test_explicit_head_dim_is_used():
    cfg = SimpleNamespace(**vars(CFG), head_dim=32)
    assert block_linear_flops(cfg).kv == 2 * (2 * 64 * 2 * 32)


def test_routed_ratio():
    f = block_linear_flops(CFG)
    assert routed_linear_flop_ratio(CFG, [0.0] * 4) == pytest.approx(1.0)
    sp = [0.0, 0.5, 0.5, 0.6]
    routed = 4 * f.kv + f.rest * (1 + 0.5 + 0.5 + 0.4)
    assert routed_linear_flops(CFG, sp) == pytest.approx(routed)
    assert routed_linear_flop_ratio(CFG, sp) == pytest.approx(4 * f.total / routed)
    # skipped tokens still pay K/V: even sparsity ~1 cannot beat total / kv
    assert routed_linear_flop_ratio(CFG, [0.999] * 4) < f.total / f.kv
    with pytest.raises(ValueError):
        routed_linear_flop_ratio(CFG, [0.1] * 3)


def test_equal_flops_dropped_blocks():
    assert equal_flops_dropped_blocks(CFG, [0.0] * 4) == 0
    f = block_linear_flops(CFG)
    sp = [0.0, 0.5, 0.5, 0.6]
    kept = routed_linear_flops(CFG, sp) / f.total
    assert equal_flops_dropped_blocks(CFG, sp) == round(4 - kept)
    assert equal_flops_dropped_blocks(CFG, [0.99] * 4) <= 3


def test_equal_flops_ceil_never_costs_more():
    from ftp_export.flops import dense_linear_flops

    for sp in ([0.0, 0.5, 0.5, 0.6], [0.0, 0.2, 0.2, 0.2], [0.0, 0.8, 0.8, 0.8]):
        d = equal_flops_dropped_blocks(CFG, sp, rounding="ceil")
        assert dense_linear_flops(CFG) * (4 - d) / 4 <= routed_linear_flops(CFG, sp) + 1e-6 or d == 3
        assert d - 1 <= equal_flops_dropped_blocks(CFG, sp) <= d


def test_bracketing_drop_counts_straddle_the_routed_flops():
    from ftp_export.evaluation.baselines import bracketing_drop_counts, interpolate_at_flops

    for sp in ([0.0, 0.5, 0.5, 0.6], [0.0, 0.2, 0.2, 0.2], [0.0, 0.8, 0.8, 0.8]):
        counts = bracketing_drop_counts(CFG, sp)
        assert len(counts) == 2 and counts[1] == counts[0] + 1
        routed = routed_linear_flop_ratio(CFG, sp)
        lo, hi = (4 / (4 - c) for c in counts)
        assert lo <= routed <= hi
        # the interpolated value meets the endpoints and mixes linearly in cost (1 / ratio)
        assert interpolate_at_flops(lo, [(lo, 1.0), (hi, 3.0)]) == pytest.approx(1.0)
        mid = 2 / (1 / lo + 1 / hi)  # half the requests on each drop count
        assert interpolate_at_flops(mid, [(hi, 3.0), (lo, 1.0)]) == pytest.approx(2.0)
        assert interpolate_at_flops(mid, [(hi, 9.0), (lo, 1.0)], log=True) == pytest.approx(3.0)
    assert bracketing_drop_counts(CFG, [0.0] * 4) == [0]


def test_skip_adapters_move_the_bracketing_drop_counts(default_model):
    """Whole-block drops with skip adapters cost a little more than the same plain drops: the
    equal-FLOP baselines then bracket them between one fewer drop and as many (before, the single
    count of the plain drops, which is cheaper, was compared as if equal)."""
    from ftp_export.evaluation.baselines import bracketing_drop_counts
    from ftp_export.routing.router import RouterBank

    cfg = default_model.config
    drops = [0.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    bank = RouterBank(6, adapter_rank=2, adapter_size=128)
    assert bracketing_drop_counts(cfg, drops) == [2]
    assert bracketing_drop_counts(cfg, drops, bank) == [1, 2]
    assert 6 / 5 <= routed_linear_flop_ratio(cfg, drops, bank) < 6 / 4


def test_matmul_flops_count_attention_and_lm_head():
    from ftp_export.flops import call_matmul_flops, routed_matmul_flop_ratio

    cfg = SimpleNamespace(**vars(CFG), vocab_size=100)
    f = block_linear_flops(cfg)
    attn = 2 * 2 * 4 * 16 * 10  # Q K^T and P V, 4 heads of 16, 10 keys
    lm = 2 * 64 * 100
    assert call_matmul_flops(cfg, [0.0] * 4, 10, 10, 1) == pytest.approx(4 * 10 * (f.total + attn) + lm)
    sp = [0.0, 0.5, 1.0, 0.25]  # block 2 dropped: nothing, not even K/V
    routed = 10 * (f.total + attn) + 10 * (f.kv + 0.5 * (f.rest + attn)) + 10 * (f.kv + 0.75 * (f.rest + attn)) + 2 * lm
    assert call_matmul_flops(cfg, sp, 10, 10, 2) == pytest.approx(routed)
    assert routed_matmul_flop_ratio(cfg, [0.0] * 4, 10, 10, 1) == pytest.approx(1.0)
    # prefill (last logits): attention scales with the keep ratio, so the ideal beats linear-only
    sp = [0.0, 0.6, 0.6, 0.6]
    assert routed_matmul_flop_ratio(cfg, sp, 512, 512, 1) > routed_linear_flop_ratio(cfg, sp)
    # decode at a short context: the unrouted LM head pulls the ideal below linear-only
    assert routed_matmul_flop_ratio(cfg, sp, 1, 8, 1) < routed_linear_flop_ratio(cfg, sp)
    with pytest.raises(ValueError):
        routed_matmul_flop_ratio(cfg, [0.1] * 3, 1, 8, 1)
