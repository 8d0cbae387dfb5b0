"""Exports of the embedded default model through the CLI, made once per session and shared by the
tests that read them (parity verdicts, manifests, the AOTInductor packages themselves)."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ftp_export.calibration.thresholds import calibrate_decode_thresholds
from ftp_export.cli import main
from ftp_export.export.job import DEFAULT_SCHEDULE
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.schedule import new_schedule, save_schedule
from tests.helpers import export_logits

DROP09 = [0.0, 1.0, 0.9, 0.4, 0.4, 0.4]  # block 1 dropped, block 2 at 0.9, the rest routed at 0.4


@pytest.fixture(scope="session")
def drop09_schedule(default_model, tmp_path_factory) -> Path:
    """A dropped block, a block at sparsity 0.9 (K = 1 at short lengths), static routers, calibrated thresholds."""
    schedule = new_schedule(default_model.config, DROP09, name_or_path="default")
    stream = torch.randint(3, 250, (4000,), generator=torch.Generator().manual_seed(3))
    calibrate_decode_thresholds(RoutedCausalLM(default_model, schedule).eval(), stream, max_context=64, windows=16)
    return save_schedule(schedule, tmp_path_factory.mktemp("sched") / "drop09.json")


@pytest.fixture(scope="session")
def default_export(drop09_schedule, tmp_path_factory) -> Callable[[str, str], tuple[int, Path, dict]]:
    """``default_export(target, which)`` -> (exit status, folder, parity report); ``which`` is
    'shipped' (the default model's s40, the target's default ``--logits``) or 'drop+0.9' (the other
    choice), see ``tests.helpers.export_logits``. Each export runs once per session; what it printed is kept in
    ``folder.parent / "stdout.txt"``."""
    made: dict[tuple[str, str], tuple[int, Path, dict]] = {}

    def export(target: str, which: str) -> tuple[int, Path, dict]:
        if (target, which) not in made:
            schedule = DEFAULT_SCHEDULE if which == "shipped" else drop09_schedule
            out = tmp_path_factory.mktemp("exports") / f"{target}-{which}"
            logits = [] if which == "shipped" else ["--logits", export_logits(target, which)]
            printed = io.StringIO()
            try:
                with contextlib.redirect_stdout(printed):
                    rc = main(["--target", target, "--schedule", str(schedule), "-o", str(out), "--parity-tokens", "6", *logits])
            finally:
                sys.stdout.write(printed.getvalue())
            (out.parent / "stdout.txt").write_text(printed.getvalue())  # what the user saw, for tests that read it
            made[target, which] = (rc, out, json.loads((out / "parity.json").read_text()))
        return made[target, which]

    return export
