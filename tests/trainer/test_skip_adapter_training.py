"""``ftp-train --skip-adapter A``: the routers carry an adapter for skipped tokens (``h + U silu(A x)``,
ftp_export/routing/router.py) that starts as the identity, is left alone by step 2a and trained
with the routers in step 2b, counted in the FLOPs and the 0.5% router budget, and written in the
schedule (``router.skip_adapter``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ftp_export.errors import FTPError
from ftp_export.flops import routed_linear_flop_ratio
from ftp_export.routing.router import static_router_bank
from ftp_export.schedule import load_schedule, routed_sparsity
from ftp_export_trainer.checkpoints import INTERRUPT_ENV, Checkpoints
from ftp_export_trainer.cli import main
from ftp_export_trainer.router_fitting import RouterFitConfig, fit_routers
from ftp_export_trainer.router_training import RouterTrainConfig, init_dynamic, train_routers
from ftp_export_trainer.settings import Settings, bank_shape, validate

SPARSITY = [0.0, 0.5, 0.5, 0.0, 0.0, 0.0]
# the embedded model (D = 128): adapter rank 2 alone, or rank 1 with a rank-1 hidden router, fit the 0.5%
ARGS = ["--sparsity", "0.4", "--samples", "6", "--seq-len", "32", "--generations", "1", "--population", "4",
        "--fit-steps", "20", "--router-steps", "3", "--router-batch", "2", "--held-out-samples", "2",
        "--validation-samples", "2", "--calib-samples", "2", "--calib-max-context", "32", "--no-progress",
        "--max-block-sparsity", "0.9", "--select-every", "0"]  # cap < 1: every block given sparsity is routed


def _adapters(bank) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(r.adapter_down.weight.detach().cpu(), r.adapter_up.weight.detach().cpu()) for r in bank.blocks]


def test_skip_adapter_settings(default_model, tiny_model):
    cfg = default_model.config
    assert bank_shape(Settings(skip_adapter=0), cfg) == (0, 0, 0, 0)
    # auto (the default): the largest rank that fits beside the router; none where none fits
    assert Settings().skip_adapter == "auto" and bank_shape(Settings(), cfg) == (0, 0, 2, 128)
    assert bank_shape(Settings(router="hidden"), cfg) == (1, 128, 1, 128)
    assert bank_shape(Settings(), tiny_model.config) == (0, 0, 0, 0)
    with pytest.raises(FTPError, match="--skip-adapter big"):
        validate(Settings(skip_adapter="big"))
    assert bank_shape(Settings(skip_adapter=2), cfg) == (0, 0, 2, 128)
    assert bank_shape(Settings(router="hidden", skip_adapter=1), cfg) == (1, 128, 1, 128)
    with pytest.raises(FTPError, match="skip adapter rank 3"):
        bank_shape(Settings(skip_adapter=3), cfg)
    with pytest.raises(FTPError, match="skip adapter rank 2"):
        bank_shape(Settings(router="hidden", skip_adapter=2), cfg)  # fits alone, not with the projection
    with pytest.raises(FTPError, match="--skip-adapter -1"):
        validate(Settings(skip_adapter=-1))


def test_step_2a_keeps_and_step_2b_trains_the_adapter(default_model):
    ids = torch.randint(3, 250, (4, 16), generator=torch.Generator().manual_seed(1))
    static = static_router_bank(6, adapter_rank=2, adapter_size=128)
    start = _adapters(static)
    costs = torch.rand(6, 4, 16, generator=torch.Generator().manual_seed(2)) + 0.1
    fitted, _ = fit_routers(default_model, SPARSITY, costs, ids, RouterFitConfig(steps=5), seed=0, static=static)
    assert fitted.adapter_rank == 2 and not torch.equal(fitted.blocks[1].fc1.weight, static.blocks[1].fc1.weight)
    assert all(torch.equal(a, b) and torch.equal(u, v) for (a, u), (b, v) in zip(_adapters(fitted), start))
    noisy = init_dynamic(static, 0.02, seed=0)  # noise on the routers only: the adapter starts as the exact identity
    assert all(torch.equal(a, b) and torch.equal(u, v) for (a, u), (b, v) in zip(_adapters(noisy), start))
    with torch.no_grad():
        reference = default_model(ids).logits.float()
    cfg = RouterTrainConfig(steps=3, batch_size=4, micro_batch=2, select_every=0)
    bank, history = train_routers(default_model, SPARSITY, static, ids, reference, cfg, seed=0, init=fitted)
    assert len(history) == 3 and bank.adapter_rank == 2
    assert bank.blocks[1].adapter_up.weight.abs().sum() > 0 and bank.blocks[2].adapter_up.weight.abs().sum() > 0
    assert torch.equal(bank.blocks[3].adapter_up.weight.cpu(), start[3][1])  # an unrouted block: no gradient


def test_dropped_blocks_adapters_train_without_routed_blocks(default_model):
    """A schedule of whole-block drops (what step 1 often picks on real models) still trains the
    dropped blocks' adapters: they are all those blocks compute."""
    ids = torch.randint(3, 250, (4, 16), generator=torch.Generator().manual_seed(1))
    static = static_router_bank(6, adapter_rank=2, adapter_size=128)
    with torch.no_grad():
        reference = default_model(ids).logits.float()
    cfg = RouterTrainConfig(steps=3, batch_size=4, micro_batch=2, select_every=0)
    bank, history = train_routers(default_model, [0.0, 0.0, 1.0, 0.0, 1.0, 0.0], static, ids, reference, cfg, seed=0)
    assert len(history) == 3
    assert [bool(r.adapter_up.weight.abs().sum() > 0) for r in bank.blocks] == [False, False, True, False, True, False]
    _, none = train_routers(default_model, [0.0, 0.0, 1.0, 0.0, 1.0, 0.0], static_router_bank(6), ids, reference, cfg, seed=0)
    assert none == []  # without adapters a schedule of drops has nothing to train


