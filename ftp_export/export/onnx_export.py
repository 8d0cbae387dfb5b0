"""Export the routed model to ONNX (torch.onnx dynamo exporter): prefill + decode-with-past,
named and shaped by :mod:`ftp_export.graph_io` (dynamic dimensions named as optimum names them,
:mod:`.onnx_dims`); weights inline under 2 GB, external data above. Shared by the ``onnx`` and
``trt`` targets (the latter passes a translation table for its custom nodes)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ftp_export.errors import FTPError
from ftp_export.export.onnx_dims import name_dynamic_axes
from ftp_export.graph_io import DEFAULT_LOGITS, GraphSignature, trace_specs
from ftp_export.routed.model import RoutedCausalLM

OPSET = 18
# weights stay inside the .onnx file below this many bytes (protobuf's limit is 2 GiB for the whole
# file, graph included); above it they go to one external file beside it, ``<graph>.onnx.data``
INLINE_WEIGHTS_LIMIT = 2_000_000_000


def initializer_bytes(model: Any) -> int:
    """Bytes of an ``onnx_ir`` model's initializers (its weights)."""
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def save_graph(program: Any, path: Path, limit: int = INLINE_WEIGHTS_LIMIT) -> None:
    """Save an ONNXProgram: weights inline when they total under ``limit`` bytes, else external data."""
    if initializer_bytes(program.model) < limit:
        import onnx_ir as ir

        ir.save(program.model, str(path))
    else:
        program.save(str(path), external_data=True)


@dataclass
class ExportedGraphs:
    """The written graph files and their signatures, keyed by graph ('prefill', 'decode')."""

    files: dict[str, Path]
    signatures: dict[str, GraphSignature]

    @property
    def prefill(self) -> Path:
        return self.files["prefill"]

    @property
    def decode(self) -> Path:
        return self.files["decode"]

    def manifest(self, root: Path) -> dict[str, Any]:
        return {g: self.signatures[g].manifest_entry(str(p.relative_to(root))) for g, p in self.files.items()}


def export_graph(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    signature: GraphSignature,
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
                input_names=signature.inputs,
                output_names=signature.outputs,
                dynamic_shapes=signature.dynamic_shapes(),
                opset_version=OPSET,
                custom_translation_table=custom_translation_table,
                optimize=True,
                verbose=False,
            )
            name_dynamic_axes(program.model, signature)
            save_graph(program, path)
    except Exception as exc:  # exporter errors are long; keep the summary line
        lines = [ln for ln in str(exc).splitlines() if "Error" in ln or "error" in ln]
        raise FTPError(f"ONNX export of {path.name} failed: {(lines or [str(exc)])[-1].strip()[:300]}") from exc
    return path


@torch.no_grad()
def export_onnx(
    model: RoutedCausalLM,
    out_dir: Path,
    custom_translation_table: dict[Any, Any] | None = None,
    logits: str = DEFAULT_LOGITS,
) -> ExportedGraphs:
    """Write ``decoder_model.onnx`` and ``decoder_with_past_model.onnx`` (+ ``.onnx.data`` above 2 GB);
    ``logits`` ('last' or 'all') is what the prefill graph returns (graph_io's docstring)."""
    specs = trace_specs(model, logits)
    files = {
        graph: export_graph(spec.module, spec.args, out_dir / f"{spec.signature.stem}.onnx", spec.signature, custom_translation_table)
        for graph, spec in specs.items()
    }
    return ExportedGraphs(files=files, signatures={g: s.signature for g, s in specs.items()})
