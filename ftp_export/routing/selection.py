"""Token selection: which tokens a block computes.

This is the one definition every runtime reproduces (PyTorch reference, ONNX standard ops,
the ``ftp`` custom nodes and their CUDA kernels in plugins/).

Prefill (top-k, static shapes):
    ``keep_q16 = round(r * 65536)`` quantises the keep ratio so that counts are exact integer
    arithmetic everywhere (``ceil(0.6 * 10)`` in float32 is 7, in float64 6: integers avoid that).
    The count for n tokens is ``count(n) = ceil(n * (2 * keep_q16 - 1) / 131072)``, i.e. ceil(r n)
    with r taken at the lower edge of its 1/65536 bucket, so ``round`` never pushes an exact
    product such as 0.6 * 10 over the integer. Slots ``K = min(T, max(1, count(T)))`` depend only
    on the padded length T. Row b keeps ``k_b = min(n_b, max(1, count(n_b)))`` of its ``n_b``
    valid tokens (0 if it has none). Tokens are ranked valid-first, then by score descending, then by LOWER position
    first on equal scores (a stable descending sort). The first K ranked tokens are gathered in
    ascending position order; those ranked below ``k_b`` are *active*, the rest are computed
    for shape reasons only and their result is discarded (so padding never changes a row's
    routing).

    Ranking uses a unique int64 key (:func:`order_key`), so that every sort implementation
    (torch, onnxruntime TopK, the CUDA radix sort) yields the same order without relying on
    how a runtime breaks ties: ``q = floor(clamp(score, -256, 256) * 2**24)`` (exact in float32:
    scaling by a power of two), padding gets ``q = -2**33``, and
    ``key = q * 2**17 + (2**17 - 1 - t)``. Scores are thus compared at a resolution of 2**-24
    (every float32 in [0.5, 256) keeps its order), and equal quantised scores go to the lower
    position. Sequences are limited to 2**17 = 131072 tokens per call.

Decode (threshold, data-dependent count):
    a token is kept iff it is valid and ``score >= threshold`` compared in float32; kept tokens
    are the flat indices ``b * T + t`` in ascending order.
"""

from __future__ import annotations

import math

import torch

Q16 = 65536


def keep_q16(keep_ratio: float) -> int:
    """Quantise a keep ratio in (0, 1] to the integer numerator over 65536 (at least 1)."""
    if not (0.0 < keep_ratio <= 1.0) or math.isnan(keep_ratio):
        raise ValueError(f"keep ratio must be in (0, 1], got {keep_ratio}")
    return max(1, min(Q16, round(keep_ratio * Q16)))


