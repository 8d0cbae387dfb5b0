"""Parity of exported graphs against the PyTorch reference: logits at prefill and every decode
step, routing decisions per block, greedy tokens. The runtime runs its own greedy loop (its own
argmax feeds its next step, its own outputs its next step's cache), so token agreement is a real
check. The reference runs on the model's device; verdict rules are the same on every device.

Prefill logits are compared as the graph returns them (its signature's ``logits``): 'all' at
every valid position, 'last' ([B, 1, V]) against the reference's all-position logits at each
row's last valid position (:func:`last_valid_index`, computed here independently of the graph).
A graph whose logits have another shape fails parity.

Verdict (:mod:`.tolerance`): each step passes iff ``max|d| <= atol + rtol * max|ref|``; routing
identical (float32) or agreeing on at least ``routing_agreement`` of its decisions (reduced
precision, against the float32 reference, :mod:`.agreement`); greedy tokens identical."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ftp_export.export.agreement import routing_agreement
from ftp_export.export.tolerance import DEFAULT_ATOL, DEFAULT_RTOL, Tolerance
from ftp_export.routed.generation import greedy_generate
from ftp_export.routed.model import BlockRouting, RoutedCausalLM
from ftp_export.runtimes.base import Runtime, StepTrace


@dataclass
class ParityCase:
    name: str
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    new_tokens: int


@dataclass
class CaseReport:
    name: str
    batch: int
    prompt_lengths: list[int]
    new_tokens: int
    prefill_logits: str  # 'last' or 'all': what the prefill graph returns
    prefill_max_abs_diff: float
    prefill_max_abs_ref: float  # max |reference logit| over the compared positions: the scale rtol applies to
    decode_max_abs_diff: float  # over every decode step
    decode_max_abs_ref: float
    steps_over_tolerance: list[int]  # 0 = prefill, i = decode step i: max|d| > atol + rtol * max|ref|
    routing_identical: bool
    routing_mismatches: list[str]
    routing_agreement: float  # fraction of routing decisions (block x token x step) that agree
    routing_decisions: int
    tokens_identical: bool
    token_agreement: float
    passed: bool


# what the report keeps of the dense baseline's cases
BASELINE_FIGURES = ("name", "prefill_max_abs_diff", "decode_max_abs_diff", "tokens_identical", "token_agreement")


def routing_to_dict(routing: list[BlockRouting | None]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for b, r in enumerate(routing):
        if r is None:
            continue
        if r.rows is not None:
            out[f"routing.{b}.rows"] = r.rows.cpu().numpy()
        else:
            out[f"routing.{b}.indices"] = r.indices.cpu().numpy()
            out[f"routing.{b}.active"] = r.active.cpu().numpy()
    return out


def drop_skipped_rows(trace: StepTrace) -> StepTrace:
    """Decode ``routing.N.rows`` without its -1 entries: the static-shape decode lowering
    (:mod:`ftp_export.routed.lowering`) returns every flat row, -1 where the token skipped the
    block; the dynamic one (and the reference) only the kept rows. Kept rows are never negative."""
    trace.routing = [
        {name: (v[v >= 0] if name.endswith(".rows") else v) for name, v in step.items()} for step in trace.routing
    ]
    return trace


def reference_trace(model: RoutedCausalLM, case: ParityCase) -> StepTrace:
    """The PyTorch reference on the model's own device (CPU or GPU); prefill logits at every position."""
    res = greedy_generate(model, case.input_ids.to(model.device), case.attention_mask.to(model.device), case.new_tokens)
    return StepTrace(
        logits=[lg.float().cpu().numpy() for lg in res.step_logits],
        routing=[routing_to_dict(r) for r in res.step_routing],
        tokens=res.tokens.cpu().numpy(),
    )


def last_valid_index(mask: np.ndarray) -> np.ndarray:
    """Each row's last valid position (mask != 0), T - 1 for a row with none: where a prefill
    graph exported with ``logits='last'`` reads its logits."""
    t = mask.shape[1]
    rev = mask[:, ::-1].astype(bool)
    return np.where(rev.any(-1), t - 1 - rev.argmax(-1), t - 1)


def prefill_diff(ref_logits: np.ndarray, got_logits: np.ndarray, valid: np.ndarray, logits: str) -> tuple[float, float, str | None]:
    """Max |dlogit| of the prefill step (reference: all positions [B, T, V]), the reference's max
    |logit| over the same positions, and a shape mismatch, if any."""
    if logits == "last":
        want = ref_logits[np.arange(len(valid)), last_valid_index(valid)][:, None]
    else:
        want = ref_logits
    if got_logits.shape != want.shape:
        return float("inf"), float(np.abs(want).max()), f"step 0 logits shape {tuple(got_logits.shape)}, expected {tuple(want.shape)} (logits={logits})"
    diff, scale = np.abs(want - got_logits), np.abs(want)
    if logits != "last":
        diff, scale = diff[valid], scale[valid]
    return float(diff.max()), float(scale.max()), None


