"""int8 quantization of the routed ONNX graphs (ftp_export.export.quantize), both methods: the
routing path found and left float32, every other weight MatMul 8-bit, the result running in
onnxruntime with routing agreeing with the float32 routed model; onnxruntime's defaults (routers
quantized) as the control that fails; inline and external weights; an ``If`` graph holding both
graphs as branches (the single ``model.onnx`` layout)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from ftp_export.export.onnx_export import export_onnx
from ftp_export.export.parity import run_parity
from ftp_export.export.quantize import (
    METHODS,
    Int8Options,
    QuantizeError,
    check_quantized,
    name_nodes,
    quantize_int8,
    routing_nodes,
)
from ftp_export.export.tolerance import Tolerance
from ftp_export.graph_io import signatures
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.runtimes.ort import OrtRuntime
from ftp_export.schedule import new_schedule
from tests.helpers import build_tiny, parity_cases

ROUTED_BLOCKS = (1, 2)
ROOT = Path(__file__).resolve().parents[2]


def _report_script():
    """scripts/int8_report.py as a module (it holds the flip analysis)."""
    name = "scripts_int8_report"
    if name not in sys.modules:  # registered before it runs: its dataclasses look their module up
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "int8_report.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


# greedy tokens per parity case: the prefill and one decode step. The tiny random model's logits are
# close together, so later steps follow another token now and then, and routing decisions on
# another context are no test of routing
NEW_TOKENS = 2
ANY_AGREEMENT = Tolerance(atol=float("inf"), rtol=0.0, routing_agreement=0.0)  # report, never fail


@pytest.fixture(scope="module")
def routed(tmp_path_factory):
    """A 3-block tiny model, blocks 1 and 2 routed at sparsity 0.4 in prefill and by a threshold in
    decode, on a score = attention factor + 0.1 * (1 - position factor): it depends on the hidden
    states, and close enough between tokens that quantizing the router flips decisions."""
    from ftp_export.architectures import ModelRef, load_model

    folder = build_tiny(tmp_path_factory.mktemp("tiny3"), num_hidden_layers=3)
    model = load_model(ModelRef("tiny3", str(folder)))
    schedule = new_schedule(model.config, [0.0, 0.4, 0.4], decode_thresholds=[None, 0.75, 0.75])
    with torch.no_grad():
        for router in schedule.routers.blocks:  # fc2 reads hidden units 0 and 1
            router.fc1.weight.zero_()
            router.fc1.bias.zero_()
            router.fc1.weight[0, 1] = 1.0  # unit 0: the attention factor
            router.fc1.weight[1, 0], router.fc1.bias[1] = -0.1, 0.1  # unit 1: 0.1 * (1 - position)
            router.fc2.weight[0, 1] = 1.0
    return RoutedCausalLM(model, schedule).eval()


@pytest.fixture(scope="module")
def exported(routed, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny3-onnx")
    return export_onnx(routed, out, logits="last").files


QUANTIZED_OP = {"weight-only": ("MatMulNBits", "_Q8"), "dynamic": ("MatMulInteger", "_quant")}


@pytest.fixture(scope="module", params=METHODS)
def quantized(request, exported, tmp_path_factory):
    """(files, per-graph report, method) of the export quantized by each method."""
    out = tmp_path_factory.mktemp(f"tiny3-{request.param}")
    infos = {g: quantize_int8(p, out / p.name, Int8Options(method=request.param)) for g, p in exported.items()}
    return {g: out / p.name for g, p in exported.items()}, infos, request.param


def _ops(path) -> dict[str, str]:
    model = onnx.load(str(path), load_external_data=False)
    found = {}

    def walk(graph):
        for node in graph.node:
            found[node.name] = node.op_type
            for attr in node.attribute:
                for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                    walk(sub)

    walk(model.graph)
    return found


def _weight_matmuls(path) -> list[str]:
    """Float MatMuls whose B is an initializer (of the graph or an enclosing one)."""
    model = onnx.load(str(path), load_external_data=False)
    found = []

    def walk(graph, weights):
        weights = weights | {i.name for i in graph.initializer}
        for node in graph.node:
            if node.op_type == "MatMul" and node.input[1] in weights:
                found.append(node.name)
            for attr in node.attribute:
                for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                    walk(sub, weights)

    walk(model.graph, set())
    return found


def _parity(routed, files):
    runtime = OrtRuntime(files, signatures(routed, "last"))
    return run_parity(routed, runtime, parity_cases(NEW_TOKENS), ANY_AGREEMENT)


def _agreement(report) -> float:
    cases = report["cases"]
    return sum(c["routing_agreement"] * c["routing_decisions"] for c in cases) / sum(c["routing_decisions"] for c in cases)


def test_router_nodes_found_and_named(exported):
    for graph, path in exported.items():
        model = onnx.load(str(path))
        before = routing_nodes(model)
        name_nodes(model)
        names = [n.name for n in model.graph.node]
        assert len(set(names)) == len(names)
        assert name_nodes(model) == 0  # idempotent
        found = routing_nodes(model)
        assert len(found.weight_matmul) == len(before.weight_matmul) == 2 * len(ROUTED_BLOCKS), graph
        assert sorted(found.weight_matmul) == [f"/model/routers/blocks.{b}/fc{i}/MatMul" for b in ROUTED_BLOCKS for i in (1, 2)]
        # the routing path around the routers: TopK (prefill) or the threshold compare (decode)
        kinds = {n.op_type for n in model.graph.node if n.name in set(found.selection)}
        assert ("TopK" in kinds) if graph == "prefill" else ({"NonZero", "GreaterOrEqual"} & kinds), kinds
        assert "/lm_head/MatMul" in names
        assert "/model/layers.0/self_attn/q_proj/MatMul" in names


def test_routers_found_without_metadata(exported):
    """A graph whose node metadata was dropped: the routers are found from their bias initializers."""
    model = onnx.load(str(exported["prefill"]))
    with_meta = routing_nodes(model).weight_matmul
    for node in model.graph.node:
        del node.metadata_props[:]
    assert sorted(routing_nodes(model).weight_matmul) == sorted(with_meta)


def test_quantized_keeps_routers_float(exported, quantized):
    files, infos, method = quantized
    op, suffix = QUANTIZED_OP[method]
    for graph, path in files.items():
        ops = _ops(path)
        routers = infos[graph]["router_matmuls"]
        assert len(routers) == 2 * len(ROUTED_BLOCKS)
        assert all(ops[n] == "MatMul" for n in routers)
        # every other weight MatMul became 8-bit; the routers are the only float ones left
        assert sorted(_weight_matmuls(path)) == sorted(routers)
        for name in ("/model/layers.1/mlp/down_proj/MatMul", "/model/layers.2/self_attn/q_proj/MatMul", "/lm_head/MatMul"):
            assert ops[name + suffix] == op
        assert ("DynamicQuantizeLinear" in ops.values()) == (method == "dynamic")
        assert not infos[graph]["external_data"] and not path.with_name(path.name + ".data").exists()
        assert infos[graph]["bytes_after"] < 0.75 * infos[graph]["bytes_before"]


def test_quantized_runs_and_routing_agrees(routed, quantized):
    files, _, method = quantized
    report = _parity(routed, files)
    assert _agreement(report) >= 0.99, [c["routing_agreement"] for c in report["cases"]]
    for c in report["cases"]:
        assert 1e-4 < c["prefill_max_abs_diff"] < 0.5, c  # really 8-bit, and close
        assert c["tokens_identical"], c


@pytest.fixture(scope="module")
def naive(exported, tmp_path_factory):
    """onnxruntime's ``quantize_dynamic`` with its defaults: the routers quantized too."""
    from onnxruntime.quantization import quantize_dynamic

    out = tmp_path_factory.mktemp("tiny3-naive")
    for p in exported.values():
        quantize_dynamic(p, out / p.name)
    return {g: out / p.name for g, p in exported.items()}


