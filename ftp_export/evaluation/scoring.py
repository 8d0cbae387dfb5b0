"""Log-likelihood scoring of multiple-choice items (perplexity: :func:`.metrics.perplexity`).

A *forward* is ``forward(input_ids [B, T], attention_mask [B, T] or None) -> logits [B, T, V]``
(None: every token is real); every method (dense, routed, layer-dropped) is wrapped into one,
so scoring is identical for all.
Batches are right-padded; the routed model gives a row the same routing padded or alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm import tqdm

from ftp_export.evaluation.tasks import Item

Forward = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


class Encoder:
    """Token ids the lm-evaluation-harness way: context and continuation encoded separately
    (no special tokens), with the tokenizer's BOS in front when the tokenizer adds one."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        bos = getattr(tokenizer, "bos_token_id", None)
        self.prefix = [int(bos)] if bos is not None and getattr(tokenizer, "add_bos_token", False) else []

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def request(self, context: str, continuation: str) -> tuple[list[int], int]:
        """(ids, n_cont): the last n_cont ids are the scored continuation."""
        ctx, cont = self.encode(context), self.encode(continuation)
        return self.prefix + ctx + cont, len(cont)


def _batches(order: list[int], lengths: list[int], max_tokens: int) -> list[list[int]]:
    out, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * max(lengths[j] for j in [*cur, i]) > max_tokens:
            out.append(cur)
            cur = []
        cur.append(i)
    return out + ([cur] if cur else [])


@torch.no_grad()
def continuation_logprobs(
    forward: Forward, requests: Sequence[tuple[list[int], int]], max_tokens: int = 4096, device: str = "cpu", desc: str | None = None
) -> list[float]:
    """Sum of log p(continuation | context) for each ``(ids, n_cont)`` request."""
    lengths = [len(ids) for ids, _ in requests]
    order = sorted(range(len(requests)), key=lambda i: (-lengths[i], i))  # long first: padding stays small
    out = [0.0] * len(requests)
    batches = _batches(order, lengths, max_tokens)
    for batch in tqdm(batches, desc=desc, disable=desc is None, leave=False, dynamic_ncols=True):
        width = max(lengths[i] for i in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.int64)
        mask = torch.zeros(len(batch), width, dtype=torch.int64)
        for r, i in enumerate(batch):
            ids[r, : lengths[i]] = torch.tensor(requests[i][0])
            mask[r, : lengths[i]] = 1
        logp = torch.log_softmax(forward(ids.to(device), mask.to(device)).float(), dim=-1).cpu()
        for r, i in enumerate(batch):
            n, k = lengths[i], requests[i][1]
            target = ids[r, n - k : n]
            out[i] = float(logp[r, n - k - 1 : n - 1].gather(-1, target.unsqueeze(-1)).sum())
    return out


def score_items(forward: Forward, encoder: Encoder, items: list[Item], max_tokens: int = 4096, device: str = "cpu",
                desc: str | None = None) -> dict[str, Any]:
    """Accuracy (``acc``) and byte-length-normalised accuracy (``acc_norm``) over ``items``, and
    ``per_item``: each item's 0/1 correctness under both (the units the bootstrap resamples)."""
    requests, owner = [], []
    for k, item in enumerate(items):
        for choice in item.choices:
            requests.append(encoder.request(item.context, choice))
            owner.append(k)
    logprobs = continuation_logprobs(forward, requests, max_tokens, device, desc)
    correct, correct_norm = [], []
    pos = 0
    for item in items:
        lp = logprobs[pos : pos + len(item.choices)]
        norm = [v / max(1, len(c.encode("utf-8"))) for v, c in zip(lp, item.choices)]
        pos += len(item.choices)
        correct.append(int(max(range(len(lp)), key=lambda j: (lp[j], -j)) == item.label))
        correct_norm.append(int(max(range(len(norm)), key=lambda j: (norm[j], -j)) == item.label))
    n = max(len(items), 1)
    return {"acc": sum(correct) / n, "acc_norm": sum(correct_norm) / n, "items": len(items),
            "per_item": {"acc": correct, "acc_norm": correct_norm}}
