"""Parity of exported graphs against the PyTorch reference: logits at prefill and every decode
step, routing decisions per block, greedy tokens. The runtime runs its own greedy loop (its own
argmax feeds its next step, its own outputs its next step's cache), so token agreement is a real
check. The reference runs on the model's device; verdict rules are the same on every device.

Prefill logits are compared as the graph returns them (its signature's ``logits``): 'all' at
every valid position, 'last' ([B, 1, V]) against the reference's all-position logits at each
row's last valid position (:func:`last_valid_index`, computed here independently of the graph).
A graph whose logits have another shape fails parity."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ftp_export.routed.generation import greedy_generate
from ftp_export.routed.model import BlockRouting, RoutedCausalLM
from ftp_export.runtimes.base import Runtime, StepTrace

DEFAULT_ATOL = 1e-4


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
    decode_max_abs_diff: float
    routing_identical: bool
    routing_mismatches: list[str]
    tokens_identical: bool
    passed: bool


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


def prefill_diff(ref_logits: np.ndarray, got_logits: np.ndarray, valid: np.ndarray, logits: str) -> tuple[float, str | None]:
    """Max |dlogit| of the prefill step (reference: all positions [B, T, V]) and a shape mismatch, if any."""
    if logits == "last":
        want = ref_logits[np.arange(len(valid)), last_valid_index(valid)][:, None]
    else:
        want = ref_logits
    if got_logits.shape != want.shape:
        return float("inf"), f"step 0 logits shape {tuple(got_logits.shape)}, expected {tuple(want.shape)} (logits={logits})"
    diff = np.abs(want - got_logits)
    return float((diff if logits == "last" else diff[valid]).max()), None


def compare(case: ParityCase, ref: StepTrace, got: StepTrace, atol: float, logits: str = "all") -> CaseReport:
    """``ref`` holds all-position prefill logits; ``logits`` says what ``got``'s prefill returns."""
    valid = case.attention_mask.cpu().numpy().astype(bool)
    prefill, bad_shape = prefill_diff(ref.logits[0], got.logits[0], valid, logits)
    decode = 0.0
    for a, b in zip(ref.logits[1:], got.logits[1:]):
        decode = max(decode, float(np.abs(a - b).max()))
    mismatches: list[str] = [bad_shape] if bad_shape else []
    for step, (ra, rb) in enumerate(zip(ref.routing, got.routing)):
        for name in sorted(set(ra) | set(rb)):
            if name not in ra or name not in rb or ra[name].shape != rb[name].shape or not np.array_equal(ra[name], rb[name]):
                mismatches.append(f"step {step} {name}")
    tokens_ok = ref.tokens is not None and got.tokens is not None and np.array_equal(ref.tokens, got.tokens)
    ok = prefill <= atol and decode <= atol and not mismatches and tokens_ok
    return CaseReport(
        name=case.name,
        batch=int(case.input_ids.shape[0]),
        prompt_lengths=[int(x) for x in valid.sum(-1)],
        new_tokens=case.new_tokens,
        prefill_logits=logits,
        prefill_max_abs_diff=prefill,
        decode_max_abs_diff=decode,
        routing_identical=not mismatches,
        routing_mismatches=mismatches[:20],
        tokens_identical=bool(tokens_ok),
        passed=bool(ok),
    )


def run_parity(
    model: RoutedCausalLM,
    runtime: Runtime,
    cases: list[ParityCase],
    atol: float = DEFAULT_ATOL,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every case through the reference and the runtime; returns the parity report dict.
    The prefill logits are compared as the runtime's prefill signature says they are ('last'/'all')."""
    logits = runtime.signatures["prefill"].logits
    reports = []
    kept: dict[int, int] = {}
    decoded = 0
    for case in cases:
        if progress:
            progress(case.name)
        ref = reference_trace(model, case)
        got = runtime.generate(case.input_ids.cpu().numpy(), case.attention_mask.cpu().numpy(), case.new_tokens)
        reports.append(compare(case, ref, got, atol, logits))
        for step in got.routing[1:]:  # decode steps: one new token per row
            decoded += int(case.input_ids.shape[0])
            for name, rows in step.items():
                if name.endswith(".rows"):
                    b = int(name.split(".")[1])
                    kept[b] = kept.get(b, 0) + int(rows.size)
    skip = {str(b): {"realised": round(1 - k / decoded, 4), "scheduled": model.schedule.block_sparsity[b]}
            for b, k in sorted(kept.items())} if decoded else {}
    return {"atol": atol, "logits": logits, "passed": all(r.passed for r in reports), "cases": [asdict(r) for r in reports],
            "decode_skip_rate": {"decoded_tokens": decoded, "blocks": skip}}


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
    head = f"{'case':<22}{'batch':>6}{'prefill |dlogit|':>18}{'decode |dlogit|':>17}{'routing':>9}{'tokens':>8}{'':>3}"
    lines = [head, "-" * len(head)]
    for c in report["cases"]:
        lines.append(
            f"{c['name']:<22}{c['batch']:>6}{c['prefill_max_abs_diff']:>18.2e}{c['decode_max_abs_diff']:>17.2e}"
            f"{'same' if c['routing_identical'] else 'DIFF':>9}{'same' if c['tokens_identical'] else 'DIFF':>8}"
            f"{'ok' if c['passed'] else 'FAIL':>5}"
        )
    lines.append(f"atol {report['atol']:.0e}, prefill logits {report.get('logits', 'all')}: {'PASS' if report['passed'] else 'FAIL'}")
    rates = report.get("decode_skip_rate", {})
    if rates.get("blocks"):
        per_block = ", ".join(f"{b}: {r['realised']:.2f} ({r['scheduled']:.2f})" for b, r in rates["blocks"].items())
        lines.append(f"decode skip rate per block, realised (scheduled), over {rates['decoded_tokens']} decoded tokens: {per_block}")
    return "\n".join(lines)