def test_step_4_trains_for_step_3s_sparsities_from_step_2s_adapters(tmp_path):
    """Step 4 (:func:`run_router_training` named 'step4'): routers and adapters for step 3's
    sparsities, starting from step 2's adapters, checkpointed apart from step 2."""
    from ftp_export.architectures import resolve_model
    from ftp_export_trainer.pipeline import prepare
    from ftp_export_trainer.router_step import run_router_training

    s = Settings(output=str(tmp_path / "x.json"), samples=6, seq_len=32, held_out_samples=2, validation_samples=0, fit_steps=5,
                 router_steps=3, router_batch=2, select_every=0, skip_adapter=2, progress=False, threads=1)
    ctx = prepare(s, resolve_model(s.model), lambda _: None)
    bank2, _ = run_router_training(ctx, [0.0, 1.0, 0.5, 0.0, 0.0, 0.0])
    up2 = [r.adapter_up.weight.detach().clone() for r in bank2.blocks]
    assert [bool(u.any()) for u in up2] == [False, True, True, False, False, False]
    bank4, record = run_router_training(ctx, [0.0, 1.0, 0.0, 0.0, 0.5, 0.0], name="step4", adapters_from=bank2)
    up4 = [r.adapter_up.weight.detach() for r in bank4.blocks]
    assert torch.equal(up4[2], up2[2])  # dense in step 3's schedule: step 2's adapter, untouched
    assert not torch.equal(up4[1], up2[1]) and bool(up4[1].any())  # still dropped: trained on from step 2's
    assert bool(up4[4].any()) and not bool(up2[4].any())  # newly routed: trained
    assert (ctx.ckpt.dir / "step4.json").exists() and (ctx.ckpt.dir / "step2.json").exists()
    assert "kl_static" in record and len(record["history"]) == 3


def test_checkpoint_round_trips_the_adapter(tmp_path):
    bank = static_router_bank(4, state_rank=1, state_size=16, adapter_rank=3, adapter_size=16)
    with torch.no_grad():
        bank.blocks[2].adapter_up.weight.normal_()
    ckpt = Checkpoints(tmp_path / "s.json")
    ckpt.dir.mkdir()
    ckpt.write_routers("step2.routers.safetensors", bank)
    back = ckpt.read_routers("step2.routers.safetensors", 4)
    assert (back.state_rank, back.adapter_rank, back.adapter_size) == (1, 3, 16)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), bank.state_dict().values()))


