"""Issue 16 item 3: an adapter for the tokens a block skips (FlexiDepth): a skipped token becomes
``h + U silu(A x)`` instead of ``h`` (every token of a dropped block too). Its schedule format, its semantics in prefill, soft and decode
modes, and its FLOP count and budget; a schedule without it is unchanged."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import DynamicCache

from ftp_export.calibration.thresholds import calibrate_decode_thresholds
from ftp_export.errors import ScheduleError
from ftp_export.flops import check_router_budget, counted_routers, routed_linear_flop_ratio, router_flops
from ftp_export.routed.lowering import TorchLowering
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.routing.router import RouterBank, router_bank_from_state, static_router_bank
from ftp_export.schedule import load_schedule, new_schedule, save_schedule, uniform_sparsity
from tests.helpers import assert_router_object_refused

RANK = 2  # the largest adapter rank within 0.5% of a block of the embedded default model, with the four-factor router


def adapter_bank(config, rank: int = RANK, seed: int = 0) -> RouterBank:
    """Four-factor routers with a random, non-identity skip adapter."""
    n, d = config.num_hidden_layers, config.hidden_size
    bank = static_router_bank(n, adapter_rank=rank, adapter_size=d)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for router in bank.blocks:
            router.adapter_up.weight.copy_(torch.randn(router.adapter_up.weight.shape, generator=gen) * 0.5)
    return bank.eval()


@pytest.fixture()
def adapter_schedule(default_model):
    n = default_model.config.num_hidden_layers
    schedule = new_schedule(default_model.config, uniform_sparsity(n, 0.4), routers=adapter_bank(default_model.config))
    stream = torch.randint(3, 250, (4000,), generator=torch.Generator().manual_seed(3))
    calibrate_decode_thresholds(RoutedCausalLM(default_model, schedule).eval(), stream, max_context=64, windows=16)
    return schedule


def test_round_trip(adapter_schedule, tmp_path, default_model):
    path = save_schedule(adapter_schedule, tmp_path / "a.json")
    doc = json.loads(path.read_text())
    assert doc["format_version"] == 2 and doc["router"]["skip_adapter"] == {"rank": RANK, "size": 128, "activation": "silu"}
    assert "inputs" not in doc["router"]  # a four-factor router with an adapter
    loaded = load_schedule(path)
    assert (loaded.routers.adapter_rank, loaded.routers.adapter_size, loaded.routers.state_rank) == (RANK, 128, 0)
    mine, theirs = adapter_schedule.routers.state_dict(), loaded.routers.state_dict()
    assert mine.keys() == theirs.keys() and tuple(theirs["blocks.1.adapter_down.weight"].shape) == (RANK, 128)
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    ids = torch.randint(3, 250, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = RoutedCausalLM(default_model, adapter_schedule)(ids).logits
        b = RoutedCausalLM(default_model, loaded)(ids).logits
        plain = RoutedCausalLM(default_model, new_schedule(default_model.config, adapter_schedule.block_sparsity))(ids).logits
    assert torch.equal(a, b) and not torch.allclose(a, plain, atol=1e-3)  # the adapter changes what skipped tokens carry
    again = router_bank_from_state(3, RouterBank(3, adapter_rank=2, adapter_size=16).state_dict())
    assert (again.adapter_rank, again.adapter_size) == (2, 16)


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda r: r.update(skip_adapter=4), "field 'router.skip_adapter' is 4"),
        (lambda r: r["skip_adapter"].update(rank=0), "field 'router.skip_adapter.rank' is 0"),
        (lambda r: r["skip_adapter"].update(size=64), "field 'router.skip_adapter.size' is 64 but the model's hidden size is 128"),
        (lambda r: r["skip_adapter"].update(activation="gelu"), "field 'router.skip_adapter.activation' is 'gelu'"),
        (lambda r: r["skip_adapter"].update(rank=1), "has shape (2, 128), expected (1, 128)"),
        (lambda r: r.pop("skip_adapter"), "unexpected tensors"),  # what a reader without adapters does too
    ],
)
def test_bad_adapter_objects_are_one_clear_error(adapter_schedule, tmp_path, mutate, needle):
    assert_router_object_refused(adapter_schedule, tmp_path / "a.json", mutate, needle)


def _final_hidden(model: RoutedCausalLM, ids: torch.Tensor) -> tuple[torch.Tensor, object]:
    """The hidden state entering the final norm, and the routed output."""
    seen = {}
    handle = model.hf.model.norm.register_forward_hook(lambda m, args, out: seen.setdefault("h", args[0]))
    try:
        out = model(ids, mode="prefill", logits="all")
    finally:
        handle.remove()
    return seen["h"], out


def _last_block_runs(model, sparsity: float, seed: int) -> dict:
    """Only the last block at ``sparsity``: what enters it (``h_in``), the hidden state leaving it
    with a random adapter (``got``, with the routed output ``out``), what a skipped token should
    leave with (``expect``), and with an identity adapter and with none (``identity``, ``plain``)."""
    cfg = model.config
    n = cfg.num_hidden_layers
    sp = [0.0] * (n - 1) + [sparsity]
    ids = torch.randint(3, 250, (2, 24), generator=torch.Generator().manual_seed(seed))
    bank = adapter_bank(cfg)
    with torch.no_grad():
        h_in = model(ids, output_hidden_states=True).hidden_states[n - 1]
        got, out = _final_hidden(RoutedCausalLM(model, new_schedule(cfg, sp, routers=bank)), ids)
        expect = h_in + bank.adapt(n - 1, model.model.layers[n - 1].input_layernorm(h_in))
        identity, _ = _final_hidden(RoutedCausalLM(model, new_schedule(cfg, sp, routers=static_router_bank(n, adapter_rank=RANK, adapter_size=128))), ids)
        plain, _ = _final_hidden(RoutedCausalLM(model, new_schedule(cfg, sp)), ids)
    return {"ids": ids, "sp": sp, "bank": bank, "h_in": h_in, "got": got, "out": out, "expect": expect, "identity": identity, "plain": plain}


def test_skipped_tokens_get_the_adapter_and_kept_tokens_do_not(default_model):
    """Only the last block routed (s = 0.5): its skipped tokens leave with h + U silu(A norm(h)), its
    kept tokens with the dense block's output; an identity adapter (U = 0) is plain skipping."""
    r = _last_block_runs(default_model, 0.5, seed=2)
    got, h_in = r["got"], r["h_in"]
    with torch.no_grad():
        dense_out, _ = _final_hidden(RoutedCausalLM(default_model, None), r["ids"])
    kept = torch.zeros(r["ids"].shape, dtype=torch.bool)
    kept.scatter_(1, r["out"].routing[-1].indices, True)
    assert 0 < int(kept.sum()) < kept.numel()
    assert torch.allclose(got[kept], dense_out[kept], atol=1e-4)
    assert torch.allclose(got[~kept], r["expect"][~kept], atol=1e-4)
    assert not torch.allclose(got[~kept], h_in[~kept], atol=1e-3)
    assert torch.equal(r["identity"], r["plain"])


