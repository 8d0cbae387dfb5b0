"""scripts/gpu_check.sh, the one GPU check: its syntax, its plan and arguments, the stage runner's
time budget (scripts/gpu_check_stages.sh), and its CPU stages end to end (--cpu)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
STAGES = ROOT / "scripts" / "gpu_check_stages.sh"
needs_timeout = pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils timeout")


def run_script(*args: str, out: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def summary_rows(out: Path) -> dict[str, str]:
    """stage -> status, from the summary table the script printed and saved."""
    lines = (out / "summary.txt").read_text().splitlines()
    assert lines[0].split()[:2] == ["stage", "status"], lines
    rows = {}
    for line in lines[1:]:
        if line.startswith("total "):  # the bench tables follow
            return rows
        rows[line.split()[0]] = line.split()[1]
    raise AssertionError(f"no total line: {lines}")


def plan(mode: str = "gpu") -> list[str]:
    """The stage names the script accepts, from its own error message for an unknown one."""
    args = ["--cpu"] if mode == "cpu" else []
    proc = subprocess.run(["bash", str(SCRIPT), *args, "--only", "no-such-stage"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "no stage 'no-such-stage'" in proc.stderr, proc.stderr
    return proc.stderr.split("stages:")[1].split()


def test_script_syntax():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "usage:"),
    (["--only", "bench-eager,bench-nope"], "no stage 'bench-nope' in gpu mode"),
    (["--cpu", "--only", "bench-eager"], "no stage 'bench-eager' in cpu mode"),
    (["--budget", "5m"], "not a number of seconds"),
])
def test_bad_arguments_exit_2_before_any_stage(tmp_path, args, message):
    proc = run_script(*args, out=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "logs").exists()


def test_dry_run_records_every_stage_of_the_plan_once(tmp_path):
    """The GPU plan's stages, run through its phases (parallel groups included) without running a
    command: every name the script accepts appears once, and none is missing. (The table's order is
    by start second, then plan order: a run that crosses a second boundary reorders it.)"""
    proc = run_script("--dry-run", out=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = summary_rows(tmp_path)
    names = plan()
    recorded = [line.split("\t")[0] for line in (tmp_path / "logs" / "summary.tsv").read_text().splitlines()]
    assert sorted(recorded) == sorted(names) and set(rows.values()) == {"DRY"}, rows
    assert "llama_bench eager 512,2048,4096" in (tmp_path / "logs" / "bench-eager.log").read_text()


def test_only_runs_the_named_stages_after_install(tmp_path):
    run_script("--dry-run", "--only", "bench-compile,memcheck", out=tmp_path)
    assert list(summary_rows(tmp_path)) == ["install", "cuda-visible", "memcheck", "bench-compile"]


@needs_timeout
def test_stage_gets_at_most_the_time_left_and_none_after_the_budget(tmp_path):
    """A stage asking for 60 s with 3 s of budget left is stopped at ~3 s (TIMEOUT); the next one is
    not started (NOTIME); the verdict fails on either. A stage outside ONLY leaves no row."""
    script = f"""
    set -u
    LOGS={tmp_path}; SUMMARY={tmp_path}/summary.tsv; : > "$SUMMARY"
    START=$(date +%s); DEADLINE=$((START + 3)); BUDGET=3; ONLY=""; MIN_STAGE_S=1
    . {STAGES}
    stage quick 60 true
    stage slow 60 sleep 30
    stage late 60 true
    ONLY=quick,slow,late
    stage skipped 60 false
    print_summary
    summary_ok && echo VERDICT=ok || echo VERDICT=bad
    """
    t0 = time.monotonic()
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - t0
    rows = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines()[1:] if not line.startswith("VERDICT")}
    assert rows == {"quick": "PASS", "slow": "TIMEOUT", "late": "NOTIME"}, proc.stdout + proc.stderr
    assert "VERDICT=bad" in proc.stdout and elapsed < 20, (proc.stdout, elapsed)
    assert re.search(r"TIMEOUT after [123]s", (tmp_path / "slow.log").read_text())  # its limit was cut to what was left


def test_no_budget_starts_nothing_and_fails(tmp_path):
    proc = run_script("--cpu", "--budget", "0", out=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert summary_rows(tmp_path) == dict.fromkeys(plan("cpu"), "NOTIME")


@needs_timeout
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_gpu_mode_without_cuda_stops_after_the_check(tmp_path):
    proc = run_script("--only", "bench-eager", out=tmp_path, timeout=300)
    assert proc.returncode == 1 and "no CUDA device visible" in proc.stderr, proc.stdout + proc.stderr
    assert summary_rows(tmp_path) == {"install": "PASS", "cuda-visible": "FAIL"}


@needs_timeout
def test_cpu_stages_pass_and_summarise(tmp_path):
    proc = run_script("--cpu", out=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = summary_rows(tmp_path)
    assert rows == dict.fromkeys(plan("cpu"), "PASS"), rows
    assert (tmp_path / "logs.tar.gz").stat().st_size > 0 and (tmp_path / "bench-cpu.json").is_file()
    assert "dense ms" in proc.stdout  # the bench table is printed after the summary


def test_suite_collects_without_xdist():
    """The GPU machine's Python has no pytest-xdist (the script installs with --no-deps): the
    suite's conftest must load there, so README's `-n auto` hook is optional."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
                           "tests/core/test_flops.py"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
