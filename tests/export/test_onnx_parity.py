"""--target onnx: onnxruntime vs PyTorch at overall sparsity 0.4 (logits, routing, greedy tokens),
including tied router scores; prefill logits at each row's last valid token (the default) and at
every position (``logits='all'``, the tied-scores export)."""

from __future__ import annotations

import pytest
import torch

from ftp_export.calibration.thresholds import calibrate_decode_thresholds
from ftp_export.export.onnx_export import export_onnx
from ftp_export.export.parity import format_table, reference_trace, run_parity
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.routing.decode_thresholds import DecodeThresholds
from ftp_export.routing.selection import DITHER
from ftp_export.runtimes.ort import OrtRuntime
from ftp_export.schedule import new_schedule, uniform_sparsity
from tests.helpers import ATOL, assert_parity, parity_cases


@pytest.fixture(scope="module")
def static_export(tiny_model, tmp_path_factory):
    n = tiny_model.config.num_hidden_layers
    routed = RoutedCausalLM(tiny_model, new_schedule(tiny_model.config, uniform_sparsity(n, 0.4))).eval()
    stream = torch.randint(3, 259, (2000,), generator=torch.Generator().manual_seed(2))
    calibrate_decode_thresholds(routed, stream, max_context=64, windows=8)
    out = tmp_path_factory.mktemp("onnx-static")
    graphs = export_onnx(routed, out)
    return routed, graphs


def test_onnx_matches_pytorch_at_sparsity_04(static_export):
    routed, graphs = static_export
    gen = OrtRuntime(graphs.files, graphs.signatures)
    report = run_parity(routed, gen, parity_cases(), atol=ATOL)
    assert_parity(report)
    assert report["logits"] == "last"  # the default: [B, 1, V] at each row's last valid token
    case = parity_cases(new_tokens=1)[0]
    assert gen.generate(case.input_ids.numpy(), case.attention_mask.numpy(), 1).logits[0].shape == (3, 1, routed.config.vocab_size)
    # the decode graph really skips tokens on this data (calibrated thresholds)
    ref = reference_trace(routed, parity_cases()[0])
    rows = [len(step[k]) for step in ref.routing[1:] for k in step if k.endswith(".rows")]
    assert 0 < sum(rows) < 3 * len(rows)
    # the report counts the decode graph's own rows: realised skip rate per routed block
    rates = report["decode_skip_rate"]
    assert rates["decoded_tokens"] == sum(c.input_ids.shape[0] * (c.new_tokens - 1) for c in parity_cases())
    assert sorted(map(int, rates["blocks"])) == [b for b in range(4) if routed.block_mode(b, "decode") == "threshold"]
    assert all(0.0 <= r["realised"] <= 1.0 for r in rates["blocks"].values())
    assert "decode skip rate per block" in format_table(report)


def test_a_contradicted_declared_shape_fails_parity(static_export):
    routed, graphs = static_export

    class Contradicted(OrtRuntime):
        def check_shapes(self, graph, feeds, outputs):
            self.shape_problems.append(f"{graph}: routing.2.indices dim 1 declared 1, got 4")

    report = run_parity(routed, Contradicted(graphs.files, graphs.signatures), parity_cases(new_tokens=2)[1:2], atol=ATOL)
    assert all(c["passed"] for c in report["cases"]) and not report["passed"]
    assert report["shape_problems"][0] == "prefill: routing.2.indices dim 1 declared 1, got 4"
    assert "declared shape contradicted: prefill: routing.2.indices" in format_table(report)
    clean = run_parity(routed, OrtRuntime(graphs.files, graphs.signatures), parity_cases(new_tokens=2)[1:2], atol=ATOL)
    assert clean["passed"] and clean["shape_problems"] == []


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
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in (*dec.graph.input, *dec.graph.output)}
    assert dims["attention_mask"] == ["batch_size", "past_sequence_length + sequence_length"]
    assert {tuple(dims[f"past_key_values.{i}.key"]) for i in range(n)} == {("batch_size", 2, "past_sequence_length", 16)}
    assert dims["present.0.value"][2] == "past_sequence_length + sequence_length"
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
    # decode: score + tie-break (in [0, DITHER)) >= threshold keeps every token on block 1
    # (margin == 0 at position 0: >= keeps it), skips every token on the others
    sch.decode_thresholds = DecodeThresholds.constant([None, 0.5] + [0.5 + DITHER] * (n - 2))
    routed = RoutedCausalLM(tiny_model, sch).eval()
    graphs = export_onnx(routed, tmp_path, logits="all")  # every position's logits compared
    gen = OrtRuntime(graphs.files, graphs.signatures)
    cases = parity_cases(new_tokens=6)
    report = run_parity(routed, gen, cases, atol=ATOL)
    assert_parity(report)
    assert report["logits"] == "all" and gen.generate(cases[0].input_ids.numpy(), cases[0].attention_mask.numpy(), 1).logits[0].shape[1] > 1
    ref = reference_trace(routed, cases[1])
    k = ref.routing[0]["routing.1.indices"]
    assert k[0].tolist() == list(range(k.shape[1]))  # the earliest positions win every tie
    assert ref.routing[1]["routing.1.rows"].tolist() == [0]
    assert ref.routing[1]["routing.2.rows"].tolist() == []


def test_decode_graph_takes_several_new_tokens_as_one_token_steps(static_export):
    """Chunked prefill / multi-turn / assisted decoding: the decode graph fed 6 new tokens after a
    past gives the reference's logits and routing rows, and the reference's one call equals six
    one-token steps (tests/core/test_decode_routing.py), so the graph does too."""
    import numpy as np

    from ftp_export.export.parity import routing_to_dict
    from ftp_export.routed.cache import TensorCache

    routed, graphs = static_export
    gen = OrtRuntime(graphs.files, graphs.signatures)
    ids = torch.randint(3, 259, (2, 20), generator=torch.Generator().manual_seed(7))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    pos = torch.clamp(torch.cumsum(mask, -1) - 1, min=0)
    feeds = {"input_ids": ids[:, :14], "attention_mask": mask[:, :14], "position_ids": pos[:, :14]}
    _, past, _ = gen._step("prefill", {k: gen.feed(v.numpy()) for k, v in feeds.items()})
    feeds = {"input_ids": ids[:, 14:], "attention_mask": mask, "position_ids": pos[:, 14:]}
    logits, _, rows = gen._step("decode", {**{k: gen.feed(v.numpy()) for k, v in feeds.items()}, **past})
    with torch.no_grad():
        cache = TensorCache()
        routed(ids[:, :14], mask[:, :14], pos[:, :14], past_key_values=cache, mode="prefill")
        ref = routed(ids[:, 14:], mask, pos[:, 14:], past_key_values=TensorCache(cache.present), mode="decode")
    assert np.abs(logits - ref.logits.numpy()).max() <= ATOL
    want = routing_to_dict(ref.routing)
    assert sorted(rows) == sorted(want) and all(np.array_equal(rows[k], want[k]) for k in want)
    assert any(0 < len(v) < 12 for v in want.values())  # some of the 12 new tokens skipped, some computed
