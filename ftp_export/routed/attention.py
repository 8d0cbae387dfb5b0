"""Attention of a block's computed queries, returning what the router's attention factor needs
instead of the probability matrix: the weighted column sums over keys (prefill) and each query's
weight on its own key (decode), both averaged over heads, float32.

The probabilities are still formed (an exact column sum needs them: docs/performance.md), but
they never leave this module and are never averaged over heads in a separate pass:
- grouped-query heads are stacked along the query axis against their shared K/V (no copy of K/V
  per query head);
- scaling is folded into the queries and the mask is added in place (one pass over the scores);
- the column sums are one matrix-vector product per K/V head over the probabilities.

Schedules of the same arithmetic, picked by :func:`attend`:
- graphs compiled by Inductor (the compile target's AOTInductor packages): prefill attention is one
  custom op whose kernel is this module's eager schedule (:mod:`ftp_export.routed.attention_op`);
- other traced graphs (ONNX, TensorRT, torch.compile, AOTInductor) and decode: one shot over all
  keys. Shape-bounded chunks (below) traced into ONNX ran prefill 10-21% faster in onnxruntime at
  L >= 1024 but made the exporter's optimizer 2.5x slower on the default model and over 17
  minutes on 30 blocks, and Inductor fails to lower them ("IndexError: pop from empty list",
  torch 2.13);
- eager PyTorch on the CPU: query chunks of :data:`CHUNK`, each against only the keys up to its
  last query (one host read per chunk), about halving a long prefill's attention work and memory;
  in float32 without autograd each chunk's mask, softmax and column sums are one fused C pass
  (:mod:`ftp_export.kernels.cpu_signal`; ATen's ops where no C compiler is found);
  on other devices :data:`STATIC_CHUNKS` query chunks with key extents bounded from the shapes
  alone (query j of Q distinct ascending queries among S keys sits at or before key S - Q + j),
  with no host sync;
- eager PyTorch on CUDA with Triton installed (``FTP_EXPORT_TRITON=0`` turns it off): instead of
  those chunks, the fused kernel of :mod:`ftp_export.kernels.attention_signal` (flash forward plus
  a column-sum pass from each row's log-sum-exp; no probability matrix in memory);
- a block whose signal no later routed block reads returns no signal: eager PyTorch then runs
  fused SDPA (flash), the dense model's own kernel, on the CPU and on CUDA (float16 excepted).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ftp_export import kernels
from ftp_export.kernels import cpu_signal
from ftp_export.routed.cache import CachedKV

# queries per eager chunk; a chunk's scores are heads x CHUNK x keys floats. 128 against 256: the
# 8-block SmolLM2-shape routed prefill (picks spread over the prompt) 8% faster at 2048 tokens and 4%
# at 1024 on a 2-core CPU (less masked area past each chunk's first query; 64 was no faster)
CHUNK = 128
# query chunks of a prefill on a device without cheap host reads (:func:`_shape_spans`)
STATIC_CHUNKS = 4


def tracing() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def score_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype attention scores are softmaxed in: float16 would overflow to -inf at the mask
    (NaN rows), so it is float32; others keep theirs."""
    return torch.float32 if dtype == torch.float16 else dtype


