"""Fused attention with the router's attention signal, never storing the probability matrix
(DESIGN.md section 8: two passes with the log-sum-exp).

- :func:`_fwd`: flash-attention forward (grouped-query heads: query head h reads K/V head
  h // (H / Hkv), Hugging Face's repeat_kv order). It writes the output and each (head, query)
  row's softmax statistics: the running max ``m`` and the sum ``l`` (log-sum-exp = m + log l, kept
  as a pair so that a fully masked row, whose m is float32's minimum, stays exact), and with
  ``own`` each row's probability on its own key.
- :func:`_colsum`: per key tile, recomputes the scores of every query (no V) and accumulates
  ``sum_q w[q] / H * exp(score - m) / l`` in float32, one partial per K/V head (summed after:
  deterministic, no atomics).

Masking matches :func:`ftp_export.routed.attention._one_shot` exactly: masked scores sit at the
dtype's minimum, softmax is float32, so a fully masked row is uniform over all S keys. Scores are
rounded to the input dtype as the reference's matmul output is. The mask comes structured
(``q_index``, ``key_valid``, optional ``window``: allowed = key_valid & key <= q_index & key >
q_index - window, as :func:`ftp_export.routed.block.attention_mask_for` builds it) or dense
(``allowed`` [G, Q, S]). Per query block, keys outside the union of its rows' allowed extents are
skipped (exact: their probabilities are 0), except in blocks holding a fully masked row.

Under Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors) bfloat16 dots and casts are
emulated in float32 with round-to-nearest-even, since the interpreter's are not.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ftp_export.kernels import available

__all__ = ["attention_with_signal", "available", "supports"]

MIN: tl.constexpr = tl.constexpr(-3.4028234663852886e38)  # float32's minimum, the additive mask
_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


@triton.jit
def _round(x, DT: tl.constexpr, EMULATE: tl.constexpr):
    """``x`` (float32) rounded to the input dtype, kept float32."""
    if DT == 1:
        x = x.to(tl.float16).to(tl.float32)
    elif DT == 2:
        if EMULATE:  # round to nearest even on the bits
            b = x.to(tl.uint32, bitcast=True)
            b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
            x = b.to(tl.float32, bitcast=True)
        else:
            x = x.to(tl.bfloat16).to(tl.float32)
    return x


@triton.jit
def _dot(a, b, F32_DOT: tl.constexpr):
    if F32_DOT:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _allowed(rows, cols, rmask, cmask, qi, g, ALLOWED, sa_g, sa_q, KVALID, S, window,
             DENSE: tl.constexpr, WINDOW: tl.constexpr):
    """Which (row, key) pairs may attend, [BM, BN]."""
    if DENSE:
        a = tl.load(ALLOWED + g * sa_g + rows[:, None] * sa_q + cols[None, :],
                    mask=rmask[:, None] & cmask[None, :], other=0) != 0
    else:
        kv = tl.load(KVALID + g * S + cols, mask=cmask, other=0) != 0
        a = kv[None, :] & (cols[None, :] <= qi[:, None])
        if WINDOW:
            a = a & (cols[None, :] > qi[:, None] - window)
    return a


@triton.jit
def _load_q(Q, g, h, rows, rmask, dd, sq_g, sq_h, sq_q, scale, DT: tl.constexpr, EMULATE: tl.constexpr):
    """Queries [BM, D] scaled and rounded to the input dtype (the reference's ``q * scaling``)."""
    q = tl.load(Q + g * sq_g + h * sq_h + rows[:, None] * sq_q + dd[None, :], mask=rmask[:, None], other=0.0)
    q = _round(q.to(tl.float32) * scale, DT, EMULATE)
    if not EMULATE:
        q = q.to(Q.dtype.element_ty)
    return q


@triton.jit
def _fwd(Q, K, V, OUT, M, L, OWN, QI, KVALID, ALLOWED, LO, HI, scale, window,
         sq_g, sq_h, sq_q, sk_g, sk_h, sk_s, sv_g, sv_h, sv_s, so_g, so_q, so_h, sa_g, sa_q,
         H, R, NQ, S, NB,
         D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, DT: tl.constexpr, EMULATE: tl.constexpr,
         F32_DOT: tl.constexpr, DENSE: tl.constexpr, WINDOW: tl.constexpr, OWN_ON: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_gh = tl.program_id(1)
    g = pid_gh // H
    h = pid_gh % H
    kvh = h // R
    rows = pid_m * BM + tl.arange(0, BM)
    rmask = rows < NQ
    dd = tl.arange(0, D)
    q = _load_q(Q, g, h, rows, rmask, dd, sq_g, sq_h, sq_q, scale, DT, EMULATE)
    qi = tl.load(QI + g * NQ + rows, mask=rmask, other=0)
    lo = tl.load(LO + g * NB + pid_m)
    hi = tl.load(HI + g * NB + pid_m)
    m_i = tl.full([BM], MIN, tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, D], tl.float32)
    k_base = K + g * sk_g + kvh * sk_h
    v_base = V + g * sv_g + kvh * sv_h
    for n0 in range((lo // BN) * BN, hi, BN):
        cols = n0 + tl.arange(0, BN)
        cmask = cols < S
        k = tl.load(k_base + cols[None, :] * sk_s + dd[:, None], mask=cmask[None, :], other=0.0)
        s = _round(_dot(q, k, F32_DOT), DT, EMULATE)
        a = _allowed(rows, cols, rmask, cmask, qi, g, ALLOWED, sa_g, sa_q, KVALID, S, window, DENSE, WINDOW)
        s = tl.where(a, s, MIN)
        s = tl.where(cmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + cols[:, None] * sv_s + dd[None, :], mask=cmask[:, None], other=0.0)
        p = _round(p, DT, EMULATE)
        if not F32_DOT:
            p = p.to(V.dtype.element_ty)
        acc = acc * alpha[:, None] + _dot(p, v, F32_DOT)
        m_i = m_new
    out = _round(acc / l_i[:, None], DT, EMULATE)
    tl.store(OUT + g * so_g + rows[:, None] * so_q + h * so_h + dd[None, :], out.to(OUT.dtype.element_ty),
             mask=rmask[:, None])
    stat = (g * H + h) * NQ + rows
    tl.store(M + stat, m_i, mask=rmask)
    tl.store(L + stat, l_i, mask=rmask)
    if OWN_ON:
        k_own = tl.load(k_base + qi[:, None] * sk_s + dd[None, :], mask=rmask[:, None], other=0.0)
        s_own = _round(tl.sum(q.to(tl.float32) * k_own.to(tl.float32), 1), DT, EMULATE)
        if DENSE:
            a_own = tl.load(ALLOWED + g * sa_g + rows * sa_q + qi, mask=rmask, other=0) != 0
        else:
            a_own = tl.load(KVALID + g * S + qi, mask=rmask, other=0) != 0
        s_own = tl.where(a_own, s_own, MIN)
        tl.store(OWN + stat, tl.exp(s_own - m_i) / l_i, mask=rmask)


@triton.jit
def _colsum(Q, K, M, L, W, PART, QI, KVALID, ALLOWED, LO, HI, scale, window,
            sq_g, sq_h, sq_q, sk_g, sk_h, sk_s, sa_g, sa_q,
            H, HKV, R, NQ, S, NB,
            D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, DT: tl.constexpr, EMULATE: tl.constexpr,
            F32_DOT: tl.constexpr, DENSE: tl.constexpr, WINDOW: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_gk = tl.program_id(1)
    g = pid_gk // HKV
    kvh = pid_gk % HKV
    n0 = pid_n * BN
    cols = n0 + tl.arange(0, BN)
    cmask = cols < S
    dd = tl.arange(0, D)
    k = tl.load(K + g * sk_g + kvh * sk_h + cols[None, :] * sk_s + dd[:, None], mask=cmask[None, :], other=0.0)
    acc = tl.zeros([BN], tl.float32)
    for mb in range(0, NB):
        lo = tl.load(LO + g * NB + mb)
        hi = tl.load(HI + g * NB + mb)
        if (lo < n0 + BN) & (hi > n0):  # else every probability of this tile is 0
            rows = mb * BM + tl.arange(0, BM)
            rmask = rows < NQ
            qi = tl.load(QI + g * NQ + rows, mask=rmask, other=0)
            w = tl.load(W + g * NQ + rows, mask=rmask, other=0.0)
            a = _allowed(rows, cols, rmask, cmask, qi, g, ALLOWED, sa_g, sa_q, KVALID, S, window, DENSE, WINDOW)
            valid = rmask[:, None] & cmask[None, :]
            for j in range(0, R):
                h = kvh * R + j
                q = _load_q(Q, g, h, rows, rmask, dd, sq_g, sq_h, sq_q, scale, DT, EMULATE)
                s = _round(_dot(q, k, F32_DOT), DT, EMULATE)
                s = tl.where(a, s, MIN)
                stat = (g * H + h) * NQ + rows
                m = tl.load(M + stat, mask=rmask, other=0.0)
                l_row = tl.load(L + stat, mask=rmask, other=1.0)
                p = tl.exp(s - m[:, None]) / l_row[:, None]
                p = tl.where(valid, p, 0.0)
                acc += tl.sum(p * w[:, None], 0)
    tl.store(PART + pid_gk * S + cols, acc, mask=cmask)


def supports(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Shapes and dtypes the kernels handle: float32/float16/bfloat16, a power-of-two head size
    of 16 to 256, query heads a multiple of K/V heads, offsets within int32 (the kernels' index
    arithmetic; a dense mask [G, Q, S] too)."""
    dh = q.shape[-1]
    g, nq, s = q.shape[0], q.shape[2], k.shape[2]
    small = max(q.numel(), k.numel(), g * nq * s) < 2**31
    return (q.dtype in _DTYPES and k.dtype == q.dtype and 16 <= dh <= 256 and dh & (dh - 1) == 0
            and q.shape[1] % k.shape[1] == 0 and small)


def launch_flags(dtype: torch.dtype, dh: int, emulate: bool, dense: bool, window: bool,
                 block_m: int | None = None, block_n: int | None = None) -> dict:
    """Both kernels' compile-time arguments and launch options (scripts/triton_compile_check.py
    compiles them for a GPU target from these, without one)."""
    dt = _DTYPES[dtype]
    return dict(D=dh, BM=block_m or (32 if emulate else 64), BN=block_n or (32 if emulate else 64), DT=dt,
                EMULATE=emulate, F32_DOT=emulate or dt == 0, DENSE=dense, WINDOW=window,
                num_warps=4, num_stages=2 if dt == 0 else 3)


def _bytes(mask: torch.Tensor) -> torch.Tensor:
    """A boolean mask as uint8 for the kernels, without a copy where it is contiguous."""
    mask = mask.contiguous()
    return mask.view(torch.uint8) if mask.dtype == torch.bool else mask.to(torch.uint8)


def _row_extents(q_index, key_valid, window, allowed, s):
    """Per row [lo, hi): the keys that may be allowed; [0, S) for a fully masked row."""
    if allowed is not None:
        a = allowed.to(torch.uint8)
        lo = a.argmax(-1)
        hi = s - a.flip(-1).argmax(-1)
        any_ = allowed.any(-1).bool()
    else:
        hi = (q_index + 1).clamp(0, s)
        lo = torch.zeros_like(hi) if window is None else (q_index - window + 1).clamp(0, s)
        csum = torch.nn.functional.pad(key_valid.to(torch.int32).cumsum(-1), (1, 0))
        any_ = (csum.gather(1, hi) - csum.gather(1, torch.minimum(lo, hi))) > 0
    lo = torch.where(any_, lo, 0)
    hi = torch.where(any_, hi, s)
    return lo, hi


def _block_extents(lo, hi, bm, s):
    """Per query block [lo, hi): the union of its rows' extents, int32 [G, NB]."""
    g, nq = lo.shape
    nb = triton.cdiv(nq, bm)
    pad = nb * bm - nq
    lo = torch.nn.functional.pad(lo, (0, pad), value=s).view(g, nb, bm).amin(-1)
    hi = torch.nn.functional.pad(hi, (0, pad), value=0).view(g, nb, bm).amax(-1)
    return lo.to(torch.int32).contiguous(), hi.to(torch.int32).contiguous(), nb


def attention_with_signal(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_index: torch.Tensor,
    scaling: float,
    *,
    key_valid: torch.Tensor | None = None,
    window: int | None = None,
    allowed: torch.Tensor | None = None,
    col_weight: torch.Tensor | None = None,
    own: bool = False,
    block_m: int | None = None,
    block_n: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Softmax attention of ``q`` [G, H, Q, Dh] at cache indices ``q_index`` [G, Q] against
    ``k``/``v`` [G, Hkv, S, Dh] (unscaled queries; ``scaling`` is applied in the input dtype, as
    ``q * scaling``), masked by ``allowed`` [G, Q, S] or else by ``key_valid`` [G, S] (all keys
    when None), causal on ``q_index`` and inside ``window``. Returns the output [G, Q, H*Dh];
    with ``col_weight`` [G, Q] the column sums ``sum_q w_q mean_h p[h, q, s]`` [G, S] (float32);
    with ``own`` each query's head-mean weight on its own key [G, Q] (float32)."""
    assert supports(q, k), (q.dtype, tuple(q.shape), tuple(k.shape))
    g, n_heads, nq, dh = q.shape
    hkv, s = k.shape[1], k.shape[2]
    emulate = q.device.type != "cuda"  # CPU tensors: Triton's interpreter
    flags = launch_flags(q.dtype, dh, emulate, allowed is not None, window is not None, block_m, block_n)
    bm, bn = flags["BM"], flags["BN"]
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    q_index = q_index.to(torch.int32).contiguous()
    dense = allowed is not None
    if dense:
        allowed = _bytes(allowed)
        sa_g, sa_q = allowed.stride(0), allowed.stride(1)
    else:
        if key_valid is None:
            key_valid = torch.ones(g, s, dtype=torch.bool, device=q.device)
        elif tuple(key_valid.shape) != (g, s):  # the kernels index it as [G, S]
            raise ValueError(f"key_valid has shape {tuple(key_valid.shape)}, expected {(g, s)}")
        key_valid = _bytes(key_valid)
        sa_g = sa_q = 0
    lo, hi = _row_extents(q_index.long(), key_valid, window, allowed, s)
    blo, bhi, nb = _block_extents(lo, hi, bm, s)
    out = torch.empty(g, nq, n_heads, dh, dtype=q.dtype, device=q.device)
    m = torch.empty(g, n_heads, nq, dtype=torch.float32, device=q.device)
    l_sum = torch.empty_like(m)
    own_h = torch.empty_like(m) if own else m
    dummy = q_index  # an unused pointer argument (the other mask form)
    mask_args = (q_index, dummy if dense else key_valid, allowed if dense else dummy, blo, bhi,
                 float(scaling), int(window or 0))
    _fwd[(nb, g * n_heads)](
        q, k, v, out, m, l_sum, own_h, *mask_args,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2), sa_g, sa_q,
        n_heads, n_heads // hkv, nq, s, nb, OWN_ON=own, **flags,
    )
    colsum = None
    if col_weight is not None:
        w = (col_weight.to(torch.float32) / n_heads).contiguous()
        part = torch.empty(g, hkv, s, dtype=torch.float32, device=q.device)
        _colsum[(triton.cdiv(s, bn), g * hkv)](
            q, k, m, l_sum, w, part, *mask_args,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2), sa_g, sa_q,
            n_heads, hkv, n_heads // hkv, nq, s, nb, **flags,
        )
        colsum = part.sum(dim=1)
    return out.view(g, nq, n_heads * dh), colsum, own_h.mean(dim=1) if own else None
