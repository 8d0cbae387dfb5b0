"""Issue 19 item 4: the precision scheme of ``--target trt``. The graphs are written in ``--dtype``
with the routing in float32 islands (router MLPs, factors, scores, thresholds, selection inputs) and
the engines are built strongly typed (no --fp16/--bf16). On the CPU: the float16 trt graph's routing
subgraph is float32 (onnx types), its parity with the reference nodes passes under float16's
tolerance, and the checker catches a router computed in float16."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from ftp_export.architectures import ModelRef, load_model
from ftp_export.calibration.thresholds import calibrate_decode_thresholds
from ftp_export.errors import FTPError
from ftp_export.export.parity import run_parity
from ftp_export.export.request import ExportRequest
from ftp_export.export.targets import get_target
from ftp_export.export.targets.trt import trtexec_command
from ftp_export.export.tolerance import tolerance_for
from ftp_export.graph_io import GraphSignature
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.schedule import new_schedule, uniform_sparsity
from ftp_export.trt.precision import routing_precision_problems, value_types
from tests.helpers import parity_cases

GRAPHS = ("decoder_model.onnx", "decoder_with_past_model.onnx")


@pytest.fixture(scope="module")
def float16_export(tiny_dir, tmp_path_factory):
    """The tiny model exported by the trt target in float16 (default decode lowering), with its
    float32 reference and the target's result."""
    tiny32 = load_model(ModelRef("tiny", str(tiny_dir)))
    n = tiny32.config.num_hidden_layers
    schedule = new_schedule(tiny32.config, uniform_sparsity(n, 0.4))
    reference = RoutedCausalLM(tiny32, schedule).eval()
    stream = torch.randint(3, 259, (2000,), generator=torch.Generator().manual_seed(2))
    calibrate_decode_thresholds(reference, stream, max_context=64, windows=8)
    model16 = RoutedCausalLM(load_model(ModelRef("tiny", str(tiny_dir)), torch.float16), schedule).eval()
    out = tmp_path_factory.mktemp("trt-f16")
    req = ExportRequest(target="trt", output=str(out), dtype="float16", logits="last")
    target = get_target("trt")
    target.check(req)  # float16 is checked on the CPU: no TensorRT needed
    result = target.export(model16, out, req, lambda _: None)
    routed_blocks = sum(schedule.is_routed(b) for b in range(n))
    return out, reference, result, routed_blocks


def test_float16_graph_routing_is_float32(float16_export):
    out, _, result, routed = float16_export
    for name in GRAPHS:
        model = onnx.load(str(out / name), load_external_data=False)
        types = value_types(model)
        assert any(t == TensorProto.FLOAT16 for t in types.values())  # the model itself is float16
        problems, counts = routing_precision_problems(model)
        assert problems == [], problems
        # every selection input was checked, and each routed block's router fc1 + fc2 sit in the islands
        selection = [nd for nd in model.graph.node if nd.domain == "ftp" and nd.op_type.endswith("Gather")]
        assert len(selection) == routed
        assert all(types[nd.input[1]] == TensorProto.FLOAT for nd in selection)
        assert counts["weight_layers"] == 2 * routed, counts
        # the ftp nodes move float16 rows
        assert all(types[nd.input[0]] == TensorProto.FLOAT16 for nd in selection)
    manifest = result.manifest
    assert manifest["precision"] == {"graph": "float16", "routing": "float32", "network": "strongly typed"}
    json.dumps(manifest)


def test_float16_trt_graph_parity_on_cpu(float16_export):
    """Reference nodes on float16 rows (Cast to float32 around them in the parity copy only: exact).
    4 greedy tokens: at step 5 the tiny model's repeated-token row has a top-2 logit gap of 1e-3 in
    the float32 reference, under float16's drift (1.5e-3), so its greedy token may legitimately flip."""
    _, reference, result, _ = float16_export
    report = run_parity(reference, result.runtime, parity_cases(4), tolerance_for("float16"), dtype="float16")
    assert report["passed"], [(c["name"], c["steps_over_tolerance"], c["routing_mismatches"][:3]) for c in report["cases"]]
    assert report["reference_dtype"] == "float32" and report["dtype"] == "float16"
    drift = max(c["prefill_max_abs_diff"] for c in report["cases"])
    assert 0 < drift < 0.05  # the graph really ran in float16 and stayed within its criterion