def test_naive_quantization_flips_routing(routed, exported, naive):
    """The control: with the routers quantized, routing disagrees on more than 1% of the decisions,
    and :func:`check_quantized` refuses the graph."""
    assert _agreement(_parity(routed, naive)) < 0.99
    found = routing_nodes(onnx.load(str(exported["prefill"])))
    with pytest.raises(QuantizeError):
        check_quantized(onnx.load(str(naive["prefill"])), found)


def test_flip_analysis(routed, exported, naive, tmp_path):
    """Router scores read from the graphs: exact in float32; with the routers quantized, the flips
    listed are the decisions parity counts as disagreeing, each within the measured score drift."""
    routing_flips = _report_script().routing_flips
    cases = parity_cases(NEW_TOKENS)
    for name in ("fp32", "naive"):
        (tmp_path / name).mkdir()
    exact = routing_flips(routed, exported, cases, tmp_path / "fp32")
    drift = [d for per_block in exact["score_drift"].values() for d in per_block.values()]
    assert exact["flips"] == [] and len(drift) == 2 * len(ROUTED_BLOCKS) and max(drift) < 1e-5
    assert exact["decisions"]["prefill"] > 0 and exact["decisions"]["decode"] > 0
    got = routing_flips(routed, naive, cases, tmp_path / "naive")
    report = _parity(routed, naive)
    assert all(c["tokens_identical"] for c in report["cases"])  # so both count decisions on one context
    assert sum(c["routing_decisions"] for c in report["cases"]) == sum(got["decisions"].values())
    disagreeing = sum(round((1 - c["routing_agreement"]) * c["routing_decisions"]) for c in report["cases"])
    assert len(got["flips"]) == disagreeing > 0
    assert got["all_within_drift"], got["flips"]


