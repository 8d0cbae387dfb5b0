"""``--target onnx``: routing in standard ONNX ops, run in onnxruntime for parity."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

from ftp_export.export.graphs import INPUTS, past_names, present_names, routing_names
from ftp_export.export.job import TargetResult
from ftp_export.export.onnx_export import OPSET, export_onnx
from ftp_export.parity import OrtGenerator
from ftp_export.routed.model import RoutedCausalLM


def graph_entries(model: RoutedCausalLM, prefill: Path, decode: Path, root: Path) -> dict[str, Any]:
    n = model.config.num_hidden_layers
    return {
        "prefill": {
            "file": str(prefill.relative_to(root)),
            "inputs": INPUTS,
            "outputs": ["logits", *present_names(n), *routing_names(model, "prefill")],
            "routing": "top-k per sequence (static shapes per length)",
        },
        "decode": {
            "file": str(decode.relative_to(root)),
            "inputs": INPUTS + past_names(n),
            "outputs": ["logits", *present_names(n), *routing_names(model, "decode")],
            "routing": "per-block score threshold (data-dependent token count)",
        },
    }


def export_target(model: RoutedCausalLM, out: Path, req: Any, log: Any) -> TargetResult:
    graphs = export_onnx(model, out)
    gen = OrtGenerator(graphs.prefill, graphs.decode, model.config.num_hidden_layers)
    return TargetResult(
        manifest={
            "opset": OPSET,
            "graphs": graph_entries(model, graphs.prefill, graphs.decode, out),
            "runtime": {"name": "onnxruntime", "version": metadata.version("onnxruntime"), "provider": "CPUExecutionProvider"},
        },
        generator=gen,
    )
