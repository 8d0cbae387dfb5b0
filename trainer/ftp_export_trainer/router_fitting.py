"""Step 2a: fit each block's router to rank tokens by their skip cost (:mod:`.skip_costs`).

Top-k only uses the order of scores within a sequence, so each routed block's MLP is fitted
by least squares to the per-sequence-centred log skip cost of its tokens: the tokens that are
most expensive to skip get the highest scores and are computed first.

The router's inputs depend on what earlier blocks computed (the attention factor comes from
the previous computed block), so blocks are fitted in order inside one hard-routed forward
pass over the calibration windows: when block b asks for scores, its router is fitted on the
factors it is given - those of the routing blocks 0..b-1 already use - and the fitted scores
route block b. The sparsity factor is drawn uniformly from [0, 1) while fitting: skip costs are
measured on the dense model and do not depend on s_b, so the router learns to ignore it and
its order stays valid when step 3 moves the block sparsities.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ftp_export.routed.model import RoutedCausalLM
from ftp_export.routing.factors import FEATURES
from ftp_export.routing.router import RouterBank, static_router_bank
from ftp_export.schedule import new_schedule


@dataclass
class RouterFitConfig:
    steps: int = 400
    lr: float = 1e-2
    init_scale: float = 0.3


def centred_log_cost(cost: torch.Tensor) -> torch.Tensor:
    """log(cost) minus its per-sequence mean [N, T]; costs below 1e-9 of the sequence maximum
    are clamped there so that exact zeros do not dominate the fit."""
    floor = cost.amax(dim=-1, keepdim=True).clamp(min=1e-30) * 1e-9
    y = torch.log(torch.maximum(cost, floor))
    return y - y.mean(dim=-1, keepdim=True)


def fit_router(router: nn.Module, features: torch.Tensor, cost: torch.Tensor, cfg: RouterFitConfig, seed: int) -> float:
    """Fit one router in place on ``features`` [N, T, 4] to ``cost`` [N, T]; returns the
    fraction of the target's variance it explains."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in router.parameters():
            p.copy_((torch.randn(p.shape, generator=gen) * cfg.init_scale).to(p.device))
    x = features.detach().float().clone()
    x[..., FEATURES.index("sparsity")] = torch.rand(x.shape[:-1], generator=gen).to(x.device)
    y = centred_log_cost(cost.float())
    opt = torch.optim.Adam(router.parameters(), lr=cfg.lr)
    with torch.enable_grad():
        for _ in range(cfg.steps):
            pred = router(x)
            loss = (pred - pred.mean(dim=-1, keepdim=True) - y).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return float(1.0 - loss.detach() / y.var(unbiased=False).clamp(min=1e-12))


class _FitInOrder(nn.Module):
    """Stands in for the RouterBank during the fitting pass: fits block b when it is asked to score it."""

    def __init__(self, bank: RouterBank, costs: torch.Tensor, cfg: RouterFitConfig, seed: int, done: Callable[[int, float], None]) -> None:
        super().__init__()
        self.bank, self.costs, self.cfg, self.seed, self.done = bank, costs, cfg, seed, done

    def forward(self, block: int, features: torch.Tensor) -> torch.Tensor:
        explained = fit_router(self.bank.blocks[block], features, self.costs[block], self.cfg, self.seed + block)
        self.done(block, explained)
        return self.bank(block, features).detach()


@torch.no_grad()
def fit_routers(
    hf: Any,
    block_sparsity: list[float],
    costs: torch.Tensor,
    data: torch.Tensor,
    cfg: RouterFitConfig,
    seed: int,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[RouterBank, list[float | None]]:
    """Routers for ``block_sparsity`` fitted to ``costs`` [blocks, N, T] of ``data`` [N, T].

    Returns the bank (eval mode; unrouted blocks keep the static router) and, per block, the
    fraction of log-cost variance the fit explains (None for unrouted blocks)."""
    n = int(hf.config.num_hidden_layers)
    bank = static_router_bank(n).to(data.device).float()
    explained: list[float | None] = [None] * n

    def done(block: int, value: float) -> None:
        explained[block] = value
        if progress:
            progress(block, value)

    model = RoutedCausalLM(hf, new_schedule(hf.config, block_sparsity, routers=bank))
    model.routers = _FitInOrder(bank, costs, cfg, seed, done)
    model(data, mode="prefill")
    return bank.eval(), explained
