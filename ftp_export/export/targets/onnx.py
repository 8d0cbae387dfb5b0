"""``--target onnx``: routing in standard ONNX ops (TopK, Gather, ScatterElements, NonZero),
run in onnxruntime for parity."""

from __future__ import annotations

from pathlib import Path

from ftp_export.errors import FTPError
from ftp_export.export.onnx_export import OPSET, export_onnx
from ftp_export.export.request import ExportRequest
from ftp_export.export.targets.base import Log, Target, TargetResult, register
from ftp_export.routed.model import RoutedCausalLM


@register
class OnnxTarget(Target):
    name = "onnx"
    description = "ONNX graphs in standard ops, checked in onnxruntime"

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

        graphs = export_onnx(model, out, logits=req.logits)
        runtime = OrtRuntime(graphs.files, graphs.signatures, device=req.device)
        return TargetResult(
            manifest={"opset": OPSET, "graphs": graphs.manifest(out), "runtime": runtime.info()},
            runtime=runtime,
        )
