"""int8 of an exported ONNX graph with the routing kept float32: 8-bit weights for every weight
MatMul except the routing path's, by onnxruntime's quantizers (:class:`Int8Options`): weight-only
(``com.microsoft.MatMulNBits``, activations float32; the default) or dynamic (``quantize_dynamic``:
``MatMulInteger``, activations rounded to uint8 per call, standard ONNX ops).

Default model, s40 (scripts/int8_report.py), routing / token agreement with float32 PyTorch: dynamic
with routers quantized 92.4% / 38.9%, routers float32 94.0% / 74.3% (dense: tokens 71.9%; rounded
activations move the hidden states the routers read); weight-only 99.5% / 100% (dense 100%).

The routing path (:func:`routing_nodes`, in every graph and ``If`` branch):

- router: nodes whose exporter metadata (``pkg.torch.onnx.name_scopes``, e.g.
  ``model.routers.blocks.3.fc1``; ``pkg.torch.onnx.class_hierarchy``) places them in the router
  module; without metadata, the bias ``Add`` nodes reading a ``*routers.*`` initializer and the
  MatMul/Gemm feeding them.
- factors: walking back from the routers' inputs; selection: downstream of a router and upstream of
  a ``routing.*`` output. Both stop at a ``Softmax`` (the attention probabilities), another router
  and any weight MatMul/Gemm, so no model layer lands there.

Only MatMuls with a constant B are quantized; the factors and selection hold none today (excluded
anyway, should one appear). The result is checked: every router MatMul must still be a float
MatMul (:class:`QuantizeError`, nothing written). ``If`` graphs (the single ``model.onnx``):
``quantize_dynamic`` quantizes branches only with ``extra_options={"EnableSubgraph": True}`` (by
default it silently leaves them float32), set here when the graph has branches; a weight both
branches read is quantized once, in the outer graph. ``MatMulNBitsQuantizer`` walks branches itself.

:func:`name_nodes` names nodes by module path as optimum does (``/model/routers/blocks.3/fc1/MatMul``;
``If`` branches prefixed with the branch's name, ``/prefill/...``): exclusions readable by name.
"""

from __future__ import annotations

import ast
import logging
import re
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
CLASSES_KEY = "pkg.torch.onnx.class_hierarchy"
ROUTER_MODULE = "routers"  # RoutedCausalLM.routers (a RouterBank)
ROUTER_CLASSES = ("RouterBank", "RouterMLP")
WEIGHT_OPS = ("MatMul", "Gemm")
STOP_OPS = ("Softmax",)  # the attention probabilities: where the routing path meets block compute
# module path prefix of the Hugging Face model inside the exported wrappers (graph_io's
# PrefillGraph/DecodeGraph hold the RoutedCausalLM as ``model``, which holds it as ``hf``)
HF_PREFIX = "model.hf."
NO_MODULE = "_empty_nn_module_stack"
INLINE_LIMIT = 2_000_000_000  # as onnx_export.INLINE_WEIGHTS_LIMIT: weights inline below, external above


class QuantizeError(RuntimeError):
    """The quantized graph is not what was asked for (a router MatMul was quantized)."""


def _meta(node: Any) -> dict[str, str]:
    props = node.metadata_props  # onnx_ir: a dict; onnx: StringStringEntryProtos
    return dict(props) if isinstance(props, dict) else {p.key: p.value for p in props}


def _as_list(text: str | None) -> list[str]:
    if not text:
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return [text]
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def module_path(node: Any) -> str | None:
    """The module path the node was traced in (``model.routers.blocks.3.fc1``), '' at the top
    level, None without the exporter's metadata. The last name scope is the FX node's own name."""
    scopes = _as_list(_meta(node).get(SCOPES_KEY))
    if not scopes:
        return None
    return scopes[-2] if len(scopes) >= 2 else ""


def is_router_node(node: Any) -> bool:
    """Whether the exporter's metadata places ``node`` in the router module."""
    meta = _meta(node)
    for path in _as_list(meta.get(SCOPES_KEY))[:-1]:
        if ROUTER_MODULE in path.split("."):
            return True
    return any(c.rsplit(".", 1)[-1] in ROUTER_CLASSES for c in _as_list(meta.get(CLASSES_KEY)))


@dataclass
class _Scope:
    """One graph of an ``onnx.ModelProto`` (the main graph or an ``If`` branch)."""

    graph: Any  # onnx.GraphProto
    prefix: str  # '' for the main graph, '/<branch graph name>' for a branch (nested: joined)
    weights: set[str]  # initializers visible here (its own and enclosing graphs')
    routing_outputs: set[str]  # this graph's outputs that are (or, in a branch, become) routing.* outputs


