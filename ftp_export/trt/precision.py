"""The precision scheme of ``--target trt`` and its check on an exported graph.

Scheme (plugins/README.md, "Precision"): the graphs are written in the engine's precision
(``--dtype`` float32 / float16 / bfloat16) and TensorRT builds them as strongly typed networks, which
keep every tensor in the type the graph gives it. Everything that decides routing is float32 in the
graph whatever ``--dtype``: the router MLPs (float32 parameters), the four factors, the scores, the
decode thresholds and every selection input (FtpTopKGather / FtpThresholdGather ``scores``, the rank
factor's TopK, the static decode lowering's threshold compare). The islands are entered by Casts to
float32 (the attention's Q.K^T scores before the float32 softmax, flags and positions) and left only
as integer or boolean decisions, so no 16-bit rounding can flip a top-k or threshold decision.

:func:`routing_precision_problems` checks this on an ONNX graph: from every selection input it walks
back through floating-point values, stopping at Casts to float32 (the island boundary), and reports
every floating value on the way that is not float32. It also requires every floating-point comparison
of the graph to be float32 (the model itself compares only integers; its float comparisons are the
routing's).
"""

from __future__ import annotations

from typing import Any

FLOATING = {1, 10, 11, 16}  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16
FLOAT = 1
COMPARISONS = ("Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Equal")
# selection inputs: (op_type, domain) -> input indices that must be float32 and whose cone is checked
SELECTION_INPUTS = {("FtpTopKGather", "ftp"): (1,), ("FtpThresholdGather", "ftp"): (1,), ("TopK", ""): (0,)}


def value_types(model: Any, names: list[str] | None = None) -> dict[str, int]:
    """Element type of every typed value of ``model``'s graph (inputs, outputs, value_info,
    initializers, Constant nodes); shape inference with the ``ftp`` schemas fills in a graph saved
    without value_info, when a value of ``names`` (default: every node input and output) is untyped."""
    import onnx

    from ftp_export.trt.custom_ops import register_onnx_schemas

    def collect(m: Any) -> dict[str, int]:
        g = m.graph
        types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
        types.update({t.name: t.data_type for t in g.initializer})
        for node in g.node:
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value":
                        types[node.output[0]] = a.t.data_type
        return {k: v for k, v in types.items() if v}

    types = collect(model)
    wanted = names if names is not None else [name for node in model.graph.node for name in (*node.input, *node.output) if name]
    if any(name not in types for name in wanted):
        register_onnx_schemas()
        types = collect(onnx.shape_inference.infer_shapes(model)) | types
    return types


def _cast_to(node: Any) -> int | None:
    if node.op_type != "Cast":
        return None
    return next((a.i for a in node.attribute if a.name == "to"), None)


def routing_precision_problems(model: Any) -> tuple[list[str], dict[str, int]]:
    """(problems, counts) of an ONNX ``model``: every non-float32 floating value that feeds a routing
    decision before a Cast to float32, and every non-float32 floating comparison. ``counts``: the
    selection inputs checked, the MatMul/Gemm nodes with a constant weight inside the islands (in a
    16-bit graph exactly the router layers, two per routed block: a router computed in 16 bits falls out
    of the islands and out of this count) and the islands' nodes."""
    import onnx

    types = value_types(model)
    name_of = {FLOAT: "float32", **{v: onnx.TensorProto.DataType.Name(v).lower() for v in FLOATING - {FLOAT}}}
    producer = {out: node for node in model.graph.node for out in node.output}
    problems: list[str] = []

    def label(node: Any) -> str:
        return f"{node.op_type} {node.name or node.output[0]}"

    def floating(name: str) -> bool:
        return types.get(name) in FLOATING

    constants = {t.name for t in model.graph.initializer} | {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    stack: list[tuple[str, str]] = []
    counts = {"selection_inputs": 0, "weight_layers": 0, "island_nodes": 0}
    for node in model.graph.node:
        for i in SELECTION_INPUTS.get((node.op_type, node.domain), ()):
            counts["selection_inputs"] += 1
            stack.append((node.input[i], f"{label(node)} input {i}"))
        if node.op_type in COMPARISONS and any(floating(x) for x in node.input):
            counts["selection_inputs"] += 1
            stack.extend((x, f"{label(node)} input {i}") for i, x in enumerate(node.input) if floating(x))
    seen: set[str] = set()
    while stack:
        name, user = stack.pop()
        if name in seen or not name:
            continue
        seen.add(name)
        if types.get(name) not in (FLOAT, None) and floating(name):
            problems.append(f"{name} ({name_of[types[name]]}) feeds {user}")
            continue
        node = producer.get(name)
        if node is None:  # graph input or initializer
            continue
        if _cast_to(node) == FLOAT:  # the island's entry; a float32 value rounded to 16 bits and back is not
            source = producer.get(node.input[0])
            if source is not None and _cast_to(source) in FLOATING - {FLOAT} and types.get(source.input[0]) == FLOAT:
                problems.append(f"{source.input[0]} (float32) is rounded to {name_of[_cast_to(source)]} and back before {user}")
            continue
        counts["island_nodes"] += 1
        # layers with a constant weight: the router's fc1/fc2 (in a float32 graph, the model's too)
        counts["weight_layers"] += node.op_type in ("MatMul", "Gemm") and any(x in constants for x in node.input)
        for x in node.input:
            if floating(x):
                stack.append((x, label(node)))
    return problems, counts