def mask_bias(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive mask [G, Q, S] of ``allowed`` for queries of ``dtype``: 0 where a query may see a
    key, the score dtype's minimum where not. Adding the minimum equals Hugging Face's masked_fill
    (|score| is far below its ulp) and is a plain broadcast Add in ONNX, where onnxruntime's Where
    was a fifth of prefill time. A caller whose blocks share a mask forms it once
    (``_Call.bias`` in routed/model.py: one Not, Cast and Mul per call, not per block)."""
    dt = score_dtype(dtype)
    return (~allowed).to(dt) * torch.finfo(dt).min


def attention_mask_for(key_valid: torch.Tensor, q_index: torch.Tensor, window: int | None) -> torch.Tensor:
    """Allowed keys [G, Q, S]: valid, at or before the query's cache index, inside the window."""
    keys = torch.arange(key_valid.shape[-1], device=key_valid.device).view(1, 1, -1)
    qi = q_index.unsqueeze(-1)
    allowed = key_valid.unsqueeze(1) & (keys <= qi)
    if window is not None:
        allowed = allowed & (keys > qi - window)
    return allowed


@dataclass(frozen=True)
class KeyMask:
    """:func:`attention_mask_for`'s mask kept as its parts (key validity [G, S], the queries' cache
    indices [G, Q], the window), for eager callers: the CPU kernel reads it as is, with no
    [G, Q, S] tensor in memory (4 MiB at 2048 tokens, alive for the whole call when shared), and
    :func:`attend` forms the tensor only on the schedules that need one."""

    key_valid: torch.Tensor
    q_index: torch.Tensor
    window: int | None

    def dense(self) -> torch.Tensor:
        return attention_mask_for(self.key_valid, self.q_index, self.window)

    def chunk(self, start: int, end: int, keys: int) -> KeyMask:
        """Queries start..end against the first ``keys`` keys."""
        return KeyMask(self.key_valid[:, :keys], self.q_index[:, start:end], self.window)


def _dense(allowed: torch.Tensor | KeyMask) -> torch.Tensor:
    return allowed.dense() if isinstance(allowed, KeyMask) else allowed


def _one_shot(
    q: torch.Tensor,
    k: torch.Tensor | CachedKV,
    v: torch.Tensor | CachedKV,
    bias: torch.Tensor,
    col_weight: torch.Tensor | None,
    own_index: torch.Tensor | None,
    decode: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``q`` [G, H, Q, Dh] already scaled, ``k``/``v`` [G, Hkv, S, Dh], ``bias`` [G, Q, S]
    (:func:`mask_bias`); ``k``/``v`` may be a :class:`~ftp_export.routed.cache.CachedKV` (past and
    new parts, the ``append`` cache layout). Returns output [G, H, Q, Dh], column sums [G, S] and
    own weights [G, Q]. ``decode``: a decode step's few queries, whose mask is repeated per query
    head (a copy of Q x S floats) where a prefill's is viewed."""
    g, n_heads, nq, dh = q.shape
    hkv = k.shape[1] if isinstance(k, torch.Tensor) else k.past.shape[1]
    r = n_heads // hkv
    # head h = kv * r + j reads K/V head kv (Hugging Face's repeat_kv order). The reshapes leave the
    # query count to -1 where they can: in a graph it is data dependent, and sizes the exporter
    # builds from it are shape nodes in every block of every decode step (docs/performance.md (6))
    scores = _key_products(q.reshape(g, hkv, -1, dh), k)
    if scores.dtype == torch.float16:
        scores = scores.to(torch.float32)  # float16 would overflow to -inf below (NaN rows)
    if decode:  # the repeat's shape is a constant; the 5-D view's sizes are shape nodes per block
        scores.add_(bias.repeat(1, r, 1).unsqueeze(1))
    else:
        scores.view(g, hkv, r, nq, scores.shape[-1]).add_(bias[:, None, None])
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
    out = _value_products(probs, v).view(g, n_heads, -1, dh)
    colsum = own = None
    if col_weight is not None:
        w = (col_weight.to(torch.float32) / n_heads).view(g, 1, 1, nq).expand(g, hkv, r, nq).reshape(g, hkv, 1, r * nq)
        colsum = torch.matmul(w, probs).sum(dim=1).squeeze(1)
    if own_index is not None:
        # the index [G, Hkv, R*Q, 1] made by repeats: constants in a graph, where an expand to the
        # data-dependent sizes is a chain of shape nodes
        idx = own_index.repeat(1, r)[:, None, :, None].repeat(1, hkv, 1, 1)
        own = probs.gather(-1, idx).view(g, n_heads, -1).mean(dim=1)
    return out, colsum, own


def _key_products(q: torch.Tensor, k: torch.Tensor | CachedKV) -> torch.Tensor:
    """Scores ``q @ k^T`` [G, Hkv, R*Q, S]; a :class:`CachedKV` as one product per part, the
    (small) scores concatenated instead of the cache."""
    if isinstance(k, torch.Tensor):
        return torch.matmul(q, k.transpose(2, 3))
    return torch.cat([torch.matmul(q, k.past.transpose(2, 3)), torch.matmul(q, k.new.transpose(2, 3))], dim=-1)


def _value_products(probs: torch.Tensor, v: torch.Tensor | CachedKV) -> torch.Tensor:
    """``probs @ v`` in ``v``'s dtype; a :class:`CachedKV` as the sum of each part's product."""
    if isinstance(v, torch.Tensor):
        return torch.matmul(probs.to(v.dtype), v)
    p = probs.to(v.past.dtype)
    s0 = v.past.shape[2]
    return torch.matmul(p[..., :s0], v.past) + torch.matmul(p[..., s0:], v.new)


def attend(
    q: torch.Tensor,
    k: torch.Tensor | CachedKV,
    v: torch.Tensor | CachedKV,
    allowed: torch.Tensor | KeyMask,
    scaling: float,
    q_index: torch.Tensor,
    col_weight: torch.Tensor | None = None,
    own: bool = False,
    causal: bool = False,
    bias: torch.Tensor | None = None,
    decode: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Softmax attention as Hugging Face's eager attention computes it (masked scores at the
    dtype's minimum, softmax in float32), for queries ``q`` [G, H, Q, Dh] at cache indices
    ``q_index`` [G, Q] against ``k``/``v`` [G, Hkv, S, Dh] with ``allowed`` [G, Q, S]. Every
    caller's queries are distinct tokens in ascending cache order within a row (all tokens of a
    call, a top-k selection, or one decoded row each); the chunked schedules rely on it.

    Returns the output [G, Q, H*Dh]; with ``col_weight`` [G, Q], the head-mean probability mass
    the weighted queries put on every key, ``sum_q w_q mean_h p[h, q, s]`` [G, S]; with ``own``,
    each query's head-mean weight on its own key [G, Q]. With neither (no later routed block
    reads this block's signal), eager PyTorch runs fused SDPA, causal when the caller says
    ``allowed`` is exactly the lower triangle (no padding, no window, no past).
    ``bias``: :func:`mask_bias` of ``allowed`` when the caller has it already. ``allowed`` may be a
    :class:`KeyMask` (eager callers): the tensor is then formed only where a schedule needs it.
    ``k``/``v`` may be :class:`~ftp_export.routed.cache.CachedKV` pairs (the ``append`` cache
    layout): the one-shot schedule (graphs, decode) reads the parts, the others join them.
    ``decode``: the queries are a decode step's (:func:`_one_shot`'s mask repeat)."""
    g, n_heads, nq, dh = q.shape
    one_shot = tracing() or own or nq <= 1  # tracing first: a decode block's query count is data dependent
    if not one_shot and isinstance(k, CachedKV):  # only the one-shot products read the parts
        k, v = k.joined(), v.joined()
    if one_shot:
        out, colsum, own_w = _one_shot(q * scaling, k, v, _formed(bias, allowed, q), col_weight, q_index if own else None, decode)
    elif col_weight is None and q.device.type in ("cpu", "cuda") and q.dtype != torch.float16:  # float16: see score_dtype
        out, colsum, own_w = _fused(q, k, v, None if causal else _formed(bias, allowed, q), scaling, causal), None, None
    elif q.device.type == "cuda" and _triton_ok(q, k):
        out, colsum, own_w = _triton(q, k, v, q_index, scaling, allowed, col_weight)
    elif q.device.type != "cpu":
        # no host reads: CUDA (a sync per chunk would stall it) and meta (no data)
        out, colsum, own_w = _in_chunks(q * scaling, k, v, _formed(bias, allowed, q), col_weight, _shape_spans(nq, k.shape[2]))
    elif cpu_signal.supports(q, k, v, col_weight):  # CPU float32: the fused C kernel, on the mask itself
        spans = _data_spans(q_index, nq, k.shape[2]) if nq > CHUNK else [(0, nq, k.shape[2])]
        out, colsum, own_w = _in_chunks(q * scaling, k, v, allowed, col_weight, spans, _kernel_step)
    elif nq <= CHUNK:
        out, colsum, own_w = _one_shot(q * scaling, k, v, _formed(bias, allowed, q), col_weight, None)
    else:
        spans = _data_spans(q_index, nq, k.shape[2])
        out, colsum, own_w = _in_chunks(q * scaling, k, v, _formed(bias, allowed, q), col_weight, spans)
    out = out.transpose(1, 2).reshape(g, -1, n_heads * dh)  # -1: see _one_shot
    return out, colsum, own_w


def _formed(bias: torch.Tensor | None, allowed: torch.Tensor | KeyMask, q: torch.Tensor) -> torch.Tensor:
    """``bias``, or :func:`mask_bias` of ``allowed`` when the caller has none."""
    return bias if bias is not None else mask_bias(_dense(allowed), q.dtype)


def _triton_ok(q: torch.Tensor, k: torch.Tensor) -> bool:
    """The Triton kernel serves this eager call: Triton importable, shapes supported, and not
    switched off with ``FTP_EXPORT_TRITON=0``."""
    if os.environ.get("FTP_EXPORT_TRITON", "1") == "0" or not kernels.available(q.device):
        return False
    from ftp_export.kernels.attention_signal import supports

    return supports(q, k)


def _triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_index: torch.Tensor, scaling: float,
    allowed: torch.Tensor | KeyMask, col_weight: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None, None]:
    """The Triton kernel; output [G, H, Q, Dh] as :func:`_one_shot`'s. A :class:`KeyMask` goes in
    as its parts: no [G, Q, S] tensor is formed or scanned for the key extents, and the kernels'
    structured-mask variant has no register spills at head size 128 where the dense one spills
    (Triton 3.6 and 3.9 for sm_90: ``python scripts/triton_compile_check.py``)."""
    g, n_heads, nq, dh = q.shape
    if isinstance(allowed, KeyMask):
        mask = dict(key_valid=allowed.key_valid, window=allowed.window)
        q_index = allowed.q_index
    else:
        mask = dict(allowed=allowed)
    out, colsum, _ = kernels.attention_with_signal(q, k, v, q_index, scaling, col_weight=col_weight, **mask)
    return out.view(g, nq, n_heads, dh).transpose(1, 2), colsum, None  # the layout attend's reshape undoes


def _fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scaling: float, causal: bool) -> torch.Tensor:
    """Eager attention without a signal: PyTorch's fused SDPA (flash on CPU and CUDA). The mask
    is additive (:func:`mask_bias`, in ``q``'s dtype here: float16 never gets here), so a fully
    masked (padding) row stays finite instead of NaN."""
    gqa = k.shape[1] != q.shape[1]
    if causal:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=gqa)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(1), scale=scaling, enable_gqa=gqa)


def _data_spans(q_index: torch.Tensor, nq: int, s: int) -> list[tuple[int, int, int]]:
    """Eager CPU: chunks of :data:`CHUNK` queries, each against the keys up to its last query
    (one host read per chunk)."""
    return [
        (start, min(start + CHUNK, nq), min(int(q_index[:, start : start + CHUNK].max()) + 1, s))
        for start in range(0, nq, CHUNK)
    ]


def _shape_spans(nq: int, s: int, n_chunks: int = STATIC_CHUNKS) -> list[tuple[int, int, int]]:
    """No host reads: ``n_chunks`` query chunks whose key extents are functions of the shapes
    alone (no sync, and the bound does not depend on which tokens a router picked). The Q queries
    are distinct tokens in ascending cache order among the S keys, so query j sits at or before
    key S - Q + j (a top-k block keeping 60% of 2048 tokens then reads 70% of the keys, a dense
    block 62.5%)."""
    return [((c * nq) // n_chunks, ((c + 1) * nq) // n_chunks, s - nq + ((c + 1) * nq) // n_chunks) for c in range(n_chunks)]


def _bias_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, col_weight: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk of :func:`_in_chunks` in ATen ops (:func:`_one_shot` on the additive mask)."""
    out, colsum, _ = _one_shot(q, k, v, bias, col_weight, None)
    return out, colsum


def _kernel_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | KeyMask, col_weight: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk of :func:`_in_chunks` in the CPU kernel, on a boolean or a structured mask."""
    if isinstance(mask, KeyMask):
        return cpu_signal.attend(q, k, v, None, col_weight, mask.key_valid, mask.q_index, mask.window)
    return cpu_signal.attend(q, k, v, mask, col_weight)


def _in_chunks(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | KeyMask,
    col_weight: torch.Tensor | None,
    spans: list[tuple[int, int, int]],
    step: Callable[..., tuple[torch.Tensor, torch.Tensor | None]] = _bias_step,
) -> tuple[torch.Tensor, torch.Tensor | None, None]:
    """Prefill by query chunks ``(start, end, keys)``: queries start..end against the first
    ``keys`` keys, which hold every key those queries may see. ``step`` attends one chunk with its
    slice of ``mask``: :func:`_bias_step` on the additive bias [G, Q, S], or :func:`_kernel_step`
    on the boolean mask or a :class:`KeyMask`."""
    g, s = q.shape[0], k.shape[2]
    outs = []
    colsum = None if col_weight is None else torch.zeros(g, s, dtype=torch.float32, device=q.device)
    for start, end, ext in spans:
        out, part = step(
            q[:, :, start:end], k[:, :, :ext], v[:, :, :ext],
            mask.chunk(start, end, ext) if isinstance(mask, KeyMask) else mask[:, start:end, :ext],
            None if col_weight is None else col_weight[:, start:end],
        )
        outs.append(out)
        if colsum is not None:
            colsum[:, :ext] += part
    return torch.cat(outs, dim=2) if len(outs) > 1 else outs[0], colsum, None
