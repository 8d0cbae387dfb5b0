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