def _subgraphs(node: Any) -> Iterator[tuple[str, Any]]:
    import onnx

    for attr in node.attribute:
        for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
            yield attr.name, sub


def _scopes(model: Any) -> Iterator[_Scope]:
    def walk(graph: Any, prefix: str, outer: set[str], aliases: dict[str, str]) -> Iterator[_Scope]:
        weights = outer | {i.name for i in graph.initializer}
        routing = {o.name for o in graph.output if o.name.startswith("routing.") or aliases.get(o.name, "").startswith("routing.")}
        yield _Scope(graph, prefix, weights, routing)
        for node in graph.node:
            for attr, sub in _subgraphs(node):
                # a branch's outputs are the If's outputs, in order
                alias = dict(zip((o.name for o in sub.output), node.output)) if node.op_type == "If" else {}
                yield from walk(sub, f"{prefix}/{sub.name or attr}", weights, alias)

    yield from walk(model.graph, "", set(), {})


def _weight_node(node: Any, weights: set[str]) -> bool:
    return node.op_type in WEIGHT_OPS and len(node.input) > 1 and node.input[1] in weights


def _structural_routers(graph: Any, weights: set[str]) -> set[int]:
    """Router nodes without metadata: nodes reading a ``*routers.*`` initializer (the bias Adds) and
    the MatMul/Gemm feeding them (indices into ``graph.node``)."""
    producer = {out: i for i, n in enumerate(graph.node) for out in n.output}
    found = {i for i, n in enumerate(graph.node) if any(x in weights and ROUTER_MODULE in re.split(r"[./]", x) for x in n.input)}
    feeding = {producer[x] for i in found for x in graph.node[i].input if x in producer}
    return found | {j for j in feeding if graph.node[j].op_type in WEIGHT_OPS}


@dataclass
class RoutingNodes:
    """Names of the routing path's nodes (every graph and branch), by role; ``weight_matmul``: the
    router MatMul/Gemm nodes with a constant weight, the ones a quantizer would touch."""

    router: list[str] = field(default_factory=list)
    factors: list[str] = field(default_factory=list)
    selection: list[str] = field(default_factory=list)
    weight_matmul: list[str] = field(default_factory=list)

    @property
    def all(self) -> list[str]:
        return [*self.router, *self.factors, *self.selection]


def _slice(graph: Any, seeds: set[int], forward: bool, stop: Callable[[int], bool]) -> set[int]:
    """Nodes reached from ``seeds`` (not included) along data edges, not expanding past ``stop`` nodes
    (which are not included either)."""
    producer = {out: i for i, n in enumerate(graph.node) for out in n.output}
    consumers: dict[str, list[int]] = defaultdict(list)
    for i, n in enumerate(graph.node):
        for name in n.input:
            consumers[name].append(i)
    seen: set[int] = set()
    todo = list(seeds)
    while todo:
        i = todo.pop()
        node = graph.node[i]
        names = node.output if forward else node.input
        nxt = [j for name in names for j in consumers.get(name, [])] if forward else [producer[n] for n in names if n in producer]
        for j in nxt:
            if j in seen or j in seeds or stop(j):
                continue
            seen.add(j)
            todo.append(j)
    return seen


def routing_nodes(model: Any) -> RoutingNodes:
    """The router, factor and selection nodes of an exported graph (``onnx.ModelProto``), in every
    graph and ``If`` branch (module docstring)."""
    found = RoutingNodes()
    for scope in _scopes(model):
        graph = scope.graph
        router = {i for i, n in enumerate(graph.node) if is_router_node(n)} | _structural_routers(graph, scope.weights)
        if not router:
            continue

        def stop(j: int, graph: Any = graph, router: set[int] = router, weights: set[str] = scope.weights) -> bool:
            node = graph.node[j]
            return j in router or node.op_type in STOP_OPS or _weight_node(node, weights)

        factors = _slice(graph, router, forward=False, stop=stop)
        downstream = _slice(graph, router, forward=True, stop=stop)
        outputs = {i for i, n in enumerate(graph.node) if set(n.output) & scope.routing_outputs}
        upstream = _slice(graph, outputs, forward=False, stop=stop) | outputs
        selection = downstream & upstream
        for role, idx in (("router", router), ("factors", factors), ("selection", selection)):
            getattr(found, role).extend(graph.node[i].name for i in sorted(idx))
        found.weight_matmul += [graph.node[i].name for i in sorted(router) if _weight_node(graph.node[i], scope.weights)]
    return found


