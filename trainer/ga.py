"""Genetic search over per-block sparsities whose mean equals the target.

A genome is the full per-block sparsity list; blocks not in ``free`` (block 0 unless routed)
stay 0. Every generation keeps the ``elite`` best genomes and fills the population with
children: tournament selection of two parents, uniform or blend crossover, Gaussian mutation,
then :func:`repair` (bounds [0, upper] and the exact mean). Fitness is minimised.
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
    init_sigma: float = 0.1
    upper: float = 0.9  # max block sparsity (each block in [0, upper])


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


def repair(genome: np.ndarray, free: list[int], total: float, upper: float) -> np.ndarray:
    """Clip the free genes to [0, upper] and shift them until they sum to ``total`` exactly
    (to float rounding); other genes are set to 0."""
    x = np.zeros_like(genome, dtype=np.float64)
    x[free] = np.clip(genome[free], 0.0, upper)
    for _ in range(100):
        diff = total - x[free].sum()
        if abs(diff) < 1e-12:
            break
        movable = [i for i in free if (x[i] < upper if diff > 0 else x[i] > 0.0)]
        if not movable:
            raise ValueError(f"cannot reach total sparsity {total} with {len(free)} blocks under {upper}")
        x[movable] = np.clip(x[movable] + diff / len(movable), 0.0, upper)
    return x


def influence_seeds(influence: list[float], free: list[int], target_sum: float, upper: float) -> list[list[float]]:
    """Two GA starting points from ShortGPT block influence: the sparsity poured into the
    least influential free blocks up to ``upper`` (a soft form of layer dropping), and the
    midpoint between that and the even spread. The GA then starts no worse than layer
    dropping's choice of blocks, which on small models is a strong schedule."""
    n = len(influence)
    greedy = np.zeros(n, dtype=np.float64)
    left = target_sum
    for b in sorted(free, key=lambda i: (influence[i], i)):
        greedy[b] = min(upper, left)
        left -= greedy[b]
        if left <= 1e-12:
            break
    even = np.zeros(n, dtype=np.float64)
    even[free] = target_sum / len(free)
    return [greedy.tolist(), (0.5 * (greedy + even)).tolist()]


def _tournament(rng: np.random.Generator, fitness: list[float], size: int) -> int:
    picks = rng.choice(len(fitness), size=min(size, len(fitness)), replace=False)
    return int(min(picks, key=lambda i: (fitness[i], i)))


def _child(rng: np.random.Generator, a: np.ndarray, b: np.ndarray, free: list[int], cfg: GAConfig, total: float) -> np.ndarray:
    child = a.copy()
    if rng.random() < cfg.crossover_rate:
        if rng.random() < 0.5:  # uniform crossover
            take = rng.random(len(a)) < 0.5
            child = np.where(take, a, b)
        else:  # blend crossover
            w = rng.random()
            child = w * a + (1 - w) * b
    noise = rng.normal(0.0, cfg.mutation_sigma, len(a)) * (rng.random(len(a)) < cfg.mutation_rate)
    return repair(child + noise, free, total, cfg.upper)


def init_state(
    uniform: list[float], free: list[int], target_sum: float, cfg: GAConfig, seed: int, seeds: list[list[float]] = ()
) -> tuple[GAState, list[list[float]]]:
    """Generation 0 genomes - ``uniform`` first, then ``seeds``, then random perturbations of
    ``uniform`` - with fitness still to be evaluated."""
    rng = np.random.default_rng(seed)
    base = np.asarray(uniform, dtype=np.float64)
    pop = [repair(base, free, target_sum, cfg.upper)]
    pop += [repair(np.asarray(g, dtype=np.float64), free, target_sum, cfg.upper) for g in seeds][: cfg.population - 1]
    while len(pop) < cfg.population:
        pop.append(repair(base + rng.normal(0.0, cfg.init_sigma, len(base)), free, target_sum, cfg.upper))
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
