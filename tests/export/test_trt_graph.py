"""--target trt without TensorRT: the custom-node ONNX graph runs in onnxruntime with the
reference ftp nodes and matches PyTorch (logits, routing, greedy tokens)."""

from __future__ import annotations

import onnx
import torch

from ftp_export.calibration.thresholds import calibrate_decode_thresholds
from ftp_export.export.onnx_export import export_onnx
from ftp_export.export.parity import run_parity
from ftp_export.export.targets.trt import trtexec_command
from ftp_export.graph_io import GraphSignature
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.runtimes.ort import OrtRuntime
from ftp_export.schedule import new_schedule, uniform_sparsity
from ftp_export.trt.custom_ops import NODES, PluginLowering, onnx_translation_table
from ftp_export.trt.reference_ops import reference_session
from tests.helpers import ATOL, assert_parity, parity_cases


def test_custom_node_graph_matches_pytorch(tiny_model, tmp_path):
    n = tiny_model.config.num_hidden_layers
    schedule = new_schedule(tiny_model.config, uniform_sparsity(n, 0.4))
    reference = RoutedCausalLM(tiny_model, schedule).eval()
    stream = torch.randint(3, 259, (2000,), generator=torch.Generator().manual_seed(2))
    calibrate_decode_thresholds(reference, stream, max_context=64, windows=8)
    plugin_model = RoutedCausalLM(tiny_model, schedule, lowering=PluginLowering()).eval()
    graphs = export_onnx(plugin_model, tmp_path, custom_translation_table=onnx_translation_table())

    for path, expected in ((graphs.prefill, {"FtpTopKGather", "FtpTopKScatter"}), (graphs.decode, {"FtpThresholdGather", "FtpRowScatter"})):
        model = onnx.load(str(path), load_external_data=False)
        custom = [nd for nd in model.graph.node if nd.domain == "ftp"]
        assert {nd.op_type for nd in custom} == expected
        # per routed block: prefill one gather + one scatter; decode one gather + two row scatters
        # (the kept rows' queries into the all-rows attention, then the block's output rows)
        assert len(custom) == (2 if path == graphs.prefill else 3) * (n - 1)
        for nd in custom:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nd.attribute}
            assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b""
        _assert_int32_flags(model)
        ops = [nd.op_type for nd in model.graph.node]
        assert not set(ops) & {"ScatterND", "NonZero"}  # selection and scatter live in the plugins
        # the only TopK left ranks the attention factor (one per routed block, prefill only: decode
        # has no rank factor); see plugins/README.md
        assert ops.count("TopK") == (n - 1 if path == graphs.prefill else 0)
    assert set(NODES) == {"FtpTopKGather", "FtpTopKScatter", "FtpThresholdGather", "FtpRowScatter"}

    gen = OrtRuntime(graphs.files, graphs.signatures, session_factory=reference_session)
    report = run_parity(reference, gen, parity_cases(), atol=ATOL)
    assert_parity(report)
    assert report["logits"] == "last"  # the default; --logits all: tests/export/test_targets.py (drop+0.9)


# plugin tensors cannot be bool in TensorRT: the flags are int32 at the nodes, cast around them
FLAG_INPUTS = {"FtpTopKGather": [2], "FtpTopKScatter": [3], "FtpThresholdGather": [2], "FtpRowScatter": []}
FLAG_OUTPUTS = {"FtpTopKGather": [2], "FtpTopKScatter": [], "FtpThresholdGather": [], "FtpRowScatter": []}


def _assert_int32_flags(model: onnx.ModelProto) -> None:
    int32, boolean = onnx.TensorProto.INT32, onnx.TensorProto.BOOL
    producer = {out: nd for nd in model.graph.node for out in nd.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for nd in model.graph.node:
        for name in nd.input:
            consumers.setdefault(name, []).append(nd)

    def cast_to(nd: onnx.NodeProto | None) -> int | None:
        if nd is None or nd.op_type != "Cast":
            return None
        return next(onnx.helper.get_attribute_value(a) for a in nd.attribute if a.name == "to")

    graph_outputs = {o.name for o in model.graph.output}
    for nd in (n for n in model.graph.node if n.domain == "ftp"):
        for i in FLAG_INPUTS[nd.op_type]:
            assert cast_to(producer.get(nd.input[i])) == int32, f"{nd.op_type} input {i} is not Cast to int32"
        for i in FLAG_OUTPUTS[nd.op_type]:
            users = consumers.get(nd.output[i], [])
            assert nd.output[i] not in graph_outputs and users
            # the bool flags the model reads come from a Cast; the next scatter may take the int32 directly
            assert all(cast_to(u) == boolean or u.domain == "ftp" for u in users), [u.op_type for u in users]
            assert any(cast_to(u) == boolean for u in users)


def test_trtexec_command_has_profiles_and_plugins():
    cmd = trtexec_command("decoder_with_past_model.onnx", "d.engine", GraphSignature("decode", 2, ()))
    # the engine is not version-compatible: an embedded plugin library would never be loaded
    assert "--dynamicPlugins=build/libftp_plugins.so" in cmd and "--setPluginsToSerialize" not in cmd
    assert "past_key_values.1.value:8x${KV_HEADS}x4096x${HEAD_DIM}" in cmd
    assert "attention_mask:1x2" in cmd  # min: past 1 + one new token
