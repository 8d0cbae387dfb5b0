"""GA pieces: constraint repair and determinism/resumability of the search loop."""

import numpy as np
import pytest

from ftp_export_trainer.ga import GAConfig, GAState, init_state, repair, run_ga


@pytest.mark.parametrize("seed", range(5))
def test_repair_restores_mean_and_bounds(seed):
    rng = np.random.default_rng(seed)
    free = [1, 2, 3, 4, 5]
    x = repair(rng.normal(0.4, 0.5, 6), free, 0.4 * 6, 0.9)
    assert x[0] == 0.0
    assert np.all(x[free] >= 0) and np.all(x[free] <= 0.9)
    assert x.sum() == pytest.approx(2.4, abs=1e-9)


def test_repair_impossible():
    with pytest.raises(ValueError):
        repair(np.zeros(3), [1, 2], 2.0, 0.9)


def _fitness(genomes):
    target = np.array([0.0, 0.2, 0.5, 0.9])
    return [float(((np.array(g) - target) ** 2).sum()) for g in genomes]


def _search(cfg, stop_after=None):
    uniform = [0.0, 0.4 * 4 / 3] * 1 + [0.4 * 4 / 3] * 2
    state, pending = init_state(uniform, [1, 2, 3], 1.6, cfg, seed=7)
    saved = []

    def on_gen(st):
        saved.append(GAState.from_json(__import__("json").loads(__import__("json").dumps(st.to_json()))))
        if stop_after is not None and st.generation == stop_after:
            raise KeyboardInterrupt

    try:
        return run_ga(state, pending, [1, 2, 3], 1.6, cfg, _fitness, on_gen), saved
    except KeyboardInterrupt:
        return None, saved


def test_ga_improves_keeps_constraint_and_resumes_identically():
    cfg = GAConfig(population=6, generations=6, elite=2)
    full, _ = _search(cfg)
    assert full.history[-1]["best"] <= full.history[0]["best"]
    best, _ = full.best()
    assert sum(best) == pytest.approx(1.6) and best[0] == 0.0
    _, saved = _search(cfg, stop_after=3)
    resumed = run_ga(saved[-1], None, [1, 2, 3], 1.6, cfg, _fitness)
    assert resumed.population == full.population and resumed.fitness == full.fitness


def test_influence_seeds_fill_the_least_influential_blocks_first():
    from ftp_export_trainer.ga import influence_seeds

    influence = [0.9, 0.30, 0.05, 0.10, 0.20, 0.40]
    greedy, mid = influence_seeds(influence, [1, 2, 3, 4, 5], 2.4, 0.9)
    assert greedy == pytest.approx([0.0, 0.0, 0.9, 0.9, 0.6, 0.0])  # blocks 2, 3 full, the rest on block 4
    assert mid == pytest.approx([0.0, 0.24, 0.69, 0.69, 0.54, 0.24])
    assert sum(mid) == pytest.approx(2.4)
    cfg = GAConfig(population=4, upper=0.9)
    _, pending = init_state([0.0] + [0.48] * 5, [1, 2, 3, 4, 5], 2.4, cfg, seed=0, seeds=[greedy, mid])
    assert pending[1:3] == [pytest.approx(greedy), pytest.approx(mid)] and len(pending) == 4


def test_repair_snaps_slivers_and_adds_only_to_blocks_that_skip():
    # block 2's 0.003 would skip ~1 token of 512: it becomes 0; the missing sparsity goes to
    # blocks 1 and 4, which already skip tokens, not to the empty blocks 3 and 5
    x = repair(np.array([0.0, 0.5, 0.003, 0.0, 0.3, 0.0]), [1, 2, 3, 4, 5], 1.0, 0.99, snap=0.01)
    assert x.tolist() == pytest.approx([0.0, 0.6, 0.0, 0.0, 0.4, 0.0])
    assert x.sum() == pytest.approx(1.0, abs=1e-12)
    # when every skipping block is full, the rest still reaches the total exactly
    y = repair(np.array([0.0, 0.99, 0.0, 0.0]), [1, 2, 3], 1.2, 0.99, snap=0.01)
    assert y[1] == pytest.approx(0.99) and y.sum() == pytest.approx(1.2, abs=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_swap_exchanges_two_blocks_and_keeps_the_total(seed):
    from ftp_export_trainer.ga import _swap

    x = np.array([0.0, 0.99, 0.99, 0.0, 0.42, 0.0])
    y = _swap(np.random.default_rng(seed), x, [1, 2, 3, 4, 5], 0.99)
    changed = np.flatnonzero(y != x)
    assert len(changed) == 2 and sorted(y) == sorted(x)
    assert x[changed[0]] != x[changed[1]]


def test_swap_mutation_moves_a_dropped_block_gaussian_noise_does_not():
    # fitness: blocks 1 and 2 are the right ones to (almost) drop, the seed drops 1 and 3
    free, total, upper = [1, 2, 3, 4], 1.98, 0.99
    target = np.array([0.0, 0.99, 0.99, 0.0, 0.0])

    def fitness(genomes):
        return [float(np.abs(np.array(g) - target).sum()) for g in genomes]

    seed = [0.0, 0.99, 0.0, 0.99, 0.0]
    results = {}
    for rate in (0.0, 0.3):
        cfg = GAConfig(population=6, generations=6, elite=2, upper=upper, swap_rate=rate)
        state, pending = init_state(seed, free, total, cfg, seed=3, seeds=[seed] * 5)
        results[rate] = run_ga(state, pending, free, total, cfg, fitness).best()[1]
    assert results[0.3] == pytest.approx(0.0, abs=1e-9)
    assert results[0.0] > 0.5


def test_greedy_removal_judges_blocks_together():
    from ftp_export_trainer.block_search import greedy_removal_order

    # removing 2 or 3 alone costs little, but together they cost much (e.g. two halves of one
    # circuit); a one-at-a-time ranking (ShortGPT's) would remove both
    single = {1: 0.3, 2: 0.1, 3: 0.2, 4: 0.35}

    def score(sets):
        return [sum(single[b] for b in s) + (5.0 if {2, 3} <= set(s) else 0.0) for s in sets]

    order, kls = greedy_removal_order(score, [1, 2, 3, 4], 3)
    assert order == [2, 1, 4] and kls == pytest.approx([0.1, 0.4, 0.75])
    # later rounds try only the `pool` cheapest of the previous round
    sizes = []
    order, _ = greedy_removal_order(lambda sets: sizes.append(len(sets)) or score(sets), [1, 2, 3, 4], 3, pool=2)
    assert sizes == [4, 2, 2] and order == [2, 1, 4]
    with pytest.raises(ValueError):
        greedy_removal_order(score, [1, 2], 3)
