"""Wall-clock timing of a dense and a routed callable in one process: alternating, so a change of
the machine's load falls on both sides (a 2-core CPU's dense step moved by 35% within one run).

Decode is interleaved step by step (:func:`time_steps_interleaved`), not run by run: on the shared
2-core machine a slow phase lasts about as long as one side's run of 16 steps (0.5-1 s), so
alternating whole runs left the median to chance (a routed 512-token decode run of 20 iterations
took 33-43 ms a step while the dense one beside it took 44-55 ms)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

import torch

Stats = tuple[float, float, float]  # median, min, max (ms)


def stats(samples: list[float]) -> Stats:
    return statistics.median(samples), min(samples), max(samples)


def time_once(fn: Callable[[], Any], device: str = "cpu") -> float:
    """Milliseconds of one call: CUDA events on a CUDA device (the host does not wait on each
    kernel), ``perf_counter`` elsewhere."""
    if str(device).startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def time_interleaved(dense: Callable[[], Any], routed: Callable[[], Any], warmup: int, iters: int, device: str = "cpu") -> tuple[Stats, Stats]:
    """Milliseconds of ``dense`` and ``routed``, alternating (and alternating which goes first)."""
    for _ in range(warmup):
        dense()
        routed()
    samples: dict[str, list[float]] = {"dense": [], "routed": []}
    for i in range(iters):
        order = [("dense", dense), ("routed", routed)]
        for name, fn in order if i % 2 == 0 else order[::-1]:
            samples[name].append(time_once(fn, device))
    return stats(samples["dense"]), stats(samples["routed"])


class Stepper(Protocol):
    """A run of consecutive steps with state (a decode: its KV cache); ``reset`` restores the start."""

    def reset(self) -> None: ...

    def step(self, i: int) -> Any: ...


def time_steps_interleaved(dense: Stepper, routed: Stepper, steps: int, warmup: int, iters: int, device: str = "cpu") -> tuple[Stats, Stats]:
    """Milliseconds per step of two step-wise runs, interleaved step by step: each iteration resets
    both sides (untimed), then runs step i of one side right after step i of the other, alternating
    which goes first by step and iteration, so a load change falls on the same steps of both. A
    side's figure for an iteration is the sum of its steps' times / ``steps``; median, min and max
    over ``iters`` iterations after ``warmup`` untimed ones. On CUDA each step is bracketed by
    events and the host synchronizes once per iteration, not per step (a sync per step would
    stall the side whose steps do not sync anyway: the dense one)."""
    sides = {"dense": dense, "routed": routed}
    for _ in range(warmup):
        for side in sides.values():
            side.reset()
            for i in range(steps):
                side.step(i)
    cuda = str(device).startswith("cuda")
    per_step: dict[str, list[float]] = {"dense": [], "routed": []}
    for it in range(iters):
        for side in sides.values():
            side.reset()
        total = dict.fromkeys(sides, 0.0)
        events: dict[str, list[tuple[Any, Any]]] = {name: [] for name in sides}
        for i in range(steps):
            order = list(sides.items())
            for name, side in order if (i + it) % 2 == 0 else order[::-1]:
                if cuda:
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    side.step(i)
                    end.record()
                    events[name].append((start, end))
                else:
                    total[name] += time_once(partial(side.step, i), device)
        if cuda:
            torch.cuda.synchronize()
            total = {name: sum(s.elapsed_time(e) for s, e in pairs) for name, pairs in events.items()}
        for name, t in total.items():
            per_step[name].append(t / steps)
    return stats(per_step["dense"]), stats(per_step["routed"])
