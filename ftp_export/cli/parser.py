"""What every command line of the project shares: one-line argument errors and one ``main`` wrapper.

User errors (bad arguments, bad files, :class:`~ftp_export.errors.FTPError`) print one line
``error: ...`` on stderr and exit 2; Ctrl-C exits 130 with one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ftp_export.errors import FTPError


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
    """Run ``command(argv)``; FTPError -> one line, exit 2; an interrupt -> one line, exit 130.
    ``interrupted`` may name ``{exc}``."""
    try:
        return command(argv)
    except FTPError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except interrupts as exc:
        print(f"error: {interrupted.format(exc=exc)}", file=sys.stderr)
        return 130
