"""Export the routed model to ONNX (torch.onnx dynamo exporter): prefill + decode-with-past graphs,
or the two as one graph (``model.onnx``, :mod:`.onnx_merge`), named and shaped by
:mod:`ftp_export.graph_io` (dynamic dimensions named as optimum names them, :mod:`.onnx_dims`);
weights inline under 2 GB, external data above. Shared by the ``onnx`` target (one graph) and the
``trt`` target (the pair, with a translation table for its custom nodes)."""

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
from ftp_export.export.onnx_merge import merge_decoders
from ftp_export.graph_io import DEFAULT_LOGITS, MERGED, GraphSignature, merged_signature, trace_specs
from ftp_export.routed.cache import DEFAULT_KV_CACHE
from ftp_export.routed.model import RoutedCausalLM

OPSET = 18
# weights stay inside the .onnx file below this many bytes (protobuf's limit is 2 GiB for the whole
# file, graph included); above it they go to one external file beside it, ``<graph>.onnx.data``
INLINE_WEIGHTS_LIMIT = 2_000_000_000


def initializer_bytes(model: Any) -> int:
    """Bytes of an ``onnx_ir`` model's initializers (its weights)."""
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def save_graph(model: Any, path: Path, limit: int = INLINE_WEIGHTS_LIMIT) -> None:
    """Save an ``onnx_ir`` model: weights inline when they total under ``limit`` bytes, else in one
    external file beside it, ``<graph>.onnx.data``."""
    import onnx_ir as ir

    if initializer_bytes(model) < limit:
        ir.save(model, str(path))
    else:
        ir.save(model, str(path), external_data=f"{path.name}.data")


@dataclass
class ExportedGraphs:
    """The written graph files and their signatures, keyed by graph ('prefill', 'decode', or 'model'
    for the single graph; ``signatures`` always holds 'prefill' and 'decode', which runtimes step)."""

    files: dict[str, Path]
    signatures: dict[str, GraphSignature]

    @property
    def prefill(self) -> Path:
        return self.files["prefill"]

    @property
    def decode(self) -> Path:
        return self.files["decode"]

    @property
    def merged(self) -> bool:
        return set(self.files) == {MERGED}

    def manifest(self, root: Path) -> dict[str, Any]:
        return {g: self.signatures[g].manifest_entry(str(p.relative_to(root))) for g, p in self.files.items()}


def trace_graph(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    signature: GraphSignature,
    custom_translation_table: dict[Any, Any] | None = None,
) -> Any:
    """torch.onnx.export (dynamo) with quiet logs, dynamic dimensions named; returns the ``onnx_ir``
    model (its weights are the module's tensors, not copies). Raises FTPError with the first cause line."""
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
    except Exception as exc:  # exporter errors are long; keep the summary line
        lines = [ln for ln in str(exc).splitlines() if "Error" in ln or "error" in ln]
        raise FTPError(f"ONNX export of the {signature.graph} graph failed: {(lines or [str(exc)])[-1].strip()[:300]}") from exc
    return program.model


@torch.no_grad()
def export_onnx(
    model: RoutedCausalLM,
    out_dir: Path,
    custom_translation_table: dict[Any, Any] | None = None,
    logits: str = DEFAULT_LOGITS,
    merged: bool = False,
    kv_cache: str = DEFAULT_KV_CACHE,
) -> ExportedGraphs:
    """Write ``decoder_model.onnx`` and ``decoder_with_past_model.onnx``, or with ``merged`` the one
    graph ``model.onnx`` (+ ``.onnx.data`` above 2 GB); ``logits`` ('last' or 'all') is what a
    prefill returns (graph_io's docstring), ``kv_cache`` the present layout (routed/cache.py)."""
    if kv_cache == "append" and any(w is not None for w in model.windows):
        raise FTPError("--kv-cache append: this model has sliding-window attention, whose window counts cache "
                       "positions and would count the buffer's masked tail; export it with --kv-cache concat")
    specs = trace_specs(model, logits, kv_cache)
    traced = {graph: trace_graph(spec.module, spec.args, spec.signature, custom_translation_table) for graph, spec in specs.items()}
    pair = {g: s.signature for g, s in specs.items()}
    if merged:
        signature = merged_signature(pair)
        files = {MERGED: out_dir / f"{signature.stem}.onnx"}
        save_graph(merge_decoders(traced["prefill"], traced["decode"], signature), files[MERGED])
        return ExportedGraphs(files=files, signatures={**pair, MERGED: signature})
    files = {g: out_dir / f"{pair[g].stem}.onnx" for g in traced}
    for g, ir_model in traced.items():
        save_graph(ir_model, files[g])
    return ExportedGraphs(files=files, signatures=pair)
