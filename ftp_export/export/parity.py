"""Parity of exported graphs against the PyTorch reference: logits at prefill and every decode
step, routing decisions per block, greedy tokens. The runtime runs its own greedy loop (its own
argmax feeds its next step, its own outputs its next step's cache), so token agreement is a real
check. The reference runs on the model's device; verdict rules are the same on every device."""

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
    """The PyTorch reference on the model's own device (CPU or GPU)."""
    res = greedy_generate(model, case.input_ids.to(model.device), case.attention_mask.to(model.device), case.new_tokens)
    return StepTrace(
        logits=[lg.float().cpu().numpy() for lg in res.step_logits],
        routing=[routing_to_dict(r) for r in res.step_routing],
        tokens=res.tokens.cpu().numpy(),
    )


def compare(case: ParityCase, ref: StepTrace, got: StepTrace, atol: float) -> CaseReport:
    valid = case.attention_mask.cpu().numpy().astype(bool)
    prefill = float(np.abs(ref.logits[0] - got.logits[0])[valid].max())
    decode = 0.0
    for a, b in zip(ref.logits[1:], got.logits[1:]):
        decode = max(decode, float(np.abs(a - b).max()))
    mismatches: list[str] = []
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
    """Run every case through the reference and the runtime; returns the parity report dict."""
    reports = []
    for case in cases:
        if progress:
            progress(case.name)
        ref = reference_trace(model, case)
        got = runtime.generate(case.input_ids.cpu().numpy(), case.attention_mask.cpu().numpy(), case.new_tokens)
        reports.append(compare(case, ref, got, atol))
    return {"atol": atol, "passed": all(r.passed for r in reports), "cases": [asdict(r) for r in reports]}


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
    lines.append(f"atol {report['atol']:.0e}: {'PASS' if report['passed'] else 'FAIL'}")
    return "\n".join(lines)
