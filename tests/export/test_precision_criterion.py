"""The parity criterion on made-up traces (no export): per step ``max|d| <= atol + rtol * max|ref|``,
routing identical for float32 and agreeing on >= 99% of decisions for reduced precision, tokens
identical; the dtype defaults and overrides; declared vs run-time shapes; the elapsed-time line."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from ftp_export.export.parity import ParityCase, compare
from ftp_export.export.tolerance import DEFAULT_TOLERANCES, Tolerance, tolerance_for
from ftp_export.runtimes.base import StepTrace
from ftp_export.runtimes.ort import shape_contradictions

FLOAT32 = DEFAULT_TOLERANCES["float32"]
VOCAB = 8


def _case(batch: int = 1, tokens: int = 50, steps: int = 3) -> ParityCase:
    ids = torch.ones(batch, tokens, dtype=torch.int64)
    return ParityCase("made-up", ids, torch.ones_like(ids), steps)


def _trace(scale: float, steps: int = 3, tokens: int = 50, kept: int = 20, rows: tuple[int, ...] = (0,)) -> StepTrace:
    """Prefill logits [1, 1, V] ('last') of size ``scale``, decode logits [1, 1, V]; one top-k block
    keeping the first ``kept`` of ``tokens`` tokens, one threshold block computing ``rows``."""
    logits = np.linspace(-scale, scale, VOCAB, dtype=np.float32).reshape(1, 1, VOCAB)
    slots = np.arange(tokens // 2)[None]
    prefill = {"routing.1.indices": slots, "routing.1.active": (slots < kept)}
    decode = {"routing.2.rows": np.array(rows, dtype=np.int64)}
    return StepTrace(logits=[np.repeat(logits, tokens, axis=1)] + [logits.copy() for _ in range(steps - 1)],
                     routing=[prefill] + [dict(decode) for _ in range(steps - 1)], tokens=np.zeros((1, steps), dtype=np.int64))


def _drifted(ref: StepTrace, drift: float, step: int | None = None) -> StepTrace:
    got = StepTrace(logits=[x.copy() for x in ref.logits], routing=[dict(r) for r in ref.routing], tokens=ref.tokens.copy())
    for i, x in enumerate(got.logits):
        if step is None or i == step:
            x[..., -1] += drift
    got.logits[0] = got.logits[0][:, -1:]  # the graph returns the last position only
    return got


def test_a_float32_drift_that_passes_only_because_of_rtol():
    """SmolLM2-135M's case: logits near 20, float32 drift 2e-4: over atol alone, within atol + rtol * 20."""
    ref = _trace(scale=20.0)
    got = _drifted(ref, 2e-4)
    report = compare(_case(), ref, got, FLOAT32, logits="last")
    assert report.passed and report.steps_over_tolerance == []
    assert report.prefill_max_abs_diff == pytest.approx(2e-4, rel=1e-2) and report.prefill_max_abs_ref == pytest.approx(20.0)
    assert not compare(_case(), ref, got, Tolerance(atol=FLOAT32.atol, rtol=0.0), logits="last").passed
    assert compare(_case(), ref, got, FLOAT32.atol, logits="last").passed  # a bare atol keeps float32's rtol


def test_a_drift_beyond_the_bound_fails_at_that_step_only():
    ref = _trace(scale=20.0)
    report = compare(_case(), ref, _drifted(ref, 1e-3, step=2), FLOAT32, logits="last")
    assert not report.passed and report.steps_over_tolerance == [2]
    assert report.decode_max_abs_diff == pytest.approx(1e-3, rel=1e-2)
    small = _trace(scale=1.0)  # the bound follows each step's own scale: 1e-4 + 2e-5 * 1
    assert not compare(_case(), small, _drifted(small, 2e-4), FLOAT32, logits="last").passed