def test_a_dropped_block_gives_every_token_the_adapter(default_model):
    """A dropped block (s = 1) with a skip adapter: every token skips it, so every token leaves with
    h + U silu(A norm(h)) and nothing else of the block runs; without an adapter (or with the
    identity one) it is exact layer dropping."""
    cfg = default_model.config
    r = _last_block_runs(default_model, 1.0, seed=5)
    ids, sp, bank, got, h_in, plain = r["ids"], r["sp"], r["bank"], r["got"], r["h_in"], r["plain"]
    assert r["out"].routing[-1] is None
    assert torch.allclose(got, r["expect"], atol=1e-4) and not torch.allclose(got, h_in, atol=1e-3)
    assert torch.equal(r["identity"], plain) and torch.allclose(plain, h_in, atol=1e-4)
    steps = DynamicCache()  # decode: the same update for every new token
    model = RoutedCausalLM(default_model, new_schedule(cfg, sp, routers=bank)).eval()
    with torch.no_grad():
        model(ids[:, :20], past_key_values=steps)
        step = model(ids[:, 20:], past_key_values=steps).logits
        whole = model(ids).logits[:, 20:]
    assert torch.allclose(step, whole, atol=1e-4)


def test_soft_mode_forward_is_the_hard_routed_model_and_trains_the_adapter(default_model, adapter_schedule):
    model = RoutedCausalLM(default_model, adapter_schedule)
    ids = torch.randint(3, 250, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        hard = model(ids, mode="prefill").logits
    soft = model(ids, mode="soft").logits
    assert torch.allclose(soft, hard, atol=1e-4)
    soft.float().pow(2).mean().backward()
    grads = [r.adapter_up.weight.grad for r in model.routers.blocks[1:]]
    assert all(g is not None and bool(g.abs().sum() > 0) for g in grads)


def test_decode_with_the_adapter_is_the_same_in_both_lowerings_and_in_one_token_steps(default_model, adapter_schedule):
    ids = torch.randint(3, 250, (2, 14), generator=torch.Generator().manual_seed(4))

    def run(decode: str, split: bool) -> tuple[torch.Tensor, list]:
        model = RoutedCausalLM(default_model, adapter_schedule, lowering=TorchLowering(decode)).eval()
        cache = DynamicCache()
        with torch.no_grad():
            model(ids[:, :10], past_key_values=cache)
            if not split:
                out = model(ids[:, 10:], past_key_values=cache)
                return out.logits, out.routing
            steps = [model(ids[:, t : t + 1], past_key_values=cache) for t in range(10, 14)]
        return torch.cat([s.logits for s in steps], dim=1), steps[0].routing

    dynamic, routing = run("dynamic", False)
    static, _ = run("static", False)
    steps, _ = run("dynamic", True)
    skipped = sum(2 * 4 - int(r.rows.numel()) for r in routing if r is not None and r.rows is not None)
    assert skipped > 0  # the adapter was really used
    assert torch.allclose(dynamic, static, atol=1e-4) and torch.allclose(dynamic, steps, atol=1e-4)


def test_adapter_flops_are_counted_and_capped(default_model):
    cfg = default_model.config
    bank = adapter_bank(cfg)
    assert router_flops(bank) == router_flops(RouterBank(cfg.num_hidden_layers)) + 4 * 128 * RANK
    assert counted_routers(bank) is bank and counted_routers(RouterBank(2)) is None
    sp = uniform_sparsity(cfg.num_hidden_layers, 0.4)
    assert routed_linear_flop_ratio(cfg, sp, bank) < routed_linear_flop_ratio(cfg, sp)
    dropped = [0.0, 0.0, 1.0, 0.5, 0.5, 0.0]  # a dropped block computes its adapter for every token
    from ftp_export.flops import routed_linear_flops

    assert routed_linear_flops(cfg, dropped, bank) - routed_linear_flops(cfg, dropped) == pytest.approx(2 * router_flops(bank) + 4 * 128 * RANK)
    check_router_budget(cfg, bank)
    with pytest.raises(ScheduleError, match="skip adapter rank 3 costs .* lower the adapter rank"):
        check_router_budget(cfg, RouterBank(cfg.num_hidden_layers, adapter_rank=RANK + 1, adapter_size=128))
    with pytest.raises(ScheduleError, match="skip adapter of width 64"):
        new_schedule(cfg, sp, routers=RouterBank(cfg.num_hidden_layers, adapter_rank=1, adapter_size=64))
