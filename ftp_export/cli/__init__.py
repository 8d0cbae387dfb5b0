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


# every command with its one-line description (`ftp-export --help` lists them)
COMMANDS: dict[str, str] = {
    "export": "export a routed model and check parity against PyTorch (the default command)",
    "schedule": "make a schedule with static (position-priority) routers and calibrated decode thresholds",
    "calibrate": "recalibrate a schedule's decode thresholds (also upgrades format-1 schedules)",
    "bench": "time dense vs routed prefill and decode on one runtime (table, JSON, PNG)",
    "eval": "accuracy retention vs equal-FLOP layer-dropping baselines (perplexity, multiple choice)",
    "setup": "fetch the evaluation model and corpus into the offline cache",
}


def commands_help() -> str:
    """The command list shown by ``ftp-export --help``: one line per command."""
    width = max(map(len, COMMANDS))
    lines = ["commands (ftp-export COMMAND --help for each; without a command, ftp-export exports):"]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


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