def test_routing_identical_for_float32_agreement_for_reduced_precision():
    ref = _trace(scale=20.0, tokens=400, kept=100, steps=3)
    flipped = _drifted(ref, 0.0)
    active = flipped.routing[0]["routing.1.active"].copy()
    active[0, 99], active[0, 100] = False, True  # one swapped token: 2 of 400 + 2 decisions disagree
    flipped.routing[0] = {**flipped.routing[0], "routing.1.active": active}
    case = _case(tokens=400)
    strict = compare(case, ref, flipped, FLOAT32, logits="last")
    assert not strict.passed and not strict.routing_identical and strict.routing_mismatches == ["step 0 routing.1.active"]
    assert strict.routing_decisions == 400 + 2 and strict.routing_agreement == pytest.approx(1 - 2 / 402)
    half = tolerance_for("float16")
    assert compare(case, ref, flipped, half, logits="last").passed  # 99.5% agree
    flipped.routing[1] = {"routing.2.rows": np.array([], dtype=np.int64)}  # and a decode flip: 3 of 402
    flipped.routing[2] = {"routing.2.rows": np.array([], dtype=np.int64)}  # two: 4 of 402, still >= 99%
    assert compare(case, ref, flipped, half, logits="last").routing_agreement == pytest.approx(1 - 4 / 402)
    few = _trace(scale=20.0, tokens=50, kept=20)
    swapped = _drifted(few, 0.0)
    swapped.routing[0] = {"routing.1.indices": few.routing[0]["routing.1.indices"],
                          "routing.1.active": np.roll(few.routing[0]["routing.1.active"], 1, axis=1)}
    assert not compare(_case(), few, swapped, half, logits="last").passed  # 2 of 52 disagree: under 99%


def test_tokens_must_be_identical():
    ref = _trace(scale=20.0)
    got = _drifted(ref, 0.0)
    got.tokens[0, -1] = 5
    report = compare(_case(), ref, got, tolerance_for("float16"), logits="last")
    assert not report.passed and report.token_agreement == pytest.approx(2 / 3)


def test_dtype_defaults_and_overrides():
    assert (FLOAT32.atol, FLOAT32.rtol, FLOAT32.routing_agreement) == (1e-4, 2e-5, 1.0)
    assert FLOAT32.bound(20.0) == pytest.approx(5e-4)
    assert tolerance_for("float16").bound(20.0) == pytest.approx(1e-2 + 20 * 2**-7)
    custom = tolerance_for("float16", atol=0.0, rtol=1e-3)
    assert (custom.atol, custom.rtol, custom.routing_agreement) == (0.0, 1e-3, 0.99)
    assert "rtol" in FLOAT32.describe() and "routing identical" in FLOAT32.describe()


def test_declared_shapes_against_run_time_shapes():
    declared = {
        "input_ids": ["batch_size", "sequence_length"],
        "attention_mask": ["batch_size", "past_sequence_length + sequence_length"],
        "past.0": ["batch_size", 2, "past_sequence_length", 4],
        "routing.2.indices": ["batch_size", 1],
    }
    actual = {"input_ids": (2, 1), "attention_mask": (2, 7), "past.0": (2, 2, 6, 4), "routing.2.indices": (2, 1)}
    assert shape_contradictions(declared, actual) == []
    assert shape_contradictions(declared, {**actual, "routing.2.indices": (2, 3)}) == ["routing.2.indices dim 1 declared 1, got 3"]
    (problem,) = shape_contradictions(declared, {**actual, "attention_mask": (2, 8)})
    assert "past_sequence_length + sequence_length' is 8, not 7" in problem
    (problem,) = shape_contradictions(declared, {**actual, "past.0": (3, 2, 6, 4)})
    assert "'batch_size' is" in problem


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_elapsed_ticks_on_a_terminal_and_logs_one_line():
    import time

    from ftp_export.export.progress import elapsed

    said: list[str] = []
    term = _Terminal()
    with elapsed("exported", said.append, stream=term, interval=0.01) as say:
        time.sleep(0.05)
        say("      a step")
    assert "\rexported: 0 s" in term.getvalue().replace("      ", "") and term.getvalue().endswith("\r\033[K")
    assert said[0] == "      a step" and said[1].strip().startswith("exported in ")
    quiet = io.StringIO()
    with elapsed("exported", said.append, stream=quiet, interval=0.01):
        time.sleep(0.03)
    assert quiet.getvalue() == "" and len(said) == 3


def test_onnxruntime_steps_record_contradicted_declarations():
    from types import SimpleNamespace

    from ftp_export.runtimes.ort import OrtRuntime

    class Session:
        def get_inputs(self):
            return [SimpleNamespace(name="input_ids", shape=["batch_size", "sequence_length"])]

        def get_outputs(self):
            return [SimpleNamespace(name="routing.2.indices", shape=["batch_size", 1])]

    runtime = OrtRuntime.__new__(OrtRuntime)
    runtime.sessions, runtime.shape_problems = {"prefill": Session()}, []
    feeds = {"input_ids": np.zeros((2, 9), dtype=np.int64)}
    for _ in range(2):  # recorded once
        runtime.check_shapes("prefill", feeds, {"routing.2.indices": np.zeros((2, 4), dtype=np.int64)})
    assert runtime.shape_problems == ["prefill: routing.2.indices dim 1 declared 1, got 4"]