def readable_path(path: str) -> str:
    """``model.hf.model.layers.0.self_attn.q_proj`` -> ``/model/layers.0/self_attn/q_proj`` (as
    optimum names nodes), ``model.routers.blocks.3.fc1`` -> ``/model/routers/blocks.3/fc1``."""
    path = "" if path.startswith(NO_MODULE) or path == HF_PREFIX[:-1] else path.removeprefix(HF_PREFIX)
    parts: list[str] = []
    for part in path.split(".") if path else []:
        if part.isdigit() and parts:
            parts[-1] += f".{part}"
        else:
            parts.append(part)
    return "".join(f"/{p}" for p in parts)


def _all_nodes(model: Any) -> Iterator[tuple[Any, str]]:
    """(node, branch prefix) of every node of an ``onnx.ModelProto`` or ``onnx_ir.Model``; a
    branch's prefix is its graph's name (``/prefill``; onnx_ir: the innermost branch's only)."""
    if hasattr(model.graph, "all_nodes"):  # onnx_ir
        for node in model.graph.all_nodes():
            yield node, "" if node.graph is model.graph else f"/{node.graph.name or 'branch'}"
        return
    for scope in _scopes(model):
        for node in scope.graph.node:
            yield node, scope.prefix


def name_nodes(model: Any) -> int:
    """Rename every node with the exporter's module path (``onnx.ModelProto`` or ``onnx_ir.Model``,
    in place) to ``<branch>/<module path>/<OpType>``, ``_1``, ``_2``... on repeats (optimum's scheme);
    names unique across branches (onnxruntime's quantizers match names in every branch). Nodes
    without the metadata keep a unique name. Returns how many were renamed; idempotent."""
    nodes = list(_all_nodes(model))
    used: set[str] = set()
    todo: list[int] = []
    for i, (node, _) in enumerate(nodes):
        if module_path(node) is None and node.name and node.name not in used:
            used.add(node.name)
        else:
            todo.append(i)
    counts: dict[str, int] = defaultdict(int)
    renamed = 0
    for i in todo:
        node, pre = nodes[i]
        path = module_path(node)
        base = f"{pre}{readable_path(path)}/{node.op_type}" if path is not None else (node.name or f"{pre}/{node.op_type}")
        name = base if counts[base] == 0 else f"{base}_{counts[base]}"
        counts[base] += 1
        while name in used:
            name = f"{base}_{counts[base]}"
            counts[base] += 1
        used.add(name)
        if node.name != name:
            node.name = name
            renamed += 1
    return renamed


@dataclass(frozen=True)
class Int8Options:
    r"""How :func:`quantize_int8` quantizes. ``method`` 'weight-only': ``MatMulNBits``, 8-bit weights
    with a scale (and a zero point unless ``symmetric``) per ``block_size`` weights along the input
    dimension, activations float32; 'dynamic': ``quantize_dynamic``, ``weight_type`` int8 (QInt8) or
    uint8 (QUInt8) weights, ``per_channel`` or per tensor, activations uint8 per call.
    ``keep_lm_head``; ``keep_float``: regular expressions on node names (:func:`name_nodes`) of
    weight MatMuls kept float32, e.g. ``r"/layers\.[01]/"``."""

    method: str = "weight-only"
    block_size: int = 32
    symmetric: bool = False
    per_channel: bool = True
    weight_type: str = "int8"
    keep_lm_head: bool = False
    keep_float: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.weight_type not in ("int8", "uint8"):
            raise ValueError(f"weight_type {self.weight_type!r}: choose int8 or uint8")


METHODS = ("weight-only", "dynamic")
QUANTIZE_CHOICES = ("int8",)  # ftp-export --quantize
DEFAULT_INT8 = Int8Options()


def _lm_head_nodes(model: Any) -> list[str]:
    return [node.name for node, _ in _all_nodes(model)
            if node.op_type in WEIGHT_OPS and (module_path(node) or "").split(".")[-1] == "lm_head"]


def _has_subgraphs(model: Any) -> bool:
    return any(s.prefix for s in _scopes(model))


def weight_bytes(model: Any) -> int:
    """Bytes of a loaded ``onnx.ModelProto``'s initializers (outer graph and branches)."""
    from onnx import numpy_helper

    return sum(len(i.raw_data) or numpy_helper.to_array(i).nbytes for s in _scopes(model) for i in s.graph.initializer)