def test_external_data_in_and_out(exported, quantized, tmp_path, monkeypatch):
    """A source with external weights; and an output over the inline limit goes to ``.data``."""
    import ftp_export.export.quantize as q

    src = tmp_path / "src" / "decoder_model.onnx"
    src.parent.mkdir()
    onnx.save(onnx.load(str(exported["prefill"])), str(src), save_as_external_data=True,
              location="decoder_model.onnx.data", size_threshold=0)
    assert (src.parent / "decoder_model.onnx.data").stat().st_size > 100_000
    files, _, method = quantized
    options = Int8Options(method=method)
    inline = q.quantize_int8(src, tmp_path / "inline" / "decoder_model.onnx", options)
    monkeypatch.setattr(q, "INLINE_LIMIT", 0)
    dst = tmp_path / "ext" / "decoder_model.onnx"
    external = q.quantize_int8(src, dst, options)
    assert not inline["external_data"] and external["external_data"]
    data = dst.with_name("decoder_model.onnx.data").stat().st_size
    # the weights moved out (the graph file keeps the nodes and their exporter metadata)
    assert data > 100_000 and dst.stat().st_size + data // 2 < (tmp_path / "inline" / "decoder_model.onnx").stat().st_size
    assert sorted(_weight_matmuls(dst)) == sorted(external["router_matmuls"])
    ids = parity_cases(1)[0]
    pos = (torch.cumsum(ids.attention_mask, -1) - 1).clamp(min=0)
    feeds = {"input_ids": ids.input_ids.numpy(), "attention_mask": ids.attention_mask.numpy(), "position_ids": pos.numpy()}
    import onnxruntime as ort

    logits = [ort.InferenceSession(str(p)).run(["logits"], feeds)[0] for p in (files["prefill"], dst)]
    np.testing.assert_array_equal(logits[0], logits[1])


def _merged_toy(routed, prefill_path, decode_path, dst):
    """The two graphs as branches of one ``If`` on "past length == 0" (outputs: logits and present),
    weights in the outer graph, built here with onnx.helper."""
    from onnx import compose, helper

    prefill, decode = onnx.load(str(prefill_path)), onnx.load(str(decode_path))
    keep = ["logits"] + [o.name for o in decode.graph.output if o.name.startswith("present.")]
    inits, branches = [], {}
    for tag, model in (("prefill", prefill), ("decode", decode)):
        graph = compose.add_prefix_graph(model.graph, f"{tag}/", rename_inputs=False)
        outs = {o.name: o for o in graph.output}
        inits += list(graph.initializer)
        branches[tag] = helper.make_graph(list(graph.node), tag, [], [outs[f"{tag}/{k}"] for k in keep])
    nodes = [
        helper.make_node("Shape", ["past_key_values.0.key"], ["past_len"], start=2, end=3, name="past_len"),
        helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("zero", onnx.TensorProto.INT64, [1], [0]), name="zero"),
        helper.make_node("Equal", ["past_len", "zero"], ["empty1"], name="empty1"),
        helper.make_node("Squeeze", ["empty1"], ["empty"], name="empty"),
        helper.make_node("If", ["empty"], keep, then_branch=branches["prefill"], else_branch=branches["decode"], name="route"),
    ]
    outputs = [helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, None) for k in keep]
    graph = helper.make_graph(nodes, "main_graph", list(decode.graph.input), outputs, initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=decode.opset_import, ir_version=decode.ir_version), str(dst))


def _merged_export(routed, prefill_path, decode_path, dst):
    """The single ``model.onnx`` as the exporter merges it (ftp_export.export.onnx_merge)."""
    onnx_merge = pytest.importorskip("ftp_export.export.onnx_merge")
    import onnx_ir as ir

    from ftp_export.graph_io import merged_signature

    signature = merged_signature(signatures(routed, "last"))
    ir.save(onnx_merge.merge_decoders(ir.load(str(prefill_path)), ir.load(str(decode_path)), signature), str(dst))


