"""Name an exported graph's dynamic dimensions as optimum does (``batch_size``, ``sequence_length``,
``past_sequence_length``, ``past_sequence_length + sequence_length``), shared by every layer.

torch.export gives every dynamic dimension its own symbol (``s43``; one past length per layer, the
decode mask's length unrelated to them). After export, each symbol found at a named input/output
axis (:meth:`~ftp_export.graph_io.GraphSignature.axis_names`) is renamed everywhere in the graph,
intermediate values included, and so are sums of a past and a sequence symbol in either order."""

from __future__ import annotations

import re
from typing import Any

from ftp_export.graph_io import PAST, SEQUENCE, TOTAL, GraphSignature


def _symbol(value: Any, axis: int) -> str | None:
    import onnx_ir as ir

    shape = value.shape
    if shape is None or axis >= len(shape):
        return None
    dim = shape[axis]
    return dim.value if isinstance(dim, ir.SymbolicDim) and isinstance(dim.value, str) else None


def rename_mapping(model: Any, signature: GraphSignature) -> dict[str, str]:
    """{torch.export symbol or expression: optimum name} for the graph's inputs and outputs."""
    mapping: dict[str, str] = {}
    axes = signature.axis_names()
    for value in (*model.graph.inputs, *model.graph.outputs):
        for axis, name in axes.get(value.name, {}).items():
            symbol = _symbol(value, axis)
            if symbol is not None and symbol != name:
                mapping.setdefault(symbol, name)
    pasts = [s for s, n in mapping.items() if n == PAST]
    seqs = [s for s, n in mapping.items() if n == SEQUENCE]
    for p in pasts:
        for q in seqs:
            mapping.setdefault(f"{p} + {q}", TOTAL)
            mapping.setdefault(f"{q} + {p}", TOTAL)
    return mapping


def _all_values(model: Any):
    import onnx_ir as ir

    yield from model.graph.inputs
    yield from model.graph.initializers.values()
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        yield from node.outputs


def name_dynamic_axes(model: Any, signature: GraphSignature) -> dict[str, str]:
    """Rename, in place, the dynamic dimensions of an ``onnx_ir`` model (inputs, outputs and every
    intermediate value); returns the mapping applied. Whole-dimension matches first (so ``s1 + s2``
    becomes one name), then symbols inside expressions."""
    import onnx_ir as ir

    mapping = rename_mapping(model, signature)
    symbols = sorted((k for k in mapping if k.isidentifier()), key=len, reverse=True)
    pattern = re.compile(r"(?<!\w)(" + "|".join(map(re.escape, symbols)) + r")(?!\w)") if symbols else None

    def inner(match: re.Match[str]) -> str:  # a sum inside an expression keeps its precedence
        name = mapping[match.group(1)]
        return f"({name})" if " " in name else name

    def rename(dim: Any) -> Any:
        if not isinstance(dim, ir.SymbolicDim) or not isinstance(dim.value, str):
            return dim
        if dim.value in mapping:
            return mapping[dim.value]
        return pattern.sub(inner, dim.value) if pattern else dim.value

    for value in _all_values(model):
        if value.shape is None:
            continue
        old = list(value.shape)
        new = [rename(d) for d in old]
        if any(isinstance(n, str) for n in new):
            value.shape = ir.Shape(new)
    return mapping