def files_bytes(path: Path) -> int:
    """Bytes of a graph file and its external data file(s)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    extra = {e.value for s in _scopes(model) for i in s.graph.initializer for e in i.external_data if e.key == "location"}
    return sum(p.stat().st_size for p in [path, *(path.parent / e for e in extra)])


def quantize_int8(src: Path, dst: Path, options: Int8Options = DEFAULT_INT8) -> dict[str, Any]:
    """Quantize the ONNX graph ``src`` (inline or external weights, ``If`` branches or not) to
    ``dst`` (may be ``src``): 8-bit weights for every weight MatMul but the routing path's and those
    ``options`` keeps, nodes renamed first (:func:`name_nodes`); weights inline under 2 GB, else in
    ``<dst name>.data``; scratch in a temporary folder beside ``dst``. :class:`QuantizeError`, with
    nothing written, when a router MatMul would be quantized or routing outputs have no router.
    Returns sizes, quantized-node counts, router MatMuls, float weight MatMuls left, exclusions.
    The model is held in memory (twice while quantizing): ~3x its float32 size at peak."""
    import onnx

    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    bytes_before = files_bytes(src)
    model = onnx.load(str(src))
    name_nodes(model)
    routing = routing_nodes(model)
    if not routing.router and any(s.routing_outputs for s in _scopes(model)):
        raise QuantizeError(f"{src}: the graph has routing outputs but no router node was found "
                            f"(no {SCOPES_KEY} metadata and no *routers.* initializer)")
    kept = [n.name for n, _ in _all_nodes(model) if n.op_type in WEIGHT_OPS and any(re.search(p, n.name) for p in options.keep_float)]
    exclude = sorted(set(routing.all) | set(_lm_head_nodes(model) if options.keep_lm_head else []) | set(kept))
    subgraphs = _has_subgraphs(model)
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=dst.parent) as tmp:
        named, out = Path(tmp) / "named.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(named), save_as_external_data=True, location="named.onnx.data")
        del model
        _run_quantizer(named, out, exclude, options, subgraphs)
        quantized = onnx.load(str(out))
        report = check_quantized(quantized, routing)  # before anything is written to dst
        inline = weight_bytes(quantized) < INLINE_LIMIT
        (dst.parent / f"{dst.name}.data").unlink(missing_ok=True)  # a previous external save's
        if inline:
            onnx.save(quantized, str(dst))
        else:
            onnx.save(quantized, str(dst), save_as_external_data=True, location=f"{dst.name}.data")
    report.update({
        "src": str(src), "dst": str(dst), "external_data": not inline,
        "bytes_before": bytes_before, "bytes_after": files_bytes(dst),
        "options": dict(options.__dict__),
        "subgraphs": subgraphs, "excluded": exclude,
        "routing_nodes": {"router": len(routing.router), "factors": len(routing.factors), "selection": len(routing.selection)},
    })
    return report


def _run_quantizer(src: Path, out: Path, exclude: list[str], options: Int8Options, subgraphs: bool) -> None:
    """onnxruntime's quantizer for ``options.method`` from ``src`` to ``out`` (external data)."""
    root = logging.getLogger()  # importing MatMulNBits calls logging.basicConfig(level=INFO): restored below
    root_handlers, root_level = list(root.handlers), root.level
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # they log a line per node (INFO) and a pre-processing hint per call (WARNING)
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        if options.method == "weight-only":
            nbits = MatMulNBitsQuantizer(str(src), bits=8, block_size=options.block_size, is_symmetric=options.symmetric,
                                         nodes_to_exclude=exclude, op_types_to_quantize=("MatMul",))
            nbits.process()
            nbits.model.save_model_to_file(str(out), use_external_data_format=True)
        else:
            qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[options.weight_type]
            quantize_dynamic(src, out, op_types_to_quantize=["MatMul"], per_channel=options.per_channel, weight_type=qtype,
                             nodes_to_exclude=exclude, use_external_data_format=True,
                             extra_options={"EnableSubgraph": subgraphs, "MatMulConstBOnly": True})
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        for handler in [h for h in root.handlers if h not in root_handlers]:
            root.removeHandler(handler)
        root.setLevel(root_level)


def check_quantized(model: Any, routing: RoutingNodes) -> dict[str, Any]:
    """Counts of a quantized graph's ops, and :class:`QuantizeError` when a router MatMul is no
    longer a float MatMul (onnxruntime replaces a quantized ``<name>`` by ``<name>_quant``
    (MatMulInteger) or ``<name>_Q8`` (MatMulNBits))."""
    nodes = [(node, scope) for scope in _scopes(model) for node in scope.graph.node]
    ops = Counter(node.op_type for node, _ in nodes)
    by_name = {node.name: node.op_type for node, _ in nodes}
    lost = [n for n in routing.weight_matmul if by_name.get(n) not in WEIGHT_OPS]
    if lost:
        raise QuantizeError(f"router MatMul(s) quantized or removed: {', '.join(lost[:5])}")
    return {"matmul_integer": ops["MatMulInteger"], "matmul_nbits": ops["MatMulNBits"], "dynamic_quantize": ops["DynamicQuantizeLinear"],
            "float_weight_matmuls": [n.name for n, scope in nodes if _weight_node(n, scope.weights)],
            "router_matmuls": list(routing.weight_matmul)}
