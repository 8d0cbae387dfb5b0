"""Steps 1 and 3: the genetic sparsity search (static routers, then the trained ones), and the
greedy KL block-removal order that seeds it; checkpointed after every generation."""

from __future__ import annotations

import math
from collections.abc import Callable

from tqdm import tqdm

from ftp_export.routing.router import RouterBank, static_router_bank
from ftp_export_trainer.block_search import POOL, dropped_kl, greedy_removal_order
from ftp_export_trainer.checkpoints import maybe_interrupt
from ftp_export_trainer.context import Context, sharded
from ftp_export_trainer.evaluate import routed_kl, routed_model
from ftp_export_trainer.ga import GAConfig, GAState, influence_seeds, init_state, order_seeds, run_ga


def fitness_fn(ctx: Context, routers: RouterBank | None, bar: tqdm) -> Callable[[list[list[float]]], list[float]]:
    """GA fitness: KL of the hard-routed model to dense, sharded over ranks."""
    s = ctx.settings
    bank = routers if routers is not None else static_router_bank(ctx.n).to(s.device)
    return sharded(bar, lambda genome: routed_kl(routed_model(ctx.hf, genome, bank), ctx.data.train, ctx.reference, s.batch_size))


def _start(ctx: Context, name: str, cfg: GAConfig, seed: int, init: list[float]) -> tuple[GAState, list | None]:
    """The GA state to continue from: the checkpoint with ``--resume``, else a fresh population."""
    s = ctx.settings
    total = s.sparsity * ctx.n
    doc = ctx.ckpt.read_json(f"{name}.json") if s.resume else None
    if doc is not None:
        try:
            state, pending = GAState.from_json(doc["state"]), doc.get("pending")
        except (KeyError, TypeError) as exc:
            raise ctx.ckpt.corrupt(f"{name}.json", str(exc)) from None
        ctx.log(f"{name}: resuming after generation {state.generation}")
        return state, pending
    seeds = order_seeds(ctx.removal["order"], ctx.n, ctx.free, total, s.max_block_sparsity) if ctx.removal else []
    seeds += influence_seeds(ctx.influence, ctx.free, total, s.max_block_sparsity) if s.influence_seeds else []
    state, pending = init_state(init, ctx.free, total, cfg, seed, seeds)
    ctx.ckpt.write_json(f"{name}.json", {"state": state.to_json(), "pending": pending})
    return state, pending


def run_search(ctx: Context, name: str, routers: RouterBank | None, seed: int, init: list[float]) -> GAState:
    """Step 1 (``routers`` None: static) or step 3 (trained routers) genetic search."""
    s = ctx.settings
    cfg = GAConfig(population=s.population, generations=s.generations, elite=min(s.elite, s.population), upper=s.max_block_sparsity)
    state, pending = _start(ctx, name, cfg, seed, init)
    if state.done:
        return state
    remaining = (cfg.generations - max(state.generation, 0)) * (cfg.population - cfg.elite) + (cfg.population if state.generation < 0 else 0)
    with ctx.bar(remaining, f"{name} fitness") as bar:

        def checkpoint(st: GAState) -> None:
            ctx.ckpt.write_json(f"{name}.json", {"state": st.to_json(), "pending": None})
            maybe_interrupt(f"{name}:{st.generation}")

        state = run_ga(state, pending, ctx.free, s.sparsity * ctx.n, cfg, fitness_fn(ctx, routers, bar), on_generation=checkpoint)
    ctx.ckpt.write_json(f"{name}.json", {"state": state.to_json(), "pending": None})
    return state


def removal_order(ctx: Context) -> dict[str, list]:
    """The greedy KL block-removal order over the free blocks, as many blocks as the target
    sparsity fills at the block cap, judged on the first ``--removal-samples`` calibration
    windows (checkpointed: it costs ~blocks + POOL x count forwards of those windows)."""
    s = ctx.settings
    doc = ctx.ckpt.read_json("removal.json") if s.resume else None
    if isinstance(doc, dict) and "order" in doc and "kl" in doc:
        return doc
    count = min(len(ctx.free), math.ceil(s.sparsity * ctx.n / s.max_block_sparsity - 1e-9))
    total = len(ctx.free) + sum(min(POOL, len(ctx.free) - i) for i in range(1, count))
    windows, reference = ctx.data.train[: s.removal_samples], ctx.reference[: s.removal_samples]
    with ctx.bar(total, "block removal order") as bar:
        score = sharded(bar, lambda blocks: dropped_kl(ctx.hf, blocks, windows, reference, s.batch_size))
        order, kls = greedy_removal_order(score, ctx.free, count, POOL)
    doc = {"order": order, "kl": kls}
    ctx.ckpt.write_json("removal.json", doc)
    return doc