def slot_count(length: int, q16: int) -> int:
    """Number of gathered slots K for a padded length T (works on symbolic ints too)."""
    if isinstance(length, int):
        if length == 0:
            return 0
        return min(length, max(1, (length * (2 * q16 - 1) + 2 * Q16 - 1) // (2 * Q16)))
    # symbolic length inside torch.export: T >= 1 there, and 2*q16-1 >= 1 makes the ceil >= 1,
    # so only the upper clamp is needed.
    return torch.sym_min(length, (length * (2 * q16 - 1) + 2 * Q16 - 1) // (2 * Q16))


def kept_count(n_valid: torch.Tensor, q16: int) -> torch.Tensor:
    """Per-row kept count k_b for ``n_valid`` valid tokens (int64 tensor)."""
    k = torch.div(n_valid * (2 * q16 - 1) + (2 * Q16 - 1), 2 * Q16, rounding_mode="floor")
    k = torch.clamp(k, min=1)
    return torch.where(n_valid > 0, torch.minimum(k, n_valid), torch.zeros_like(k))


MAX_TOKENS = 1 << 17
SCORE_CLAMP = 256.0
SCORE_SCALE = float(1 << 24)
PAD_Q = -(1 << 33)


def order_key(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Unique int64 ranking key [B, T]: larger = ranked first (see module doc)."""
    seq_len = scores.shape[-1]
    q = torch.floor(torch.clamp(scores.to(torch.float32), -SCORE_CLAMP, SCORE_CLAMP) * SCORE_SCALE)
    q = torch.where(valid, q.to(torch.int64), torch.full_like(q, PAD_Q, dtype=torch.int64))
    tie = (MAX_TOKENS - 1) - torch.arange(seq_len, device=scores.device, dtype=torch.int64)
    return q * MAX_TOKENS + tie.unsqueeze(0)


def topk_select(scores: torch.Tensor, valid: torch.Tensor, q16: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill selection. Returns ``indices`` [B, K] int64 ascending and ``active`` [B, K] bool."""
    seq_len = scores.shape[-1]
    slots = slot_count(seq_len, q16)
    chosen = torch.topk(order_key(scores, valid), slots, dim=-1, largest=True, sorted=True).indices
    k_b = kept_count(valid.sum(-1), q16)
    slot_rank = torch.arange(slots, device=scores.device).unsqueeze(0)
    active_by_rank = slot_rank < k_b.unsqueeze(-1)
    indices, perm = torch.sort(chosen, dim=-1)
    active = torch.gather(active_by_rank, 1, perm)
    return indices, active


DITHER = 2.0**-2  # scale of decode's tie-breaking term (a power of two: the product is exact)
_POS_HASH = 40503  # round(2^16 / golden ratio): consecutive positions get well-spread fractions
_TOKEN_HASH = 25033  # odd, unrelated to the above: sequences decoding at the same positions differ


def decode_dither(position_ids: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Decode's tie-break [B, T] float32 in [0, DITHER): ``DITHER * frac(h / 2^16)`` with
    ``h = position * 40503 + token * 25033`` in exact integer arithmetic. Added to a decoded
    token's router score so that tokens whose scores tie (a router whose output plateaus gives
    many decoded tokens one score) are split at the threshold by a hash of position and token
    instead of all falling on one side of it: the skip rate among them follows the threshold,
    the way prefill's ties go to the lower position. The token term matters: many sequences
    decode at the same positions (a batch, calibration windows), and with a position-only hash
    they would all get the same tie-break."""
    h = position_ids.to(torch.int64) * _POS_HASH + input_ids.to(torch.int64) * _TOKEN_HASH
    return torch.remainder(h, 1 << 16).to(torch.float32) * (DITHER / (1 << 16))


def threshold_select(scores: torch.Tensor, valid: torch.Tensor, threshold: float) -> torch.Tensor:
    """Decode selection. Returns the flat indices ``b * T + t`` of kept tokens, ascending."""
    thr = torch.tensor(threshold, dtype=torch.float32, device=scores.device)
    keep = valid & (scores.float() >= thr)
    return torch.nonzero(keep.reshape(-1)).reshape(-1)


def soft_topk_logit(scores: torch.Tensor, valid: torch.Tensor, q16: int, temperature: float) -> torch.Tensor:
    """Relaxed keep logit [B, T] = (score - tau) / temperature, tau (detached) midway between the
    k-th and (k+1)-th valid scores of the row: positive for tokens the hard top-k keeps."""
    k_b = kept_count(valid.sum(-1), q16)
    s = scores.float()
    ranked = torch.sort(torch.where(valid, s.detach(), torch.full_like(s, float("-inf"))), dim=-1, descending=True).values
    kth = ranked.gather(1, torch.clamp(k_b - 1, min=0).unsqueeze(-1))
    after = ranked.gather(1, torch.clamp(k_b, max=s.shape[-1] - 1).unsqueeze(-1))
    after = torch.where(torch.isfinite(after) & (k_b.unsqueeze(-1) < valid.sum(-1, keepdim=True)), after, kth - 1.0)
    return (s - 0.5 * (kth + after)) / temperature


def soft_topk_gate(scores: torch.Tensor, valid: torch.Tensor, q16: int, temperature: float) -> torch.Tensor:
    """Straight-through top-k gate [B, T] for training: forward = the hard keep mask of
    :func:`topk_select` (active tokens), gradient = that of sigmoid(:func:`soft_topk_logit`)."""
    indices, active = topk_select(scores.detach(), valid, q16)
    hard = torch.zeros_like(scores, dtype=torch.float32).scatter(1, indices, active.to(torch.float32))
    soft = torch.sigmoid(soft_topk_logit(scores, valid, q16, temperature)) * valid
    return hard + soft - soft.detach()
