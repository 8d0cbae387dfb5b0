"""``--target onnx``: one decoder graph ``model.onnx`` (optimum's and onnxruntime-genai's layout:
top-k routing when the past is empty, threshold routing otherwise, :mod:`..onnx_merge`) and its
``genai_config.json``; routing in standard ONNX ops (TopK, Gather, ScatterElements, NonZero), run
in onnxruntime for parity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftp_export.errors import FTPError
from ftp_export.export.genai_config import GENAI_CONFIG, write_genai_config
from ftp_export.export.onnx_export import OPSET, export_onnx
from ftp_export.export.quantize import quantize_int8
from ftp_export.export.request import ExportRequest
from ftp_export.export.targets.base import Log, Target, TargetResult, register
from ftp_export.graph_io import MERGED
from ftp_export.routed.model import RoutedCausalLM


@register
class OnnxTarget(Target):
    name = "onnx"
    description = "one ONNX decoder graph (model.onnx) in standard ops, checked in onnxruntime"
    default_logits = "all"  # what onnxruntime-genai and optimum read at a prompt

    def check(self, req: ExportRequest) -> None:
        from ftp_export.runtimes.ort import providers_for

        # onnxruntime's CPU provider has no bfloat16 kernels (e.g. Mul): parity could not run
        if req.dtype == "bfloat16" and "CUDAExecutionProvider" not in providers_for(req.device):
            raise FTPError(
                f"--dtype bfloat16 with --target onnx on {req.device}: onnxruntime's CPU provider has no bfloat16 "
                "kernels; use --dtype float32 (or float16), or bfloat16 with --device cuda and onnxruntime-gpu"
            )

    def export(self, model: RoutedCausalLM, out: Path, req: ExportRequest, log: Log) -> TargetResult:
        from ftp_export.runtimes.ort import OrtRuntime

        graphs = export_onnx(model, out, logits=req.logits, merged=True, kv_cache=req.kv_cache)
        manifest: dict[str, Any] = {"opset": OPSET, "graphs": graphs.manifest(out)}
        if req.quantize == "int8":  # routers, factors and selection stay float32 (export/quantize.py)
            info = quantize_int8(graphs.files[MERGED], graphs.files[MERGED])
            manifest["quantization"] = {
                "scheme": "int8 weights (MatMulNBits, block 32, asymmetric), float32 activations; routing path float32",
                "matmul_nbits": info["matmul_nbits"], "float_router_matmuls": info["router_matmuls"],
                "bytes_before": info["bytes_before"], "bytes_after": info["bytes_after"],
            }
        note = ""
        if req.kv_cache != "concat":  # onnxruntime-genai feeds each present back as the next past
            note = f"no {GENAI_CONFIG}: onnxruntime-genai needs --kv-cache concat (present = the whole cache)"
        elif req.logits == "all":
            write_genai_config(out, model.hf.config, getattr(model.hf, "generation_config", None), graphs.signatures[MERGED],
                               graphs.files[MERGED].name)
        else:  # onnxruntime-genai preallocates [batch, tokens, vocab] logits for a prompt
            note = f"no {GENAI_CONFIG}: onnxruntime-genai reads every prompt token's logits; export with --logits all to run it"
        runtime = OrtRuntime(graphs.files, graphs.signatures, device=req.device) if req.parity else None
        return TargetResult(
            manifest={**manifest, "runtime": runtime.info() if runtime else None},
            runtime=runtime,
            note=note,
        )
