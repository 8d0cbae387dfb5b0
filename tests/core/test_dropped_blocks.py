"""Block sparsity 1 drops the block: the routed model equals Hugging Face's model without it,
costs nothing for it, and every export target lowers it the same way (docs/routing.md)."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from ftp_export.calibration.thresholds import calibrate_decode_thresholds
from ftp_export.evaluation.baselines import drop_blocks, equal_flops_dropped_blocks
from ftp_export.flops import routed_linear_flop_ratio
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.schedule import load_schedule, new_schedule, save_schedule


def test_dropped_block_equals_removing_the_layer(tiny_model):
    routed = RoutedCausalLM(tiny_model, new_schedule(tiny_model.config, [0.0, 1.0, 0.0, 0.0])).eval()
    pruned = drop_blocks(tiny_model, [1])
    ids = torch.randint(3, 259, (2, 17), generator=torch.Generator().manual_seed(4))
    cache = DynamicCache()
    with torch.no_grad():
        out = routed(ids[:, :-1], past_key_values=cache)
        step = routed(ids[:, -1:], past_key_values=cache)  # decode with the cache
        expect = pruned(input_ids=ids, use_cache=False).logits
    assert out.routing[1] is None and step.routing[1] is None
    torch.testing.assert_close(out.logits, expect[:, :-1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step.logits, expect[:, -1:], atol=1e-5, rtol=1e-5)
    # the dropped block's cache slot keeps the layout (same length as the others) and holds zeros
    assert cache.layers[1].keys.shape == cache.layers[2].keys.shape
    assert not cache.layers[1].keys.any() and not cache.layers[1].values.any()


def test_dropped_block_costs_nothing():
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
    assert routed_linear_flop_ratio(cfg, [0.0, 1.0, 1.0, 0.0]) == pytest.approx(2.0)
    assert equal_flops_dropped_blocks(cfg, [0.0, 1.0, 1.0, 0.0]) == 2
    # 0.99 still pays every token's K/V projections
    assert routed_linear_flop_ratio(cfg, [0.0, 0.99, 0.99, 0.0]) < 1.9


def test_dropped_block_round_trips_and_gets_no_threshold(tiny_model, tmp_path):
    sch = new_schedule(tiny_model.config, [0.0, 1.0, 0.5, 0.0])
    routed = RoutedCausalLM(tiny_model, sch).eval()
    stream = torch.randint(3, 259, (500,), generator=torch.Generator().manual_seed(1))
    thresholds = calibrate_decode_thresholds(routed, stream, max_context=24, windows=4).thresholds
    assert thresholds[1] is None and thresholds[2] is not None
    path = save_schedule(sch, tmp_path / "s.json")
    back = load_schedule(path)
    assert back.block_sparsity == [0.0, 1.0, 0.5, 0.0]
    assert back.is_dropped(1) and not back.is_routed(1) and back.is_routed(2)


def test_only_dense_and_dropped_blocks_leave_no_router_to_train(tiny_model):
    from ftp_export.routing.router import static_router_bank
    from ftp_export_trainer.router_training import RouterTrainConfig, train_routers

    static = static_router_bank(4)
    ids = torch.randint(3, 259, (2, 8), generator=torch.Generator().manual_seed(0))
    bank, history = train_routers(tiny_model, [0.0, 1.0, 1.0, 0.0], static, ids, None, RouterTrainConfig(steps=5), seed=0)
    assert history == []
    assert all(torch.equal(a, b) for a, b in zip(bank.state_dict().values(), static.state_dict().values()))
