"""`ftp-export bench --runtime aoti` on the tiny shape (one block, so the AOTInductor C++ compiles of
the four packages stay short): rows for both sides, table, JSON and plot; each side's packages
agree with the PyTorch modules they were traced from (a prefill and one decode step fed the
prefill's present as returned); bad input exits 2 with one line. No timing assertions (speed is
measured by the bench itself, see docs/performance.md)."""

from __future__ import annotations

import json

import pytest
import torch

from ftp_export.cli import main

PARITY = 1e-4  # float32 parity atol (ftp_export/export/tolerance.py); the tiny model's logits are < 1


@pytest.fixture(scope="module")
def aoti_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-aoti")
    rc = main(["bench", "--runtime", "aoti", "--shape", "tiny", "--layers", "1", "--seq", "16,24", "--sparsity", "0.4",
               "--decode-context", "16", "--decode-batch", "1", "--decode-steps", "4", "--warmup", "0", "--iters", "1",
               "--memory", "2", "-o", str(out)])
    return rc, out


def test_aoti_bench_times_both_sides(aoti_bench, capsys):
    rc, out = aoti_bench
    assert rc == 0
    doc = json.loads((out / "bench.json").read_text())
    assert doc["runtime"] == "aoti" and doc["threads"] == 1 and doc["logits"] == "last" and doc["aoti_attention"] == "op"
    assert "sdpa" in doc["dense_baseline"] and len(doc["load_average"]["before"]) == 3
    assert [r["seq_len"] for r in doc["prefill"]] == [16, 24]
    for r in doc["prefill"]:
        assert r["dense_ms"] > 0 and r["routed_ms"] > 0 and r["ideal"] > 1.0 and r["ideal_matmul"] > 1.0
        assert r["above_ideal"] == (r["speedup"] > r["ideal_matmul"])
    (d,) = doc["decode"]
    assert d["context"] == 16 and d["steps"] == 4 and d["dense_ms"] > 0 and d["routed_ms"] > 0
    assert list(d["skip_rate_per_block"]) == ["0"] and 0.0 <= d["skip_rate"] <= 1.0  # one block, routed
    assert (out / "bench.png").stat().st_size > 1000
    # peak memory of each side's prefill package over one prefill of the longest length, 2 fresh processes a side
    (m,) = doc["memory"]
    assert m["runtime"] == "aoti" and m["seq_len"] == 24 and m["sparsity"] == 0.4
    assert len(m["dense_samples_mib"]) == 2 and len(m["routed_samples_mib"]) == 2
    assert all(v >= 0 for v in m["dense_samples_mib"] + m["routed_samples_mib"])
    from ftp_export.bench.report import format_tables

    assert "peak resident set" in format_tables(doc["prefill"], doc["decode"], doc["memory"])


def test_aoti_packages_match_their_pytorch_models(aoti_bench):
    """The bench's own check, one prompt: routed package vs the routed PyTorch model, Hugging Face's
    packaged sdpa model vs itself, prefill and one decode step, at float32 tolerance."""
    rc, out = aoti_bench
    parity = json.loads((out / "bench.json").read_text())["parity_max_abs"]
    assert set(parity) == {"dense", "routed s=0.4"}
    assert all(0.0 <= v <= PARITY for v in parity.values()), parity


def test_parity_check_rejects_a_wrong_package():
    """A package whose logits differ from its model's stops the bench with one line."""
    from ftp_export.bench.aoti import parity
    from ftp_export.errors import FTPError

    class Fake:
        signatures = {"prefill": type("S", (), {"present": [], "named": staticmethod(lambda v: {"logits": v[0]}),
                                                 "past_feeds": staticmethod(lambda o: {})})()}

        def feed(self, a):
            return torch.from_numpy(a)

        def run(self, graph, feeds):
            return {"logits": torch.ones(1, 1, 4)}

    ref = {"prefill": lambda *a: (torch.zeros(1, 1, 4),), "decode": lambda *a: (torch.zeros(1, 1, 4),)}
    with pytest.raises(FTPError, match="from its PyTorch model's"):
        parity(Fake(), ref, 8, 4, "float32")


@pytest.mark.parametrize("args, message", [
    (["--device", "cuda"], "--device cuda with --runtime aoti"),
    (["--memory", "0"], "--memory 0: the number of fresh processes per side must be at least 1"),
])
def test_aoti_bench_rejects_bad_input(args, message, capsys):
    assert main(["bench", "--runtime", "aoti", "--shape", "tiny", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_aoti_attention_is_refused_off_the_aoti_runtime(capsys):
    assert main(["bench", "--runtime", "onnxruntime", "--aoti-attention", "graph"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--aoti-attention graph applies to --runtime aoti only" in err[0]
