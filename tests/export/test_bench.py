"""`ftp-export bench` smoke test on the tiny shape: table, JSON and plot are produced (no timing
assertions: speed is proven on the GPU machine, see README)."""

from __future__ import annotations

import json

from ftp_export.cli import main


def test_bench_writes_json_table_and_plot(tmp_path, capsys):
    rc = main(["bench", "--shape", "tiny", "--seq", "16,32", "--sparsity", "0.4", "--decode-batch", "2",
               "--decode-context", "16", "--warmup", "0", "--iters", "1", "-o", str(tmp_path)])
    assert rc == 0
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert [r["seq_len"] for r in doc["prefill"]] == [16, 32]
    for r in doc["prefill"]:
        assert r["dense_ms"] > 0 and r["routed_ms"] > 0 and r["ideal"] > 1.0
    assert doc["decode"][0]["batch"] == 2
    assert 0.0 <= doc["decode"][0]["skip_rate"] <= 1.0  # realised, printed beside the decode timing
    assert sorted(map(int, doc["decode"][0]["skip_rate_per_block"])) == [1, 2, 3]  # tiny: 4 blocks, block 0 dense
    assert (tmp_path / "bench.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "speedup" in out and "realised decode skip rate" in out
    assert doc["logits"] == "last" and "logits: last" in out  # both sides: last position's logits only


def test_bench_rejects_bad_sparsity(capsys):
    assert main(["bench", "--sparsity", "1.2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "must be in (0, 1)" in err[0]
