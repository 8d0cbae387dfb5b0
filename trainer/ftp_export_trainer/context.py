"""What every training step works with (:class:`Context`), progress bars, and rank-sharded scoring."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from ftp_export.routing.router import RouterBank, static_router_bank
from ftp_export_trainer import distributed as dist
from ftp_export_trainer.checkpoints import Checkpoints
from ftp_export_trainer.data import CalibrationData
from ftp_export_trainer.settings import Settings


@dataclass
class Context:
    settings: Settings
    hf: Any
    data: CalibrationData
    reference: torch.Tensor  # dense logits of the calibration windows
    free: list[int]
    n: int
    ckpt: Checkpoints
    log: Callable[[str], None]
    influence: list[float]  # ShortGPT block influence on the calibration windows
    removal: dict[str, list] | None = None  # greedy KL block-removal order (GA seeds), see block_search
    # hidden-state rank and width of the routers (0, 0: four factors), skip-adapter rank and width (0, 0: none)
    router_shape: tuple[int, int, int, int] = (0, 0, 0, 0)
    skip_costs: Any = None  # step 2a's per-token skip costs of the calibration windows, once measured

    def static_routers(self) -> RouterBank:
        """The position-priority routers of the kind ``--router`` asks for, with the identity skip
        adapter ``--skip-adapter`` asks for, on the data's device."""
        rank, size, adapter, width = self.router_shape
        bank = static_router_bank(self.n, state_rank=rank, state_size=size, adapter_rank=adapter, adapter_size=width)
        return bank.to(self.data.train.device)

    def bar(self, total: int, desc: str) -> tqdm:
        """A progress bar, shown on rank 0 unless ``--no-progress``."""
        return tqdm(total=total, desc=desc, disable=not (self.settings.progress and dist.is_main()), leave=False, dynamic_ncols=True)


def sharded(bar: tqdm, one: Callable[[Any], float]) -> Callable[[list[Any]], list[float]]:
    """Score a list of candidates with ``one``, each rank its share, every rank gets all scores."""

    def evaluate(items: list[Any]) -> list[float]:
        mine = {i: torch.tensor(one(items[i]), dtype=torch.float64) for i in dist.shard(len(items))}
        out = [float(v) for v in dist.gather_items(len(items), mine, torch.zeros((), dtype=torch.float64))]
        bar.update(len(items))
        return out

    return evaluate
