"""``--target compile``: AOTInductor packages of the routed prefill and decode graphs.

``decoder_model.pt2`` / ``decoder_with_past_model.pt2`` load without the model code:

    runner = torch._inductor.aoti_load_package("decoder_model.pt2")
    logits, *present_and_routing = runner(input_ids, attention_mask, position_ids)

From C++: ``torch::inductor::AOTIModelPackageLoader loader("decoder_model.pt2");
auto outputs = loader.run({input_ids, attention_mask, position_ids});`` (link libtorch). Inputs
and outputs are in the order listed in manifest.json (optimum names, as in the ONNX graphs).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ftp_export.errors import FTPError
from ftp_export.export.graphs import past_names, present_names, routing_names
from ftp_export.export.job import TargetResult
from ftp_export.export.onnx_export import graph_export_args
from ftp_export.parity import GraphGenerator
from ftp_export.routed.model import RoutedCausalLM

PREFILL_PT2 = "decoder_model.pt2"
DECODE_PT2 = "decoder_with_past_model.pt2"
INPUTS = ["input_ids", "attention_mask", "position_ids"]


def aoti_package(module: torch.nn.Module, args: tuple[torch.Tensor, ...], dynamic: dict[str, Any], path: Path) -> Path:
    """torch.export with dynamic batch/length, then AOTInductor-compile into a .pt2 package."""
    buf = io.StringIO()
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            program = torch.export.export(module, args, dynamic_shapes=dynamic)
            torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    except Exception as exc:
        raise FTPError(f"AOTInductor packaging of {path.name} failed: {str(exc).splitlines()[0][:300]}") from exc
    return path


class AotiGenerator(GraphGenerator):
    """Greedy generation over the two AOTInductor packages."""

    def __init__(self, prefill: Path, decode: Path, model: RoutedCausalLM) -> None:
        n = model.config.num_hidden_layers
        self.num_layers = n
        self.runners = {"prefill": torch._inductor.aoti_load_package(str(prefill)), "decode": torch._inductor.aoti_load_package(str(decode))}
        self.inputs = {"prefill": INPUTS, "decode": INPUTS + past_names(n)}
        self.outputs = {m: ["logits", *present_names(n), *routing_names(model, m)] for m in ("prefill", "decode")}
        self.device = next(model.hf.parameters()).device

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(feeds[name])).to(self.device) for name in self.inputs[graph]]
        outs = self.runners[graph](*args)
        return {name: t.detach().float().cpu().numpy() if t.is_floating_point() else t.cpu().numpy() for name, t in zip(self.outputs[graph], outs)}


def export_target(model: RoutedCausalLM, out: Path, req: Any, log: Any) -> TargetResult:
    args = graph_export_args(model)
    log("      AOTInductor: prefill graph")
    prefill = aoti_package(*args["prefill"], out / PREFILL_PT2)
    log("      AOTInductor: decode graph")
    decode = aoti_package(*args["decode"], out / DECODE_PT2)
    gen = AotiGenerator(prefill, decode, model)
    return TargetResult(
        manifest={
            "graphs": {
                "prefill": {"file": PREFILL_PT2, "inputs": gen.inputs["prefill"], "outputs": gen.outputs["prefill"]},
                "decode": {"file": DECODE_PT2, "inputs": gen.inputs["decode"], "outputs": gen.outputs["decode"]},
            },
            "runtime": {"name": "AOTInductor", "torch": torch.__version__, "device": str(gen.device), "loader": "torch._inductor.aoti_load_package"},
        },
        generator=gen,
    )
