"""Export the routed model to ONNX (torch.onnx dynamo exporter): prefill + decode-with-past."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.export import Dim

from ftp_export.errors import FTPError
from ftp_export.export.graphs import (
    DECODE_FILE,
    INPUTS,
    PREFILL_FILE,
    DecodeGraph,
    PrefillGraph,
    past_names,
    present_names,
    routing_names,
)
from ftp_export.routed.model import RoutedCausalLM

OPSET = 18


@dataclass
class ExportedGraphs:
    prefill: Path
    decode: Path


def example_inputs(model: RoutedCausalLM, batch: int, seq: int, past: int) -> tuple[torch.Tensor, ...]:
    cfg = model.config
    device = next(model.hf.parameters()).device
    dtype = next(model.hf.parameters()).dtype
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=g).to(device)
    mask = torch.ones(batch, past + seq, dtype=torch.int64, device=device)
    pos = (torch.arange(seq, device=device) + past).unsqueeze(0).expand(batch, seq).contiguous()
    if past == 0:
        return ids, mask, pos
    n_kv = model.layers[0].self_attn.k_proj.out_features // model.head_dim
    kv = []
    for _ in range(2 * cfg.num_hidden_layers):
        kv.append(torch.randn(batch, n_kv, past, model.head_dim, generator=g).to(device=device, dtype=dtype))
    return (ids, mask, pos, *kv)


def dynamic_shapes(num_layers: int, with_past: bool) -> dict[str, Any]:
    shapes: dict[str, Any] = {name: {0: Dim.DYNAMIC, 1: Dim.DYNAMIC} for name in INPUTS}
    if with_past:
        shapes["past"] = tuple({0: Dim.DYNAMIC, 2: Dim.DYNAMIC} for _ in range(2 * num_layers))
    return shapes


def export_graph(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: dict[str, Any],
    custom_translation_table: dict[Any, Any] | None = None,
) -> Path:
    """torch.onnx.export (dynamo) with quiet logs; raises FTPError with the first cause line."""
    buf = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                opset_version=OPSET,
                custom_translation_table=custom_translation_table,
                optimize=True,
                verbose=False,
            )
            program.save(str(path), external_data=True)
    except Exception as exc:  # exporter errors are long; keep the summary line
        lines = [ln for ln in str(exc).splitlines() if "Error" in ln or "error" in ln]
        raise FTPError(f"ONNX export of {path.name} failed: {(lines or [str(exc)])[-1].strip()[:300]}") from exc
    return path


def graph_export_args(model: RoutedCausalLM) -> dict[str, tuple[torch.nn.Module, tuple[torch.Tensor, ...], dict[str, Any]]]:
    """Per graph ('prefill', 'decode'): the wrapper module, example inputs and dynamic shapes
    that every graph exporter (ONNX, AOTInductor) traces with."""
    n = model.config.num_hidden_layers
    return {
        "prefill": (PrefillGraph(model).eval(), example_inputs(model, batch=2, seq=8, past=0), dynamic_shapes(n, with_past=False)),
        "decode": (DecodeGraph(model).eval(), example_inputs(model, batch=2, seq=2, past=6), dynamic_shapes(n, with_past=True)),
    }


@torch.no_grad()
def export_onnx(
    model: RoutedCausalLM,
    out_dir: Path,
    custom_translation_table: dict[Any, Any] | None = None,
) -> ExportedGraphs:
    """Write ``decoder_model.onnx`` and ``decoder_with_past_model.onnx`` (+ external data)."""
    n = model.config.num_hidden_layers
    args = graph_export_args(model)
    prefill = export_graph(
        *args["prefill"][:2],
        out_dir / PREFILL_FILE,
        INPUTS,
        ["logits", *present_names(n), *routing_names(model, "prefill")],
        args["prefill"][2],
        custom_translation_table,
    )
    decode = export_graph(
        *args["decode"][:2],
        out_dir / DECODE_FILE,
        INPUTS + past_names(n),
        ["logits", *present_names(n), *routing_names(model, "decode")],
        args["decode"][2],
        custom_translation_table,
    )
    return ExportedGraphs(prefill=prefill, decode=decode)
