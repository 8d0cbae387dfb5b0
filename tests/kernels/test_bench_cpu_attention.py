"""benchmarks/bench_cpu_attention.py runs as documented (a tiny case): it checks the C kernel
against ATen before timing, and writes one row per length with all three implementations."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from ftp_export.kernels import cpu_build

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_cpu_attention.py"


def test_cpu_attention_bench_writes_its_table(tmp_path, capsys):
    if cpu_build.library() is None:
        pytest.skip("no C compiler here")
    spec = importlib.util.spec_from_file_location("bench_cpu_attention", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "b.json"
    assert bench.main(["--lengths", "40,200", "--iters", "2", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["length"] for r in rows] == [40, 200] and [r["queries"] for r in rows] == [24, 120]
    for r in rows:
        for name in ("c_kernel", "aten", "dense_sdpa"):
            assert r[name]["min_ms"] <= r[name]["median_ms"] <= r[name]["max_ms"]
    assert "aten/c" in capsys.readouterr().out
