"""What every command line of the project shares: one-line argument errors and one ``main`` wrapper.

User errors (bad arguments, bad files, :class:`~ftp_export.errors.FTPError`) print one line
``error: ...`` on stderr and exit 2; Ctrl-C exits 130 and SIGTERM 143, each with one line
(SIGTERM raises :class:`Terminated`, a KeyboardInterrupt, so the same cleanup runs).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable

from ftp_export.errors import FTPError


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is so that ``finally``/``except`` cleanups run as for Ctrl-C."""

    def __str__(self) -> str:
        return "SIGTERM"


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (raised as FTPError) instead of usage + message + exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise FTPError(f"{self.prog}: {message}")


def comma_ints(text: str) -> list[int]:
    """``"512,2048"`` -> ``[512, 2048]``, or one clear error."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise FTPError(f"expected comma-separated integers, got {text!r}") from None


def comma_floats(text: str) -> list[float]:
    """``"0.22,0.4"`` -> ``[0.22, 0.4]``, or one clear error."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise FTPError(f"expected comma-separated numbers, got {text!r}") from None


def run_cli(
    command: Callable[[list[str]], int],
    argv: list[str],
    *,
    interrupts: tuple[type[BaseException], ...] = (KeyboardInterrupt,),
    interrupted: str = "interrupted; nothing was written",
) -> int:
    """Run ``command(argv)``; FTPError -> one line, exit 2; an interrupt -> one line, exit 130
    (143 for SIGTERM, handled as Ctrl-C while ``command`` runs). ``interrupted`` may name ``{exc}``."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    try:
        return command(argv)
    except FTPError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except interrupts as exc:
        message = interrupted.format(exc=exc)
        if isinstance(exc, Terminated) and "{exc}" not in interrupted:
            message += " (SIGTERM)"
        print(f"error: {message}", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    finally:
        if main_thread:  # None: a handler not set from Python; fall back to the default
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
