"""Issue 19 item 5: the static-shape decode lowering of ``--target trt`` (every row computed, a
device-side mask keeps the kept ones; no gather, scatter, NonZero or size tensor). Eager PyTorch:
the same logits, routing and KV cache as the dynamic lowering; the trt-flavoured ONNX: fixed-size
``routing.N.rows`` with -1 for skipped tokens, and reference parity on the CPU, routing identical."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch

from ftp_export.calibration.thresholds import calibrate_decode_thresholds
from ftp_export.cli.export import cmd_export, export_parser
from ftp_export.errors import FTPError
from ftp_export.export.parity import drop_skipped_rows, run_parity
from ftp_export.export.request import ExportRequest
from ftp_export.export.targets import get_target
from ftp_export.routed.cache import TensorCache
from ftp_export.routed.lowering import TorchLowering
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.runtimes.base import StepTrace
from ftp_export.schedule import new_schedule, uniform_sparsity
from tests.helpers import ATOL, assert_parity, parity_cases


@pytest.fixture(scope="module")
def schedule(tiny_model):
    sched = new_schedule(tiny_model.config, uniform_sparsity(tiny_model.config.num_hidden_layers, 0.4))
    stream = torch.randint(3, 259, (2000,), generator=torch.Generator().manual_seed(2))
    calibrate_decode_thresholds(RoutedCausalLM(tiny_model, sched).eval(), stream, max_context=64, windows=8)
    return sched


@torch.no_grad()
def test_static_lowering_matches_dynamic_in_eager(tiny_model, schedule):
    """Decode steps from one prefill cache: logits, kept rows and the present cache (K/V of skipped
    tokens included) equal the dynamic lowering's; rows is [B*T] with -1 exactly at skipped tokens."""
    dynamic = RoutedCausalLM(tiny_model, schedule).eval()
    static = RoutedCausalLM(tiny_model, schedule, lowering=TorchLowering(decode="static")).eval()
    case = parity_cases()[0]  # batch 3, left padded, a repeated-token row
    ids, mask = case.input_ids, case.attention_mask
    cache = TensorCache()
    out = dynamic(ids, mask, past_key_values=cache, mode="prefill")
    past = cache.present
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    kept = skipped = 0
    for _ in range(4):
        pos = mask.sum(-1, keepdim=True)
        mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        c_dyn, c_sta = TensorCache(past), TensorCache(past)
        a = dynamic(nxt, mask, pos, past_key_values=c_dyn, mode="decode")
        b = static(nxt, mask, pos, past_key_values=c_sta, mode="decode")
        assert torch.allclose(a.logits, b.logits, atol=1e-5, rtol=0), (a.logits - b.logits).abs().max()
        for ra, rb in zip(a.routing, b.routing):
            if ra is None or ra.rows is None:
                assert rb is None or rb.rows is None
                continue
            assert rb.rows.shape == (nxt.numel(),)
            assert torch.equal(rb.rows[rb.rows >= 0], ra.rows)
            flat = torch.arange(nxt.numel())
            assert torch.equal(rb.rows, torch.where(torch.isin(flat, ra.rows), flat, -1))
            kept, skipped = kept + ra.rows.numel(), skipped + int((rb.rows < 0).sum())
        for (ka, va), (kb, vb) in zip(c_dyn.present, c_sta.present):
            assert torch.allclose(ka, kb, atol=1e-6, rtol=0) and torch.allclose(va, vb, atol=1e-6, rtol=0)
            assert torch.equal(ka[:, :, :-1], kb[:, :, :-1])  # the past is carried over untouched
        past = c_dyn.present
        nxt = a.logits[:, -1].argmax(-1, keepdim=True)
    assert kept and skipped  # both branches of the mask were exercised


def test_drop_skipped_rows():
    trace = StepTrace(routing=[{"routing.1.indices": torch.tensor([[0, 1]]).numpy()},
                               {"routing.1.rows": torch.tensor([0, -1, 2]).numpy()}])
    got = drop_skipped_rows(trace).routing
    assert got[1]["routing.1.rows"].tolist() == [0, 2] and got[0]["routing.1.indices"].tolist() == [[0, 1]]


def test_static_trt_graph_parity(tiny_model, schedule, tmp_path):
    """``--target trt --decode-lowering static`` through the target: the decode graph has no ftp node,
    NonZero or data-dependent shape; parity with the reference nodes passes, routing identical."""
    reference = RoutedCausalLM(tiny_model, schedule).eval()
    req = ExportRequest(target="trt", output=str(tmp_path), logits="last", decode_lowering="static")
    target = get_target("trt")
    target.check(req)
    result = target.export(reference, tmp_path, req, lambda _: None)
    assert result.manifest["decode_lowering"] == "static"
    json.dumps(result.manifest)  # the manifest stays JSON
    decode = onnx.load(str(tmp_path / "decoder_with_past_model.onnx"), load_external_data=False)
    prefill = onnx.load(str(tmp_path / "decoder_model.onnx"), load_external_data=False)
    ops = {nd.op_type for nd in decode.graph.node}
    assert not ops & {"NonZero", "ScatterND", "FtpThresholdGather", "FtpRowScatter"}, ops
    assert {nd.op_type for nd in prefill.graph.node if nd.domain == "ftp"} == {"FtpTopKGather", "FtpTopKScatter"}
    report = run_parity(reference, result.runtime, parity_cases(), atol=ATOL)
    assert_parity(report)
    rates = report["decode_skip_rate"]["blocks"]
    assert rates and all(0 < b["realised"] < 1 for b in rates.values()), rates  # -1 entries are not counted as kept
    # the rows the graph returns: fixed size B*T, -1 where skipped
    case = parity_cases(2)[0]
    got = result.runtime.generate(case.input_ids.numpy(), case.attention_mask.numpy(), 2)
    rows = got.routing[1]["routing.1.rows"]
    assert rows.shape == (case.input_ids.shape[0],) and set(rows.tolist()) <= {-1, 0, 1, 2}


def test_cli_decode_lowering_flag():
    assert export_parser().parse_args([]).decode_lowering == "dynamic"
    assert export_parser().parse_args(["--target", "trt", "--decode-lowering", "static"]).decode_lowering == "static"
    with pytest.raises(FTPError, match="--target trt only"):
        cmd_export(["--decode-lowering", "static", "-o", str(Path("never-written"))])
    assert not Path("never-written").exists()


def test_gpu_timing_entry_point_refuses_a_missing_library(tmp_path):
    """scripts/gpu_check.sh's ``trt-decode-lowerings`` stage (it needs TensorRT and a GPU to run)."""
    from ftp_export.trt import decode_timing

    with pytest.raises(SystemExit, match="not found"):
        decode_timing.main(["--plugins", str(tmp_path / "libftp_plugins.so")])
    script = (Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.sh").read_text()
    assert "needs_tensorrt trt_decode_lowerings" in script and "ftp_export.trt.decode_timing" in script
