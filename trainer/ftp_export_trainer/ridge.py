"""Step 2a for routers that see the token: the hidden-state direction that predicts skip costs.

On SmolLM2-135M (scripts/skip_cost_predictors.py, docs/routing.md "Router") a rank-r projection of
the normalised hidden state trained jointly with the router MLP by gradient descent fits the
calibration windows' log skip costs almost exactly (explained variance 0.99) and predicts held-out
windows worse than the four factors alone: 4096 tokens do not pin down r x D parameters. Ridge
regression on the whole hidden state, its penalty chosen by cross-validation over the windows,
generalises. So step 2a fixes the projection's first row to the ridge direction (the other rows
start at zero; step 2b may train them all) and fits only the MLP over the factors and that one
feature.
"""

from __future__ import annotations

import torch

PENALTIES = (0.1, 1.0, 10.0, 100.0, 1000.0)  # per token, on standardised inputs
FOLDS = 4


def _centre(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(dim=1, keepdim=True)


def _solve(x: torch.Tensor, y: torch.Tensor, penalty: float) -> torch.Tensor:
    a, b = x.reshape(-1, x.shape[-1]), y.reshape(-1)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    return torch.linalg.solve(a.T @ a + penalty * len(b) * eye, a.T @ b)


def ridge_fit(x: torch.Tensor, y: torch.Tensor, penalties: tuple[float, ...] = PENALTIES) -> tuple[torch.Tensor, float]:
    """Ridge regression of ``y`` [N, T] (per-sequence centred) on ``x`` [N, T, P], both centred per
    sequence (only the order within a sequence matters), inputs standardised; the penalty is the one
    with the least squared error over ``FOLDS`` folds of the N sequences (the middle one when N <
    FOLDS). Returns (weights [P] in ``x``'s units, float64 on the CPU; the penalty)."""
    x = _centre(x.detach().cpu().double())
    y = _centre(y.detach().cpu().double())
    scale = x.reshape(-1, x.shape[-1]).std(0).clamp(min=1e-6)
    x = x / scale
    if len(x) >= FOLDS:
        folds = torch.arange(len(x)) % FOLDS
        errors = [sum(float((x[folds == f] @ _solve(x[folds != f], y[folds != f], lam) - y[folds == f]).square().sum())
                      for f in range(FOLDS)) for lam in penalties]
        penalty = penalties[min(range(len(penalties)), key=errors.__getitem__)]
    else:
        penalty = penalties[len(penalties) // 2]
    return _solve(x, y, penalty) / scale, penalty


def hidden_direction(states: torch.Tensor, features: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """The ridge direction over the hidden states ``states`` [N, T, D] for the centred log costs ``y``
    [N, T], the factors ``features`` [N, T, 4] (position, attention, rank) as covariates, scaled so
    that its projection has unit standard deviation. Returns (direction [D] float32, the projection's
    mean over the tokens, the penalty)."""
    x = torch.cat([states.detach().float(), features.detach().float()[..., :3]], dim=-1)
    w, penalty = ridge_fit(x, y)
    w = w[: states.shape[-1]]
    proj = states.detach().cpu().double() @ w
    std = float(_centre(proj).std().clamp(min=1e-12))
    return (w / std).float(), float(proj.mean()) / std, penalty
