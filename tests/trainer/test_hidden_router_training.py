"""Issue 16 item 3 in ftp-train: ``--router hidden`` (+ ``--router-rank``) fits (step 2a) and trains
(step 2b) routers that read the block's normalised input, and writes them in the schedule."""

from __future__ import annotations

import json

import pytest
import torch

from ftp_export.errors import FTPError
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.routing.router import static_router_bank
from ftp_export.schedule import load_schedule, new_schedule
from ftp_export_trainer.cli import main
from ftp_export_trainer.router_fitting import RouterFitConfig, fit_routers
from ftp_export_trainer.router_training import RouterTrainConfig, train_routers
from ftp_export_trainer.settings import Settings, router_shape, validate

SPARSITY = [0.0, 0.5, 0.5, 0.0, 0.0, 0.0]


def test_router_settings(default_model):
    cfg = default_model.config
    assert router_shape(Settings(), cfg) == (0, 0)
    assert router_shape(Settings(router="hidden"), cfg) == (1, 128)  # the ridge direction
    assert router_shape(Settings(router="hidden", router_rank=2), cfg) == (2, 128)
    with pytest.raises(FTPError, match="rank of at most 3"):
        router_shape(Settings(router="hidden", router_rank=8), cfg)
    with pytest.raises(FTPError, match="--router-rank 4"):
        validate(Settings(router_rank=4))
    with pytest.raises(FTPError, match="--router tokens"):
        validate(Settings(router="tokens"))


def test_fitted_hidden_router_ranks_by_token(default_model):
    """Skip costs set by the token (8 of 16 token ids are expensive) at random positions: the factors
    cannot say which tokens those are, the hidden-state router can."""
    gen = torch.Generator().manual_seed(0)
    vocab = torch.arange(20, 36)
    ids = vocab[torch.randint(0, 16, (8, 24), generator=gen)]
    costs = torch.where((ids % 2 == 0), 1.0, 1e-3).expand(6, 8, 24).clone()
    cfg = RouterFitConfig(steps=300)
    hidden = static_router_bank(6, state_rank=3, state_size=128)
    bank, explained = fit_routers(default_model, SPARSITY, costs, ids, cfg, seed=0, static=hidden)
    _, explained_factors = fit_routers(default_model, SPARSITY, costs, ids, cfg, seed=0)
    assert bank.state_rank == 3 and bank.blocks[1].proj.weight.abs().sum() > 0
    assert explained[1] > 0.6 and explained[1] > explained_factors[1] + 0.3, (explained, explained_factors)
    with torch.no_grad():
        out = RoutedCausalLM(default_model, new_schedule(default_model.config, SPARSITY, routers=bank))(ids)
    kept = (torch.gather(ids, 1, out.routing[1].indices) % 2 == 0).sum(-1)  # expensive tokens kept per row
    best = torch.clamp((ids % 2 == 0).sum(-1), max=out.routing[1].indices.shape[1])  # as many as fit
    assert kept.sum() >= 0.95 * best.sum(), (kept, best)


def test_step_2b_trains_the_projection(default_model):
    ids = torch.randint(3, 250, (4, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = default_model(ids).logits.float()
    static = static_router_bank(6, state_rank=2, state_size=128)
    cfg = RouterTrainConfig(steps=3, batch_size=4, micro_batch=2, select_every=0)
    bank, history = train_routers(default_model, SPARSITY, static, ids, reference, cfg, seed=0)
    assert bank.state_rank == 2 and len(history) == 3
    start = static.blocks[1].proj.weight
    assert not torch.equal(bank.blocks[1].proj.weight, start)
    assert bank.blocks[1].proj.weight.abs().max() < 0.05  # started small


def test_ftp_train_writes_a_hidden_router(tmp_path):
    out = tmp_path / "h.json"
    args = ["--sparsity", "0.4", "--samples", "6", "--seq-len", "32", "--generations", "1", "--population", "4",
            "--fit-steps", "20", "--router-steps", "2", "--router-batch", "2", "--held-out-samples", "2",
            "--validation-samples", "2", "--calib-samples", "2", "--calib-max-context", "32", "--no-progress",
            "--no-eval", "--router", "hidden", "--router-rank", "2"]
    assert main(["-o", str(out), *args]) == 0
    doc = json.loads(out.read_text())
    assert doc["router"]["inputs"] == ["factors", "hidden_state"] and doc["router"]["hidden_state_rank"] == 2
    assert doc["produced_by"]["settings"]["router"] == "hidden"
    schedule = load_schedule(out)
    assert schedule.routers.state_rank == 2
    report = json.loads(out.with_name("h.report.json").read_text())
    assert report["router"]["hidden_state_rank"] == 2
    assert main(["-o", str(tmp_path / "x.json"), *args[:-1], "9"]) == 2  # over the FLOP budget: one error line
