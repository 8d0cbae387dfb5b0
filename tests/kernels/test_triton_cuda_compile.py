"""The Triton attention-signal kernels compile for the GPUs the GPU check runs on (sm_90: H100,
H200) without one: scripts/triton_compile_check.py runs Triton's whole NVIDIA pipeline down to a
cubin for the wrapper's own configurations. The interpreter that runs the CPU parity tests lowers
nothing, so this is the CPU's only check of the compiled path."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "triton_compile_check.py"


def _nvidia_backend() -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    from triton.backends import backends

    return "nvidia" in backends


@pytest.mark.skipif(not _nvidia_backend(), reason="needs triton with its NVIDIA backend (the test extra on Linux)")
def test_kernels_compile_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # tests/conftest.py sets it
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")  # compile, do not reuse an earlier run's cubins
    out = tmp_path / "compile.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--arch", "90", "--json", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {r["kernel"] for r in rows} == {"_fwd", "_colsum"} and all(r["status"] == "ok" for r in rows), rows
    assert {(r["dtype"], r["head_size"], r["mask"]) for r in rows} >= {("bf16", 128, "structured"), ("bf16", 128, "dense")}
    assert all(0 < r["shared"] <= 227 * 1024 and r["registers"] > 0 for r in rows), rows  # ptxas reported; fits an H100


def test_interpreter_setting_is_refused(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "unset TRITON_INTERPRET" in proc.stderr
