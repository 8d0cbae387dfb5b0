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

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ftp_export.routed.model import RoutedCausalLM
from ftp_export.routing.factors import FEATURES
from ftp_export.routing.router import RouterBank, static_router_bank
from ftp_export.schedule import new_schedule
from ftp_export_trainer.ridge import hidden_direction


@dataclass
class RouterFitConfig:
    steps: int = 400
    lr: float = 1e-2
    init_scale: float = 0.3
    # hidden-state routers: "ridge" (the projection's first row is the ridge direction, fixed while
    # the MLP is fitted; :mod:`.ridge`) or "learned" (trained with the MLP: overfits, kept for the record)
    projection: str = "ridge"


def centred_log_cost(cost: torch.Tensor) -> torch.Tensor:
    """log(cost) minus its per-sequence mean [N, T]; costs below 1e-9 of the sequence maximum
    are clamped there so that exact zeros do not dominate the fit."""
    floor = cost.amax(dim=-1, keepdim=True).clamp(min=1e-30) * 1e-9
    y = torch.log(torch.maximum(cost, floor))
    return y - y.mean(dim=-1, keepdim=True)


def fit_router(
    router: nn.Module, features: torch.Tensor, cost: torch.Tensor, cfg: RouterFitConfig, seed: int, states: torch.Tensor | None = None
) -> float:
    """Fit one router in place on ``features`` [N, T, 4] (and, for a hidden-state router, the
    normalised hidden states ``states`` [N, T, D]) to ``cost`` [N, T]; returns the fraction of the
    target's variance it explains. A hidden-state router's projection is the ridge direction
    (``cfg.projection == "ridge"``, :func:`.ridge.hidden_direction`; not trained here) or starts
    small (``init_scale / sqrt(D)``) and is trained with the MLP ("learned")."""
    gen = torch.Generator().manual_seed(seed)
    # a skip adapter is not fitted here: it stays the identity (step 2b trains it)
    fitted = [(name, p) for name, p in router.named_parameters() if not name.startswith("adapter_")]
    with torch.no_grad():
        for name, p in fitted:
            scale = cfg.init_scale / (p.shape[-1] ** 0.5 if name.startswith("proj") else 1.0)
            p.copy_((torch.randn(p.shape, generator=gen) * scale).to(p.device))
    x = features.detach().float().clone()
    x[..., FEATURES.index("sparsity")] = torch.rand(x.shape[:-1], generator=gen).to(x.device)
    extra = () if states is None else (states.detach().float(),)
    y = centred_log_cost(cost.float())
    params = [p for _, p in fitted]
    if states is not None and cfg.projection == "ridge":
        _set_ridge_projection(router, states, features, y)
        params = [p for name, p in fitted if not name.startswith("proj")]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    with torch.enable_grad():
        for _ in range(cfg.steps):
            pred = router(x, *extra)
            loss = (pred - pred.mean(dim=-1, keepdim=True) - y).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return float(1.0 - loss.detach() / y.var(unbiased=False).clamp(min=1e-12))


@torch.no_grad()
def _set_ridge_projection(router: nn.Module, states: torch.Tensor, features: torch.Tensor, y: torch.Tensor) -> None:
    """Projection row 0 = the ridge direction (unit-variance feature), other rows 0; fc1's bias
    absorbs the feature's mean so the MLP sees it centred."""
    direction, mean, _ = hidden_direction(states, features, y)
    router.proj.weight.zero_()
    router.proj.weight[0] = direction.to(router.proj.weight.device)
    column = len(FEATURES)  # the first projected input of fc1
    router.fc1.bias -= router.fc1.weight[:, column] * mean


class _FitInOrder(nn.Module):
    """Stands in for the RouterBank during the fitting pass: fits block b when it is asked to score it
    (a hidden-state bank is given the block's normalised input too, as the bank itself would be)."""

    def __init__(self, bank: RouterBank, costs: torch.Tensor, cfg: RouterFitConfig, seed: int, done: Callable[[int, float], None]) -> None:
        super().__init__()
        self.bank, self.costs, self.cfg, self.seed, self.done = bank, costs, cfg, seed, done
        self.state_rank = bank.state_rank

    def forward(self, block: int, features: torch.Tensor, states: torch.Tensor | None = None) -> torch.Tensor:
        explained = fit_router(self.bank.blocks[block], features, self.costs[block], self.cfg, self.seed + block, states=states)
        self.done(block, explained)
        return self.bank(block, features, states).detach()


@torch.no_grad()
def fit_routers(
    hf: Any,
    block_sparsity: list[float],
    costs: torch.Tensor,
    data: torch.Tensor,
    cfg: RouterFitConfig,
    seed: int,
    progress: Callable[[int, float], None] | None = None,
    static: RouterBank | None = None,
) -> tuple[RouterBank, list[float | None]]:
    """Routers for ``block_sparsity`` fitted to ``costs`` [blocks, N, T] of ``data`` [N, T], of the
    kind of ``static`` (default: the four-factor static routers).

    Returns the bank (eval mode; unrouted blocks keep the static router) and, per block, the
    fraction of log-cost variance the fit explains (None for unrouted blocks)."""
    n = int(hf.config.num_hidden_layers)
    bank = copy.deepcopy(static if static is not None else static_router_bank(n)).to(data.device).float()
    explained: list[float | None] = [None] * n

    def done(block: int, value: float) -> None:
        explained[block] = value
        if progress:
            progress(block, value)

    model = RoutedCausalLM(hf, new_schedule(hf.config, block_sparsity, routers=bank))
    model.routers = _FitInOrder(bank, costs, cfg, seed, done)
    model(data, mode="prefill")
    return bank.eval(), explained
