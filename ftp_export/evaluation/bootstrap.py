"""Standard errors by paired bootstrap over perplexity windows and task items.

Every row of an evaluation is scored on the same windows and the same items, so one set of
resamples serves them all: resample r draws the windows (and, independently, each task's items)
with replacement once, and every row's statistic in resample r is computed on that draw. A
difference between two rows (FTP minus a baseline, a row against dense in retention) is then
computed inside each resample, which pairs it: what the two rows share cancels, and only the
per-window / per-item disagreement shows in its standard error.

The draws are multinomial counts ``[R, n]`` (how often each unit is drawn in each resample), so a
statistic of all resamples is one matrix product. Seeded per stream (windows, each task by name),
so the same seed and sizes give the same standard errors whatever else is evaluated.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

#: Resamples by default: the standard error of a standard error from R resamples is about
#: SE / sqrt(2 R), 2% at 1000.
RESAMPLES = 1000


def _counts(n: int, resamples: int, seed: int, stream: str) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(stream.encode())])
    if n == 0:
        return np.zeros((resamples, 0))
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)


class Resampler:
    """The shared bootstrap draws of one evaluation: ``windows`` perplexity windows and, per
    task, its number of items."""

    def __init__(self, windows: int, items: dict[str, int], resamples: int = RESAMPLES, seed: int = 0) -> None:
        if resamples < 2:
            raise ValueError("the bootstrap needs at least 2 resamples")
        self.resamples = resamples
        self.windows = _counts(windows, resamples, seed, "windows")
        self.items = {task: _counts(n, resamples, seed, f"items/{task}") for task, n in items.items()}

    def window_ratio(self, numerator: Sequence[float], denominator: Sequence[float]) -> np.ndarray:
        """sum(numerator) / sum(denominator) over each resample's windows: [R] (e.g. NLL per token)."""
        num, den = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
        return (self.windows @ num) / np.maximum(self.windows @ den, 1e-300)

    def item_mean(self, task: str, values: Sequence[float]) -> np.ndarray:
        """Mean of ``values`` (one per item of ``task``) over each resample's items: [R]."""
        c = self.items[task]
        return (c @ np.asarray(values, np.float64)) / max(c.shape[1], 1)


def standard_error(replicates: np.ndarray | None) -> float | None:
    """Standard deviation of the bootstrap replicates; None when any is not finite (a ratio to
    a resampled 0, e.g. retention of a task where dense scored 0 in some resample)."""
    if replicates is None:
        return None
    r = np.asarray(replicates, np.float64)
    if r.size < 2 or not np.all(np.isfinite(r)):
        return None
    return float(r.std(ddof=1))


def safe_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b elementwise, inf/nan (not warnings) where b is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(a, np.float64) / np.asarray(b, np.float64)
