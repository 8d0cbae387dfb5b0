"""``ftp-train``: learn an FTP schedule. User errors print one ``error: ...`` line and exit 2;
an interrupted run exits 130 (continue it with ``--resume``)."""

from __future__ import annotations

import argparse
import sys

from ftp_export.cli.parser import Parser, run_cli
from ftp_export.routing.router import KINDS
from ftp_export_trainer.checkpoints import Interrupted
from ftp_export_trainer.settings import Settings


def _adapter_rank(text: str) -> int | str:
    """``--skip-adapter``: 'auto' or an int (a negative one is refused by settings.validate)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected auto or a rank (0: no adapter)") from None


def build_parser() -> argparse.ArgumentParser:
    d = Settings()
    p = Parser(prog="ftp-train", description="Train an FTP token-routing schedule for a Hugging Face LLM.",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", help="local HF folder, alias or hub id (default: the embedded tiny model)")
    p.add_argument("--sparsity", type=float, required=True, help="target mean block sparsity in (0, 1)")
    p.add_argument("--data", help=".txt or .jsonl calibration text (default: packaged sample text)")
    p.add_argument("--text-field", default=d.text_field, help="JSONL field holding the text")
    p.add_argument("--txt-mode", choices=("lines", "file"), default=d.txt_mode, help=".txt: one sample per line, or the whole file")
    p.add_argument("-o", "--output", required=True, help="schedule JSON to write (+ .routers.safetensors, report, plots)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--samples", type=int, default=d.samples, help="calibration windows")
    p.add_argument("--held-out-samples", type=int, default=d.held_out_samples)
    p.add_argument("--seq-len", type=int, default=d.seq_len)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="forward batch for fitness/evaluation")
    p.add_argument("--generations", type=int, default=d.generations)
    p.add_argument("--population", type=int, default=d.population)
    p.add_argument("--elite", type=int, default=d.elite)
    p.add_argument("--max-block-sparsity", type=float, default=d.max_block_sparsity,
                   help="cap on any one block's sparsity (1 lets the GA drop a block outright, K/V projections included)")
    p.add_argument("--cost-samples", type=int, default=d.cost_samples,
                   help="step 2a: sampled backward passes per window for the per-token skip costs")
    p.add_argument("--router", choices=KINDS, default=d.router,
                   help="router inputs: the four FTP factors, or those and a learned low-rank projection of the block's "
                        "normalised input hidden state (counted in the FLOPs, at most 0.5%% of a block's)")
    p.add_argument("--router-rank", type=int, default=d.router_rank,
                   help="--router hidden: rank of the hidden-state projection (0: 1, the ridge direction step 2a fits; more rows start at 0 and only step 2b trains them)")
    p.add_argument("--skip-adapter", type=_adapter_rank, default=d.skip_adapter,
                   help="rank of an adapter for skipped tokens, every token of a dropped block included (h + U silu(A x)), "
                        "trained with the routers in step 2b; counted in the FLOPs and the 0.5%% router budget. Default auto: "
                        "the largest rank that fits (SmolLM2-135M: 15, or 14 beside --router hidden; +15 pt perplexity "
                        "retention over layer dropping there, docs/evaluation.md); 0: none")
    p.add_argument("--fit-all-blocks", action="store_true",
                   help="step 2a: fit the router of every block step 3 may route, not only of those step 1 routed "
                        "(SmolLM2-135M at s=0.4: step 3 then spread sparsity and lost 2.4 pt to layer dropping; docs/evaluation.md)")
    p.add_argument("--fit-steps", type=int, default=d.fit_steps,
                   help="step 2a: optimiser steps fitting each router to the skip costs (0: start step 2b from the static routers)")
    p.add_argument("--router-steps", type=int, default=d.router_steps, help="step 2b: straight-through steps with the FTP losses")
    p.add_argument("--router-batch", type=int, default=d.router_batch)
    p.add_argument("--router-lr", type=float, default=d.router_lr)
    p.add_argument("--temperature", type=float, default=d.temperature, help="soft-gate temperature")
    p.add_argument("--distill-weight", type=float, default=d.distill_weight, help="router loss: KL to dense")
    p.add_argument("--guide-weight", type=float, default=d.guide_weight, help="router loss: BCE toward the static router")
    p.add_argument("--sparsity-weight", type=float, default=d.sparsity_weight, help="router loss: keep-rate constraint")
    p.add_argument("--select-every", type=int, default=d.select_every,
                   help="score the hard-routed routers every N steps and keep the best (0: keep the last)")
    p.add_argument("--calib-samples", type=int, default=d.calib_samples,
                   help="windows of text per context length for the decode thresholds (--calib-decode-tokens decoded in each)")
    p.add_argument("--calib-decode-tokens", type=int, default=d.calib_decode_tokens,
                   help="tokens decoded per calibration window (default 2): a knot's threshold rests on calib-samples x this "
                        "many tokens, for less prefill per token (e.g. --calib-samples 32 --calib-decode-tokens 16)")
    p.add_argument("--calib-max-context", type=int, default=d.calib_max_context,
                   help="longest context the decode thresholds are calibrated at (0: the model's limit, at most 2048)")
    p.add_argument("--route-first-block", action="store_true", help="also route block 0 (dense by default)")
    p.add_argument("--no-greedy-seeds", dest="greedy_seeds", action="store_false",
                   help="do not seed the GA with the greedy KL block-removal order")
    p.add_argument("--removal-samples", type=int, default=d.removal_samples,
                   help="calibration windows that judge the greedy block-removal order")
    p.add_argument("--validation-samples", type=int, default=d.validation_samples,
                   help="held-out windows (after the comparison's) that pick the final schedule among steps 1-4 "
                        "by KL to dense (0: always the last step)")
    p.add_argument("--no-influence-seeds", dest="influence_seeds", action="store_false",
                   help="start the GA from the even spread only (default: also from ShortGPT block influence)")
    p.add_argument("--resume", action="store_true", help="continue a killed run from <output>.ckpt/ (without it the checkpoints are discarded; a finished run removes them)")
    p.add_argument("--no-eval", dest="evaluate", action="store_false", help="skip the held-out comparison")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--device", default=d.device, help="cpu or cuda[:i] (cuda untested in CI)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads per process (default: half the cores / ranks)")
    p.add_argument("--dtype", default=d.dtype, help="float32 (default), bfloat16 or float16 (model weights)")
    return p


def train(argv: list[str]) -> int:
    """Parse ``argv``, run the pipeline, print where the schedule went and the comparison table."""
    from ftp_export_trainer import distributed as dist
    from ftp_export_trainer.pipeline import run

    settings = Settings(**vars(build_parser().parse_args(argv)))
    report = run(settings, log=lambda m: print(m, file=sys.stderr) if dist.is_main() else None)
    if dist.is_main():
        from ftp_export_trainer.report import markdown_table

        sp = report["block_sparsity"]["final"]
        print(f"wrote {report['schedule']} (block sparsity {[round(x, 3) for x in sp]}, mean {sum(sp) / len(sp):.4f})")
        if "comparison" in report:
            print(markdown_table(report["comparison"]))
        print(f"total {report['timings']['total_s']:.1f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``ftp-train`` console script: exit 0, 2 on a user error, 130 when interrupted."""
    from ftp_export_trainer import distributed as dist

    try:
        return run_cli(train, list(sys.argv[1:] if argv is None else argv), interrupts=(KeyboardInterrupt, Interrupted),
                       interrupted="interrupted ({exc}); checkpoints kept, continue with --resume")
    finally:
        dist.teardown()


if __name__ == "__main__":
    sys.exit(main())
