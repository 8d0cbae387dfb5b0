"""``--target trt``: the routed graphs with gather/scatter as ``ftp`` plugin nodes, the plugin
sources, a build script, and (where the ``tensorrt`` package imports) the engines themselves.

Parity runs the same graphs in onnxruntime with the reference node implementations
(:mod:`.reference_ops`); an engine, when built, is not run for parity here.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ftp_export.export.graphs import DECODE_FILE, PREFILL_FILE
from ftp_export.export.job import TargetResult
from ftp_export.export.onnx_export import OPSET, export_onnx
from ftp_export.export.onnx_target import graph_entries
from ftp_export.parity import OrtGenerator
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.trt.custom_ops import NODES, PLUGIN_VERSION, PluginLowering, onnx_translation_table
from ftp_export.trt.reference_ops import reference_session

REPO_ROOT = Path(__file__).resolve().parents[2]
PLUGIN_LIB = "libftp_plugins.so"


def trtexec_command(onnx_file: str, engine: str, with_past: bool, num_layers: int, precision: str = "bf16") -> str:
    """A trtexec line with optimisation profiles for batch 1..8, prompt 1..2048, past 0..4096."""

    def shapes(batch: int, seq: int, past: int) -> str:
        parts = [f"input_ids:{batch}x{seq}", f"attention_mask:{batch}x{past + seq}", f"position_ids:{batch}x{seq}"]
        if with_past:
            parts += [f"past_key_values.{i}.{kv}:{batch}x${{KV_HEADS}}x{past}x${{HEAD_DIM}}" for i in range(num_layers) for kv in ("key", "value")]
        return ",".join(parts)

    if with_past:
        mins, opts, maxs = shapes(1, 1, 1), shapes(4, 1, 1024), shapes(8, 1, 4096)
    else:
        mins, opts, maxs = shapes(1, 1, 0), shapes(1, 512, 0), shapes(8, 2048, 0)
    return (
        f"trtexec --onnx={onnx_file} --dynamicPlugins=build/{PLUGIN_LIB} --setPluginsToSerialize=build/{PLUGIN_LIB} "
        f"--{precision} --minShapes={mins} --optShapes={opts} --maxShapes={maxs} --saveEngine={engine}"
    )


def write_build_kit(out: Path, model: RoutedCausalLM) -> None:
    """Copy plugin sources + CMakeLists and write build_engines.sh next to the graphs."""
    src = REPO_ROOT / "plugins"
    if src.is_dir():
        shutil.copytree(src, out / "plugins", ignore=shutil.ignore_patterns("__pycache__", "build"))
        shutil.copy2(REPO_ROOT / "CMakeLists.txt", out / "CMakeLists.txt")
    cfg = model.config
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    n = cfg.num_hidden_layers
    script = "\n".join(
        [
            "#!/usr/bin/env bash",
            "# Build the ftp plugin library and the TensorRT engines (needs TensorRT 10+, CUDA, CMake).",
            "set -euo pipefail",
            'cd "$(dirname "$0")"',
            f"KV_HEADS={kv_heads}",
            f"HEAD_DIM={model.head_dim}",
            'cmake -S . -B build -DFTP_REQUIRE_TENSORRT=ON -DTensorRT_ROOT="${TensorRT_ROOT:-/usr}" && cmake --build build -j',
            trtexec_command(PREFILL_FILE, "decoder_model.engine", False, n),
            trtexec_command(DECODE_FILE, "decoder_with_past_model.engine", True, n),
            "",
        ]
    )
    path = out / "build_engines.sh"
    path.write_text(script)
    path.chmod(0o755)


def export_target(model: RoutedCausalLM, out: Path, req: Any, log: Any) -> TargetResult:
    plugin_model = RoutedCausalLM(model.hf, model.schedule, lowering=PluginLowering()).eval()
    graphs = export_onnx(plugin_model, out, custom_translation_table=onnx_translation_table())
    write_build_kit(out, model)
    engine_note = _maybe_build_engines(out, log)
    gen = OrtGenerator(graphs.prefill, graphs.decode, model.config.num_hidden_layers, session_factory=reference_session)
    return TargetResult(
        manifest={
            "opset": OPSET,
            "graphs": graph_entries(model, graphs.prefill, graphs.decode, out),
            "plugins": {"domain": "ftp", "nodes": list(NODES), "plugin_version": PLUGIN_VERSION, "library": PLUGIN_LIB},
            "engine": engine_note,
            "runtime": {
                "name": "onnxruntime + reference ftp nodes (onnxruntime-extensions)",
                "provider": "CPUExecutionProvider",
                "tensorrt_run": False,
            },
        },
        generator=gen,
        note=engine_note["message"],
    )


def _maybe_build_engines(out: Path, log: Any) -> dict[str, Any]:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return {
            "built": False,
            "message": "TensorRT engine not built: the tensorrt package is not importable here; "
            f"run {out}/build_engines.sh on a machine with TensorRT",
        }
    from ftp_export.trt.engine import build_engines

    return build_engines(out, log)
