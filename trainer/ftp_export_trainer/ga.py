"""Genetic search over per-block sparsities whose mean equals the target.

A genome is the full per-block sparsity list; blocks not in ``free`` (block 0 unless routed)
stay 0. Every generation keeps the ``elite`` best genomes and fills the population with
children: tournament selection of two parents, uniform or blend crossover, then either a swap
of two blocks' sparsities or Gaussian mutation, then :func:`repair` (bounds [0, upper], no
sparsity below ``snap``, the exact mean). Fitness is minimised.

The swap moves a block's whole share elsewhere in one step: with sparsity concentrated in a
few nearly dropped blocks, *which* blocks matters more than the amounts, and Gaussian noise
followed by repair never moves 0.99 from one block to another.
The state (population, fitness, RNG) is a plain JSON-able dict so that a run can be resumed
after any generation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class GAConfig:
    population: int = 8
    generations: int = 4
    elite: int = 2
    tournament: int = 2
    crossover_rate: float = 0.9
    mutation_rate: float = 0.5  # per gene
    mutation_sigma: float = 0.08
    swap_rate: float = 0.3  # share of children mutated by a swap instead of Gaussian noise
    init_sigma: float = 0.1
    upper: float = 0.9  # max block sparsity (each block in [0, upper])
    snap: float = 0.01  # block sparsities below this become 0 (they skip ~no token, cost a router)


@dataclass
class GAState:
    generation: int
    population: list[list[float]]
    fitness: list[float]
    rng: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    done: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(doc: dict[str, Any]) -> GAState:
        return GAState(**doc)

    def best(self) -> tuple[list[float], float]:
        i = int(np.argmin(self.fitness))
        return list(self.population[i]), float(self.fitness[i])


def repair(genome: np.ndarray, free: list[int], total: float, upper: float, snap: float = 0.0) -> np.ndarray:
    """Clip the free genes to [0, upper], zero those below ``snap``, and shift them until they
    sum to ``total`` exactly (to float rounding); other genes are set to 0. Sparsity to add goes
    to blocks that already skip tokens while any is below ``upper``, so that no block is given
    a sliver of sparsity that skips a token or two."""
    x = np.zeros_like(genome, dtype=np.float64)
    x[free] = np.clip(genome[free], 0.0, upper)
    x[x < snap] = 0.0
    for _ in range(100):
        diff = total - x[free].sum()
        if abs(diff) < 1e-12:
            break
        if diff > 0:
            movable = [i for i in free if 0.0 < x[i] < upper] or [i for i in free if x[i] < upper]
        else:
            movable = [i for i in free if x[i] > 0.0]
        if not movable:
            raise ValueError(f"cannot reach total sparsity {total} with {len(free)} blocks under {upper}")
        x[movable] = np.clip(x[movable] + diff / len(movable), 0.0, upper)
    return x


def order_seeds(order: list[int], n: int, free: list[int], target_sum: float, upper: float) -> list[list[float]]:
    """Two GA starting points from a block order (first = cheapest to remove): the sparsity
    poured into the blocks in that order up to ``upper`` each (a soft form of layer dropping),
    and the midpoint between that and the even spread over the ``n`` blocks' free ones."""
    poured = np.zeros(n, dtype=np.float64)
    left = target_sum
    for b in [b for b in order if b in free]:
        poured[b] = min(upper, left)
        left -= poured[b]
        if left <= 1e-12:
            break
    even = np.zeros(n, dtype=np.float64)
    even[free] = target_sum / len(free)
    return [poured.tolist(), (0.5 * (poured + even)).tolist()]


def influence_seeds(influence: list[float], free: list[int], target_sum: float, upper: float) -> list[list[float]]:
    """:func:`order_seeds` for ShortGPT's order (least influential block first). The GA then
    starts no worse than layer dropping's choice of blocks, which on small models is strong."""
    order = sorted(range(len(influence)), key=lambda i: (influence[i], i))
    return order_seeds(order, len(influence), free, target_sum, upper)


def _tournament(rng: np.random.Generator, fitness: list[float], size: int) -> int:
    picks = rng.choice(len(fitness), size=min(size, len(fitness)), replace=False)
    return int(min(picks, key=lambda i: (fitness[i], i)))