def _routing_mismatches(ref: StepTrace, got: StepTrace) -> list[str]:
    """Every routing output of every step that is not identical (missing, other shape or values)."""
    found = []
    for step, (ra, rb) in enumerate(zip(ref.routing, got.routing)):
        for name in sorted(set(ra) | set(rb)):
            if name not in ra or name not in rb or ra[name].shape != rb[name].shape or not np.array_equal(ra[name], rb[name]):
                found.append(f"step {step} {name}")
    return found


def _token_agreement(ref: StepTrace, got: StepTrace) -> float:
    if ref.tokens is None or got.tokens is None or ref.tokens.shape != got.tokens.shape:
        return 0.0
    return float((ref.tokens == got.tokens).mean()) if ref.tokens.size else 1.0


def compare(
    case: ParityCase, ref: StepTrace, got: StepTrace, atol: float | Tolerance = DEFAULT_ATOL, logits: str = "all",
    token_floor: float | None = None,
) -> CaseReport:
    """``ref`` holds all-position prefill logits; ``logits`` says what ``got``'s prefill returns;
    ``atol`` is a :class:`Tolerance` or an absolute tolerance (with float32's default rtol);
    ``token_floor``: with a reduced-precision tolerance, greedy tokens pass when they agree with the
    reference's at least this much (the dense model's agreement in the same precision)."""
    tol = atol if isinstance(atol, Tolerance) else Tolerance(atol=atol, rtol=DEFAULT_RTOL)
    valid = case.attention_mask.cpu().numpy().astype(bool)
    prefill, prefill_ref, bad_shape = prefill_diff(ref.logits[0], got.logits[0], valid, logits)
    steps = [(prefill, prefill_ref)]
    for a, b in zip(ref.logits[1:], got.logits[1:]):
        steps.append((float(np.abs(a - b).max()), float(np.abs(a).max())) if a.shape == b.shape else (float("inf"), 0.0))
    over = [i for i, (d, scale) in enumerate(steps) if not d <= tol.bound(scale)]
    mismatches = _routing_mismatches(ref, got)
    agreement, decisions = routing_agreement(ref.routing, got.routing, valid, [int(np.prod(x.shape[:2])) for x in got.logits[1:]])
    routing_ok = not mismatches if tol.exact_routing else agreement >= tol.routing_agreement
    identical = ref.tokens is not None and got.tokens is not None and np.array_equal(ref.tokens, got.tokens)
    floor_ok = token_floor is not None and not tol.exact_routing and _token_agreement(ref, got) >= token_floor
    ok = not over and not bad_shape and routing_ok and (identical or floor_ok) and len(got.logits) == len(ref.logits)
    return CaseReport(
        name=case.name,
        batch=int(case.input_ids.shape[0]),
        prompt_lengths=[int(x) for x in valid.sum(-1)],
        new_tokens=case.new_tokens,
        prefill_logits=logits,
        prefill_max_abs_diff=prefill,
        prefill_max_abs_ref=prefill_ref,
        decode_max_abs_diff=max((d for d, _ in steps[1:]), default=0.0),
        decode_max_abs_ref=max((s for _, s in steps[1:]), default=0.0),
        steps_over_tolerance=over,
        routing_identical=not mismatches and not bad_shape,
        routing_mismatches=([bad_shape] if bad_shape else []) + mismatches[:20],
        routing_agreement=round(agreement, 6),
        routing_decisions=decisions,
        tokens_identical=bool(identical),
        token_agreement=round(_token_agreement(ref, got), 6),
        passed=bool(ok),
    )


