"""Reference implementations of the ``ftp`` nodes for onnxruntime (CPU, float32), so the
TensorRT-flavoured graph runs and is parity-checked where TensorRT is absent.

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


def rehomed_copy(path: Path) -> Path:
    """Write a sibling copy of ``path`` with ftp nodes in the contrib domain (shares external data)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
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
