"""The per-block router: a 4 -> 64 -> 1 MLP over the factors of :mod:`.factors` (385 parameters).

Weights are stored in safetensors as ``blocks.{b}.fc1.weight`` [64, 4], ``blocks.{b}.fc1.bias`` [64],
``blocks.{b}.fc2.weight`` [1, 64], ``blocks.{b}.fc2.bias`` [1], float32, for every block b.
"""

from __future__ import annotations

import torch
from torch import nn

from ftp_export.routing.factors import FEATURES

HIDDEN = 64
ARCHITECTURE = {"type": "mlp", "features": list(FEATURES), "hidden": HIDDEN, "activation": "relu"}


class RouterMLP(nn.Module):
    """Scores tokens from their four factors; higher score = more important (computed first)."""

    def __init__(self, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.fc1 = nn.Linear(len(FEATURES), hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` [..., 4] float32 -> scores [...] float32."""
        return self.fc2(torch.relu(self.fc1(features))).squeeze(-1)


class RouterBank(nn.Module):
    """One router per decoder block."""

    def __init__(self, num_blocks: int, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(RouterMLP(hidden) for _ in range(num_blocks))

    def __len__(self) -> int:
        return len(self.blocks)

    def forward(self, block: int, features: torch.Tensor) -> torch.Tensor:
        return self.blocks[block](features)


def static_router_bank(num_blocks: int, hidden: int = HIDDEN) -> RouterBank:
    """Position-priority routers: score = 1 - position factor, so earlier tokens are computed first.

    Early tokens are the ones the most later queries attend to (and attention sinks sit
    there), so they are the last to skip. Expressed as the same MLP so that one router type
    serves static and trained schedules alike, and training starts from it.
    """
    bank = RouterBank(num_blocks, hidden)
    with torch.no_grad():
        for router in bank.blocks:
            router.fc1.weight.zero_()
            router.fc1.bias.zero_()
            router.fc2.weight.zero_()
            router.fc2.bias.zero_()
            router.fc1.weight[0, 0] = -1.0
            router.fc1.bias[0] = 1.0
            router.fc2.weight[0, 0] = 1.0
    return bank.eval()