def run_parity(
    model: RoutedCausalLM,
    runtime: Runtime,
    cases: list[ParityCase],
    atol: float | Tolerance = DEFAULT_ATOL,
    progress: Callable[[str], None] | None = None,
    *,
    dtype: str = "float32",
    baseline: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run every case through the reference ``model`` (float32 for a reduced-precision export) and
    the runtime; returns the parity report dict. ``atol``: a :class:`Tolerance` or an absolute
    tolerance (float32's rtol); ``dtype``: the export's, for the report; ``baseline``: the parity
    report of the dense model exported the same way (a reduced-precision export's greedy tokens
    pass when they agree at least as much as its, case by case; its figures go in the report as
    ``dense_baseline``). The prefill logits are
    compared as the runtime's prefill signature says they are ('last'/'all'). An output whose
    run-time shape contradicts its declared shape (``runtime.shape_problems``) fails parity."""
    tol = atol if isinstance(atol, Tolerance) else Tolerance(atol=atol, rtol=DEFAULT_RTOL)
    logits = runtime.signatures["prefill"].logits
    reports = []
    floors = {c["name"]: c["token_agreement"] for c in baseline["cases"]} if baseline else {}
    kept: dict[int, int] = {}
    decoded = 0
    for case in cases:
        if progress:
            progress(case.name)
        ref = drop_skipped_rows(reference_trace(model, case))
        got = drop_skipped_rows(runtime.generate(case.input_ids.cpu().numpy(), case.attention_mask.cpu().numpy(), case.new_tokens))
        reports.append(compare(case, ref, got, tol, logits, token_floor=floors.get(case.name)))
        for step in got.routing[1:]:  # decode steps: one new token per row
            decoded += int(case.input_ids.shape[0])
            for name, rows in step.items():
                if name.endswith(".rows"):
                    b = int(name.split(".")[1])
                    kept[b] = kept.get(b, 0) + int(rows.size)
    skip = {str(b): {"realised": round(1 - k / decoded, 4), "scheduled": model.schedule.block_sparsity[b]}
            for b, k in sorted(kept.items())} if decoded else {}
    shapes = list(getattr(runtime, "shape_problems", []))
    reference_dtype = str(next(model.hf.parameters()).dtype).removeprefix("torch.")
    return {"atol": tol.atol, "rtol": tol.rtol, "routing_agreement_min": tol.routing_agreement, "criterion": tol.describe(),
            "dtype": dtype, "reference_dtype": reference_dtype, "logits": logits,
            "passed": all(r.passed for r in reports) and not shapes, "shape_problems": shapes,
            "cases": [asdict(r) for r in reports], "decode_skip_rate": {"decoded_tokens": decoded, "blocks": skip},
            "dense_baseline": None if baseline is None else {"passed": baseline["passed"], "cases": [
                {k: c[k] for k in BASELINE_FIGURES} for c in baseline["cases"]]}}


def pad_batch(sequences: list[list[int]], pad_id: int, side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token lists into ``input_ids``/``attention_mask`` tensors (left padding by default)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(sequences), width), dtype=torch.int64)
    for i, seq in enumerate(sequences):
        sl = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[i, sl] = torch.tensor(seq, dtype=torch.int64)
        mask[i, sl] = 1
    return ids, mask


def format_table(report: dict[str, Any]) -> str:
    """A short fixed-width parity table for the terminal."""
    head = (f"{'case':<20}{'batch':>6}{'prefill |dlogit|':>18}{'decode |dlogit|':>17}{'max|ref|':>10}"
            f"{'routing':>9}{'tokens':>8}{'':>3}")
    lines = [head, "-" * len(head)]
    for c in report["cases"]:
        routing = "same" if c["routing_identical"] else f"{c.get('routing_agreement', 0.0):.1%}"
        scale = max(c.get("prefill_max_abs_ref", 0.0), c.get("decode_max_abs_ref", 0.0))
        lines.append(
            f"{c['name']:<20}{c['batch']:>6}{c['prefill_max_abs_diff']:>18.2e}{c['decode_max_abs_diff']:>17.2e}{scale:>10.3g}"
            f"{routing:>9}{'same' if c['tokens_identical'] else format(c.get('token_agreement', 0.0), '.0%'):>8}{'ok' if c['passed'] else 'FAIL':>5}"
        )
    for c in (report.get("dense_baseline") or {}).get("cases", []):
        lines.append(f"{'  dense, same way':<20}{'':>6}{c['prefill_max_abs_diff']:>18.2e}{c['decode_max_abs_diff']:>17.2e}{'':>10}"
                     f"{'':>9}{'same' if c['tokens_identical'] else format(c['token_agreement'], '.0%'):>8}   ({c['name']})")
    for problem in report.get("shape_problems", [])[:5]:
        lines.append(f"declared shape contradicted: {problem}")
    reference = f"{report.get('dtype', 'float32')} export vs {report.get('reference_dtype', 'float32')} PyTorch"
    criterion = report.get("criterion", f"atol {report['atol']:.0e}")
    lines.append(f"{criterion} ({reference}), prefill logits {report.get('logits', 'all')}: {'PASS' if report['passed'] else 'FAIL'}")
    rates = report.get("decode_skip_rate", {})
    if rates.get("blocks"):
        per_block = ", ".join(f"{b}: {r['realised']:.2f} ({r['scheduled']:.2f})" for b, r in rates["blocks"].items())
        lines.append(f"decode skip rate per block, realised (scheduled), over {rates['decoded_tokens']} decoded tokens: {per_block}")
    return "\n".join(lines)
