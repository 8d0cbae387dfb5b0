"""``ftp-export [export]`` and ``ftp-export schedule``."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ftp_export.cli.parser import Parser
from ftp_export.devices import DEVICE_CHOICES, DTYPE_CHOICES, device_choice
from ftp_export.errors import FTPError
from ftp_export.export.request import AOTI_ATTENTION


def tolerance(text: str) -> float:
    """``--atol`` / ``--rtol``: a finite number >= 0."""
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
    from ftp_export.cli import commands_help
    from ftp_export.export.targets import REGISTRY
    from ftp_export.export.tolerance import DEFAULT_TOLERANCES
    from ftp_export.graph_io import LOGITS_CHOICES
    from ftp_export.routed.cache import DEFAULT_KV_CACHE, KV_CACHE_CHOICES

    tolerances = ", ".join(f"{t.atol:g} / {t.rtol:.2g} for {d}" for d, t in DEFAULT_TOLERANCES.items())
    p = Parser(
        prog="ftp-export",
        description="Export a token-routed LLM and check parity against PyTorch.",
        epilog=commands_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", help="local Hugging Face folder, alias (llama2-7b) or hub id; default: embedded tiny model")
    p.add_argument("--schedule", help="schedule JSON (from ftp-train or ftp-export schedule)")
    p.add_argument("--target", default="onnx", choices=list(REGISTRY),
                   help="; ".join(f"{name}: {t.description}" for name, t in REGISTRY.items()) + " (default onnx)")
    p.add_argument("-o", "--output", help="output folder (default exported/<model>-<schedule>-<target>)")
    p.add_argument("--atol", type=tolerance, default=None,
                   help="parity: a step passes iff max|dlogit| <= atol + rtol * max|reference logit| "
                   f"(default atol / rtol: {tolerances})")
    p.add_argument("--rtol", type=tolerance, default=None, help="parity: relative tolerance, see --atol")
    p.add_argument("--parity-tokens", type=int_at_least(1), default=16, help="greedy tokens per parity case (default 16)")
    p.add_argument("--dtype", default="float32", choices=DTYPE_CHOICES,
                   help="weights and activations of the export (fp32, fp16, bf16: optimum's spellings); parity of "
                   "float16/bfloat16 is against the float32 PyTorch model (default float32)")
    p.add_argument("--device", default="cpu", type=device_choice, metavar="{" + ",".join(DEVICE_CHOICES) + "}",
                   help="where the model, the reference and the runtime run (default cpu)")
    p.add_argument(
        "--logits", choices=LOGITS_CHOICES, default=None,
        help="prefill logits: last = [batch, 1, vocab] at each row's last valid token, all = every token "
        "(perplexity; what onnxruntime-genai reads); a decode step returns every new token's logits "
        "(default: all for --target onnx, last for trt and compile)",
    )
    p.add_argument(
        "--no-parity", dest="parity", action="store_false",
        help="export only: no runtime session, no PyTorch reference (parity of a float16 7B export needs the float32 "
        "model and the session in memory beside it: README, 'Exporting a 7B model'); the manifest records no parity",
    )
    p.add_argument(
        "--quantize", choices=("int8",), default=None,
        help="--target onnx, float32: 8-bit weights for every weight MatMul outside the routing path (onnxruntime's "
        "MatMulNBits; routers, factors and selection stay float32); parity also exports the dense model the same "
        "way and reports its figures beside the routed ones",
    )
    p.add_argument(
        "--kv-cache", choices=KV_CACHE_CHOICES, default=DEFAULT_KV_CACHE,
        help="--target onnx: what present.N.key/value hold. concat: the past with the call's K/V appended (optimum, "
        "onnxruntime-genai); append: only the call's K/V, which the app writes into its own cache buffer and feeds "
        "back whole as the past, unused tail masked (no copy of the cache per step; no genai_config.json) (default concat)",
    )
    p.add_argument(
        "--decode-lowering", choices=("dynamic", "static"), default="dynamic",
        help="--target trt: decode blocks gather the kept tokens (dynamic: data-dependent row count, a host "
        "sync per block) or compute every token and keep the kept ones by a mask (static: fixed shapes, "
        "CUDA-graph friendly; docs in plugins/README.md) (default dynamic)",
    )
    p.add_argument(
        "--aoti-attention", choices=AOTI_ATTENTION, default="op",
        help="--target compile: prefill attention as the ftp_export::attention custom op, whose kernel is "
        "ftp_export's chunked attention (op: faster at long prompts; loading the packages needs Python with "
        "ftp_export importable), or traced into the packages (graph: self-contained, loadable from C++) "
        "(default op)",
    )
    return p


def schedule_parser() -> Parser:
    p = Parser(prog="ftp-export schedule", description="Make a schedule with static (position-priority) routers.")
    p.add_argument("--uniform", type=open_fraction, required=True, help="overall sparsity in (0, 1), block 0 kept dense")
    p.add_argument("--model", help="model (default: embedded tiny model)")
    p.add_argument("-o", "--output", required=True, help="schedule JSON to write (router weights go beside it)")
    _calibration_arguments(p)
    return p


def calibrate_parser() -> Parser:
    p = Parser(prog="ftp-export calibrate",
               description="Recalibrate a schedule's decode thresholds (a curve over context lengths, docs/routing.md); "
               "routers and sparsities unchanged. Brings format-1 schedules to format 2.")
    p.add_argument("--schedule", required=True, help="schedule JSON to recalibrate")
    p.add_argument("--model", help="the model the schedule is for (default: embedded tiny model)")
    p.add_argument("-o", "--output", required=True, help="schedule JSON to write (may be --schedule itself)")
    _calibration_arguments(p)
    return p


def _calibration_arguments(p: Parser) -> None:
    p.add_argument("--calibration-text", help="UTF-8 text file for decode-threshold calibration (default: packaged sample)")
    p.add_argument("--samples", type=int_at_least(1), default=256,
                   help="calibration windows per context length for the decode thresholds (default 256)")
    p.add_argument("--decode-tokens", type=int_at_least(1), default=2,
                   help="tokens decoded per calibration window (default 2): a knot's threshold rests on samples x this "
                        "many tokens, and more per window costs less prefill per token (e.g. --samples 32 --decode-tokens 16)")
    p.add_argument("--max-context", type=int_at_least(2), default=None,
                   help="longest context the decode thresholds are calibrated at (default: the model's limit, at most 2048)")
    p.add_argument("--device", default="cpu", type=device_choice, metavar="{" + ",".join(DEVICE_CHOICES) + "}",
                   help="where calibration runs (default cpu)")


def cmd_export(argv: list[str]) -> int:
    from ftp_export.export.job import ExportRequest, run_export, validate_request

    parser = export_parser()
    a = parser.parse_args(argv)
    if a.decode_lowering != "dynamic" and a.target != "trt":
        parser.error(f"--decode-lowering {a.decode_lowering} applies to --target trt only")
    if a.aoti_attention != "op" and a.target != "compile":
        parser.error(f"--aoti-attention {a.aoti_attention} applies to --target compile only")
    req = ExportRequest(
        model=a.model,
        schedule=a.schedule,
        target=a.target,
        output=a.output,
        atol=a.atol,
        rtol=a.rtol,
        parity_tokens=a.parity_tokens,
        dtype=a.dtype,
        device=a.device,
        logits=a.logits,
        decode_lowering=a.decode_lowering,
        aoti_attention=a.aoti_attention,
        quantize=a.quantize,
        parity=a.parity,
        kv_cache=a.kv_cache,
    )
    # refused with the arguments, before anything is loaded: a dtype the target's runtime cannot run here, ...
    return run_export(validate_request(req))


def _calibration_inputs(a) -> tuple[str, str | None]:
    """The checked device, the calibration text (None: packaged) and -o of a schedule-writing command."""
    from ftp_export.devices import resolve_device

    device = resolve_device(a.device)
    text = None
    if a.calibration_text:
        path = Path(a.calibration_text)
        if not path.is_file():
            raise FTPError(f"--calibration-text {path}: file not found")
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            raise FTPError(f"--calibration-text {path}: file is empty")
    if not Path(a.output).name:  # `.` or `/`: a folder, and no file name to put beside it
        raise FTPError(f"-o {a.output}: an existing folder; -o names the schedule JSON file to write (e.g. {Path(a.output) / 's40.json'})")
    return device, text


def cmd_calibrate(argv: list[str]) -> int:
    from ftp_export.calibration.static_schedule import recalibrate_schedule

    a = calibrate_parser().parse_args(argv)
    device, text = _calibration_inputs(a)
    out, result = recalibrate_schedule(a.model, a.schedule, Path(a.output), text=text, samples=a.samples,
                                       max_context=a.max_context, device=device, decode_tokens=a.decode_tokens)
    for b, rates in enumerate(result.rates):
        if rates is not None:
            print(f"block {b}: decode skip rate {min(rates):.3f}-{max(rates):.3f} over contexts "
                  f"{result.thresholds.lengths[0]}-{result.thresholds.lengths[-1]}")
    print(f"wrote {out}")
    return 0


def cmd_schedule(argv: list[str]) -> int:
    from ftp_export.calibration.static_schedule import make_uniform_schedule

    a = schedule_parser().parse_args(argv)
    device, text = _calibration_inputs(a)
    out = make_uniform_schedule(
        a.model, a.uniform, Path(a.output), text=text, samples=a.samples, max_context=a.max_context, device=device,
        decode_tokens=a.decode_tokens,
    )
    print(f"wrote {out}")
    return 0
