"""Eager CPU attention with the router's column-sum signal, the masked softmax and the column sums
fused into one pass per score row (the C kernel built by :mod:`ftp_export.kernels.cpu_build`).

The two products stay ATen's (its BLAS is as fast as the dense model's flash kernel); what the
kernel removes is everything between them: the additive mask formed and added over every score,
softmax's separate passes, and the matrix-vector product for the column sums, each of which
streamed the whole score tensor through memory (docs/performance.md: 0.75-0.9 ns a score for the
softmax alone, against 0.55 here for all of it). The probabilities are left unnormalised and each
output row is scaled by its 1 / sum instead, one write pass fewer.

Same arithmetic as :func:`ftp_export.routed.attention._one_shot` to float32 rounding: masked
scores at float32's minimum, ``exp(x - max) / sum``, a fully masked row uniform over its keys, the
column sums ``sum_q w_q mean_h p[h, q, s]``.
"""

from __future__ import annotations

import torch

from ftp_export.kernels import cpu_build


def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, col_weight: torch.Tensor | None) -> bool:
    """The kernel serves this call: CPU float32 tensors, no gradient wanted through them (the
    kernel has no backward: training keeps ATen's), not switched off (``FTP_EXPORT_CPU_KERNEL=0``,
    read per call) and the library built."""
    tensors = (q, k, v) if col_weight is None else (q, k, v, col_weight)
    if q.device.type != "cpu" or any(t.dtype != torch.float32 for t in (q, k, v)):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return cpu_build.enabled() and cpu_build.library() is not None


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    allowed: torch.Tensor | None,
    col_weight: torch.Tensor | None,
    key_valid: torch.Tensor | None = None,
    q_index: torch.Tensor | None = None,
    window: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``q`` [G, H, Q, Dh] already scaled, ``k``/``v`` [G, Hkv, S, Dh], ``col_weight`` [G, Q] or None.
    The mask is ``allowed`` [G, Q, S] bool (strided views fine), or structured (``allowed`` None):
    key ``s`` is allowed to query ``q`` where ``key_valid`` [G, S] and ``s <= q_index[g, q]``
    (and ``s > q_index - window`` with a window), as
    :func:`~ftp_export.routed.attention.attention_mask_for` builds it, with no [G, Q, S] tensor.
    Returns the output [G, H, Q, Dh] and, with ``col_weight``, the column sums [G, S] float32."""
    g, n_heads, nq, dh = q.shape
    hkv, s = k.shape[1], k.shape[2]
    mask, qi = _mask(allowed, key_valid, q_index, g, nq, s)
    if col_weight is not None and col_weight.shape != (g, nq):
        raise ValueError(f"col_weight must be [{g}, {nq}], got {list(col_weight.shape)}")
    r = n_heads // hkv
    scores = torch.matmul(q.reshape(g, hkv, r * nq, dh), k.transpose(2, 3)).contiguous()
    inv = torch.empty(g, hkv, r * nq, 1, dtype=torch.float32)
    weight = colsum = None
    if col_weight is not None:
        weight = col_weight.to(torch.float32).contiguous()
        colsum = torch.zeros(g, s, dtype=torch.float32)
    rc = cpu_build.library().ftp_softmax_colsum_f32(
        scores.data_ptr(), inv.data_ptr(), mask.data_ptr(), None if qi is None else qi.data_ptr(), window or 0,
        None if weight is None else weight.data_ptr(), None if colsum is None else colsum.data_ptr(),
        g, hkv, r, nq, s, mask.stride(0), 0 if qi is not None else mask.stride(1), nq, s, 1.0 / n_heads,
        torch.get_num_threads(),
    )  # fmt: skip
    if rc != 0:
        raise MemoryError("the CPU attention kernel could not allocate its column-sum scratch")
    out = torch.matmul(scores, v).mul_(inv).view(g, n_heads, nq, dh)
    return out, colsum


def _mask(
    allowed: torch.Tensor | None, key_valid: torch.Tensor | None, q_index: torch.Tensor | None, g: int, nq: int, s: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The kernel's mask arguments: uint8 rows with unit key stride, and the contiguous int64 query
    indices of a structured mask (None for a dense one)."""
    if allowed is not None:
        if allowed.shape != (g, nq, s) or allowed.dtype != torch.bool:
            raise ValueError(f"allowed must be bool [{g}, {nq}, {s}], got {allowed.dtype} {list(allowed.shape)}")
        return (allowed if allowed.stride(-1) == 1 else allowed.contiguous()).view(torch.uint8), None
    if key_valid is None or q_index is None:
        raise ValueError("give allowed, or key_valid and q_index")
    if key_valid.shape != (g, s) or key_valid.dtype != torch.bool:
        raise ValueError(f"key_valid must be bool [{g}, {s}], got {key_valid.dtype} {list(key_valid.shape)}")
    if q_index.shape != (g, nq):
        raise ValueError(f"q_index must be [{g}, {nq}], got {list(q_index.shape)}")
    kv = key_valid if key_valid.stride(-1) == 1 else key_valid.contiguous()
    return kv.view(torch.uint8), q_index.to(torch.int64).contiguous()
