"""The per-block router: an MLP over the four factors of :mod:`.factors`, optionally also over a
low-rank projection of the token's hidden state (the block's normalised input).

Two router kinds, one class (docs/routing.md, "Router"):

- ``factors`` (the default, 385 parameters a block): ``score = fc2(relu(fc1(f)))``, ``f`` the four
  factors. Safetensors: ``blocks.{b}.fc1.weight`` [64, 4], ``blocks.{b}.fc1.bias`` [64],
  ``blocks.{b}.fc2.weight`` [1, 64], ``blocks.{b}.fc2.bias`` [1].
- ``hidden`` (rank r): ``score = fc2(relu(fc1([f, P x])))`` with ``x`` the block's normalised
  input hidden state (``input_layernorm(h)``) cast to float32 inside the router and ``P`` [r, D]
  (no bias): ``blocks.{b}.proj.weight`` [r, D] and ``fc1.weight`` [64, 4 + r]. Whatever the model's
  dtype, the projection and everything after it are float32, so every exported graph keeps a
  float32 routing path.

Either kind may carry an adapter for the tokens a block skips (``skip_adapter`` rank a > 0;
FlexiDepth, shared/DESIGN.md section 9): a skipped token's hidden state becomes
``h + U silu(A x)`` instead of ``h``, with ``A`` [a, D] and ``U`` [D, a] (no biases) on the same
normalised input ``x`` in float32, the result cast to the model's dtype:
``blocks.{b}.adapter_down.weight`` [a, D], ``blocks.{b}.adapter_up.weight`` [D, a]. ``U`` starts
at zero, so an untrained adapter is the identity (plain skipping). Computed tokens never see it;
every token of a dropped block (sparsity 1) skips it, so gets it.

All tensors float32, for every block b.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ftp_export.routing.factors import FEATURES

HIDDEN = 64
ROUTER_TYPE = "mlp"
# the four-factor router as every schedule has described it (a hidden router adds "inputs" and "hidden_state_rank")
ARCHITECTURE = {"type": ROUTER_TYPE, "features": list(FEATURES), "hidden": HIDDEN, "activation": "relu"}
INPUTS_FACTORS = ["factors"]
INPUTS_HIDDEN = ["factors", "hidden_state"]
KINDS = ("factors", "hidden")  # ftp-train --router
ADAPTER_ACTIVATION = "silu"


class RouterMLP(nn.Module):
    """Scores tokens from their four factors (and, with ``state_rank`` r > 0, a rank-r projection of
    their normalised hidden state of width ``state_size``); higher score = more important."""

    def __init__(self, hidden: int = HIDDEN, state_rank: int = 0, state_size: int = 0, adapter_rank: int = 0, adapter_size: int = 0) -> None:
        super().__init__()
        if state_rank < 0 or (state_rank > 0 and state_size < 1):
            raise ValueError(f"hidden-state rank {state_rank} needs a hidden size >= 1 (got {state_size})")
        if adapter_rank < 0 or (adapter_rank > 0 and adapter_size < 1):
            raise ValueError(f"skip adapter rank {adapter_rank} needs a hidden size >= 1 (got {adapter_size})")
        self.fc1 = nn.Linear(len(FEATURES) + state_rank, hidden)
        self.fc2 = nn.Linear(hidden, 1)
        self.proj = nn.Linear(state_size, state_rank, bias=False) if state_rank else None
        self.adapter_down = nn.Linear(adapter_size, adapter_rank, bias=False) if adapter_rank else None
        self.adapter_up = nn.Linear(adapter_rank, adapter_size, bias=False) if adapter_rank else None

    def forward(self, features: torch.Tensor, states: torch.Tensor | None = None) -> torch.Tensor:
        """``features`` [..., 4] float32, ``states`` [..., D] (any float dtype; hidden routers only)
        -> scores [...] float32."""
        x = features
        if self.proj is not None:
            if states is None:
                raise ValueError("a hidden-state router needs the block's normalised input hidden state")
            x = torch.cat([features, self.proj(states.to(torch.float32))], dim=-1)
        return self.fc2(torch.relu(self.fc1(x))).squeeze(-1)

    def adapt(self, states: torch.Tensor) -> torch.Tensor:
        """The skip adapter's update ``U silu(A x)`` [..., D] float32 of normalised states [..., D]."""
        if self.adapter_down is None or self.adapter_up is None:
            raise ValueError("this router has no skip adapter")
        return self.adapter_up(torch.nn.functional.silu(self.adapter_down(states.to(torch.float32))))


