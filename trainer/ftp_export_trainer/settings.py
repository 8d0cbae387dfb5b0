"""``ftp-train``'s settings (one field per command-line flag) and their checks."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from ftp_export.devices import resolve_device, torch_dtype
from ftp_export.errors import FTPError
from ftp_export.routing.router import KINDS
from ftp_export_trainer import distributed as dist
from ftp_export_trainer.ga import GAConfig
from ftp_export_trainer.losses import DEFAULT_WEIGHTS
from ftp_export_trainer.router_fitting import RouterFitConfig
from ftp_export_trainer.router_training import RouterTrainConfig


@dataclass
class Settings:
    """Every ``ftp-train`` flag (``--held-out-samples`` -> ``held_out_samples``); ``--help`` says
    what each does. Where a step's own config has the same default, it is the one source."""

    model: str | None = None
    sparsity: float = 0.4
    data: str | None = None
    text_field: str = "text"
    txt_mode: str = "lines"
    output: str = "schedule.json"
    seed: int = 0
    samples: int = 32
    held_out_samples: int = 16
    seq_len: int = 128
    batch_size: int = 8
    generations: int = 5
    population: int = GAConfig.population
    elite: int = GAConfig.elite
    max_block_sparsity: float = 1.0
    cost_samples: int = 4
    router: str = "factors"  # "hidden": the router also reads a projection of the block's normalised input
    router_rank: int = 0  # --router hidden: the projection's rank (0: DEFAULT_ROUTER_RANK)
    skip_adapter: int | str = "auto"  # rank of the adapter for skipped tokens (0: none; "auto": the largest within the budget)
    fit_steps: int = RouterFitConfig.steps
    fit_all_blocks: bool = False  # step 2a fits every free block's router, not only step 1's routed ones
    router_steps: int = RouterTrainConfig.steps
    router_batch: int = RouterTrainConfig.batch_size
    router_lr: float = 3e-3
    temperature: float = RouterTrainConfig.temperature
    distill_weight: float = DEFAULT_WEIGHTS["distill"]
    guide_weight: float = DEFAULT_WEIGHTS["guide"]
    sparsity_weight: float = DEFAULT_WEIGHTS["sparsity"]
    calib_samples: int = 128  # windows per context length for the decode thresholds (ftp-export calibrate: 256)
    calib_max_context: int = 0  # 0: the model's limit, at most 2048
    calib_decode_tokens: int = 2  # tokens decoded per calibration window
    route_first_block: bool = False
    influence_seeds: bool = True
    greedy_seeds: bool = True
    removal_samples: int = 8
    validation_samples: int = 16
    select_every: int = RouterTrainConfig.select_every
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 0
    resume: bool = False
    evaluate: bool = True
    progress: bool = True

    def result_keys(self) -> dict[str, Any]:
        """Settings that change the result (a resumed run must match them)."""
        skip = {"output", "resume", "evaluate", "progress", "device", "threads"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


POSITIVE = ("samples", "seq_len", "population", "held_out_samples", "batch_size", "router_batch", "calib_samples", "cost_samples",
            "removal_samples", "calib_decode_tokens")


def validate(s: Settings) -> None:
    """One :class:`FTPError` line for the first bad setting, before any work."""
    if not (0.0 < s.sparsity < 1.0):
        raise FTPError(f"--sparsity {s.sparsity}: must be in (0, 1)")
    torch_dtype(s.dtype)
    resolve_device(s.device)
    for name in POSITIVE:
        if getattr(s, name) < 1:
            raise FTPError(f"--{name.replace('_', '-')} must be >= 1")
    if s.seq_len < 4:
        raise FTPError("--seq-len must be >= 4")
    if s.generations < 0 or s.router_steps < 0 or s.fit_steps < 0 or s.validation_samples < 0:
        raise FTPError("--generations, --fit-steps, --router-steps and --validation-samples must be >= 0")
    if not (0.0 < s.max_block_sparsity <= 1.0):
        raise FTPError("--max-block-sparsity must be in (0, 1]")
    if s.calib_max_context != 0 and s.calib_max_context < 2:
        raise FTPError(f"--calib-max-context {s.calib_max_context}: must be >= 2 (or 0: the model's limit, at most 2048)")
    if s.threads < 0:
        raise FTPError(f"--threads {s.threads}: must be >= 0 (0: half the cores per process)")
    if s.router not in KINDS:
        raise FTPError(f"--router {s.router}: expected factors or hidden")
    if s.router_rank < 0 or (s.router_rank and s.router != "hidden"):
        raise FTPError(f"--router-rank {s.router_rank}: a rank >= 1 for --router hidden (0: the default)")
    if s.skip_adapter != "auto" and (not isinstance(s.skip_adapter, int) or s.skip_adapter < 0):
        raise FTPError(f"--skip-adapter {s.skip_adapter}: must be auto or a rank >= 0 (0: no adapter)")


def default_threads() -> int:
    """Half the cores per process (at least 1): on a shared or oversubscribed CPU, spinning
    OpenMP threads can make small matmuls ~50x slower than one thread."""
    return max(1, (os.cpu_count() or 1) // (2 * dist.world()))


def free_blocks(n: int, sparsity: float, route_first: bool, upper: float) -> list[int]:
    """The blocks the search may route (block 0 only with ``--route-first-block``), or one error
    line when the mean sparsity cannot fit under the per-block cap."""
    free = list(range(n)) if route_first else list(range(1, n))
    if not free or sparsity * n > upper * len(free) + 1e-9:
        need = 1 + int(sparsity * n / upper) + (0 if route_first else 1)
        raise FTPError(
            f"model has {n} blocks: mean sparsity {sparsity} with {len(free)} routed block(s) capped at "
            f"{upper} is impossible; the schedule needs at least {need} blocks (lower --sparsity, or --route-first-block)"
        )
    return free


def uniform_sparsity(n: int, sparsity: float, free: list[int]) -> list[float]:
    """The even spread the search starts from: ``sparsity * n`` shared by the ``free`` blocks."""
    uniform = [0.0] * n
    for b in free:
        uniform[b] = sparsity * n / len(free)
    return uniform


DEFAULT_ROUTER_RANK = 1  # step 2a sets one row (the ridge direction); scripts/skip_cost_predictors.py


def router_shape(s: Settings, config: Any) -> tuple[int, int]:
    """(hidden-state rank, model width) of the routers ``--router`` / ``--router-rank`` ask for on a model
    with ``config``: (0, 0) for the four-factor router; one error line when the rank does not fit the
    0.5% FLOP budget (ftp_export/flops.py)."""
    from ftp_export.flops import check_router_budget, max_router_rank
    from ftp_export.routing.router import RouterBank

    if s.router != "hidden":
        return 0, 0
    size = int(config.hidden_size)
    rank = s.router_rank or min(DEFAULT_ROUTER_RANK, max_router_rank(config))
    if rank < 1:
        raise FTPError("--router hidden: no hidden-state projection fits in 0.5% of this model's block FLOPs; use --router factors")
    check_router_budget(config, RouterBank(1, state_rank=rank, state_size=size))
    return rank, size


def bank_shape(s: Settings, config: Any) -> tuple[int, int, int, int]:
    """(hidden-state rank, its width, skip-adapter rank, its width) of the routers the settings ask
    for (:func:`router_shape` plus ``--skip-adapter``; ``auto``: the largest adapter rank that
    fits beside the router, none on a model too small for one); one error line when router and
    adapter together do not fit the 0.5% FLOP budget."""
    from ftp_export.flops import check_router_budget, max_adapter_rank
    from ftp_export.routing.router import RouterBank

    state = router_shape(s, config)
    rank = max_adapter_rank(config, *state) if s.skip_adapter == "auto" else int(s.skip_adapter)
    if not rank:
        return (*state, 0, 0)
    size = int(config.hidden_size)
    check_router_budget(config, RouterBank(1, state_rank=state[0], state_size=state[1], adapter_rank=rank, adapter_size=size))
    return (*state, rank, size)
