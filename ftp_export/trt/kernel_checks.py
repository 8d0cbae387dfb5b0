"""Argument checks of the ftp kernel extension's wrappers (:mod:`.kernels_ext`): metadata only,
no extension, no device access, no host synchronisation, so they run (and are tested) on the CPU.

``TypeError`` for a wrong Python type or dtype, ``ValueError`` for a wrong device, shape, layout,
range or aliasing; ``RuntimeError`` (:func:`check_status`) only for what the extension reports.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch

from ftp_export.routing import selection

MAX_TOKENS = 131072  # FTP_MAX_TOKENS, plugins/common/ftp_kernels.h (17 position bits of the rank key)
Q16 = 65536
INT32_MAX = 2**31 - 1  # the scatters' row map and the gather's grid are int32
WORKSPACE_ALIGN = 256
HIDDEN_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def type_error(msg: str) -> TypeError:
    return TypeError(f"ftp kernels: {msg}")


def value_error(msg: str) -> ValueError:
    return ValueError(f"ftp kernels: {msg}")


def check_int(value: object, name: str, lo: int, hi: int) -> int:
    """``value`` as a Python int in [lo, hi]; tensors are refused (reading one would synchronise)."""
    if isinstance(value, (bool, torch.Tensor)):
        raise type_error(f"{name} must be a Python int, got {type(value).__name__}")
    try:
        v = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise type_error(f"{name} must be an int, got {type(value).__name__}") from None
    if not lo <= v <= hi:
        raise value_error(f"{name} must be in {lo}..{hi}, got {v}")
    return v


def check_float(value: object, name: str) -> float:
    if isinstance(value, (bool, torch.Tensor)) or not isinstance(value, (int, float)):
        raise type_error(f"{name} must be a Python float, got {type(value).__name__}")
    return float(value)


def check_tensor(
    t: object,
    name: str,
    dtypes: Sequence[torch.dtype],
    ndim: int,
    device: torch.device | None = None,
    *,
    require_cuda: bool = True,
) -> torch.Tensor:
    """``t`` is a dense contiguous tensor of one of ``dtypes`` with ``ndim`` dims (on ``device``)."""
    if not isinstance(t, torch.Tensor):
        raise type_error(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_nested or t.layout != torch.strided:
        raise value_error(f"{name} must be a dense (strided) tensor, got layout {t.layout}")
    if require_cuda and t.device.type != "cuda":
        raise value_error(f"{name} must be a CUDA tensor, got one on {t.device}")
    if device is not None and t.device != device:
        raise value_error(f"{name} is on {t.device}, expected {device} (all tensors of a call on one device)")
    if t.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise type_error(f"{name} must be {allowed}, got {str(t.dtype).removeprefix('torch.')}")
    if t.dim() != ndim:
        raise value_error(f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")
    if not t.is_contiguous():
        raise value_error(f"{name} must be contiguous (call .contiguous() first)")
    return t


def check_shape(t: torch.Tensor, name: str, expected: tuple[int, ...]) -> None:
    if tuple(t.shape) != tuple(expected):
        raise value_error(f"{name} has shape {tuple(t.shape)}, expected {tuple(expected)}")


def _span(t: torch.Tensor) -> tuple[int, int] | None:
    if t.device.type == "meta" or t.numel() == 0:
        return None
    start = t.data_ptr()  # an address, no device access
    return start, start + t.numel() * t.element_size()


def check_disjoint(outputs: Sequence[tuple[str, torch.Tensor]], inputs: Sequence[tuple[str, torch.Tensor]]) -> None:
    """No output shares memory with an input or another output (the kernels read while writing)."""
    spans = [(name, _span(t)) for name, t in outputs]
    others = [(name, _span(t)) for name, t in inputs]
    for i, (name, span) in enumerate(spans):
        if span is None:
            continue
        for other, o_span in [*others, *spans[i + 1 :]]:
            if o_span is not None and span[0] < o_span[1] and o_span[0] < span[1]:
                raise value_error(f"{name} overlaps {other} in memory; outputs must not alias inputs or each other")


def _gather_inputs(hidden: object, scores: object, valid: object, require_cuda: bool) -> tuple[torch.Tensor, ...]:
    """hidden [B,T,D] (float), scores [B,T] float32, valid [B,T] bool on one device."""
    h = check_tensor(hidden, "hidden", HIDDEN_DTYPES, 3, require_cuda=require_cuda)
    b, t, _ = h.shape
    s = check_tensor(scores, "scores", (torch.float32,), 2, h.device, require_cuda=require_cuda)
    v = check_tensor(valid, "valid", (torch.bool,), 2, h.device, require_cuda=require_cuda)
    check_shape(s, "scores", (b, t))
    check_shape(v, "valid", (b, t))
    return h, s, v


def _check_outputs(
    specs: Sequence[tuple[str, object, tuple[torch.dtype, ...], tuple[int, ...]]],
    inputs: Sequence[tuple[str, torch.Tensor]],
    device: torch.device,
    require_cuda: bool,
    upper_bound: bool = False,
) -> None:
    """Each given output (name, tensor or None, dtypes, shape) is right and aliases nothing;
    ``upper_bound``: row outputs are sized for every B*T row (decode's data-dependent count)."""
    outs = []
    for name, out, dtypes, shape in specs:
        if out is not None:
            o = check_tensor(out, name, dtypes, len(shape), device, require_cuda=require_cuda)
            check_shape(o, f"{name} (upper bound B*T rows)" if upper_bound and shape else name, shape)
            outs.append((name, o))
    check_disjoint(outs, inputs)


def check_topk_gather(
    hidden: object,
    scores: object,
    valid: object,
    keep_q16: object,
    gathered: object = None,
    indices: object = None,
    active: object = None,
    *,
    require_cuda: bool = True,
) -> tuple[int, int, int, int]:
    """Validates FtpTopKGather arguments (outputs when given); returns (B, T, D, K)."""
    h, s, v = _gather_inputs(hidden, scores, valid, require_cuda)
    b, t, d = h.shape
    q16 = check_int(keep_q16, "keep_q16", 1, Q16)
    if t > MAX_TOKENS:
        raise value_error(f"hidden has {t} tokens per row; the rank key supports at most {MAX_TOKENS}")
    if b > INT32_MAX:
        raise value_error(f"batch {b} is too large")
    k = selection.slot_count(t, q16)
    specs = [("gathered", gathered, (h.dtype,), (b, k, d)), ("indices", indices, (torch.int64,), (b, k)), ("active", active, (torch.bool,), (b, k))]
    _check_outputs(specs, [("hidden", h), ("scores", s), ("valid", v)], h.device, require_cuda)
    return b, t, d, k


def check_topk_scatter(
    residual: object,
    rows: object,
    indices: object,
    active: object,
    out: object = None,
    *,
    require_cuda: bool = True,
) -> tuple[int, int, int, int]:
    """Validates FtpTopKScatter arguments (``out`` when given); returns (B, T, K, D)."""
    r = check_tensor(residual, "residual", HIDDEN_DTYPES, 3, require_cuda=require_cuda)
    dev, (b, t, d) = r.device, r.shape
    i = check_tensor(indices, "indices", (torch.int64,), 2, dev, require_cuda=require_cuda)
    k = i.shape[1]
    rw = check_tensor(rows, "rows", (r.dtype,), 3, dev, require_cuda=require_cuda)
    a = check_tensor(active, "active", (torch.bool,), 2, dev, require_cuda=require_cuda)
    check_shape(rw, "rows", (b, k, d))
    check_shape(i, "indices", (b, k))
    check_shape(a, "active", (b, k))
    if k > t:
        raise value_error(f"indices has {k} slots per row, more than the {t} tokens")
    if b * t > INT32_MAX:
        raise value_error(f"B*T = {b}*{t} exceeds the int32 row map")
    _check_outputs([("out", out, (r.dtype,), (b, t, d))], [("residual", r), ("rows", rw), ("indices", i), ("active", a)], dev, require_cuda)
    return b, t, k, d


def check_threshold_gather(
    hidden: object,
    scores: object,
    valid: object,
    threshold: object,
    gathered: object = None,
    rows: object = None,
    count: object = None,
    *,
    require_cuda: bool = True,
) -> tuple[int, int, int]:
    """Validates FtpThresholdGather arguments (outputs when given); returns (B, T, D)."""
    h, s, v = _gather_inputs(hidden, scores, valid, require_cuda)
    b, t, d = h.shape
    check_float(threshold, "threshold")
    if b * t > INT32_MAX:
        raise value_error(f"B*T = {b}*{t} is too large")
    specs = [("gathered", gathered, (h.dtype,), (b * t, d)), ("rows", rows, (torch.int64,), (b * t,)), ("count", count, (torch.int32,), ())]
    _check_outputs(specs, [("hidden", h), ("scores", s), ("valid", v)], h.device, require_cuda, upper_bound=True)
    return b, t, d


def check_row_scatter(
    residual: object,
    rows_data: object,
    rows: object,
    out: object = None,
    *,
    require_cuda: bool = True,
) -> tuple[int, int, int, int]:
    """Validates FtpRowScatter arguments (``out`` when given); returns (B, T, N, D)."""
    r = check_tensor(residual, "residual", HIDDEN_DTYPES, 3, require_cuda=require_cuda)
    dev, (b, t, d) = r.device, r.shape
    rw = check_tensor(rows, "rows", (torch.int64,), 1, dev, require_cuda=require_cuda)
    n = rw.shape[0]
    rd = check_tensor(rows_data, "rows_data", (r.dtype,), 2, dev, require_cuda=require_cuda)
    check_shape(rd, "rows_data", (n, d))
    if b * t > INT32_MAX or n > INT32_MAX:
        raise value_error(f"B*T = {b}*{t} or N = {n} exceeds the int32 row map")
    _check_outputs([("out", out, (r.dtype,), (b, t, d))], [("residual", r), ("rows_data", rd), ("rows", rw)], dev, require_cuda)
    return b, t, n, d


def check_flags(flags: object, out: object, *, require_cuda: bool = True) -> None:
    """The TensorRT glue's flag conversion: int32 ``flags`` -> bool ``out`` or bool -> int32, same shape."""
    if not isinstance(flags, torch.Tensor):
        raise type_error(f"flags must be a torch.Tensor, got {type(flags).__name__}")
    f = check_tensor(flags, "flags", (torch.int32, torch.bool), flags.dim(), require_cuda=require_cuda)
    want = torch.bool if f.dtype == torch.int32 else torch.int32
    o = check_tensor(out, "out", (want,), f.dim(), f.device, require_cuda=require_cuda)
    check_shape(o, "out", tuple(f.shape))
    check_disjoint([("out", o)], [("flags", f)])


def check_workspace(workspace: object, nbytes: int, device: torch.device, *, require_cuda: bool = True) -> None:
    """``workspace`` is a 1-D uint8 tensor of at least ``nbytes`` bytes (256-byte aligned on the GPU)."""
    ws = check_tensor(workspace, "workspace", (torch.uint8,), 1, device, require_cuda=require_cuda)
    if ws.numel() < nbytes:
        raise value_error(f"workspace has {ws.numel()} bytes, the launch needs {nbytes} (see new_workspace)")
    if nbytes > 0 and ws.is_cuda and ws.data_ptr() % WORKSPACE_ALIGN:
        raise value_error(f"workspace must be {WORKSPACE_ALIGN}-byte aligned (use new_workspace, not a view)")


def check_status(status: object, what: str) -> None:
    """Raise RuntimeError unless a launch function of the extension returned ``""``."""
    if status == "":
        return
    if isinstance(status, str):
        raise RuntimeError(status)
    raise RuntimeError(f"ftp kernels: {what} returned {status!r}, expected a status string")


# ---- wrappers -------------------------------------------------------------------------------------
