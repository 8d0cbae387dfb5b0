"""The ``ftp`` custom ops: torch ops whose eager implementation is the reference lowering and
whose ONNX translation is one node in domain ``ftp`` named after the TensorRT plugin
(plugins/README.md has the spec). The routed model uses them through :class:`PluginLowering`.

The token flags ``valid`` / ``active`` are int32 (0 / 1) at the nodes, not bool: TensorRT does not
support kBOOL (or kUINT8) plugin tensors. :class:`PluginLowering` casts bool -> int32 before a node
and int32 -> bool after it, so the exported graph has a Cast on each side and the model keeps its
bool flags (same results: the nodes read any non-zero flag as true and write 0 / 1).
"""

from __future__ import annotations

from typing import Any

import torch

from ftp_export.routed.lowering import TorchLowering, check_decode_lowering
from ftp_export.routing.factors import query_count

DOMAIN = "ftp"
PLUGIN_VERSION = "1"
NODE_TOPK_GATHER = "FtpTopKGather"
NODE_TOPK_SCATTER = "FtpTopKScatter"
NODE_THRESHOLD_GATHER = "FtpThresholdGather"
NODE_ROW_SCATTER = "FtpRowScatter"
NODES = (NODE_TOPK_GATHER, NODE_TOPK_SCATTER, NODE_THRESHOLD_GATHER, NODE_ROW_SCATTER)

_ref = TorchLowering()


