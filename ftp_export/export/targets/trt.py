"""``--target trt``: the routed graphs with gather/scatter as ``ftp`` plugin nodes, the plugin
sources, a build script, and (where the ``tensorrt`` package imports) the engines themselves.

Parity runs the engines where they were built (:mod:`ftp_export.runtimes.tensorrt`), else the
same graphs in onnxruntime with the reference node implementations (:mod:`ftp_export.trt.reference_ops`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ftp_export.errors import FTPError
from ftp_export.export.onnx_export import OPSET, export_onnx
from ftp_export.export.request import ExportRequest
from ftp_export.export.targets.base import Log, Target, TargetResult, register
from ftp_export.graph_io import GraphSignature
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.trt.sources import PROFILES, plugin_sources_dir

PLUGIN_LIB = "libftp_plugins.so"


def trtexec_command(onnx_file: str, engine: str, signature: GraphSignature, precision: str = "bf16") -> str:
    """A trtexec line with the optimisation profile of :data:`~ftp_export.trt.sources.PROFILES`."""

    def shapes(batch: int, seq: int, past: int) -> str:
        dims = {"input_ids": f"{batch}x{seq}", "attention_mask": f"{batch}x{past + seq}", "position_ids": f"{batch}x{seq}"}
        return ",".join(f"{name}:{dims.get(name, f'{batch}x${{KV_HEADS}}x{past}x${{HEAD_DIM}}')}" for name in signature.inputs)

    lo, opt, hi = PROFILES[signature.graph]
    # no --setPluginsToSerialize: TensorRT loads embedded plugin libraries only from version-compatible
    # engines; whoever runs the engine loads the library again (trtexec --dynamicPlugins, plugins/README.md)
    return (
        f"trtexec --onnx={onnx_file} --dynamicPlugins=build/{PLUGIN_LIB} "
        f"--{precision} --minShapes={shapes(*lo)} --optShapes={shapes(*opt)} --maxShapes={shapes(*hi)} --saveEngine={engine}"
    )


def write_build_kit(out: Path, model: RoutedCausalLM, signatures: dict[str, GraphSignature]) -> None:
    """Copy the plugin sources (with their CMakeLists.txt) and write build_engines.sh next to the graphs."""
    shutil.copytree(plugin_sources_dir(), out / "plugins", ignore=shutil.ignore_patterns("__pycache__", "build"))
    cfg = model.config
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    lines = [
        "#!/usr/bin/env bash",
        "# Build the ftp plugin library and the TensorRT engines (needs TensorRT 10+ with its headers, CUDA, CMake).",
        f"# Running an engine needs the library too: trtexec --loadEngine=X.engine --dynamicPlugins=build/{PLUGIN_LIB}",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        f"KV_HEADS={kv_heads}",
        f"HEAD_DIM={model.head_dim}",
        'cmake -S plugins -B build -DFTP_REQUIRE_TENSORRT=ON -DTensorRT_ROOT="${TensorRT_ROOT:-/usr}" && cmake --build build -j',
        *(trtexec_command(f"{s.stem}.onnx", f"{s.stem}.engine", s) for s in signatures.values()),
        "",
    ]
    path = out / "build_engines.sh"
    path.write_text("\n".join(lines))
    path.chmod(0o755)


@register
class TrtTarget(Target):
    name = "trt"
    description = "ONNX graphs with ftp plugin nodes for TensorRT, plugin sources and engine build script"

    def check(self, req: ExportRequest) -> None:
        # without TensorRT, parity runs the ftp nodes' float32 reference implementations
        if req.dtype != "float32" and not _tensorrt_importable():
            raise FTPError(
                f"--dtype {req.dtype} with --target trt needs TensorRT to check parity (the CPU reference of the ftp "
                "nodes is float32); export float32 here: the engine's precision is set when build_engines.sh builds it"
            )

    def export(self, model: RoutedCausalLM, out: Path, req: ExportRequest, log: Log) -> TargetResult:
        from ftp_export.runtimes.ort import OrtRuntime
        from ftp_export.trt.custom_ops import NODES, PLUGIN_VERSION, PluginLowering, onnx_translation_table
        from ftp_export.trt.reference_ops import reference_session

        plugin_model = RoutedCausalLM(model.hf, model.schedule, lowering=PluginLowering()).eval()
        graphs = export_onnx(plugin_model, out, custom_translation_table=onnx_translation_table(), logits=req.logits)
        write_build_kit(out, model, graphs.signatures)
        # `out` is the temporary build folder; messages name the folder the user gets (req.output)
        engine = _maybe_build_engines(out, Path(req.output) if req.output else out, log)
        if engine["built"]:  # parity on the engines themselves
            from ftp_export.runtimes.tensorrt import TensorrtRuntime

            runtime = TensorrtRuntime(out, graphs.signatures)
            info = {**runtime.info(), "tensorrt_run": True}
        else:  # parity on the same graphs, the ftp nodes run by their reference implementations
            runtime = OrtRuntime(graphs.files, graphs.signatures, session_factory=reference_session)
            info = {**runtime.info(), "name": "onnxruntime + reference ftp nodes (onnxruntime-extensions)", "tensorrt_run": False}
        return TargetResult(
            manifest={
                "opset": OPSET,
                "graphs": graphs.manifest(out),
                "plugins": {"domain": "ftp", "nodes": list(NODES), "plugin_version": PLUGIN_VERSION, "library": PLUGIN_LIB},
                "engine": engine,
                "runtime": info,
            },
            runtime=runtime,
            note=engine["message"],
        )


def _tensorrt_importable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def _maybe_build_engines(out: Path, final: Path, log: Log) -> dict[str, Any]:
    """Build in ``out``; messages name ``final``, the folder the export ends in."""
    if not _tensorrt_importable():
        return {
            "built": False,
            "message": "TensorRT engine not built: the tensorrt package is not importable here; "
            f"run {final / 'build_engines.sh'} on a machine with TensorRT",
        }
    from ftp_export.trt.engine import build_engines

    return build_engines(out, log, shown=final)
