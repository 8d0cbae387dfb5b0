"""Elapsed time of a long export step: on a terminal a ticking ``label: 12 s`` line on stderr while
it runs, then (anywhere) one ``label in 12.3 s`` line through the job's log. Quiet when stderr is
not a terminal (pipes, CI, tests), apart from that last line."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO


@contextmanager
def elapsed(
    label: str, log: Callable[[str], None], stream: TextIO | None = None, interval: float = 1.0
) -> Iterator[Callable[[str], None]]:
    """Show the time spent in the ``with`` body, which gets a ``log`` that first clears the ticking
    line; the final line is logged only when the body succeeds."""
    stream = stream if stream is not None else sys.stderr
    start = time.monotonic()
    stop = threading.Event()
    lock = threading.Lock()
    ticking = stream.isatty()

    def clear() -> None:
        if ticking:
            stream.write("\r\033[K")
            stream.flush()

    def say(message: str) -> None:
        with lock:
            clear()
            log(message)

    def tick() -> None:
        while not stop.wait(interval):
            with lock:
                stream.write(f"\r      {label}: {time.monotonic() - start:.0f} s")
                stream.flush()

    ticker = threading.Thread(target=tick, name="ftp-export-elapsed", daemon=True) if ticking else None
    if ticker is not None:
        ticker.start()
    try:
        yield say
    finally:
        stop.set()
        if ticker is not None:
            ticker.join()
            clear()
    log(f"      {label} in {time.monotonic() - start:.1f} s")
