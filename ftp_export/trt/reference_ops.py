"""Reference implementations of the ``ftp`` nodes for onnxruntime (CPU, float32), so the
TensorRT-flavoured graph runs and is parity-checked where TensorRT is absent.

onnxruntime-extensions' Python ops take no float16 tensors ("Type float16 not supported by python
customops api", which aborts the process), so in the parity copy of a float16 (or bfloat16) graph each
``ftp`` node's hidden-state inputs are Cast to float32 and its hidden-state output Cast back. The
nodes only move rows, and float16 -> float32 -> float16 is exact, so the copy computes what the
float16 plugins compute bit for bit; the artefact itself is untouched.

onnxruntime-extensions runs Python ops only in its own domain, so parity sessions load a copy
of the graph with the ``ftp`` nodes re-homed to ``ai.onnx.contrib``; the artefact itself keeps
domain ``ftp`` for TensorRT's parser. Each op calls the same torch reference lowering as the
PyTorch model, so these nodes cannot drift from the routing semantics. The flags ``valid`` /
``active`` are int32 at the nodes (as at the TensorRT plugins, which cannot take bool).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ftp_export.errors import FTPError
from ftp_export.routed.lowering import TorchLowering
from ftp_export.trt.custom_ops import DOMAIN

CONTRIB = "ai.onnx.contrib"
_registered = False
_ref = TorchLowering()


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _flags(x: np.ndarray) -> torch.Tensor:
    """An int32 flag tensor of a node (0 / non-zero) as the bool flags of the torch lowering."""
    return torch.from_numpy(np.asarray(x) != 0)


def register() -> str:
    """Register the Python ops once; returns the extensions library path."""
    global _registered
    try:
        from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op
    except ImportError:
        raise FTPError("onnxruntime-extensions is needed to run ftp nodes on CPU: pip install onnxruntime-extensions") from None
    if _registered:
        return get_library_path()
    d = PyCustomOpDef
    plugin = {"plugin_version": d.dt_string, "plugin_namespace": d.dt_string}

    @onnx_op(op_type="FtpTopKGather", inputs=[d.dt_float, d.dt_float, d.dt_int32],
             outputs=[d.dt_float, d.dt_int64, d.dt_int32], attrs={"keep_q16": d.dt_int64, **plugin})
    def _topk_gather(hidden, scores, valid, **kw):
        g, i, a = _ref.topk_gather(torch.from_numpy(hidden), torch.from_numpy(scores), _flags(valid), int(kw["keep_q16"]))
        return _np(g), _np(i), _np(a).astype(np.int32)

    @onnx_op(op_type="FtpTopKScatter", inputs=[d.dt_float, d.dt_float, d.dt_int64, d.dt_int32],
             outputs=[d.dt_float], attrs=plugin)
    def _topk_scatter(residual, rows, indices, active, **kw):
        args = (torch.from_numpy(x) for x in (residual, rows, indices))
        return _np(_ref.topk_scatter(*args, _flags(active)))

    @onnx_op(op_type="FtpThresholdGather", inputs=[d.dt_float, d.dt_float, d.dt_int32],
             outputs=[d.dt_float, d.dt_int64, d.dt_int32], attrs={"threshold": d.dt_float, **plugin})
    def _threshold_gather(hidden, scores, valid, **kw):
        g, r = _ref.threshold_gather(torch.from_numpy(hidden), torch.from_numpy(scores), _flags(valid), float(kw["threshold"]))
        return _np(g), _np(r), np.array(r.numel(), dtype=np.int32)

    @onnx_op(op_type="FtpRowScatter", inputs=[d.dt_float, d.dt_float, d.dt_int64], outputs=[d.dt_float], attrs=plugin)
    def _row_scatter(residual, rows_data, rows, **kw):
        args = (torch.from_numpy(x) for x in (residual, rows_data, rows))
        return _np(_ref.row_scatter(*args))

    _registered = True
    return get_library_path()


# which inputs / outputs of each node carry the hidden-state dtype ``T`` (custom_ops' schemas)
HIDDEN_INPUTS = {"FtpTopKGather": (0,), "FtpTopKScatter": (0, 1), "FtpThresholdGather": (0,), "FtpRowScatter": (0, 1)}
HIDDEN_OUTPUTS = {"FtpTopKGather": (0,), "FtpTopKScatter": (0,), "FtpThresholdGather": (0,), "FtpRowScatter": (0,)}


def _float32_islands(model: Any) -> None:
    """Wrap every non-float32 ``ftp`` node in Casts (float32 in, its own type out), in place."""
    import onnx
    from onnx import TensorProto, helper

    from ftp_export.trt.precision import value_types

    hidden = [node.input[0] for node in model.graph.node if node.domain == DOMAIN and node.input]
    if not hidden:
        return
    types = value_types(model, hidden)
    nodes = []
    for node in model.graph.node:
        elem = types.get(node.input[0]) if node.domain == DOMAIN and node.input else None
        if elem is None or elem == TensorProto.FLOAT:
            nodes.append(node)
            continue
        for i in HIDDEN_INPUTS[node.op_type]:
            wide = f"{node.input[i]}__ref_f32_{node.name or node.op_type}_{i}"
            nodes.append(helper.make_node("Cast", [node.input[i]], [wide], to=TensorProto.FLOAT, name=f"{wide}_cast"))
            node.input[i] = wide
        nodes.append(node)
        for i in HIDDEN_OUTPUTS[node.op_type]:
            narrow, wide = node.output[i], f"{node.output[i]}__ref_f32"
            node.output[i] = wide
            nodes.append(helper.make_node("Cast", [wide], [narrow], to=elem, name=f"{wide}_cast"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if not any(imp.domain in ("", "ai.onnx") for imp in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("", 18))


def rehomed_copy(path: Path) -> Path:
    """Write a sibling copy of ``path`` with ftp nodes in the contrib domain (shares external data),
    float32 at every node (:func:`_float32_islands`)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    _float32_islands(model)
    for node in model.graph.node:
        if node.domain == DOMAIN:
            node.domain = CONTRIB
    for imp in model.opset_import:
        if imp.domain == DOMAIN:
            imp.domain = CONTRIB
    out = path.with_name(f".{path.stem}.ortref-{uuid.uuid4().hex[:8]}.onnx")
    onnx.save(model, str(out))
    return out


def reference_session(path: Path, providers: list[str] | None = None) -> Any:
    """An onnxruntime CPU session running the ftp nodes with the reference implementations
    (Python custom ops run on the CPU whatever ``providers`` asks for)."""
    import onnxruntime as ort

    lib = register()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.register_custom_ops_library(lib)
    copy = rehomed_copy(path)
    try:
        return ort.InferenceSession(str(copy), opts, providers=["CPUExecutionProvider"])
    finally:
        os.unlink(copy)
