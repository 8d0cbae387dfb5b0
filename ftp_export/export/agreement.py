"""Routing agreement between an export and the reference, counted per decision: for every routed
block, valid token of a call and step, computed or skipped.

- prefill (top-k): a row's computed tokens are ``indices[active]``; its decisions are its valid
  tokens. A swapped token counts twice (one kept that should be skipped and the other way round).
- decode (threshold): ``rows`` lists the computed new tokens (flattened ``[batch, new tokens]``);
  the decisions are all new tokens of the step.

A routing output one side has and the other lacks counts every one of its decisions as disagreeing.
"""

from __future__ import annotations

import numpy as np


def _kept_prefill(indices: np.ndarray, active: np.ndarray) -> list[set[int]]:
    return [set(indices[r][active[r].astype(bool)].tolist()) for r in range(indices.shape[0])]


def _block(name: str) -> tuple[str, str]:
    _, block, kind = name.split(".")
    return block, kind


def step_agreement(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], valid: np.ndarray, new_tokens: int) -> tuple[int, int]:
    """(disagreeing, total) decisions of one step. ``valid``: [B, T] bool of the prefill's tokens
    (unused in decode); ``new_tokens``: tokens of a decode step (batch x new per row)."""
    bad = total = 0
    for block, kind in sorted({_block(n) for n in (*ref, *got)}):
        if kind == "rows":
            name = f"routing.{block}.rows"
            total += new_tokens
            if name not in ref or name not in got:
                bad += new_tokens
                continue
            bad += len(set(ref[name].tolist()) ^ set(got[name].tolist()))
        elif kind == "indices":
            idx, act = f"routing.{block}.indices", f"routing.{block}.active"
            counts = valid.sum(-1)
            total += int(counts.sum())
            if not {idx, act} <= set(ref) or not {idx, act} <= set(got):
                bad += int(counts.sum())
                continue
            kept = zip(_kept_prefill(ref[idx], ref[act]), _kept_prefill(got[idx], got[act]))
            bad += sum(len(a ^ b) for a, b in kept)
    return bad, total


def routing_agreement(
    ref_steps: list[dict[str, np.ndarray]], got_steps: list[dict[str, np.ndarray]], valid: np.ndarray, decode_tokens: list[int]
) -> tuple[float, int]:
    """(fraction of agreeing decisions, number of decisions) over all steps: step 0 is the prefill,
    step i > 0 a decode step with ``decode_tokens[i - 1]`` new tokens."""
    bad = total = 0
    for step, (ra, rb) in enumerate(zip(ref_steps, got_steps)):
        b, t = step_agreement(ra, rb, valid, decode_tokens[step - 1] if step else 0)
        bad, total = bad + b, total + t
    return (1.0 - bad / total if total else 1.0), total