def test_checker_catches_16_bit_routing(float16_export):
    """A router layer moved to float16 (a Cast around it) or rounded through float16 is reported."""
    out = float16_export[0]
    model = onnx.load(str(out / "decoder_with_past_model.onnx"), load_external_data=False)
    consts = {t.name for t in model.graph.initializer}
    problems, counts = routing_precision_problems(model)
    assert not problems
    # round the output of the first router layer (a MatMul/Gemm with a weight, inside the islands) through float16
    layer = next(nd for nd in model.graph.node if nd.op_type in ("MatMul", "Gemm") and any(x in consts for x in nd.input)
                 and value_types(model).get(nd.output[0]) == TensorProto.FLOAT)
    rounded = copy.deepcopy(model)
    node = next(nd for nd in rounded.graph.node if nd.output[0] == layer.output[0])
    wide, narrow = layer.output[0], f"{layer.output[0]}_f16"
    node.output[0] = f"{wide}_pre"
    idx = list(rounded.graph.node).index(node)
    rounded.graph.node.insert(idx + 1, helper.make_node("Cast", [f"{wide}_pre"], [narrow], to=TensorProto.FLOAT16))
    rounded.graph.node.insert(idx + 2, helper.make_node("Cast", [narrow], [wide], to=TensorProto.FLOAT))
    rounded.graph.value_info.extend([helper.make_tensor_value_info(narrow, TensorProto.FLOAT16, None),
                                     helper.make_tensor_value_info(f"{wide}_pre", TensorProto.FLOAT, None)])
    problems, _ = routing_precision_problems(rounded)
    assert any("rounded to float16" in p for p in problems), problems
    # or computed in float16 behind a Cast: it leaves the islands (one weight layer fewer)
    half = copy.deepcopy(model)
    node = next(nd for nd in half.graph.node if nd.output[0] == layer.output[0])
    node.output[0] = narrow
    idx = list(half.graph.node).index(node)
    half.graph.node.insert(idx + 1, helper.make_node("Cast", [narrow], [wide], to=TensorProto.FLOAT))
    half.graph.value_info.append(helper.make_tensor_value_info(narrow, TensorProto.FLOAT16, None))
    _, half_counts = routing_precision_problems(half)
    assert half_counts["weight_layers"] == counts["weight_layers"] - 1
    # a float16 comparison feeding a decision is reported
    cmp = helper.make_node("GreaterOrEqual", [narrow, narrow], ["ge_out"])
    half.graph.node.append(cmp)
    problems, _ = routing_precision_problems(half)
    assert any("GreaterOrEqual" in p and "float16" in p for p in problems), problems


def test_engines_are_strongly_typed(float16_export):
    """build_engines.sh and the Python build: no precision flag, a strongly typed network."""
    out = float16_export[0]
    script = (out / "build_engines.sh").read_text()
    lines = [ln for ln in script.splitlines() if ln.startswith("trtexec")]
    assert len(lines) == 2 and all("--stronglyTyped" in ln for ln in lines)
    assert not any(flag in ln for ln in lines for flag in ("--fp16", "--bf16", "--best", "--int8"))
    assert "float16" in script
    cmd = trtexec_command("d.onnx", "d.engine", GraphSignature("decode", 2, ()))
    assert "--stronglyTyped" in cmd and "--bf16" not in cmd


