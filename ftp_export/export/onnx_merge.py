"""One decoder graph from the prefill and decode graphs: ``model.onnx``, optimum's current layout
and the one onnxruntime-genai runs.

The graph takes the decode graph's inputs (``past_key_values.*`` included) and branches on the
past's length with one ONNX ``If``: an empty past (``past_sequence_length == 0``, how optimum and
onnxruntime-genai start a sequence) runs the prefill graph, which routes by top-k; any other runs
the decode graph, which routes by each block's threshold. Both branches are the traced graphs as
they are, so the single graph's logits and routing equal the two graphs' bit for bit. Weights are
stored once, in the outer graph, and the branches read them from there.

Outputs are the union of the two graphs': ``logits``, ``present.*``, then every routing output.
The branch that does not produce a routing output returns it empty: a prefill returns each
``routing.N.rows`` as ``[0]``, a decode step each ``routing.N.indices`` / ``active`` as
``[batch_size, 0]`` (no token was routed by top-k in that call)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ftp_export.graph_io import GraphSignature


def _same_tensor(a: Any, b: Any) -> bool:
    """Whether two initializer tensors hold the same data (the same torch tensor, or equal values)."""
    ra, rb = getattr(a, "raw", None), getattr(b, "raw", None)
    if ra is not None and ra is rb:
        return True
    return a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape) and np.array_equal(a.numpy(), b.numpy())


def _hoist(branch: Any, outer: Any, prefix: str, outer_inputs: dict[str, Any]) -> None:
    """Make ``branch`` (an ``onnx_ir`` graph) a subgraph of ``outer``: its inputs become reads of the
    outer inputs of the same name, its initializers move to ``outer`` unless ``outer`` holds the same
    data already (a weight both branches hold, or a constant both folded, under any name), and
    every name it defines gets ``prefix`` (ONNX names are unique across scopes)."""
    for value in list(branch.inputs):
        value.replace_all_uses_with(outer_inputs[value.name])
    branch.inputs.clear()
    by_shape: dict[tuple[Any, tuple[int, ...]], list[Any]] = {}
    for kept in outer.initializers.values():
        by_shape.setdefault((kept.const_value.dtype, tuple(kept.const_value.shape)), []).append(kept)
    for name in list(branch.initializers):
        value = branch.initializers.pop(name)
        tensor = value.const_value
        named = outer.initializers.get(name)
        candidates = [named] if named is not None else []
        candidates += [v for v in by_shape.get((tensor.dtype, tuple(tensor.shape)), []) if v is not named]
        same = next((v for v in candidates if _same_tensor(v.const_value, tensor)), None)
        if same is not None:
            value.replace_all_uses_with(same)
            continue
        if named is not None:
            value.name = prefix + name
        outer.register_initializer(value)
    for node in branch:
        node.name = prefix + (node.name or node.op_type)
        for out in node.outputs:
            out.name = prefix + out.name


def _empty_like_batch(branch: Any, input_ids: Any, template: Any, name: str) -> Any:
    """Append to ``branch`` nodes making a [batch_size, 0] tensor of ``template``'s dtype."""
    import onnx_ir as ir

    batch = ir.node("Shape", [input_ids], attributes={"start": 0, "end": 1})
    zero = ir.node("Constant", [], attributes={"value": ir.tensor(np.zeros(1, np.int64))})
    dims = ir.node("Concat", [batch.outputs[0], zero.outputs[0]], attributes={"axis": 0})
    fill = ir.tensor(np.zeros(1, dtype=template.dtype.numpy()))
    empty = ir.node("ConstantOfShape", [dims.outputs[0]], attributes={"value": fill})
    for i, node in enumerate((batch, zero, dims, empty)):
        node.name = f"{name}/{i}"
        node.outputs[0].name = f"{name}/{i}"
        branch.append(node)
    return empty.outputs[0]


def _empty_rows(branch: Any, template: Any, name: str) -> Any:
    """Append to ``branch`` a Constant [0] of ``template``'s dtype."""
    import onnx_ir as ir

    node = ir.node("Constant", [], attributes={"value": ir.tensor(np.zeros(0, dtype=template.dtype.numpy()))})
    node.name = node.outputs[0].name = name
    branch.append(node)
    return node.outputs[0]


def merge_decoders(prefill: Any, decode: Any, signature: GraphSignature) -> Any:
    """The single-graph model (``onnx_ir``) of ``prefill`` and ``decode`` (``onnx_ir`` models of the
    prefill and decode graphs, consumed); ``signature``: :func:`ftp_export.graph_io.merged_signature`."""
    import onnx_ir as ir

    outer_inputs = {v.name: ir.Value(name=v.name, shape=v.shape, type=v.type) for v in decode.graph.inputs}
    outer = ir.Graph(list(outer_inputs.values()), [], nodes=[], opset_imports=dict(decode.opset_imports), name="main_graph")
    branches = {"prefill": prefill.graph, "decode": decode.graph}
    produced = {g: {v.name: v for v in graph.outputs} for g, graph in branches.items()}
    for g, graph in branches.items():
        _hoist(graph, outer, f"{g}/", outer_inputs)
    ids = outer_inputs["input_ids"]
    for g, graph in branches.items():
        other = produced["decode" if g == "prefill" else "prefill"]
        outs = []
        for name in signature.outputs:
            if name in produced[g]:
                outs.append(produced[g][name])
            elif name.endswith(".rows"):
                outs.append(_empty_rows(graph, other[name], f"{g}/empty/{name}"))
            else:
                outs.append(_empty_like_batch(graph, ids, other[name], f"{g}/empty/{name}"))
        graph.outputs.clear()
        graph.outputs.extend(outs)
        graph.name = g
    # cond: the past is empty (every layer's past has the same length; layer 0's is read)
    past = outer_inputs["past_key_values.0.key"]
    length = ir.node("Shape", [past], attributes={"start": 2, "end": 3})
    zero = ir.node("Constant", [], attributes={"value": ir.tensor(np.zeros(1, np.int64))})  # length 0, and axis 0
    empty = ir.node("Equal", [length.outputs[0], zero.outputs[0]])
    cond = ir.node("Squeeze", [empty.outputs[0], zero.outputs[0]])
    branch = ir.node(
        "If", [cond.outputs[0]],
        attributes={"then_branch": ir.AttrGraph("then_branch", branches["prefill"]),
                    "else_branch": ir.AttrGraph("else_branch", branches["decode"])},
        num_outputs=len(signature.outputs),
    )
    for i, node in enumerate((length, zero, empty, cond)):
        node.name = node.outputs[0].name = f"past_is_empty/{i}"
        outer.append(node)
    branch.name = "route_prefill_or_decode"
    outer.append(branch)
    axes = signature.axis_names()
    for name, value in zip(signature.outputs, branch.outputs):
        real = produced["prefill"][name] if name in produced["prefill"] else produced["decode"][name]
        value.name, value.type = name, real.type
        named = axes.get(name, {})
        dims = list(real.shape) if real.shape is not None else []
        # a dim not named by the signature (a top-k block's kept count) is left free: the other
        # branch returns the output empty
        value.shape = ir.Shape([named[a] if a in named else d if isinstance(d, int) else None for a, d in enumerate(dims)])
        outer.outputs.append(value)
    return ir.Model(outer, ir_version=decode.ir_version, producer_name=decode.producer_name,
                    producer_version=decode.producer_version, functions=[*prefill.functions.values(), *decode.functions.values()])
