"""The oracle router: the ceiling of what any router can add at a schedule's block sparsities.

It ranks the tokens of every routed block by their own skip costs (:mod:`.skip_costs`, the Fisher
costs ``ftp-train``'s step 2a fits the routers to) measured on the very text being scored, so it knows what no
router can know. Skipping the tokens whose cost is lowest is the best a per-block token choice can
do to first order; the gap between FTP and this row is what better router inputs could still win,
the gap between this row and the layer drops is what token routing can win at all.
Prefill (top-k) routing only: the costs of a decoded token need its future.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import torch

from ftp_export.evaluation import methods as M
from ftp_export.evaluation.skip_costs import fisher_skip_costs
from ftp_export.routing.router import RouterBank

ORACLE_TITLE = "oracle router (skip costs of the scored text)"
ORACLE_SAMPLES = 4  # sampled next tokens per position for the costs (ftp-train's --cost-samples default)


class OracleScores(RouterBank):
    """A router bank whose scores are given, not computed: ``scores`` [blocks, B, T] for the batch
    about to run (set by :func:`oracle_method`'s forward). Its own MLPs are never called; they
    exist so the schedule and the FLOP count treat it as a four-factor router."""

    def __init__(self, num_blocks: int) -> None:
        super().__init__(num_blocks)
        self.scores: torch.Tensor | None = None

    def forward(self, block: int, features: torch.Tensor, states: torch.Tensor | None = None) -> torch.Tensor:
        if self.scores is None or self.scores.shape[1:] != features.shape[:2]:
            raise RuntimeError("oracle scores were not set for this batch")
        return self.scores[block]


def oracle_scores(hf: Any, ids: torch.Tensor, samples: int, seed: int = 0, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Log skip costs [blocks, B, T] of ``ids`` [B, T] (float32; higher = costlier to skip = kept first)."""
    return torch.log(fisher_skip_costs(hf, ids, samples, seed, attention_mask).clamp_min(1e-30))


class SkipCostMemo:
    """Sublayer skip costs [blocks, 3, B, T] (attention, MLP, whole block) of each scored batch,
    computed once for every oracle row that scores it (the block oracle and the split oracle of
    :mod:`.split_oracle` share one; the whole-block costs are the same numbers either way)."""

    def __init__(self, hf: Any, samples: int, seed: int = 0) -> None:
        self.hf, self.samples, self.seed = hf, samples, seed
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        key = hashlib.sha1(ids.cpu().numpy().tobytes() + str(tuple(ids.shape)).encode()
                           + (b"" if mask is None else mask.cpu().numpy().tobytes())).hexdigest()
        if key not in self.cache:
            self.cache[key] = fisher_skip_costs(self.hf, ids, self.samples, self.seed, mask, sublayers=True)
        return self.cache[key]


def oracle_method(hf: Any, block_sparsity: list[float], samples: int, seed: int = 0, memo: SkipCostMemo | None = None) -> M.Method:
    """The routed model at ``block_sparsity`` routed by :func:`oracle_scores` of each scored batch
    (from ``memo`` when given)."""
    bank = OracleScores(int(hf.config.num_hidden_layers))
    method = M.routed(hf, ORACLE_TITLE, "oracle", block_sparsity, bank)
    forward = method.forward

    def scored(ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if memo is not None:
            bank.scores = torch.log(memo(ids, mask)[:, 2].clamp_min(1e-30))
        else:
            bank.scores = oracle_scores(hf, ids, samples, seed, mask)
        try:
            return forward(ids, mask)
        finally:
            bank.scores = None

    return dataclasses.replace(method, forward=scored, decoder=None, decode_note="prefill only: a decoded token's cost needs its future")