@torch.library.custom_op("ftp::topk_gather", mutates_args=())
def topk_gather(hidden: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor, keep_q16: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """valid [B,T] int32 -> gathered, indices int64, active [B,K] int32."""
    g, i, a = _ref.topk_gather(hidden, scores, valid != 0, keep_q16)
    return g.contiguous(), i.contiguous(), a.to(torch.int32)


@topk_gather.register_fake
def _(hidden, scores, valid, keep_q16):
    from ftp_export.routing.selection import slot_count

    b, t, d = hidden.shape
    k = slot_count(t, keep_q16)
    return (
        hidden.new_empty(b, k, d),
        hidden.new_empty(b, k, dtype=torch.int64),
        hidden.new_empty(b, k, dtype=torch.int32),
    )


@torch.library.custom_op("ftp::topk_scatter", mutates_args=())
def topk_scatter(residual: torch.Tensor, rows: torch.Tensor, indices: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """active [B,K] int32."""
    return _ref.topk_scatter(residual, rows, indices, active != 0).contiguous()


@topk_scatter.register_fake
def _(residual, rows, indices, active):
    return torch.empty_like(residual)


@torch.library.custom_op("ftp::threshold_gather", mutates_args=())
def threshold_gather(hidden: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """valid [B,T] int32 -> gathered [N,D], rows [N] int64."""
    g, r = _ref.threshold_gather(hidden, scores, valid != 0, threshold)
    return g.contiguous(), r.contiguous()


@threshold_gather.register_fake
def _(hidden, scores, valid, threshold):
    ctx = torch.library.get_ctx()
    n = ctx.new_dynamic_size()
    return hidden.new_empty(n, hidden.shape[-1]), hidden.new_empty(n, dtype=torch.int64)


@torch.library.custom_op("ftp::row_scatter", mutates_args=())
def row_scatter(residual: torch.Tensor, rows_data: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return _ref.row_scatter(residual, rows_data, rows).contiguous()


@row_scatter.register_fake
def _(residual, rows_data, rows):
    return torch.empty_like(residual)


class PluginLowering:
    """Gather/scatter through the ``ftp`` custom ops (exported as plugin nodes); bool flags are
    cast to and from the nodes' int32 flags here (ONNX Cast nodes around the plugin nodes).
    ``decode="static"``: decode blocks use no node at all (every row computed, a mask keeps the
    kept ones: :mod:`ftp_export.routed.lowering`); prefill keeps its top-k nodes."""

    # a decode block attends with every row even when it keeps none: zero-size attention tensors
    # are untested in TensorRT engines (ftp_export/routed/decode_rows.py)
    empty_decode_attention = False
    # attention stays standard ONNX ops in the graph (TensorRT fuses it; no Python at run time)
    attention_op = False

    def __init__(self, decode: str = "dynamic") -> None:
        self.decode = check_decode_lowering(decode)

    def topk_gather(self, hidden, scores, valid, q16):
        g, i, a = topk_gather(hidden, scores.float(), valid.to(torch.int32), int(q16))
        return g, i, a.to(torch.bool)

    def topk_scatter(self, residual, rows, indices, active):
        return topk_scatter(residual, rows, indices, active.to(torch.int32))

    def threshold_gather(self, hidden, scores, valid, threshold):
        return threshold_gather(hidden, scores.float(), valid.to(torch.int32), float(threshold))

    def row_scatter(self, residual, rows_data, rows):
        return row_scatter(residual, rows_data, rows)

    def query_count(self, indices, weight, seq_len):
        # a [B, K, T] comparison rather than a scatter: every scatter of this flavour is a plugin node
        return query_count(indices, weight, seq_len)


def register_onnx_schemas() -> None:
    """Register the four node schemas (domain ``ftp``, version 1) with onnx, once."""
    import onnx
    from onnx.defs import OpSchema

    try:
        onnx.defs.get_schema(NODE_ROW_SCATTER, 1, DOMAIN)
        return
    except onnx.defs.SchemaError:
        pass
    fp = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
    plugin_attrs = [
        OpSchema.Attribute("plugin_version", OpSchema.AttrType.STRING, "TensorRT plugin version", required=False),
        OpSchema.Attribute("plugin_namespace", OpSchema.AttrType.STRING, "TensorRT plugin namespace", required=False),
    ]

    def io(names_types):
        return [OpSchema.FormalParameter(n, t) for n, t in names_types]

    specs = [
        (NODE_TOPK_GATHER, [("hidden", "T"), ("scores", "tensor(float)"), ("valid", "tensor(int32)")],
         [("gathered", "T"), ("indices", "tensor(int64)"), ("active", "tensor(int32)")],
         [OpSchema.Attribute("keep_q16", OpSchema.AttrType.INT, "keep ratio * 65536", required=True)]),
        (NODE_TOPK_SCATTER, [("residual", "T"), ("rows", "T"), ("indices", "tensor(int64)"), ("active", "tensor(int32)")],
         [("out", "T")], []),
        (NODE_THRESHOLD_GATHER, [("hidden", "T"), ("scores", "tensor(float)"), ("valid", "tensor(int32)")],
         [("gathered", "T"), ("rows", "tensor(int64)"), ("count", "tensor(int32)")],
         [OpSchema.Attribute("threshold", OpSchema.AttrType.FLOAT, "keep iff score >= threshold", required=True)]),
        (NODE_ROW_SCATTER, [("residual", "T"), ("rows_data", "T"), ("rows", "tensor(int64)")], [("out", "T")], []),
    ]
    for name, ins, outs, attrs in specs:
        onnx.defs.register_schema(
            OpSchema(
                name,
                DOMAIN,
                1,
                f"ftp-export token routing node {name} (plugins/README.md)",
                inputs=io(ins),
                outputs=io(outs),
                type_constraints=[("T", fp, "hidden-state dtype")],
                attributes=attrs + plugin_attrs,
            )
        )


def onnx_translation_table() -> dict[Any, Any]:
    """torch op -> onnxscript function emitting the ``ftp`` node (for torch.onnx.export)."""
    from onnxscript import values

    register_onnx_schemas()
    ftp = values.Opset(DOMAIN, 1)
    common = {"plugin_version": PLUGIN_VERSION, "plugin_namespace": ""}

    def _topk_gather(hidden, scores, valid, keep_q16: int):
        return ftp.FtpTopKGather(hidden, scores, valid, keep_q16=keep_q16, **common)

    def _topk_scatter(residual, rows, indices, active):
        return ftp.FtpTopKScatter(residual, rows, indices, active, **common)

    def _threshold_gather(hidden, scores, valid, threshold: float):
        gathered, rows, _count = ftp.FtpThresholdGather(hidden, scores, valid, threshold=threshold, **common)
        return gathered, rows

    def _row_scatter(residual, rows_data, rows):
        return ftp.FtpRowScatter(residual, rows_data, rows, **common)

    return {
        torch.ops.ftp.topk_gather.default: _topk_gather,
        torch.ops.ftp.topk_scatter.default: _topk_scatter,
        torch.ops.ftp.threshold_gather.default: _threshold_gather,
        torch.ops.ftp.row_scatter.default: _row_scatter,
    }