def _swap(rng: np.random.Generator, x: np.ndarray, free: list[int], upper: float) -> np.ndarray:
    """Exchange the sparsities of two free blocks: one drawn with weight = its sparsity, the
    other with weight = its room below ``upper`` among blocks with less sparsity."""
    child = x.copy()
    give = np.array([x[i] for i in free])
    if give.sum() <= 0:
        return child
    i = free[int(rng.choice(len(free), p=give / give.sum()))]
    room = np.array([upper - x[j] if x[j] < x[i] else 0.0 for j in free])
    if room.sum() <= 0:
        return child
    j = free[int(rng.choice(len(free), p=room / room.sum()))]
    child[i], child[j] = x[j], x[i]
    return child


def _child(rng: np.random.Generator, a: np.ndarray, b: np.ndarray, free: list[int], cfg: GAConfig, total: float) -> np.ndarray:
    child = a.copy()
    if rng.random() < cfg.crossover_rate:
        if rng.random() < 0.5:  # uniform crossover
            take = rng.random(len(a)) < 0.5
            child = np.where(take, a, b)
        else:  # blend crossover
            w = rng.random()
            child = w * a + (1 - w) * b
    if rng.random() < cfg.swap_rate:
        child = _swap(rng, repair(child, free, total, cfg.upper, cfg.snap), free, cfg.upper)
    else:
        child = child + rng.normal(0.0, cfg.mutation_sigma, len(a)) * (rng.random(len(a)) < cfg.mutation_rate)
    return repair(child, free, total, cfg.upper, cfg.snap)


def init_state(
    uniform: list[float], free: list[int], target_sum: float, cfg: GAConfig, seed: int, seeds: list[list[float]] = ()
) -> tuple[GAState, list[list[float]]]:
    """Generation 0 genomes - ``uniform`` first, then ``seeds``, then random perturbations of
    ``uniform`` - with fitness still to be evaluated."""
    rng = np.random.default_rng(seed)
    base = np.asarray(uniform, dtype=np.float64)
    pop = [repair(base, free, target_sum, cfg.upper, cfg.snap)]
    pop += [repair(np.asarray(g, dtype=np.float64), free, target_sum, cfg.upper, cfg.snap) for g in seeds][: cfg.population - 1]
    while len(pop) < cfg.population:
        pop.append(repair(base + rng.normal(0.0, cfg.init_sigma, len(base)), free, target_sum, cfg.upper, cfg.snap))
    genomes = [p.tolist() for p in pop]
    return GAState(generation=-1, population=[], fitness=[], rng=rng.bit_generator.state), genomes


def run_ga(
    state: GAState,
    pending: list[list[float]] | None,
    free: list[int],
    target_sum: float,
    cfg: GAConfig,
    evaluate: Callable[[list[list[float]]], list[float]],
    on_generation: Callable[[GAState], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> GAState:
    """Run generations ``state.generation + 1 .. cfg.generations`` (generation 0 evaluates
    ``pending``). ``on_generation`` is called after each one (checkpointing)."""
    rng = np.random.default_rng()
    rng.bit_generator.state = state.rng
    if state.generation < 0:
        assert pending is not None
        state.population, state.fitness = pending, evaluate(pending)
        state.generation = 0
        _record(state, rng)
        if on_generation:
            on_generation(state)
        if progress:
            progress(0)
    while state.generation < cfg.generations:
        order = sorted(range(len(state.fitness)), key=lambda i: (state.fitness[i], i))
        elite = order[: cfg.elite]
        pop = [np.asarray(state.population[i]) for i in range(len(state.population))]
        children = []
        while len(elite) + len(children) < cfg.population:
            a = pop[_tournament(rng, state.fitness, cfg.tournament)]
            b = pop[_tournament(rng, state.fitness, cfg.tournament)]
            children.append(_child(rng, a, b, free, cfg, target_sum).tolist())
        child_fit = evaluate(children) if children else []
        state.population = [state.population[i] for i in elite] + children
        state.fitness = [state.fitness[i] for i in elite] + child_fit
        state.generation += 1
        _record(state, rng)
        if on_generation:
            on_generation(state)
        if progress:
            progress(state.generation)
    state.done = True
    return state


def _record(state: GAState, rng: np.random.Generator) -> None:
    state.rng = rng.bit_generator.state
    state.history.append(
        {"generation": state.generation, "best": float(min(state.fitness)), "mean": float(np.mean(state.fitness))}
    )
