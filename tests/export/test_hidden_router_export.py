"""Issue 16 item 3: a hidden-state router exports as an ordinary float32 subgraph. The embedded default
model with a hidden-router schedule through ``ftp-export`` (onnx and the trt-flavoured graph with the
reference ftp nodes): prefill top-k and decode rows identical to PyTorch, logits within tolerance; the
float16 trt graph keeps the router (projection included) in the float32 islands."""

from __future__ import annotations

import contextlib
import io
import json

import onnx
import pytest
import torch

from ftp_export.architectures import DEFAULT_MODEL_DIR, ModelRef, load_model
from ftp_export.calibration.thresholds import calibrate_decode_thresholds
from ftp_export.cli import main
from ftp_export.export.parity import run_parity
from ftp_export.export.request import ExportRequest
from ftp_export.export.targets import get_target
from ftp_export.export.tolerance import tolerance_for
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.routing.router import RouterBank
from ftp_export.schedule import new_schedule, save_schedule, uniform_sparsity
from ftp_export.trt.precision import routing_precision_problems
from tests.helpers import parity_cases

RANK = 3


@pytest.fixture(scope="module")
def hidden_schedule(default_model, tmp_path_factory):
    cfg = default_model.config
    bank = RouterBank(cfg.num_hidden_layers, state_rank=RANK, state_size=cfg.hidden_size)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in bank.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if "proj" in name else 0.5))
    schedule = new_schedule(cfg, uniform_sparsity(cfg.num_hidden_layers, 0.4), routers=bank.eval(), name_or_path="default")
    stream = torch.randint(3, 250, (4000,), generator=torch.Generator().manual_seed(3))
    calibrate_decode_thresholds(RoutedCausalLM(default_model, schedule).eval(), stream, max_context=64, windows=16)
    return schedule, save_schedule(schedule, tmp_path_factory.mktemp("hidden") / "hidden40.json")


@pytest.mark.parametrize("target", ["onnx", "trt"])
def test_hidden_router_export_parity(hidden_schedule, tmp_path, target):
    out = tmp_path / target
    with contextlib.redirect_stdout(io.StringIO()):
        rc = main(["--target", target, "--schedule", str(hidden_schedule[1]), "-o", str(out), "--parity-tokens", "6"])
    report = json.loads((out / "parity.json").read_text())
    assert rc == 0 and report["passed"], report
    for case in report["cases"]:
        assert case["routing_identical"], case["routing_mismatches"]  # prefill top-k and decode rows
        assert case["tokens_identical"]
    rates = report["decode_skip_rate"]["blocks"]
    assert rates and any(r["realised"] > 0 for r in rates.values())  # decode really skipped tokens
    copied = json.loads(next((out / "schedule").glob("*.json")).read_text())
    assert copied["router"]["hidden_state_rank"] == RANK


def test_float16_trt_graph_keeps_the_hidden_router_float32(hidden_schedule, default_model, tmp_path):
    schedule = hidden_schedule[0]
    model16 = RoutedCausalLM(load_model(ModelRef("default", str(DEFAULT_MODEL_DIR)), torch.float16), schedule).eval()
    req = ExportRequest(target="trt", output=str(tmp_path), dtype="float16", logits="last")
    target = get_target("trt")
    target.check(req)
    result = target.export(model16, tmp_path, req, lambda _: None)
    routed = sum(schedule.is_routed(b) for b in range(schedule.num_blocks))
    for name in ("decoder_model.onnx", "decoder_with_past_model.onnx"):
        problems, counts = routing_precision_problems(onnx.load(str(tmp_path / name), load_external_data=False))
        assert problems == [], problems
        assert counts["weight_layers"] == 3 * routed, counts  # proj, fc1 and fc2 of every routed block, float32
    reference = RoutedCausalLM(default_model, schedule).eval()
    report = run_parity(reference, result.runtime, parity_cases(4), tolerance_for("float16"), dtype="float16")
    assert report["passed"], [(c["name"], c["steps_over_tolerance"], c["routing_mismatches"][:3]) for c in report["cases"]]


def test_export_refuses_a_router_over_the_flop_budget(default_model, tmp_path, capsys):
    """A schedule whose hidden router costs more than 0.5% of a block (written by hand: ftp-train and
    new_schedule refuse to make one) fails before anything is exported, with one error line."""
    import dataclasses

    cfg = default_model.config
    ok = new_schedule(cfg, uniform_sparsity(cfg.num_hidden_layers, 0.4), name_or_path="default")
    big = dataclasses.replace(ok, routers=RouterBank(cfg.num_hidden_layers, state_rank=8, state_size=cfg.hidden_size))
    path = save_schedule(big, tmp_path / "big.json")
    assert main(["--target", "onnx", "--schedule", str(path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rank 8" in err[0] and "the limit is 0.5%" in err[0]
    assert not (tmp_path / "out").exists()