@pytest.mark.parametrize("merge", [_merged_toy, _merged_export], ids=["toy-if", "onnx_merge"])
def test_if_graph_quantized_inside_branches(routed, exported, quantized, tmp_path, merge):
    import onnxruntime as ort

    files, _, method = quantized
    merge(routed, exported["prefill"], exported["decode"], tmp_path / "model.onnx")
    dst = tmp_path / "int8" / "model.onnx"
    info = quantize_int8(tmp_path / "model.onnx", dst, Int8Options(method=method))
    assert info["subgraphs"]
    # routers of both branches float, every other weight MatMul of both branches 8-bit
    assert len(info["router_matmuls"]) == 4 * len(ROUTED_BLOCKS)
    assert sorted(_weight_matmuls(dst)) == sorted(info["router_matmuls"])
    assert all(n.startswith(("/prefill/", "/decode/")) for n in info["router_matmuls"])
    # the merged int8 graph computes what the per-file int8 graphs compute, in both branches
    one = ort.InferenceSession(str(dst))
    names = [o.name for o in one.get_outputs()]
    case = parity_cases(1)[1]
    mask = case.attention_mask.numpy()
    feeds = {"input_ids": case.input_ids.numpy(), "attention_mask": mask, "position_ids": np.clip(np.cumsum(mask, -1) - 1, 0, None)}
    shape = (1, routed.config.num_key_value_heads, 0, routed.head_dim)
    past = {f"past_key_values.{i}.{kv}": np.zeros(shape, np.float32) for i in range(3) for kv in ("key", "value")}
    for graph in ("prefill", "decode"):
        single = ort.InferenceSession(str(files[graph]))
        want = dict(zip([o.name for o in single.get_outputs()], single.run(None, {**feeds, **(past if graph == "decode" else {})})))
        got = dict(zip(names, one.run(None, {**feeds, **past})))
        compared = [k for k in want if k in got]
        assert "logits" in compared and len(compared) >= 7, compared
        for k in compared:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{graph} {k}")
        if graph == "prefill":  # the next call: one token after this prefill's cache
            past = {k.replace("present", "past_key_values"): v for k, v in want.items() if k.startswith("present.")}
            feeds = {"input_ids": want["logits"][:, -1].argmax(-1)[:, None], "attention_mask": np.concatenate([mask, [[1]]], 1),
                     "position_ids": np.array([[mask.sum()]])}


def test_cli_int8_export_of_the_default_model_passes_beside_its_dense_baseline(tmp_path):
    """``ftp-export --quantize int8``: one int8 ``model.onnx`` (routers float32), parity against the
    float32 routed model with int8's tolerance, and the dense model quantized the same way in the
    report; the routed export agrees with the float32 model at least as well as the dense one."""
    import json

    from ftp_export.cli import main

    out = tmp_path / "int8"
    assert main(["--quantize", "int8", "-o", str(out), "--parity-tokens", "6"]) == 0
    parity = json.loads((out / "parity.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert parity["passed"] and parity["dtype"] == "int8" and parity["reference_dtype"] == "float32"
    assert (parity["atol"], parity["rtol"], parity["routing_agreement_min"]) == (5e-2, 2**-4, 0.99)
    dense = {c["name"]: c for c in parity["dense_baseline"]["cases"]}
    assert set(dense) == {c["name"] for c in parity["cases"]}
    for case in parity["cases"]:
        assert case["routing_agreement"] >= 0.99 and case["token_agreement"] >= dense[case["name"]]["token_agreement"]
        assert 0 < case["prefill_max_abs_diff"] < 0.5  # int8 weights moved the logits, within the bound
    q = manifest["quantize"], manifest["quantization"]
    assert q[0] == "int8" and q[1]["matmul_nbits"] > 0 and q[1]["bytes_after"] < 0.6 * q[1]["bytes_before"]
    assert len(q[1]["float_router_matmuls"]) == 2 * 2 * 4  # fc1, fc2 of the 4 routed blocks, in both branches
    graph = onnx.load(str(out / "model.onnx"))
    branch_ops = [n.op_type for node in graph.graph.node for a in node.attribute if a.g.name for n in a.g.node]
    assert "MatMulNBits" in branch_ops and (out / "genai_config.json").is_file()
