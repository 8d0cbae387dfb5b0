"""``ftp-train``'s pipeline: load the model and data, run steps 1-4 (:mod:`.search_steps`,
:mod:`.router_step`), pick the final schedule on validation windows (:mod:`.heldout`), and
write the schedule and report. Every rank runs it; rank 0 writes (:mod:`.distributed`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ftp_export.architectures import ModelRef, check_supported, load_config, load_model, resolve_model
from ftp_export.devices import torch_dtype
from ftp_export.errors import FTPError
from ftp_export.evaluation.baselines import block_influence
from ftp_export.flops import counted_routers, routed_linear_flop_ratio
from ftp_export.routing.decode_thresholds import DecodeThresholds
from ftp_export.routing.router import RouterBank
from ftp_export.schedule import Schedule, new_schedule, save_schedule
from ftp_export_trainer import __version__
from ftp_export_trainer import distributed as dist
from ftp_export_trainer.checkpoints import Checkpoints, maybe_interrupt
from ftp_export_trainer.context import Context
from ftp_export_trainer.data import load_data, read_documents
from ftp_export_trainer.evaluate import dense_logits
from ftp_export_trainer.ga import GAState
from ftp_export_trainer.heldout import compare, select_final
from ftp_export_trainer.router_step import calibrate, run_router_training
from ftp_export_trainer.search_steps import removal_order, run_search
from ftp_export_trainer.settings import Settings, bank_shape, default_threads, free_blocks, uniform_sparsity, validate

METHOD = "FTP (arXiv 2412.11494): GA sparsity search with static routers, router training, GA fine-tuning"


@dataclass
class Trained:
    """What steps 1-4 and the final choice produced."""

    uniform: list[float]
    ga1: GAState
    ga3: GAState
    step2: dict[str, Any]  # step 2's record
    step4: dict[str, Any] | None  # step 4's record (None: step 3 kept step 1's sparsities)
    candidates: list[tuple[str, list[float], RouterBank]]
    selection: dict[str, Any]
    final: list[float]
    routers: RouterBank
    thresholds: dict[str, Any]  # the schedule's decode_thresholds object + "calibration" (router_step.calibrate)


def run(s: Settings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole pipeline; returns the report dict (rank 0 writes schedule, report, plots)."""
    validate(s)
    dist.setup(s.device)
    torch.set_num_threads(s.threads or default_threads())
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    torch.manual_seed(s.seed)
    ref = resolve_model(s.model)
    ctx = prepare(s, ref, log)
    timings["setup_s"] = time.perf_counter() - t0
    trained = train(ctx, timings)
    schedule = build_schedule(ctx, ref, trained)
    _check_ranks_agree(trained)
    report = build_report(ctx, trained)
    if s.evaluate:
        t = time.perf_counter()
        report["comparison"] = compare(ctx, trained.uniform, trained.candidates, trained.selection["chosen"])
        timings["evaluation_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    report["timings"] = timings
    if dist.is_main():
        from ftp_export_trainer.report import write_report

        output = Path(s.output)
        save_schedule(schedule, output)
        report["schedule"] = str(output)
        write_report(report, output)
        ctx.ckpt.remove()  # the run is finished: nothing left to resume
    dist.barrier()
    return report


def prepare(s: Settings, ref: ModelRef, log: Callable[[str], None]) -> Context:
    """Check the model and data, load both, open the checkpoints and compute what every step
    shares: dense logits and block influence of the calibration windows."""
    config = load_config(ref)
    check_supported(config)
    n = int(config.num_hidden_layers)
    free = free_blocks(n, s.sparsity, s.route_first_block, s.max_block_sparsity)
    shape = bank_shape(s, config)  # a router or adapter rank above the FLOP budget fails here, before any work
    if s.data is not None:  # fail on bad data before the (possibly large) model loads
        read_documents(Path(s.data), s.text_field, s.txt_mode)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf = load_model(ref, dtype=torch_dtype(s.dtype), device=s.device)
    for p in hf.parameters():
        p.requires_grad_(False)
    data = load_data(s.data, ref.source, int(hf.config.vocab_size), s.samples, s.seq_len, s.held_out_samples, s.text_field, s.txt_mode,
                     validation_samples=s.validation_samples)
    data.train, data.held_out, data.validation = (t.to(s.device) for t in (data.train, data.held_out, data.validation))
    ckpt = open_checkpoints(s, ref, log)
    reference = dense_logits(hf, data.train, s.batch_size)
    influence = block_influence(hf, data.train, batch_size=s.batch_size)  # GA seeds and the ShortGPT row
    return Context(s, hf, data, reference, free, n, ckpt, log, influence, router_shape=shape)


def open_checkpoints(s: Settings, ref: ModelRef, log: Callable[[str], None]) -> Checkpoints:
    """``<output>.ckpt/``: checked against these settings with ``--resume``, else cleared."""
    ckpt = Checkpoints(Path(s.output))
    meta = {"settings": s.result_keys(), "model_source": ref.source, "version": __version__}
    if s.resume:
        old = ckpt.read_json("meta.json")
        if old is None:
            log(f"--resume: no checkpoint in {ckpt.dir}; starting from the beginning")
        elif not isinstance(old, dict) or old.get("settings") != meta["settings"]:
            raise FTPError(f"--resume: checkpoint {ckpt.dir} was made with other settings (or is corrupt); use the same flags or delete it")
    else:
        discarded = ckpt.reset()
        if discarded:
            log(f"starting over without --resume: discarded checkpoints {', '.join(discarded)} in {ckpt.dir}")
    ckpt.write_json("meta.json", meta)
    return ckpt


def train(ctx: Context, timings: dict[str, float]) -> Trained:
    """Steps 1-3 (and 4 when step 3 changed the sparsities), then the final choice among them
    (with its decode thresholds)."""
    s = ctx.settings
    if s.greedy_seeds:
        t = time.perf_counter()
        ctx.removal = removal_order(ctx)
        timings["removal_order_s"] = time.perf_counter() - t
    uniform = uniform_sparsity(ctx.n, s.sparsity, ctx.free)
    t = time.perf_counter()
    ga1 = run_search(ctx, "ga1", None, s.seed, uniform)
    step1, _ = ga1.best()
    timings["step1_s"] = time.perf_counter() - t
    maybe_interrupt("step1")
    t = time.perf_counter()
    bank, step2 = run_router_training(ctx, step1)
    timings["step2_s"] = time.perf_counter() - t
    t = time.perf_counter()
    ga3 = run_search(ctx, "ga3", bank, s.seed + 3, step1)
    step3, _ = ga3.best()
    static = ctx.static_routers()  # step 1's position-priority routers, of the kind --router asks for
    candidates = [("step 1", step1, static), ("step 2", step1, bank), ("step 3", step3, bank)]
    timings["step3_s"] = time.perf_counter() - t
    step4 = None
    if step3 != step1:
        # step 3 may route blocks step 2 left dense or dropped, with their static routers and
        # identity adapters: train routers and adapters for step 3's own sparsities
        t = time.perf_counter()
        bank4, step4 = run_router_training(ctx, step3, name="step4", adapters_from=bank)
        candidates.append(("step 4", step3, bank4))
        timings["step4_s"] = time.perf_counter() - t
    t = time.perf_counter()
    selection = select_final(ctx, candidates)
    _, final, routers = next(c for c in candidates if c[0] == selection["chosen"])
    timings["selection_s"] = time.perf_counter() - t
    t = time.perf_counter()
    thresholds = calibrate(ctx, final, routers)  # once, for the schedule written
    timings["decode_thresholds_s"] = time.perf_counter() - t
    return Trained(uniform, ga1, ga3, step2, step4, candidates, selection, final, routers, thresholds)


def _settings_doc(s: Settings) -> dict[str, Any]:
    return {k: v for k, v in asdict(s).items() if k not in ("resume", "progress")}


def build_schedule(ctx: Context, ref: ModelRef, trained: Trained) -> Schedule:
    """The final schedule with its provenance (``produced_by``)."""
    s = ctx.settings
    return new_schedule(
        ctx.hf.config,
        trained.final,
        routers=trained.routers.cpu(),
        decode_thresholds=DecodeThresholds(trained.thresholds["context_lengths"], trained.thresholds["per_block"]),
        name_or_path=ref.source if ref.name != "ftp-tiny-llama" else ref.name,
        produced_by={
            "tool": "ftp-train",
            "version": __version__,
            "method": METHOD,
            "settings": _settings_doc(s),
            "data": ctx.data.source,
            "calibration": {"decode_thresholds": trained.thresholds.get("calibration", {})},
            "seed": s.seed,
            "world_size": dist.world(),
            # ftp-export eval drops these blocks as a second layer-dropping baseline
            **({"block_removal": {**ctx.removal, "windows": s.removal_samples}} if ctx.removal else {}),
        },
    )


def _check_ranks_agree(trained: Trained) -> None:
    """Every rank must hold the same final schedule (sharded work is gathered exactly)."""
    routers = {k: v.tolist() for k, v in trained.routers.state_dict().items()}
    digests = dist.all_gather_object(json.dumps({"s": trained.final, "t": trained.thresholds, "r": routers}))
    if any(d != digests[0] for d in digests):
        raise RuntimeError("ranks disagree on the final schedule")


def build_report(ctx: Context, trained: Trained) -> dict[str, Any]:
    """The training report (without the comparison table and timings)."""
    step1, step3 = trained.candidates[0][1], trained.candidates[2][1]
    return {
        "tool": "ftp-train",
        "settings": _settings_doc(ctx.settings),
        "data": ctx.data.source,
        "world_size": dist.world(),
        "ranks_agree": True,
        "block_sparsity": {"uniform": trained.uniform, "step1_ga_static": step1, "step3_ga_dynamic": step3, "final": trained.final},
        "selection": trained.selection,
        "router": trained.routers.architecture(),
        "flop_ratio_dense_over_routed": routed_linear_flop_ratio(ctx.hf.config, trained.final, counted_routers(trained.routers)),
        "block_removal": ctx.removal,
        "ga1_history": trained.ga1.history,
        "router_history": trained.step2["history"],
        "router_fit": {k: v for k, v in trained.step2.items() if k != "history"},
        **({"step4": trained.step4} if trained.step4 is not None else {}),
        "ga3_history": trained.ga3.history,
        "decode_thresholds": trained.thresholds,
    }
