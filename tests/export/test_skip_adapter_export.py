"""Issue 16 item 3: a skip adapter exports as an ordinary subgraph: the embedded default model with an
adapter schedule through ``ftp-export`` (onnx, and the trt-flavoured graph with the reference ftp
nodes) keeps prefill top-k and decode rows identical to PyTorch, logits within tolerance."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from ftp_export.calibration.thresholds import calibrate_decode_thresholds
from ftp_export.cli import main
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.schedule import new_schedule, save_schedule, uniform_sparsity
from tests.routing.test_skip_adapter import RANK, adapter_bank


@pytest.fixture(scope="module")
def adapter_schedule_file(default_model, tmp_path_factory):
    cfg = default_model.config
    schedule = new_schedule(cfg, uniform_sparsity(cfg.num_hidden_layers, 0.4), routers=adapter_bank(cfg), name_or_path="default")
    stream = torch.randint(3, 250, (4000,), generator=torch.Generator().manual_seed(3))
    calibrate_decode_thresholds(RoutedCausalLM(default_model, schedule).eval(), stream, max_context=64, windows=16)
    return save_schedule(schedule, tmp_path_factory.mktemp("adapter") / "adapter40.json")


@pytest.mark.parametrize("target", ["onnx", "trt"])
def test_skip_adapter_export_parity(adapter_schedule_file, tmp_path, target):
    out = tmp_path / target
    with contextlib.redirect_stdout(io.StringIO()):
        rc = main(["--target", target, "--schedule", str(adapter_schedule_file), "-o", str(out), "--parity-tokens", "6"])
    report = json.loads((out / "parity.json").read_text())
    assert rc == 0 and report["passed"], report
    for case in report["cases"]:
        assert case["routing_identical"], case["routing_mismatches"]
        assert case["tokens_identical"]
    rates = report["decode_skip_rate"]["blocks"]
    assert rates and any(r["realised"] > 0 for r in rates.values())  # decode really skipped (and adapted) tokens
    copied = json.loads(next((out / "schedule").glob("*.json")).read_text())
    assert copied["router"]["skip_adapter"]["rank"] == RANK
