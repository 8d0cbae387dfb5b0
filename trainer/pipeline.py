"""The three FTP training steps with checkpoints after each step and each GA generation.

Checkpoint folder ``<output>.ckpt/``: ``meta.json`` (settings that determine the result),
``removal.json`` (greedy block-removal order), ``ga1.json`` / ``ga3.json`` (GA state), ``step2.json`` + ``step2.routers.safetensors``
(trained routers, losses, decode thresholds). ``--resume`` continues from them; a run with
different settings or unreadable files is refused.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ftp_export.architectures import ModelRef, check_supported, load_config, load_model
from ftp_export.baselines import (
    block_influence,
    bracketing_drop_counts,
    drop_blocks,
    interpolate_at_flops,
    shortgpt_blocks,
)
from ftp_export.calibration import calibrate_decode_thresholds
from ftp_export.errors import FTPError
from ftp_export.flops import routed_linear_flop_ratio
from ftp_export.routing.router import RouterBank, static_router_bank
from ftp_export.schedule import new_schedule, routed_sparsity, save_schedule
from ftp_export_trainer import __version__
from ftp_export_trainer import distributed as dist
from ftp_export_trainer.block_search import POOL, dropped_kl, greedy_removal_order
from ftp_export_trainer.data import CalibrationData, load_data, read_documents
from ftp_export_trainer.evaluate import dense_logits, held_out_metrics, routed_kl, routed_model
from ftp_export_trainer.ga import GAConfig, GAState, influence_seeds, init_state, order_seeds, run_ga
from ftp_export_trainer.losses import DEFAULT_WEIGHTS
from ftp_export_trainer.router_fitting import RouterFitConfig, fit_routers
from ftp_export_trainer.router_training import RouterTrainConfig, train_routers
from ftp_export_trainer.skip_costs import skip_costs

INTERRUPT_ENV = "FTP_TRAIN_INTERRUPT"  # test hook: "ga1:<gen>", "step1", "step2", "ga3:<gen>"


class Interrupted(Exception):
    """Raised by the :data:`INTERRUPT_ENV` test hook to simulate a killed run."""


@dataclass
class Settings:
    model: str | None = None
    sparsity: float = 0.4
    data: str | None = None
    text_field: str = "text"
    txt_mode: str = "lines"
    output: str = "schedule.json"
    seed: int = 0
    samples: int = 32
    held_out_samples: int = 16
    seq_len: int = 128
    batch_size: int = 8
    generations: int = 5
    population: int = 8
    elite: int = 2
    max_block_sparsity: float = 1.0
    cost_samples: int = 4
    fit_steps: int = 400
    router_steps: int = 150
    router_batch: int = 8
    router_lr: float = 3e-3
    temperature: float = 0.1
    distill_weight: float = DEFAULT_WEIGHTS["distill"]
    guide_weight: float = DEFAULT_WEIGHTS["guide"]
    sparsity_weight: float = DEFAULT_WEIGHTS["sparsity"]
    calib_samples: int = 4
    route_first_block: bool = False
    influence_seeds: bool = True
    greedy_seeds: bool = True
    removal_samples: int = 8
    validation_samples: int = 16
    select_every: int = 25
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 0
    resume: bool = False
    evaluate: bool = True
    progress: bool = True

    def result_keys(self) -> dict[str, Any]:
        """Settings that change the result (a resumed run must match them)."""
        skip = {"output", "resume", "evaluate", "progress", "device", "threads"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def validate(s: Settings) -> None:
    if not (0.0 < s.sparsity < 1.0):
        raise FTPError(f"--sparsity {s.sparsity}: must be in (0, 1)")
    if s.dtype not in DTYPES:
        raise FTPError(f"--dtype {s.dtype}: choose one of {', '.join(DTYPES)}")
    if s.device.startswith("cuda") and not torch.cuda.is_available():
        raise FTPError(f"--device {s.device}: CUDA is not available on this machine")
    for name in ("samples", "seq_len", "population", "held_out_samples", "batch_size", "router_batch", "calib_samples", "cost_samples", "removal_samples"):
        if getattr(s, name) < 1:
            raise FTPError(f"--{name.replace('_', '-')} must be >= 1")
    if s.seq_len < 4:
        raise FTPError("--seq-len must be >= 4")
    if s.generations < 0 or s.router_steps < 0 or s.fit_steps < 0 or s.validation_samples < 0:
        raise FTPError("--generations, --fit-steps, --router-steps and --validation-samples must be >= 0")
    if not (0.0 < s.max_block_sparsity <= 1.0):
        raise FTPError("--max-block-sparsity must be in (0, 1]")


def default_threads() -> int:
    """Half the cores per process (at least 1): on a shared or oversubscribed CPU, spinning
    OpenMP threads can make small matmuls ~50x slower than one thread."""
    return max(1, (os.cpu_count() or 1) // (2 * dist.world()))


def free_blocks(n: int, sparsity: float, route_first: bool, upper: float) -> list[int]:
    free = list(range(n)) if route_first else list(range(1, n))
    if not free or sparsity * n > upper * len(free) + 1e-9:
        need = 1 + int(sparsity * n / upper) + (0 if route_first else 1)
        raise FTPError(
            f"model has {n} blocks: mean sparsity {sparsity} with {len(free)} routed block(s) capped at "
            f"{upper} is impossible; the schedule needs at least {need} blocks (lower --sparsity, or --route-first-block)"
        )
    return free


class Checkpoints:
    """Atomic JSON / safetensors files in ``<output>.ckpt/`` (written by rank 0 only)."""

    def __init__(self, output: Path) -> None:
        self.dir = output.with_name(output.name + ".ckpt")

    FILES = ("meta.json", "removal.json", "ga1.json", "step2.json", "step2.routers.safetensors", "ga3.json")

    def reset(self) -> None:
        """Forget an earlier run's checkpoints (a fresh run must not resume from them later)."""
        if dist.is_main():
            for name in self.FILES:
                self.path(name).unlink(missing_ok=True)
        dist.barrier()

    def path(self, name: str) -> Path:
        return self.dir / name

    def write_json(self, name: str, doc: Any) -> None:
        if not dist.is_main():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path(name + ".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.path(name))

    def read_json(self, name: str) -> Any | None:
        p = self.path(name)
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
            raise FTPError(f"checkpoint {p} is corrupt ({type(exc).__name__}); delete {self.dir} or run without --resume") from None

    def write_routers(self, name: str, bank: RouterBank) -> None:
        if not dist.is_main():
            return
        from safetensors.torch import save_file

        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path(name + ".tmp")
        save_file({k: v.detach().float().cpu().contiguous() for k, v in bank.state_dict().items()}, str(tmp))
        os.replace(tmp, self.path(name))

    def read_routers(self, name: str, n: int) -> RouterBank:
        from safetensors.torch import load_file

        try:
            bank = RouterBank(n)
            bank.load_state_dict(load_file(str(self.path(name))))
        except Exception as exc:  # noqa: BLE001 - any failure means an unusable file
            raise FTPError(f"checkpoint {self.path(name)} is corrupt ({type(exc).__name__}); delete {self.dir} or run without --resume") from None
        return bank.eval()


def _maybe_interrupt(tag: str) -> None:
    if os.environ.get(INTERRUPT_ENV) == tag:
        raise Interrupted(f"simulated interrupt at {tag} ({INTERRUPT_ENV})")


def _bar(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=desc, disable=not (enabled and dist.is_main()), leave=False, dynamic_ncols=True)


@dataclass
class Context:
    settings: Settings
    hf: Any
    data: CalibrationData
    reference: torch.Tensor
    free: list[int]
    n: int
    ckpt: Checkpoints
    log: Callable[[str], None]
    influence: list[float]  # ShortGPT block influence on the calibration windows
    removal: dict[str, list] | None = None  # greedy KL block-removal order (GA seeds), see block_search


def sharded(bar: tqdm, one: Callable[[Any], float]) -> Callable[[list[Any]], list[float]]:
    """Score a list of candidates with ``one``, each rank its share, every rank gets all scores."""

    def evaluate(items: list[Any]) -> list[float]:
        mine = {i: torch.tensor(one(items[i]), dtype=torch.float64) for i in dist.shard(len(items))}
        out = [float(v) for v in dist.gather_items(len(items), mine, torch.zeros((), dtype=torch.float64))]
        bar.update(len(items))
        return out

    return evaluate


def fitness_fn(ctx: Context, routers: RouterBank | None, bar: tqdm) -> Callable[[list[list[float]]], list[float]]:
    """GA fitness: KL of the hard-routed model to dense, sharded over ranks."""
    s = ctx.settings
    bank = routers if routers is not None else static_router_bank(ctx.n).to(s.device)
    return sharded(bar, lambda genome: routed_kl(routed_model(ctx.hf, genome, bank), ctx.data.train, ctx.reference, s.batch_size))


def run_search(ctx: Context, name: str, routers: RouterBank | None, seed: int, init: list[float]) -> GAState:
    """Step 1 (``routers`` None: static) or step 3 (trained routers) genetic search."""
    s = ctx.settings
    cfg = GAConfig(population=s.population, generations=s.generations, elite=min(s.elite, s.population), upper=s.max_block_sparsity)
    total = s.sparsity * ctx.n
    doc = ctx.ckpt.read_json(f"{name}.json") if s.resume else None
    if doc is not None:
        try:
            state, pending = GAState.from_json(doc["state"]), doc.get("pending")
        except (KeyError, TypeError) as exc:
            raise FTPError(f"checkpoint {ctx.ckpt.path(name + '.json')} is corrupt ({exc}); delete {ctx.ckpt.dir} or run without --resume") from None
        ctx.log(f"{name}: resuming after generation {state.generation}")
    else:
        seeds = order_seeds(ctx.removal["order"], ctx.n, ctx.free, total, s.max_block_sparsity) if ctx.removal else []
        seeds += influence_seeds(ctx.influence, ctx.free, total, s.max_block_sparsity) if s.influence_seeds else []
        state, pending = init_state(init, ctx.free, total, cfg, seed, seeds)
        ctx.ckpt.write_json(f"{name}.json", {"state": state.to_json(), "pending": pending})
    if state.done:
        return state
    remaining = (cfg.generations - max(state.generation, 0)) * (cfg.population - cfg.elite) + (cfg.population if state.generation < 0 else 0)
    with _bar(remaining, f"{name} fitness", s.progress) as bar:

        def checkpoint(st: GAState) -> None:
            ctx.ckpt.write_json(f"{name}.json", {"state": st.to_json(), "pending": None})
            _maybe_interrupt(f"{name}:{st.generation}")

        state = run_ga(state, pending, ctx.free, total, cfg, fitness_fn(ctx, routers, bar), on_generation=checkpoint)
    ctx.ckpt.write_json(f"{name}.json", {"state": state.to_json(), "pending": None})
    return state


def removal_order(ctx: Context) -> dict[str, list]:
    """The greedy KL block-removal order over the free blocks, as many blocks as the target
    sparsity fills at the block cap, judged on the first ``--removal-samples`` calibration
    windows (checkpointed: it costs ~blocks + POOL x count forwards of those windows)."""
    s = ctx.settings
    doc = ctx.ckpt.read_json("removal.json") if s.resume else None
    if isinstance(doc, dict) and "order" in doc and "kl" in doc:
        return doc
    count = min(len(ctx.free), math.ceil(s.sparsity * ctx.n / s.max_block_sparsity - 1e-9))
    total = len(ctx.free) + sum(min(POOL, len(ctx.free) - i) for i in range(1, count))
    windows, reference = ctx.data.train[: s.removal_samples], ctx.reference[: s.removal_samples]
    with _bar(total, "block removal order", s.progress) as bar:
        score = sharded(bar, lambda blocks: dropped_kl(ctx.hf, blocks, windows, reference, s.batch_size))
        order, kls = greedy_removal_order(score, ctx.free, count, POOL)
    doc = {"order": order, "kl": kls}
    ctx.ckpt.write_json("removal.json", doc)
    return doc


def run_router_training(ctx: Context, sparsity: list[float]) -> tuple[RouterBank, dict[str, Any], list[float | None]]:
    """Step 2: routers fitted to per-token skip costs (2a), fine-tuned with the FTP losses
    (2b, straight-through), then decode-threshold calibration. Returns the bank, the step's
    record (fit, selection and loss history) and the thresholds."""
    s = ctx.settings
    doc = ctx.ckpt.read_json("step2.json") if s.resume else None
    if doc is not None and doc.get("done"):
        ctx.log("step 2: resuming with the trained routers")
        bank = ctx.ckpt.read_routers("step2.routers.safetensors", ctx.n)
        try:
            return bank.to(ctx.data.train.device), doc["record"], doc["decode_thresholds"]
        except KeyError as exc:
            raise FTPError(f"checkpoint {ctx.ckpt.path('step2.json')} is corrupt (missing {exc}); delete {ctx.ckpt.dir} or run without --resume") from None

    def hard_kl(candidate: RouterBank) -> float:  # the GA fitness: hard-routed KL on the calibration windows
        return routed_kl(routed_model(ctx.hf, sparsity, candidate), ctx.data.train, ctx.reference, s.batch_size)

    static = static_router_bank(ctx.n).to(ctx.data.train.device)
    record: dict[str, Any] = {"kl_static": hard_kl(static)}
    start = static
    if s.fit_steps > 0:
        with _bar(-(-len(ctx.data.train) // s.batch_size), "step 2a skip costs", s.progress) as bar:
            costs = skip_costs(ctx.hf, ctx.data.train, s.cost_samples, s.batch_size, s.seed + 2, progress=bar.update)
        with _bar(sum(map(routed_sparsity, sparsity)), "step 2a router fit", s.progress) as bar:
            fitted, explained = fit_routers(ctx.hf, sparsity, costs, ctx.data.train, RouterFitConfig(steps=s.fit_steps), s.seed + 2,
                                            progress=lambda b, v: bar.update(1))
        record.update(fit_explained=explained, kl_fitted=hard_kl(fitted))
        if record["kl_fitted"] <= record["kl_static"]:
            start = fitted
    record["start"] = "fitted" if start is not static else "static"
    weights = {"distill": s.distill_weight, "guide": s.guide_weight, "sparsity": s.sparsity_weight}
    cfg = RouterTrainConfig(steps=s.router_steps, batch_size=s.router_batch, lr=s.router_lr, temperature=s.temperature,
                            weights=weights, select_every=s.select_every)
    with _bar(cfg.steps, "step 2b routers", s.progress) as bar:

        def tick(rec: dict[str, float]) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.4f}")

        bank, history = train_routers(
            ctx.hf, sparsity, static, ctx.data.train, ctx.reference, cfg, s.seed + 2, tick,
            evaluate=hard_kl if s.select_every > 0 else None, init=start if start is not static else None,
        )
    record["history"] = history
    thresholds = calibrate(ctx, sparsity, bank)
    ctx.ckpt.write_routers("step2.routers.safetensors", bank)
    ctx.ckpt.write_json("step2.json", {"done": True, "record": record, "decode_thresholds": thresholds})
    _maybe_interrupt("step2")
    return bank, record, thresholds


def calibrate(ctx: Context, sparsity: list[float], bank: RouterBank) -> list[float | None]:
    s = ctx.settings
    seqs = ctx.data.train[: s.calib_samples]
    model = routed_model(ctx.hf, sparsity, bank)
    with _bar(sum(map(routed_sparsity, sparsity)), "decode thresholds", s.progress) as bar:
        thresholds, _ = calibrate_decode_thresholds(model, seqs, max(1, seqs.shape[1] // 2), progress=lambda p, n: bar.update(1))
    return thresholds


def run(s: Settings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole pipeline; returns the report dict (rank 0 writes schedule, report, plots)."""
    validate(s)
    dist.setup(s.device)
    torch.set_num_threads(s.threads or default_threads())
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    torch.manual_seed(s.seed)
    ref = _resolve(s.model)
    config = load_config(ref)
    check_supported(config)
    n = int(config.num_hidden_layers)
    free = free_blocks(n, s.sparsity, s.route_first_block, s.max_block_sparsity)
    if s.data is not None:  # fail on bad data before the (possibly large) model loads
        read_documents(Path(s.data), s.text_field, s.txt_mode)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf = load_model(ref, dtype=DTYPES[s.dtype], device=s.device)
    for p in hf.parameters():
        p.requires_grad_(False)
    data = load_data(s.data, ref.source, int(hf.config.vocab_size), s.samples, s.seq_len, s.held_out_samples, s.text_field, s.txt_mode,
                     validation_samples=s.validation_samples)
    data.train, data.held_out, data.validation = (t.to(s.device) for t in (data.train, data.held_out, data.validation))
    output = Path(s.output)
    ckpt = Checkpoints(output)
    meta = {"settings": s.result_keys(), "model_source": ref.source, "version": __version__}
    if s.resume:
        old = ckpt.read_json("meta.json")
        if old is None:
            log(f"--resume: no checkpoint in {ckpt.dir}; starting from the beginning")
        elif not isinstance(old, dict) or old.get("settings") != meta["settings"]:
            raise FTPError(f"--resume: checkpoint {ckpt.dir} was made with other settings (or is corrupt); use the same flags or delete it")
    else:
        ckpt.reset()
    ckpt.write_json("meta.json", meta)
    reference = dense_logits(hf, data.train, s.batch_size)
    influence = block_influence(hf, data.train, batch_size=s.batch_size)  # GA seeds and the ShortGPT row
    ctx = Context(s, hf, data, reference, free, n, ckpt, log, influence)
    timings["setup_s"] = time.perf_counter() - t0
    if s.greedy_seeds:
        t = time.perf_counter()
        ctx.removal = removal_order(ctx)
        timings["removal_order_s"] = time.perf_counter() - t

    uniform = [0.0] * n
    for b in free:
        uniform[b] = s.sparsity * n / len(free)
    t = time.perf_counter()
    ga1 = run_search(ctx, "ga1", None, s.seed, uniform)
    step1, _ = ga1.best()
    timings["step1_s"] = time.perf_counter() - t
    _maybe_interrupt("step1")
    t = time.perf_counter()
    bank, step2, thresholds = run_router_training(ctx, step1)
    timings["step2_s"] = time.perf_counter() - t
    t = time.perf_counter()
    ga3 = run_search(ctx, "ga3", bank, s.seed + 3, step1)
    step3, _ = ga3.best()
    static = static_router_bank(n).to(s.device)
    candidates = [("step 1", step1, static), ("step 2", step1, bank), ("step 3", step3, bank)]
    selection = select_final(ctx, candidates)
    _, final, routers = next(c for c in candidates if c[0] == selection["chosen"])
    if not (routers is bank and final == step1):  # step 2's thresholds belong to step 1's sparsities and the trained routers
        thresholds = calibrate(ctx, final, routers)
    bank = routers
    timings["step3_s"] = time.perf_counter() - t

    settings_doc = {k: v for k, v in asdict(s).items() if k not in ("resume", "progress")}
    schedule = new_schedule(
        hf.config,
        final,
        routers=bank.cpu(),
        decode_thresholds=thresholds,
        name_or_path=ref.source if ref.name != "ftp-tiny-llama" else ref.name,
        produced_by={
            "tool": "ftp-train",
            "version": __version__,
            "method": "FTP (arXiv 2412.11494): GA sparsity search with static routers, router training, GA fine-tuning",
            "settings": settings_doc,
            "data": data.source,
            "calibration": {"decode_thresholds": {"samples": s.calib_samples, "prompt_len": s.seq_len // 2, "order": "block by block"}},
            "seed": s.seed,
            "world_size": dist.world(),
            # ftp-export eval drops these blocks as a second layer-dropping baseline
            **({"block_removal": {**ctx.removal, "windows": s.removal_samples}} if ctx.removal else {}),
        },
    )
    digest = json.dumps({"s": final, "t": thresholds, "r": {k: v.tolist() for k, v in bank.state_dict().items()}})
    digests = dist.all_gather_object(digest)
    if any(d != digests[0] for d in digests):
        raise RuntimeError("ranks disagree on the final schedule")
    report: dict[str, Any] = {
        "tool": "ftp-train",
        "settings": settings_doc,
        "data": data.source,
        "world_size": dist.world(),
        "ranks_agree": True,
        "block_sparsity": {"uniform": uniform, "step1_ga_static": step1, "step3_ga_dynamic": step3, "final": final},
        "selection": selection,
        "flop_ratio_dense_over_routed": routed_linear_flop_ratio(hf.config, final),
        "block_removal": ctx.removal,
        "ga1_history": ga1.history,
        "router_history": step2["history"],
        "router_fit": {k: v for k, v in step2.items() if k != "history"},
        "ga3_history": ga3.history,
        "decode_thresholds": thresholds,
    }
    if s.evaluate:
        t = time.perf_counter()
        report["comparison"] = compare(ctx, uniform, candidates, selection["chosen"])
        timings["evaluation_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    report["timings"] = timings
    if dist.is_main():
        from ftp_export_trainer.report import write_report

        save_schedule(schedule, output)
        report["schedule"] = str(output)
        write_report(report, output)
    dist.barrier()
    return report


def _resolve(model: str | None) -> ModelRef:
    from ftp_export.architectures import resolve_model

    return resolve_model(model)


STEP_TITLES = {"step 1": "GA + static router (step 1)", "step 2": "GA + dynamic router (step 2)",
               "step 3": "GA fine-tuned + dynamic router (step 3)"}


@torch.no_grad()
def select_final(ctx: Context, candidates: list[tuple[str, list[float], RouterBank]]) -> dict[str, Any]:
    """Which of steps 1-3 becomes the schedule: the lowest KL to dense on the validation windows
    (held-out text, disjoint from the calibration windows every step fits and from the
    comparison table's). Steps 2 and 3 only ever lower the *calibration* KL; on held-out text
    that can be a loss (SmolLM2-135M, docs/evaluation.md), and then an earlier step is kept.
    Without validation windows (``--validation-samples 0`` or too little held-out text) step 3 is."""
    s, val = ctx.settings, ctx.data.validation
    if len(val) == 0:
        return {"windows": 0, "kl": {}, "chosen": candidates[-1][0]}
    ref = dense_logits(ctx.hf, val, s.batch_size)
    kl: dict[str, float] = {}
    for name, sp, routers in candidates:
        same = next((kl[n] for n, p, r in candidates if n in kl and p == sp and r is routers), None)
        kl[name] = same if same is not None else routed_kl(routed_model(ctx.hf, sp, routers), val, ref, s.batch_size)
    # ties (identical schedules) go to the later step
    chosen = min(reversed(list(kl)), key=lambda n: kl[n])
    ctx.log(f"final schedule: {chosen} (validation KL " + ", ".join(f"{n} {v:.4f}" for n, v in kl.items()) + ")")
    return {"windows": len(val), "kl": kl, "chosen": chosen}


@torch.no_grad()
def compare(ctx: Context, uniform: list[float], candidates: list[tuple[str, list[float], RouterBank]], chosen: str) -> list[dict[str, Any]]:
    """Held-out perplexity and KL to dense of the dense model, the routed variants (the chosen
    one marked "= FTP") and layer dropping (ShortGPT's blocks and the greedy KL order's), the
    latter also at FTP's FLOPs."""
    s, hf, held = ctx.settings, ctx.hf, ctx.data.held_out
    ref = dense_logits(hf, held, s.batch_size)
    static = static_router_bank(ctx.n).to(s.device)  # the uniform baseline's

    def routed(sp: list[float], routers: RouterBank) -> Callable[[torch.Tensor], torch.Tensor]:
        model = routed_model(hf, sp, routers)
        return lambda ids: model(ids, mode="prefill").logits.float()

    final = next(sp for name, sp, _ in candidates if name == chosen)
    counts = bracketing_drop_counts(hf.config, final)
    # layer dropping at the bracketing counts: ShortGPT's blocks, and the greedy KL order's
    # (same search as FTP's seeds: FTP against it is what token routing adds)
    baselines = {"ShortGPT": [shortgpt_blocks(ctx.influence, c) for c in counts]}  # name -> block sets
    order = ctx.removal["order"] if ctx.removal else []
    if all(c <= len(order) for c in counts):
        baselines["greedy KL"] = [sorted(order[:c]) for c in counts]
    drop_rows = [(f"{name} drop {len(b)} blocks {b}", _hf_logits(drop_blocks(hf, b)), len(b)) for name, sets in baselines.items() for b in sets]
    rows = [
        ("dense", _hf_logits(hf), [0.0] * ctx.n),
        ("uniform + static router", routed(uniform, static), uniform),
        *((STEP_TITLES[name] + (" = FTP" if name == chosen else ""), routed(sp, routers), sp) for name, sp, routers in candidates),
        *drop_rows,
    ]
    out = []
    for name, fwd, sp in tqdm(rows, desc="held-out eval", disable=not (s.progress and dist.is_main()), leave=False):
        m = held_out_metrics(fwd, held, ref, s.batch_size)
        ratio = routed_linear_flop_ratio(hf.config, sp) if isinstance(sp, list) else ctx.n / (ctx.n - sp)
        out.append({"method": name, **m, "flop_ratio": ratio})
    # layer dropping at exactly the routed FLOPs: the bracketing drop counts mixed over requests
    ftp_ratio = routed_linear_flop_ratio(hf.config, final)
    for name in baselines:
        measured = [r for r in out if r["method"].startswith(f"{name} drop ")]
        interp = {k: interpolate_at_flops(ftp_ratio, [(r["flop_ratio"], r[k]) for r in measured], log=k == "perplexity")
                  for k in ("perplexity", "kl_to_dense")}
        out.append({"method": f"{name} at equal FLOPs (interpolated)", **interp, "tokens": measured[0]["tokens"], "flop_ratio": ftp_ratio})
    return out


def _hf_logits(model: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda ids: model(input_ids=ids, use_cache=False).logits.float()
