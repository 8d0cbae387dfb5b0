"""``ftp-export`` command line.

    ftp-export [--model M] [--schedule S] [--target onnx|trt|compile] [-o DIR]   export (default)
    ftp-export schedule --uniform 0.4 [--model M] -o s40.json                    static schedule
    ftp-export bench ...                                                          dense vs routed
    ftp-export eval --model M --schedule S ...                                    accuracy retention
    ftp-export setup [smollm2-135m] [brown]                                       offline eval assets

User errors print one line ``error: ...`` and exit 2; a failed parity check exits 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from ftp_export.errors import FTPError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + error
        raise FTPError(f"{self.prog}: {message}")


def _export_parser() -> argparse.ArgumentParser:
    from ftp_export.export.job import DTYPES, TARGETS

    p = _Parser(prog="ftp-export", description="Export a token-routed LLM and check parity against PyTorch.")
    p.add_argument("--model", help="local Hugging Face folder, alias (llama2-7b) or hub id; default: embedded tiny model")
    p.add_argument("--schedule", help="schedule JSON (from ftp-train or ftp-export schedule)")
    p.add_argument("--target", default="onnx", help=f"one of {', '.join(TARGETS)} (default onnx)")
    p.add_argument("-o", "--output", help="output folder (default exported/<model>-<schedule>-<target>)")
    p.add_argument("--atol", type=float, default=1e-4, help="parity tolerance on logits (default 1e-4)")
    p.add_argument("--parity-tokens", type=int, default=16, help="greedy tokens per parity case (default 16)")
    p.add_argument("--dtype", default="float32", help=f"one of {', '.join(DTYPES)}")
    p.add_argument("--device", default="cpu")
    return p


def _schedule_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ftp-export schedule", description="Make a schedule with static (position-priority) routers.")
    p.add_argument("--uniform", type=float, required=True, help="overall sparsity in (0, 1), block 0 kept dense")
    p.add_argument("--model", help="model (default: embedded tiny model)")
    p.add_argument("-o", "--output", required=True, help="schedule JSON to write (router weights go beside it)")
    p.add_argument("--calibration-text", help="UTF-8 text file for decode-threshold calibration (default: packaged sample)")
    p.add_argument("--samples", type=int, default=8, help="calibration sequences (default 8)")
    p.add_argument("--seq-len", type=int, default=96, help="tokens per calibration sequence (default 96)")
    p.add_argument("--device", default="cpu")
    return p


def cmd_export(argv: list[str]) -> int:
    from ftp_export.export.job import ExportRequest, run_export

    a = _export_parser().parse_args(argv)
    req = ExportRequest(
        model=a.model,
        schedule=a.schedule,
        target=a.target,
        output=a.output,
        atol=a.atol,
        parity_tokens=a.parity_tokens,
        dtype=a.dtype,
        device=a.device,
    )
    return run_export(req)


def cmd_schedule(argv: list[str]) -> int:
    from ftp_export.static_schedule import make_uniform_schedule

    a = _schedule_parser().parse_args(argv)
    text = None
    if a.calibration_text:
        path = Path(a.calibration_text)
        if not path.is_file():
            raise FTPError(f"--calibration-text {path}: file not found")
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            raise FTPError(f"--calibration-text {path}: file is empty")
    out = make_uniform_schedule(
        a.model, a.uniform, Path(a.output), text=text, samples=a.samples, seq_len=a.seq_len, device=a.device
    )
    print(f"wrote {out}")
    return 0


def cmd_bench(argv: list[str]) -> int:
    from ftp_export.bench.cli import cmd_bench as run

    return run(argv)


def cmd_eval(argv: list[str]) -> int:
    from ftp_export.evaluation.cli import cmd_eval as run

    return run(argv)


def cmd_setup(argv: list[str]) -> int:
    from ftp_export.evaluation.cli import cmd_setup as run

    return run(argv)


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "export": cmd_export, "schedule": cmd_schedule, "bench": cmd_bench, "eval": cmd_eval, "setup": cmd_setup,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name = argv[0] if argv and argv[0] in COMMANDS else "export"
    if argv and argv[0] == name:
        argv = argv[1:]
    try:
        return COMMANDS[name](argv)
    except FTPError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
