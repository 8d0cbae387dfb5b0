"""``--target compile``: AOTInductor packages of the routed prefill and decode graphs.

``decoder_model.pt2`` / ``decoder_with_past_model.pt2`` load without the model code:

    runner = torch._inductor.aoti_load_package("decoder_model.pt2")
    logits, *present_and_routing = runner(input_ids, attention_mask, position_ids)  # logits [B, 1, V] by default

Attention (``--aoti-attention``). ``op`` (default): each attending block's prefill attention is
one ``torch.ops.ftp_export.attention`` node whose kernel is ftp_export's eager attention (query
chunks against only the keys they may see; :mod:`ftp_export.routed.attention_op`), so the process
that loads the prefill package must have run ``import ftp_export.routed.attention_op``
(:class:`~ftp_export.runtimes.aoti.AotiRuntime` does). ``graph``: attention traced into the
packages (slower at long prompts: docs/performance.md), which then load from C++ without Python:
``torch::inductor::AOTIModelPackageLoader loader("decoder_model.pt2");
auto outputs = loader.run({input_ids, attention_mask, position_ids});`` (link libtorch). The decode
package has no op either way (a decode step attends one query per row). Inputs
and outputs are in the order listed in manifest.json (optimum names, as in the ONNX graphs).
``present`` outputs are contiguous and go into the next decode step as they are returned. An
AOTInductor package reads every input with the strides it was traced with (contiguous) and does
not check them: a transposed or sliced input is read wrongly, silently (fed the prefill's former
transposed ``present`` views, decode logits were off by 2-3). Make other inputs contiguous; run
with ``AOTI_RUNTIME_CHECK_INPUTS=1`` to have the package reject wrong strides instead. The prefill
is traced at :func:`~ftp_export.graph_io.prefill_trace_length` (why: its docstring).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import torch

from ftp_export.errors import FTPError
from ftp_export.export.request import AOTI_ATTENTION, ExportRequest
from ftp_export.export.targets.base import Log, Target, TargetResult, register
from ftp_export.graph_io import trace_specs
from ftp_export.routed.lowering import TorchLowering
from ftp_export.routed.model import RoutedCausalLM


def aoti_package(module: torch.nn.Module, args: tuple[torch.Tensor, ...], dynamic: dict[str, Any], path: Path) -> Path:
    """torch.export with dynamic batch/length, then AOTInductor-compile into a .pt2 package."""
    buf = io.StringIO()
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            program = torch.export.export(module, args, dynamic_shapes=dynamic)
            # check_lowerbound=False: with AOTI_RUNTIME_CHECK_INPUTS=1 the package then checks its
            # inputs' sizes and strides without rejecting batch 1 or a 1-token call
            with torch._inductor.config.patch({"aot_inductor.check_lowerbound": False}):
                torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    except Exception as exc:
        raise FTPError(f"AOTInductor packaging of {path.name} failed: {str(exc).splitlines()[0][:300]}") from exc
    return path


@register
class AotiTarget(Target):
    name = "compile"
    description = "AOTInductor packages (.pt2) of the prefill and decode graphs"

    def check(self, req: ExportRequest) -> None:
        if req.aoti_attention not in AOTI_ATTENTION:
            raise FTPError(f"--aoti-attention {req.aoti_attention}: choose one of {', '.join(AOTI_ATTENTION)}")

    def export(self, model: RoutedCausalLM, out: Path, req: ExportRequest, log: Log) -> TargetResult:
        from ftp_export.runtimes.aoti import AotiRuntime

        # a decode block with no kept row still attends (decode_rows.py): Inductor cannot lower the
        # reshapes of a query count that depends on the data ("LoweringException" in aten.reshape)
        lowering = TorchLowering(
            decode=model.lowering.decode, empty_decode_attention=False, attention_op=req.aoti_attention == "op"
        )
        specs = trace_specs(RoutedCausalLM(model.hf, model.schedule, lowering=lowering).eval(), req.logits)
        files = {}
        for graph, spec in specs.items():
            log(f"      AOTInductor: {graph} graph")
            files[graph] = aoti_package(spec.module, spec.args, spec.signature.dynamic_shapes(), out / f"{spec.signature.stem}.pt2")
        signatures = {g: s.signature for g, s in specs.items()}
        runtime = AotiRuntime(files, signatures, device=model.device) if req.parity else None
        return TargetResult(
            manifest={
                "graphs": {g: signatures[g].manifest_entry(p.name) for g, p in files.items()},
                "runtime": runtime.info() if runtime else None,
                # "op": the packages call ftp_export::attention (import ftp_export.routed.attention_op first)
                "attention": req.aoti_attention,
            },
            runtime=runtime,
        )