def test_build_engines_strongly_typed_without_precision_flags(tmp_path, monkeypatch):
    """ftp_export.trt.engine.build_engines against a stand-in ``tensorrt`` module that records the
    calls: the network is created strongly typed and no builder flag is set."""
    calls: dict[str, list] = {"network_flags": [], "set_flag": [], "parsed": []}

    class Flag:
        STRONGLY_TYPED = 1

    class Obj:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls["network_flags"].append(flags)
            return Obj(num_inputs=0)

        def create_builder_config(self):
            return Obj(set_flag=lambda f: calls["set_flag"].append(f), add_optimization_profile=lambda p: None)

        def create_optimization_profile(self):
            return Obj(set_shape=lambda *a: None)

        def build_serialized_network(self, network, config):
            return b"engine"

    class OnnxParser:
        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            calls["parsed"].append(Path(path).name)
            return True

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    fake = Obj(
        Logger=Logger, Builder=Builder, OnnxParser=OnnxParser, NetworkDefinitionCreationFlag=Flag,
        BuilderFlag=Obj(FP16="FP16", BF16="BF16"), get_plugin_registry=lambda: Obj(load_library=lambda p: None),
    )
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "libftp_plugins.so").write_bytes(b"")
    from ftp_export.trt.engine import build_engines

    info = build_engines(tmp_path, lambda _: None, dtype="float16")
    assert info["built"] and calls["parsed"] == list(GRAPHS)
    assert calls["network_flags"] == [2, 2] and calls["set_flag"] == []
    assert info["precision"] == {"graph": "float16", "routing": "float32", "network": "strongly typed"}
    assert (tmp_path / "decoder_model.engine").read_bytes() == b"engine"


def test_strongly_typed_flag_value():
    from ftp_export.trt.engine import strongly_typed_flags

    class Flags:  # TensorRT 10: STRONGLY_TYPED = 1; TensorRT 11: 0 (ignored, always on)
        STRONGLY_TYPED = 1

    class Trt10:
        NetworkDefinitionCreationFlag = Flags

    class Trt11:
        class NetworkDefinitionCreationFlag:
            STRONGLY_TYPED = 0

    assert strongly_typed_flags(Trt10) == 2 and strongly_typed_flags(Trt11) == 1


def test_bfloat16_needs_tensorrt():
    with pytest.raises(FTPError, match="needs TensorRT"):
        get_target("trt").check(ExportRequest(target="trt", dtype="bfloat16"))


@pytest.mark.slow
def test_float16_static_decode_graph(tiny_dir, tmp_path):
    """float16 with ``--decode-lowering static``: the decode graph's keep test (``margin >= 0``) is a
    float32 comparison inside the islands, and parity passes (slow: a second float16 export)."""
    tiny32 = load_model(ModelRef("tiny", str(tiny_dir)))
    schedule = new_schedule(tiny32.config, uniform_sparsity(tiny32.config.num_hidden_layers, 0.4))
    reference = RoutedCausalLM(tiny32, schedule).eval()
    stream = torch.randint(3, 259, (2000,), generator=torch.Generator().manual_seed(2))
    calibrate_decode_thresholds(reference, stream, max_context=64, windows=8)
    model16 = RoutedCausalLM(load_model(ModelRef("tiny", str(tiny_dir)), torch.float16), schedule).eval()
    req = ExportRequest(target="trt", output=str(tmp_path), dtype="float16", logits="last", decode_lowering="static")
    result = get_target("trt").export(model16, tmp_path, req, lambda _: None)
    decode = onnx.load(str(tmp_path / GRAPHS[1]), load_external_data=False)
    problems, counts = routing_precision_problems(decode)
    assert problems == [] and counts["weight_layers"] == 2 * (tiny32.config.num_hidden_layers - 1), (problems, counts)
    types = value_types(decode)
    compares = [nd for nd in decode.graph.node if nd.op_type == "GreaterOrEqual" and types.get(nd.input[0]) in (1, 10)]
    assert compares and all(types[nd.input[0]] == TensorProto.FLOAT for nd in compares)
    report = run_parity(reference, result.runtime, parity_cases(4), tolerance_for("float16"), dtype="float16")
    assert report["passed"], [(c["name"], c["steps_over_tolerance"], c["routing_mismatches"][:3]) for c in report["cases"]]
