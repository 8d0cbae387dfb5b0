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
from ftp_export.schedule import new_schedule, save_schedule
from tests.routing.test_skip_adapter import RANK, adapter_bank


@pytest.fixture(scope="module")
def adapter_schedule_file(default_model, tmp_path_factory):
    cfg = default_model.config
    # mean 0.4 with a dropped block: routed blocks' skipped tokens and all of block 2's take the adapter
    schedule = new_schedule(cfg, [0.0, 0.3, 1.0, 0.5, 0.4, 0.2], routers=adapter_bank(cfg), name_or_path="default")
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


def test_float16_trt_graph_with_a_skip_adapter(adapter_schedule_file, tmp_path):
    """float16 graphs: the adapter's update is computed in float32 from the float16 state and cast
    back; routing stays in its float32 islands and parity (routing identical) holds."""
    from ftp_export.architectures import DEFAULT_MODEL_DIR, ModelRef, load_model
    from ftp_export.export.parity import run_parity
    from ftp_export.export.request import ExportRequest
    from ftp_export.export.targets import get_target
    from ftp_export.export.tolerance import tolerance_for
    from ftp_export.schedule import load_schedule
    from ftp_export.trt.precision import routing_precision_problems
    from tests.helpers import parity_cases

    schedule = load_schedule(adapter_schedule_file)
    model16 = RoutedCausalLM(load_model(ModelRef("default", str(DEFAULT_MODEL_DIR)), torch.float16), schedule).eval()
    req = ExportRequest(target="trt", output=str(tmp_path), dtype="float16", logits="last")
    target = get_target("trt")
    target.check(req)
    result = target.export(model16, tmp_path, req, lambda _: None)
    import onnx

    for name in ("decoder_model.onnx", "decoder_with_past_model.onnx"):
        problems, _ = routing_precision_problems(onnx.load(str(tmp_path / name), load_external_data=False))
        assert problems == [], problems
    reference = RoutedCausalLM(load_model(ModelRef("default", str(DEFAULT_MODEL_DIR))), schedule).eval()
    report = run_parity(reference, result.runtime, parity_cases(4), tolerance_for("float16"), dtype="float16")
    assert report["passed"], [(c["name"], c["steps_over_tolerance"], c["routing_mismatches"][:3]) for c in report["cases"]]
