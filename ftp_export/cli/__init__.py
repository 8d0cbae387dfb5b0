"""The command lines: ``ftp-export`` (this package's :func:`main`) and ``ftp-eval``
(:func:`ftp_export.cli.eval.main`); ``ftp-train`` lives in the trainer and uses :mod:`.parser`.

    ftp-export [--model M] [--schedule S] [--target onnx|trt|compile] [-o DIR]   export (default)
    ftp-export schedule --uniform 0.4 [--model M] -o s40.json                    static schedule
    ftp-export calibrate --schedule S [--model M] -o S2.json                      decode thresholds
    ftp-export bench ...                                                          dense vs routed
    ftp-export eval --model M --schedule S ...                                    accuracy retention
    ftp-export setup [smollm2-135m] [brown]                                       offline eval assets

User errors print one line ``error: ...`` and exit 2; a failed parity check exits 1.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


def _command(name: str) -> Callable[[list[str]], int]:
    # each front end imports its stage only when asked for, so `ftp-export --help` stays fast
    if name in ("export", "schedule", "calibrate"):
        from ftp_export.cli import export as module
    elif name == "bench":
        from ftp_export.cli import bench as module
    else:
        from ftp_export.cli import eval as module
    return getattr(module, f"cmd_{name}")


COMMANDS = ("export", "schedule", "calibrate", "bench", "eval", "setup")


def main(argv: list[str] | None = None) -> int:
    """The ``ftp-export`` console script."""
    from ftp_export.cli.parser import run_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    name = argv[0] if argv and argv[0] in COMMANDS else "export"
    if argv and argv[0] == name:
        argv = argv[1:]
    return run_cli(_command(name), argv)


if __name__ == "__main__":
    sys.exit(main())
