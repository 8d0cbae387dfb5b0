"""Issue 16 item 3: routers that see the token. The hidden-state router (four factors + a rank-r
projection of the block's normalised input, float32) in the schedule format, the FLOP accounting
and the routed model; four-factor schedules unchanged."""

from __future__ import annotations

import json

import pytest
import torch

from ftp_export.errors import ScheduleError
from ftp_export.flops import (
    block_linear_flops,
    check_router_budget,
    counted_routers,
    max_router_rank,
    routed_linear_flop_ratio,
    routed_linear_flops,
    router_flops,
)
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.routing.router import ARCHITECTURE, RouterBank, router_bank_from_state, static_router_bank
from ftp_export.schedule import load_schedule, new_schedule, save_schedule, uniform_sparsity
from tests.helpers import assert_router_object_refused

RANK = 3  # the largest rank within 0.5% of a block of the embedded default model (hidden size 128)


def hidden_bank(config, rank=RANK, seed=0) -> RouterBank:
    """Random hidden-state routers whose projection matters (scores move with the hidden state)."""
    bank = RouterBank(config.num_hidden_layers, state_rank=rank, state_size=config.hidden_size)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in bank.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if "proj" in name else 0.5))
    return bank.eval()


@pytest.fixture()
def hidden_schedule(default_model):
    n = default_model.config.num_hidden_layers
    return new_schedule(default_model.config, uniform_sparsity(n, 0.4), routers=hidden_bank(default_model.config),
                        decode_thresholds=[None] + [0.1] * (n - 1))


def test_round_trip_with_a_hidden_router(hidden_schedule, tmp_path, default_model):
    path = save_schedule(hidden_schedule, tmp_path / "h.json")
    doc = json.loads(path.read_text())
    assert doc["format_version"] == 2
    assert doc["router"]["inputs"] == ["factors", "hidden_state"]
    assert doc["router"]["hidden_state_rank"] == RANK and doc["router"]["hidden_state_size"] == 128
    loaded = load_schedule(path)
    assert loaded.routers.state_rank == RANK and loaded.routers.kind == "hidden"
    mine, theirs = hidden_schedule.routers.state_dict(), loaded.routers.state_dict()
    assert mine.keys() == theirs.keys() and "blocks.1.proj.weight" in theirs
    assert tuple(theirs["blocks.1.proj.weight"].shape) == (RANK, 128) and tuple(theirs["blocks.1.fc1.weight"].shape) == (64, 4 + RANK)
    assert all(torch.equal(mine[k], theirs[k]) and theirs[k].dtype == torch.float32 for k in mine)
    ids = torch.randint(3, 250, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = RoutedCausalLM(default_model, hidden_schedule)(ids, keep_scores=True)
        b = RoutedCausalLM(default_model, loaded)(ids, keep_scores=True)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.routing[2].scores, b.routing[2].scores)


def test_four_factor_schedule_is_written_and_read_as_before(tmp_path, default_model):
    sch = new_schedule(default_model.config, uniform_sparsity(default_model.config.num_hidden_layers, 0.4))
    doc = json.loads(save_schedule(sch, tmp_path / "f.json").read_text())
    assert {k: v for k, v in doc["router"].items() if k not in ("weights", "sha256")} == ARCHITECTURE
    loaded = load_schedule(tmp_path / "f.json")
    assert loaded.routers.state_rank == 0 and loaded.routers.kind == "factors"
    assert sorted(loaded.routers.state_dict())[:4] == ["blocks.0.fc1.bias", "blocks.0.fc1.weight", "blocks.0.fc2.bias", "blocks.0.fc2.weight"]
    # an explicit inputs ["factors"] reads the same
    doc["router"]["inputs"] = ["factors"]
    (tmp_path / "f.json").write_text(json.dumps(doc))
    assert load_schedule(tmp_path / "f.json").routers.state_rank == 0


def test_a_static_hidden_router_scores_like_the_four_factor_one(default_model):
    n = default_model.config.num_hidden_layers
    sp = uniform_sparsity(n, 0.4)
    ids = torch.randint(3, 250, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = RoutedCausalLM(default_model, new_schedule(default_model.config, sp))(ids, keep_scores=True)
        hidden = static_router_bank(n, state_rank=RANK, state_size=128)
        b = RoutedCausalLM(default_model, new_schedule(default_model.config, sp, routers=hidden))(ids, keep_scores=True)
    assert torch.equal(a.logits, b.logits)
    assert all(torch.equal(x.scores, y.scores) for x, y in zip(a.routing[1:], b.routing[1:], strict=True))


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda r: r.update(type="transformer"), "field 'router.type' is 'transformer'"),
        (lambda r: r.update(inputs=["factors", "pixels"]), "field 'router.inputs'"),
        (lambda r: r.update(hidden_state_rank=0), "field 'router.hidden_state_rank'"),
        (lambda r: r.update(hidden_state_size=64), "field 'router.hidden_state_size' is 64 but the model's hidden size is 128"),
        (lambda r: r.update(hidden_state_rank=2), "has shape (64, 7), expected (64, 6)"),
    ],
)
def test_bad_router_objects_are_one_clear_error(hidden_schedule, tmp_path, mutate, needle):
    assert_router_object_refused(hidden_schedule, tmp_path / "h.json", mutate, needle)


