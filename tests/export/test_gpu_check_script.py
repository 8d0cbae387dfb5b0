"""scripts/gpu_check.sh, the one GPU check: its syntax, and its CPU stages end to end (--cpu)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def test_script_syntax():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils timeout")
def test_cpu_stages_pass_and_summarise(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    summary = (tmp_path / "summary.txt").read_text()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {line.split()[0]: line.split()[1] for line in summary.splitlines()[1:] if line and not line.startswith(("total", " "))}
    assert rows.get("install") == "PASS" and rows.get("export-onnx-cpu") == "PASS" and rows.get("bench-tiny-cpu") == "PASS", summary
    assert (tmp_path / "logs.tar.gz").stat().st_size > 0 and (tmp_path / "bench-cpu.json").is_file()
    assert "dense ms" in proc.stdout  # the bench table is printed after the summary


def test_suite_collects_without_xdist():
    """The GPU machine's Python has no pytest-xdist (the script installs with --no-deps): the
    suite's conftest must load there, so README's `-n auto` hook is optional."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
                           "tests/core/test_flops.py"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
