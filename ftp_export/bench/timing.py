"""Wall-clock timing of a dense and a routed callable in one process: alternating, so a change of
the machine's load falls on both sides (a 2-core CPU's dense step moved by 35% within one run)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

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


def time_ms(fn: Callable[[], Any], device: str, warmup: int, iters: int) -> Stats:
    """Median, min and max milliseconds of ``fn`` alone after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    return stats([time_once(fn, device) for _ in range(iters)])


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
