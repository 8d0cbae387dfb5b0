"""``ftp-train`` SIGKILLed at a step boundary and continued with ``--resume`` ends with the same
routers (sha256), block sparsities and decode thresholds as a run that was not killed; a re-run
without ``--resume`` says that it starts over and what it discards; a finished run leaves no
checkpoint folder (issue 15). Subprocesses on the embedded default model, the smallest settings
that still run every step (block-removal order, GA 1 over two generations, router fit and
training, GA 3, the final choice on validation windows, decode thresholds)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ftp_export.schedule import load_schedule
from ftp_export_trainer.checkpoints import INTERRUPT_ENV

ARGS = ["--sparsity", "0.4", "--samples", "6", "--seq-len", "32", "--generations", "2", "--population", "4",
        "--router-steps", "3", "--router-batch", "2", "--held-out-samples", "3", "--validation-samples", "3",
        "--calib-samples", "2", "--removal-samples", "3", "--no-progress", "--no-eval", "--seed", "3", "-o", "s.json"]


def _train(cwd: Path, *extra: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != INTERRUPT_ENV}
    if kill_at:
        env[INTERRUPT_ENV] = f"{kill_at}@KILL"
    cmd = [sys.executable, "-m", "ftp_export_trainer.cli", *ARGS, *extra]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _result(folder: Path) -> tuple[str, list[float], list[float | None]]:
    sched = load_schedule(folder / "s.json")
    routers = hashlib.sha256((folder / "s.routers.safetensors").read_bytes()).hexdigest()
    return routers, sched.block_sparsity, sched.decode_thresholds


def test_sigkill_then_resume_matches_a_run_started_over(tmp_path):
    killed, fresh = tmp_path / "killed", tmp_path / "fresh"
    killed.mkdir()
    proc = _train(killed, kill_at="ga3:1")  # step 3's GA killed after its first generation
    assert proc.returncode == -9, proc.stderr
    ckpt = killed / "s.json.ckpt"
    assert {"meta.json", "removal.json", "ga1.json", "step2.json", "step2.routers.safetensors", "ga3.json"} <= {
        p.name for p in ckpt.iterdir()
    }
    assert not (killed / "s.json").exists()
    shutil.copytree(killed, fresh)

    resumed = _train(killed, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "ga3: resuming after generation 1" in resumed.stderr and "starting over" not in resumed.stderr

    over = _train(fresh)  # the same checkpoints, no --resume: discarded, with one line saying so
    assert over.returncode == 0, over.stderr
    (line,) = [ln for ln in over.stderr.splitlines() if "starting over" in ln]
    assert "ga3.json" in line and "step2.routers.safetensors" in line and "s.json.ckpt" in line
    assert "resuming" not in over.stderr

    assert _result(killed) == _result(fresh)
    assert not ckpt.exists() and not (fresh / "s.json.ckpt").exists()
    assert "Traceback" not in resumed.stderr + over.stderr