def _check_run(out: Path, rank: int, config) -> dict:
    """The schedule and report of a finished ``--skip-adapter rank`` run; returns the report."""
    doc = json.loads(out.read_text())
    assert doc["router"]["skip_adapter"] == {"rank": rank, "size": 128, "activation": "silu"}
    assert doc["produced_by"]["settings"]["skip_adapter"] == rank
    schedule = load_schedule(out)
    routers, sparsity = schedule.routers, schedule.block_sparsity
    assert routers.adapter_rank == rank
    report = json.loads(out.with_name(out.stem + ".report.json").read_text())
    assert report["router"]["skip_adapter"]["rank"] == rank
    ratio = report["flop_ratio_dense_over_routed"]
    assert ratio == pytest.approx(routed_linear_flop_ratio(config, sparsity, routers))
    assert ratio < routed_linear_flop_ratio(config, sparsity, None)  # the adapter is counted
    ups = [r.adapter_up.weight for r in routers.blocks]
    chosen, steps = report["selection"]["chosen"], report["block_sparsity"]
    skipping1 = [routed_sparsity(s) or s >= 1.0 for s in steps["step1_ga_static"]]
    skipping3 = [routed_sparsity(s) or s >= 1.0 for s in steps["step3_ga_dynamic"]]
    assert ("step 4" in report["selection"]["kl"]) == (steps["step3_ga_dynamic"] != steps["step1_ga_static"])
    if chosen == "step 1":  # the static routers: the exact identity adapter
        assert not any(u.any() for u in ups)
    elif chosen in ("step 2", "step 3"):  # step 2b (--select-every 0: its last step) trained the adapters of the blocks step 1 skips in
        assert any(skipping1) and [bool(u.any()) for u in ups] == skipping1
    else:  # step 4 kept step 2's adapters and trained those of the blocks step 3 skips in
        assert [bool(u.any()) for u in ups] == [a or b for a, b in zip(skipping1, skipping3)]
    return report


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("adapter") / "a.json"
    assert main(["-o", str(out), *ARGS, "--skip-adapter", "2"]) == 0
    return out


def test_ftp_train_writes_a_trained_adapter(adapter_run, default_model):
    report = _check_run(adapter_run, 2, default_model.config)
    rows = report["comparison"]  # the held-out comparison table
    assert rows[0]["method"] == "dense"
    ftp = next(r for r in rows if r["method"].endswith("= FTP"))
    assert ftp["flop_ratio"] == pytest.approx(report["flop_ratio_dense_over_routed"])


def test_resume_after_step_2_keeps_the_adapter(adapter_run, tmp_path, monkeypatch):
    out = tmp_path / "a.json"
    args = ["-o", str(out), *ARGS, "--skip-adapter", "2", "--no-eval"]
    monkeypatch.setenv(INTERRUPT_ENV, "step2")
    assert main(args) == 130
    monkeypatch.delenv(INTERRUPT_ENV)
    assert main([*args, "--resume"]) == 0  # step 2's routers, adapter included, come from the checkpoint
    assert load_schedule(out).block_sparsity == load_schedule(adapter_run).block_sparsity
    assert out.with_name("a.routers.safetensors").read_bytes() == adapter_run.with_name("a.routers.safetensors").read_bytes()


def test_ftp_train_hidden_router_with_adapter(tmp_path, default_model):
    out = tmp_path / "h.json"
    assert main(["-o", str(out), *ARGS, "--no-eval", "--router", "hidden", "--skip-adapter", "1"]) == 0
    _check_run(out, 1, default_model.config)
    assert load_schedule(out).routers.state_rank == 1


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_bad_skip_adapter(tmp_path, capsys):
    out = tmp_path / "x.json"
    assert "--skip-adapter -1" in _error(capsys, ["-o", str(out), *ARGS, "--skip-adapter", "-1"])
    assert "skip adapter rank 10000" in _error(capsys, ["-o", str(out), *ARGS, "--skip-adapter", "10000"])
    assert "expected auto or a rank" in _error(capsys, ["-o", str(out), *ARGS, "--skip-adapter", "big"])
    assert not out.exists() and not out.with_name("x.json.ckpt").exists()  # refused before any work