class RouterBank(nn.Module):
    """One router per decoder block, all of one kind (``state_rank`` 0: four factors)."""

    def __init__(
        self, num_blocks: int, hidden: int = HIDDEN, state_rank: int = 0, state_size: int = 0, adapter_rank: int = 0, adapter_size: int = 0
    ) -> None:
        super().__init__()
        self.hidden = hidden
        self.state_rank = state_rank
        self.state_size = state_size if state_rank else 0
        self.adapter_rank = adapter_rank
        self.adapter_size = adapter_size if adapter_rank else 0
        self.blocks = nn.ModuleList(RouterMLP(hidden, state_rank, state_size, adapter_rank, adapter_size) for _ in range(num_blocks))

    def __len__(self) -> int:
        return len(self.blocks)

    @property
    def kind(self) -> str:
        return "hidden" if self.state_rank else "factors"

    def forward(self, block: int, features: torch.Tensor, states: torch.Tensor | None = None) -> torch.Tensor:
        return self.blocks[block](features, states)

    def adapt(self, block: int, states: torch.Tensor) -> torch.Tensor:
        return self.blocks[block].adapt(states)

    def architecture(self) -> dict[str, Any]:
        """The schedule's ``router`` object (without weights and sha256)."""
        doc = dict(ARCHITECTURE)
        if self.state_rank:
            doc.update(hidden=self.hidden, inputs=list(INPUTS_HIDDEN), hidden_state_rank=self.state_rank, hidden_state_size=self.state_size)
        if self.adapter_rank:
            doc["skip_adapter"] = {"rank": self.adapter_rank, "size": self.adapter_size, "activation": ADAPTER_ACTIVATION}
        return doc


def router_bank_from_state(num_blocks: int, tensors: dict[str, torch.Tensor]) -> RouterBank:
    """An (unloaded) bank whose kind and shapes match a router state dict (a checkpoint's)."""
    proj = next((t for k, t in tensors.items() if k.endswith(".proj.weight")), None)
    down = next((t for k, t in tensors.items() if k.endswith(".adapter_down.weight")), None)
    hidden = next((int(t.shape[0]) for k, t in tensors.items() if k.endswith(".fc1.weight")), HIDDEN)
    state = (0, 0) if proj is None else (int(proj.shape[0]), int(proj.shape[1]))
    adapter = (0, 0) if down is None else (int(down.shape[0]), int(down.shape[1]))
    return RouterBank(num_blocks, hidden, *state, *adapter)


def static_router_bank(
    num_blocks: int, hidden: int = HIDDEN, state_rank: int = 0, state_size: int = 0, adapter_rank: int = 0, adapter_size: int = 0
) -> RouterBank:
    """Position-priority routers: score = 1 - position factor, so earlier tokens are computed first.

    Early tokens are the ones the most later queries attend to (and attention sinks sit
    there), so they are the last to skip. Expressed as the same MLP so that one router type
    serves static and trained schedules alike, and training starts from it. A hidden-state
    router's projection starts at zero (its scores equal the four-factor router's exactly). A skip
    adapter starts as the identity: ``U`` zero, ``A`` random (seeded; a zero ``A`` would get no
    gradient either)."""
    bank = RouterBank(num_blocks, hidden, state_rank, state_size, adapter_rank, adapter_size)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for router in bank.blocks:
            for p in router.parameters():
                p.zero_()
            if router.adapter_down is not None:
                router.adapter_down.weight.copy_(torch.randn(router.adapter_down.weight.shape, generator=gen) / adapter_size**0.5)
            router.fc1.weight[0, 0] = -1.0
            router.fc1.bias[0] = 1.0
            router.fc2.weight[0, 0] = 1.0
    return bank.eval()
