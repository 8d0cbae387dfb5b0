"""``ftp-export [export]`` and ``ftp-export schedule``."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ftp_export.cli.parser import Parser
from ftp_export.devices import DTYPES
from ftp_export.errors import FTPError


def tolerance(text: str) -> float:
    """``--atol``: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a tolerance; give a finite number >= 0 (e.g. 1e-4)")
    return value


def int_at_least(minimum: int):
    """An argparse ``type=`` for integers >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is too small; it must be at least {minimum}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def open_fraction(text: str) -> float:
    """``--uniform``: a sparsity strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (0.0 < value < 1.0):
        raise argparse.ArgumentTypeError(f"{text} is not a sparsity; it must be in (0, 1), e.g. 0.4")
    return value


def export_parser() -> Parser:
    from ftp_export.export.targets import target_names

    p = Parser(
        prog="ftp-export",
        description="Export a token-routed LLM and check parity against PyTorch.",
        epilog="other commands: ftp-export schedule | bench | eval | setup (each with --help)",
    )
    p.add_argument("--model", help="local Hugging Face folder, alias (llama2-7b) or hub id; default: embedded tiny model")
    p.add_argument("--schedule", help="schedule JSON (from ftp-train or ftp-export schedule)")
    p.add_argument("--target", default="onnx", help=f"one of {', '.join(target_names())} (default onnx)")
    p.add_argument("-o", "--output", help="output folder (default exported/<model>-<schedule>-<target>)")
    p.add_argument("--atol", type=tolerance, default=1e-4, help="parity tolerance on logits (default 1e-4)")
    p.add_argument("--parity-tokens", type=int_at_least(1), default=16, help="greedy tokens per parity case (default 16)")
    p.add_argument("--dtype", default="float32", help=f"one of {', '.join(DTYPES)}")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where the model, the reference and the runtime run")
    return p


def schedule_parser() -> Parser:
    p = Parser(prog="ftp-export schedule", description="Make a schedule with static (position-priority) routers.")
    p.add_argument("--uniform", type=open_fraction, required=True, help="overall sparsity in (0, 1), block 0 kept dense")
    p.add_argument("--model", help="model (default: embedded tiny model)")
    p.add_argument("-o", "--output", required=True, help="schedule JSON to write (router weights go beside it)")
    p.add_argument("--calibration-text", help="UTF-8 text file for decode-threshold calibration (default: packaged sample)")
    p.add_argument("--samples", type=int_at_least(1), default=8, help="calibration sequences (default 8)")
    p.add_argument("--seq-len", type=int_at_least(4), default=96, help="tokens per calibration sequence (default 96)")
    p.add_argument("--device", default="cpu")
    return p


def cmd_export(argv: list[str]) -> int:
    from ftp_export.export.job import ExportRequest, run_export

    a = export_parser().parse_args(argv)
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
    from ftp_export.calibration.static_schedule import make_uniform_schedule
    from ftp_export.devices import resolve_device

    a = schedule_parser().parse_args(argv)
    device = resolve_device(a.device)
    text = None
    if a.calibration_text:
        path = Path(a.calibration_text)
        if not path.is_file():
            raise FTPError(f"--calibration-text {path}: file not found")
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            raise FTPError(f"--calibration-text {path}: file is empty")
    out = make_uniform_schedule(
        a.model, a.uniform, Path(a.output), text=text, samples=a.samples, seq_len=a.seq_len, device=device
    )
    print(f"wrote {out}")
    return 0
