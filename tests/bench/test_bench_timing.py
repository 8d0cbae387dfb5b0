"""Decode timing interleaves dense and routed step by step, so a load change on the machine falls on
both sides' same steps (the bench's decode ratios on a shared 2-core CPU depend on it)."""

from __future__ import annotations

import pytest

from ftp_export.bench import timing


class FakeClock:
    """``perf_counter`` that advances only when a step runs: ``cost`` x the machine's load, which
    changes (1x to 5x, pseudo-randomly) every two step calls of either side."""

    def __init__(self) -> None:
        self.now, self.calls = 0.0, 0

    def __call__(self) -> float:
        return self.now

    def run(self, cost: float) -> None:
        load = 1 + (self.calls // 2) * 7919 % 5
        self.calls += 1
        self.now += cost * load


class Side:
    def __init__(self, name: str, cost: float, clock: FakeClock, log: list) -> None:
        self.name, self.cost, self.clock, self.log = name, cost, clock, log

    def reset(self) -> None:
        self.log.append((self.name, "reset"))

    def step(self, i: int) -> None:
        self.log.append((self.name, i))
        self.clock.run(self.cost)


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(timing.time, "perf_counter", fake)
    return fake


def test_a_load_change_falls_on_both_sides(clock):
    log: list = []
    dense, routed = Side("dense", 2.0, clock, log), Side("routed", 1.0, clock, log)
    (d, d_lo, d_hi), (r, r_lo, r_hi) = timing.time_steps_interleaved(dense, routed, steps=8, warmup=1, iters=6)
    assert d / r == pytest.approx(2.0)  # the true ratio, though each step's time moved 1x-5x
    assert d_lo / r_lo == pytest.approx(2.0) and d_hi / r_hi == pytest.approx(2.0)
    assert d_hi > d_lo  # the load did change between iterations
    # whole runs alternated instead: the two sides' steps meet different loads
    (d, _, _), (r, _, _) = timing.time_interleaved(lambda: [dense.step(i) for i in range(8)], lambda: [routed.step(i) for i in range(8)], 0, 6)
    assert d / r != pytest.approx(2.0)


def test_each_iteration_resets_both_then_pairs_their_steps(clock):
    log: list = []
    timing.time_steps_interleaved(Side("dense", 1.0, clock, log), Side("routed", 1.0, clock, log), steps=3, warmup=1, iters=2)
    warm = [("dense", "reset"), ("dense", 0), ("dense", 1), ("dense", 2), ("routed", "reset"), ("routed", 0), ("routed", 1), ("routed", 2)]
    assert log[: len(warm)] == warm
    timed = log[len(warm) :]
    resets = [("dense", "reset"), ("routed", "reset")]
    # step i of one side right after step i of the other, the first side alternating by step and iteration
    assert timed == resets + [("dense", 0), ("routed", 0), ("routed", 1), ("dense", 1), ("dense", 2), ("routed", 2)] + resets + [
        ("routed", 0), ("dense", 0), ("dense", 1), ("routed", 1), ("routed", 2), ("dense", 2)]


def test_cuda_steps_are_timed_by_events_with_one_sync_per_iteration(clock, monkeypatch):
    """On CUDA a sync per step would stall the dense side (whose steps do not sync by themselves);
    the events of an iteration are read after one sync."""

    class FakeEvent:
        def __init__(self, enable_timing: bool = False) -> None:
            self.t = None

        def record(self) -> None:
            self.t = clock.now

        def elapsed_time(self, end: FakeEvent) -> float:
            return end.t - self.t

    syncs = []
    monkeypatch.setattr(timing.torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(timing.torch.cuda, "synchronize", lambda *a: syncs.append(clock.calls))
    log: list = []
    (d, _, _), (r, _, _) = timing.time_steps_interleaved(Side("dense", 2.0, clock, log), Side("routed", 1.0, clock, log), steps=8,
                                                         warmup=1, iters=5, device="cuda")
    assert d / r == pytest.approx(2.0)
    assert syncs == [16 + 16 * (k + 1) for k in range(5)]  # after each iteration's 16 steps (warmup: 16 more)