def test_router_flops_are_counted_and_capped(default_model):
    cfg = default_model.config
    block = block_linear_flops(cfg).total
    factors, hidden = RouterBank(1), RouterBank(1, state_rank=RANK, state_size=128)
    assert router_flops(factors) == 2 * 4 * 64 + 2 * 64 == 640
    assert router_flops(hidden) == 2 * (4 + RANK) * 64 + 2 * 64 + 2 * 128 * RANK
    assert router_flops(hidden) <= 0.005 * block < router_flops(RouterBank(1, state_rank=RANK + 1, state_size=128))
    assert max_router_rank(cfg) == RANK
    sp = uniform_sparsity(cfg.num_hidden_layers, 0.4)
    routed = sum(0.0 < s < 1.0 for s in sp)
    # every routed block's router scores every token; dense and dropped blocks have none
    assert routed_linear_flops(cfg, sp, hidden) == pytest.approx(routed_linear_flops(cfg, sp) + routed * router_flops(hidden))
    assert routed_linear_flops(cfg, [0.0, 1.0, 0.5, 0.0, 0.0, 0.0], hidden) == pytest.approx(
        routed_linear_flops(cfg, [0.0, 1.0, 0.5, 0.0, 0.0, 0.0]) + router_flops(hidden))
    assert routed_linear_flop_ratio(cfg, sp, hidden) < routed_linear_flop_ratio(cfg, sp)
    assert counted_routers(factors) is None and counted_routers(hidden) is hidden
    check_router_budget(cfg, hidden)
    check_router_budget(cfg, factors)  # the four-factor router is always allowed
    with pytest.raises(ScheduleError, match=r"rank 4 costs .* the limit is 0.5%: use a rank of at most 3"):
        check_router_budget(cfg, RouterBank(1, state_rank=4, state_size=128))
    with pytest.raises(ScheduleError, match="rank of at most 3"):
        new_schedule(cfg, sp, routers=RouterBank(cfg.num_hidden_layers, state_rank=8, state_size=128))
    with pytest.raises(ScheduleError, match="hidden size 128"):
        new_schedule(cfg, sp, routers=RouterBank(cfg.num_hidden_layers, state_rank=1, state_size=64))


def test_the_router_sees_the_token(default_model, hidden_schedule):
    """Two tokens with identical factors (same position, same attention signal, same rank, same
    sparsity: one-token prompts) but different hidden states get different scores; a four-factor
    router gives them the same score."""
    model = RoutedCausalLM(default_model, hidden_schedule).eval()
    ids = torch.tensor([[17], [201]])
    with torch.no_grad():
        out = model(ids, keep_scores=True)
        four = RoutedCausalLM(default_model, new_schedule(default_model.config, hidden_schedule.block_sparsity)).eval()
        base = four(ids, keep_scores=True)
    for b in range(1, default_model.config.num_hidden_layers):
        assert base.routing[b].scores[0, 0] == base.routing[b].scores[1, 0]
        assert out.routing[b].scores[0, 0] != out.routing[b].scores[1, 0]
        assert out.routing[b].scores.dtype == torch.float32


def test_decode_tokens_route_on_their_hidden_state_as_one_token_steps(default_model, hidden_schedule):
    """A decode call of several tokens equals one-token calls with a hidden router too."""
    from transformers import DynamicCache

    model = RoutedCausalLM(default_model, hidden_schedule).eval()
    ids = torch.randint(3, 250, (1, 14), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        cache = DynamicCache()
        model(ids[:, :10], past_key_values=cache)
        many = model(ids[:, 10:], past_key_values=cache, keep_scores=True)
        cache = DynamicCache()
        model(ids[:, :10], past_key_values=cache)
        steps = [model(ids[:, t : t + 1], past_key_values=cache, keep_scores=True) for t in range(10, 14)]
    for b in range(1, default_model.config.num_hidden_layers):
        one = torch.cat([s.routing[b].scores for s in steps], dim=1)
        assert torch.allclose(many.routing[b].scores, one, atol=1e-5)
    assert torch.allclose(many.logits, torch.cat([s.logits for s in steps], dim=1), atol=1e-4)


def test_hidden_routers_follow_the_model_and_stay_float32(hidden_schedule):
    """Placement (as ``--device`` moves the model) and a bfloat16 model: the router is float32 and casts
    the bfloat16 hidden state itself."""
    from ftp_export.architectures import DEFAULT_MODEL_DIR, ModelRef, load_model

    model16 = load_model(ModelRef("default", str(DEFAULT_MODEL_DIR)), dtype=torch.bfloat16)
    routed = RoutedCausalLM(model16, hidden_schedule).eval()
    assert {p.dtype for p in routed.routers.parameters()} == {torch.float32}
    assert {p.device.type for p in routed.routers.parameters()} == {"cpu"}
    with torch.no_grad():
        out = routed(torch.randint(3, 250, (1, 12)), keep_scores=True)
    assert out.routing[1].scores.dtype == torch.float32
    meta = RoutedCausalLM(model16.to("meta"), hidden_schedule)
    assert {p.device.type for p in meta.routers.parameters()} == {"meta"}


def test_checkpoint_banks_keep_their_kind():
    hidden = RouterBank(3, state_rank=2, state_size=16)
    again = router_bank_from_state(3, hidden.state_dict())
    assert (again.state_rank, again.state_size) == (2, 16)
    again.load_state_dict(hidden.state_dict())
    assert router_bank_from_state(3, RouterBank(3).state_dict()).state_rank == 0
