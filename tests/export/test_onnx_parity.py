"""--target onnx: onnxruntime vs PyTorch at overall sparsity 0.4 (logits, routing, greedy tokens),
including tied router scores."""

from __future__ import annotations

import pytest
import torch

from ftp_export.calibration.thresholds import calibrate_decode_thresholds
from ftp_export.export.onnx_export import export_onnx
from ftp_export.export.parity import reference_trace, run_parity
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.runtimes.ort import OrtRuntime
from ftp_export.schedule import new_schedule, uniform_sparsity
from tests.helpers import ATOL, assert_parity, parity_cases


@pytest.fixture(scope="module")
def static_export(tiny_model, tmp_path_factory):
    n = tiny_model.config.num_hidden_layers
    routed = RoutedCausalLM(tiny_model, new_schedule(tiny_model.config, uniform_sparsity(n, 0.4))).eval()
    seqs = torch.randint(3, 259, (4, 48), generator=torch.Generator().manual_seed(2))
    calibrate_decode_thresholds(routed, seqs, prompt_len=24)
    out = tmp_path_factory.mktemp("onnx-static")
    graphs = export_onnx(routed, out)
    return routed, graphs


def test_onnx_matches_pytorch_at_sparsity_04(static_export):
    routed, graphs = static_export
    gen = OrtRuntime(graphs.files, graphs.signatures)
    report = run_parity(routed, gen, parity_cases(), atol=ATOL)
    assert_parity(report)
    # the decode graph really skips tokens on this data (calibrated thresholds)
    ref = reference_trace(routed, parity_cases()[0])
    rows = [len(step[k]) for step in ref.routing[1:] for k in step if k.endswith(".rows")]
    assert 0 < sum(rows) < 3 * len(rows)


def test_onnx_graph_names_follow_optimum(static_export):
    import onnx

    routed, graphs = static_export
    n = routed.config.num_hidden_layers
    dec = onnx.load(str(graphs.decode), load_external_data=False)
    inputs = [i.name for i in dec.graph.input]
    outputs = [o.name for o in dec.graph.output]
    assert inputs[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert inputs[3:] == [f"past_key_values.{i}.{kv}" for i in range(n) for kv in ("key", "value")]
    assert outputs[0] == "logits"
    assert outputs[1 : 1 + 2 * n] == [f"present.{i}.{kv}" for i in range(n) for kv in ("key", "value")]
    ops = {node.op_type for node in onnx.load(str(graphs.prefill), load_external_data=False).graph.node}
    assert "TopK" in ops and "NonZero" in {node.op_type for node in dec.graph.node}


def test_tied_scores_break_the_same_way(tiny_model, tmp_path):
    """Constant router: every score ties, so only the tie rule decides (lower position wins)."""
    n = tiny_model.config.num_hidden_layers
    sch = new_schedule(tiny_model.config, uniform_sparsity(n, 0.4))
    with torch.no_grad():
        for r in sch.routers.blocks:
            for p in r.parameters():
                p.zero_()
            r.fc2.bias.fill_(0.5)
    # decode: score == threshold keeps the token (>=) on block 1, skips it on the others
    sch.decode_thresholds = [None, 0.5] + [0.75] * (n - 2)
    routed = RoutedCausalLM(tiny_model, sch).eval()
    graphs = export_onnx(routed, tmp_path)
    gen = OrtRuntime(graphs.files, graphs.signatures)
    cases = parity_cases(new_tokens=6)
    report = run_parity(routed, gen, cases, atol=ATOL)
    assert_parity(report)
    ref = reference_trace(routed, cases[1])
    k = ref.routing[0]["routing.1.indices"]
    assert k[0].tolist() == list(range(k.shape[1]))  # the earliest positions win every tie
    assert ref.routing[1]["routing.1.rows"].tolist() == [0]
    assert ref.routing[1]["routing.2.rows"].tolist() == []
