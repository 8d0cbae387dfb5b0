"""``--target trt``: the routed graphs with gather/scatter as ``ftp`` plugin nodes, the plugin
sources, a build script, and (where the ``tensorrt`` package imports) the engines themselves.

Parity runs the engines where they were built (:mod:`ftp_export.runtimes.tensorrt`), else the
same graphs in onnxruntime with the reference node implementations (:mod:`ftp_export.trt.reference_ops`).

Precision (plugins/README.md, "Precision"): the graphs are written in the engine's precision
(``--dtype``) and the engines are built as *strongly typed* networks (trtexec ``--stronglyTyped``,
``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; no FP16/BF16 builder flags), so TensorRT keeps every
tensor in the type the graph gives it. The routing lives in explicit float32 islands of the graph
(the routers are float32 parameters, the factors, scores, thresholds and selection float32, entered by
Casts from the attention's float32 probabilities): no builder precision choice can flip a top-k or
threshold decision. float32 and float16 graphs are parity-checked on the CPU (reference nodes);
bfloat16 needs TensorRT (onnxruntime's CPU provider has no bfloat16 kernels).

Decode lowering (``--decode-lowering``, :mod:`ftp_export.routed.lowering`): ``dynamic`` (default)
gathers the kept tokens with FtpThresholdGather (data-dependent row count: TensorRT reads the size
tensor on the host once per routed block per step) and scatters them back with FtpRowScatter;
``static`` computes every token of the step and keeps the kept ones by a device-side mask (fixed
shapes, no size tensor, CUDA-graph friendly; ``routing.N.rows`` [B*T] with -1 for skipped tokens).
The default stays ``dynamic`` until the GPU check's timings of both (scripts/gpu_check.sh) say otherwise.
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


def trtexec_command(onnx_file: str, engine: str, signature: GraphSignature) -> str:
    """A trtexec line with the optimisation profile of :data:`~ftp_export.trt.sources.PROFILES`:
    a strongly typed network (the graph's own types; no ``--fp16`` / ``--bf16``, which would let
    TensorRT run the float32 routing islands in 16 bits)."""

    def shapes(batch: int, seq: int, past: int) -> str:
        dims = {"input_ids": f"{batch}x{seq}", "attention_mask": f"{batch}x{past + seq}", "position_ids": f"{batch}x{seq}"}
        return ",".join(f"{name}:{dims.get(name, f'{batch}x${{KV_HEADS}}x{past}x${{HEAD_DIM}}')}" for name in signature.inputs)

    lo, opt, hi = PROFILES[signature.graph]
    # no --setPluginsToSerialize: TensorRT loads embedded plugin libraries only from version-compatible
    # engines; whoever runs the engine loads the library again (trtexec --dynamicPlugins, plugins/README.md)
    return (
        f"trtexec --onnx={onnx_file} --dynamicPlugins=build/{PLUGIN_LIB} "
        f"--stronglyTyped --minShapes={shapes(*lo)} --optShapes={shapes(*opt)} --maxShapes={shapes(*hi)} --saveEngine={engine}"
    )


def write_build_kit(out: Path, model: RoutedCausalLM, signatures: dict[str, GraphSignature], dtype: str = "float32") -> None:
    """Copy the plugin sources (with their CMakeLists.txt) and write build_engines.sh next to the graphs."""
    shutil.copytree(plugin_sources_dir(), out / "plugins", ignore=shutil.ignore_patterns("__pycache__", "build"))
    cfg = model.config
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    lines = [
        "#!/usr/bin/env bash",
        "# Build the ftp plugin library and the TensorRT engines (needs TensorRT 10+ with its headers, CUDA, CMake).",
        f"# Running an engine needs the library too: trtexec --loadEngine=X.engine --dynamicPlugins=build/{PLUGIN_LIB}",
        f"# Precision: the graphs are {dtype} with float32 routing islands; --stronglyTyped keeps the graph's types",
        "# (no --fp16/--bf16: they would let TensorRT run the router and the selection in 16 bits).",
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
        from ftp_export.routed.lowering import DECODE_LOWERINGS

        lowering = req.decode_lowering
        if lowering not in DECODE_LOWERINGS:
            raise FTPError(f"--decode-lowering {lowering}: choose one of {', '.join(DECODE_LOWERINGS)}")
        # without TensorRT, parity runs the graphs in onnxruntime's CPU provider (reference ftp nodes),
        # which runs float32 and float16 graphs but has no bfloat16 kernels
        if req.dtype not in ("float32", "float16") and not _tensorrt_importable():
            raise FTPError(
                f"--dtype {req.dtype} with --target trt needs TensorRT to check parity (onnxruntime's CPU provider, "
                "which runs the graphs here, has no bfloat16 kernels); export float32 or float16 here"
            )

    def export(self, model: RoutedCausalLM, out: Path, req: ExportRequest, log: Log) -> TargetResult:
        from ftp_export.runtimes.ort import OrtRuntime
        from ftp_export.trt.custom_ops import NODES, PLUGIN_VERSION, PluginLowering, onnx_translation_table
        from ftp_export.trt.reference_ops import reference_session

        decode = req.decode_lowering
        plugin_model = RoutedCausalLM(model.hf, model.schedule, lowering=PluginLowering(decode=decode)).eval()
        graphs = export_onnx(plugin_model, out, custom_translation_table=onnx_translation_table(), logits=req.logits)
        write_build_kit(out, model, graphs.signatures, req.dtype)
        # `out` is the temporary build folder; messages name the folder the user gets (req.output)
        engine = _maybe_build_engines(out, Path(req.output) if req.output else out, log, req.dtype)
        if engine["built"]:  # parity on the engines themselves
            from ftp_export.runtimes.tensorrt import TensorrtRuntime

            runtime = TensorrtRuntime(out, graphs.signatures)
            info = {**runtime.info(), "tensorrt_run": True}
        elif req.parity:  # parity on the same graphs, the ftp nodes run by their reference implementations
            runtime = OrtRuntime(graphs.files, graphs.signatures, session_factory=reference_session)
            info = {**runtime.info(), "name": "onnxruntime + reference ftp nodes (onnxruntime-extensions)", "tensorrt_run": False}
        else:
            runtime, info = None, None
        return TargetResult(
            manifest={
                "opset": OPSET,
                "graphs": graphs.manifest(out),
                "plugins": {"domain": "ftp", "nodes": list(NODES), "plugin_version": PLUGIN_VERSION, "library": PLUGIN_LIB},
                "decode_lowering": decode,
                # graph in the export dtype, routing in float32 islands, strongly typed engines
                "precision": {"graph": req.dtype, "routing": "float32", "network": "strongly typed"},
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


def _maybe_build_engines(out: Path, final: Path, log: Log, dtype: str = "float32") -> dict[str, Any]:
    """Build in ``out``; messages name ``final``, the folder the export ends in."""
    if not _tensorrt_importable():
        return {
            "built": False,
            "message": "TensorRT engine not built: the tensorrt package is not importable here; "
            f"run {final / 'build_engines.sh'} on a machine with TensorRT",
        }
    from ftp_export.trt.engine import build_engines

    return build_engines(out, log, shown=final, dtype=dtype)
