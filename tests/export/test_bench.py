"""`ftp-export bench` smoke tests on the tiny shape, eager and onnxruntime: table, JSON and plot are
produced (no timing assertions: speed is measured by the bench itself, see docs/performance.md);
the report flags a speedup above its ideal; bad input exits 2 with one line."""

from __future__ import annotations

import json

import pytest

from ftp_export.cli import main


def test_bench_writes_json_table_and_plot(tmp_path, capsys):
    rc = main(["bench", "--shape", "tiny", "--seq", "16,32", "--sparsity", "0.4", "--decode-batch", "2",
               "--decode-context", "16", "--warmup", "0", "--iters", "1", "-o", str(tmp_path)])
    assert rc == 0
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert [r["seq_len"] for r in doc["prefill"]] == [16, 32]
    for r in doc["prefill"]:
        assert r["dense_ms"] > 0 and r["routed_ms"] > 0 and r["ideal"] > 1.0
        # the same two ideals as the onnxruntime rows: linear FLOPs, and every matmul (attention, LM head)
        assert r["ideal_matmul"] > 1.0 and r["above_ideal"] == (r["speedup"] > r["ideal_matmul"])
        assert r["of_ideal_matmul"] == pytest.approx(r["speedup"] / r["ideal_matmul"])
    assert doc["decode"][0]["batch"] == 2
    d = doc["decode"][0]  # decode ideals at the realised skip rates: none skipped would be 1.0 exactly
    assert d["ideal"] >= 1.0 and d["ideal_matmul"] >= 1.0 and (d["ideal"] > 1.0) == (d["skip_rate"] > 0)
    assert d["of_ideal"] == pytest.approx(d["speedup"] / d["ideal"]) and d["above_ideal"] == (d["speedup"] > d["ideal_matmul"])
    assert 0.0 <= doc["decode"][0]["skip_rate"] <= 1.0  # realised, printed beside the decode timing
    assert sorted(map(int, doc["decode"][0]["skip_rate_per_block"])) == [1, 2, 3]  # tiny: 4 blocks, block 0 dense
    assert (tmp_path / "bench.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "speedup" in out and "realised decode skip rate" in out and "ideal lin/mm" in out
    assert doc["logits"] == "last" and "logits: last" in out  # both sides: last position's logits only


def test_eager_decode_at_batch_1_skips_near_the_schedule(tmp_path):
    """Batch-1 eager decode: thresholds calibrated on the timed prompts, so each routed block
    skips some but not all of the 8 decoded tokens (one step's own score would keep them all)."""
    rc = main(["bench", "--shape", "tiny", "--seq", "16", "--sparsity", "0.5", "--decode-batch", "1",
               "--decode-context", "24", "--decode-steps", "8", "--warmup", "0", "--iters", "1", "-o", str(tmp_path)])
    assert rc == 0
    row = json.loads((tmp_path / "bench.json").read_text())["decode"][0]
    rates = row["skip_rate_per_block"].values()
    assert rates and all(0.0 < r < 1.0 for r in rates), row["skip_rate_per_block"]
    # scheduled 2/3 per routed block (block 0 dense); a quantile of 8 tokens lands within 1/8
    assert all(abs(r - 2 / 3) <= 1 / 8 for r in rates), row["skip_rate_per_block"]


def test_bench_rejects_bad_sparsity(capsys):
    assert main(["bench", "--sparsity", "1.2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "must be in (0, 1)" in err[0]


def test_onnxruntime_bench_times_the_exported_graphs(tmp_path, capsys):
    """Dense and routed exported by the onnx target, timed in onnxruntime: JSON fields, table rows, plot, memory."""
    rc = main(["bench", "--runtime", "onnxruntime", "--shape", "tiny", "--layers", "1", "--seq", "16", "--sparsity", "0.4",
               "--decode-context", "16,24", "--decode-batch", "2", "--decode-steps", "2", "--warmup", "0", "--iters", "1",
               "--memory", "2", "-o", str(tmp_path)])
    assert rc == 0
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert doc["runtime"] == "onnxruntime" and doc["threads"] == 1 and doc["logits"] == "last" and isinstance(doc["opset"], int)
    assert len(doc["load_average"]["before"]) == 3 and len(doc["load_average"]["after"]) == 3
    (p,) = doc["prefill"]
    assert p["seq_len"] == 16 and p["dense_ms"] > 0 and p["routed_ms"] > 0
    assert p["ideal"] > 1.0 and p["ideal_matmul"] > 1.0
    assert p["of_ideal"] == pytest.approx(p["speedup"] / p["ideal"]) and p["above_ideal"] == (p["speedup"] > p["ideal_matmul"])
    assert [r["context"] for r in doc["decode"]] == [16, 24]
    for r in doc["decode"]:
        assert r["batch"] == 2 and r["steps"] == 2 and r["dense_ms"] > 0 and r["ideal_matmul"] > 0
        assert list(r["skip_rate_per_block"]) == ["0"]  # one block, routed
        assert 0.0 <= r["skip_rate"] <= 1.0
    (m,) = doc["memory"]
    assert m["runtime"] == "onnxruntime" and m["seq_len"] == 16 and m["dense_mib"] >= 0 and m["routed_mib"] >= 0
    # two fresh processes a side (one process's peak moves by up to ~20%), their median reported
    assert len(m["dense_samples_mib"]) == 2 and len(m["routed_samples_mib"]) == 2
    assert m["routed_mib"] == pytest.approx(sum(m["routed_samples_mib"]) / 2)
    out = capsys.readouterr().out
    assert "onnxruntime" in out and "thread(s), load 1m" in out
    assert any(line.split()[:3] == ["1", "16", "0.40"] for line in out.splitlines())  # the prefill row
    assert "ideal lin/mm" in out and "realised decode skip rate" in out and "peak resident set" in out
    assert (tmp_path / "bench.png").stat().st_size > 1000


def test_onnxruntime_bench_append_layout_routes_as_concat(tmp_path, capsys):
    """``--kv-cache append``: both sides exported in that layout, decoded against a buffer; the decode
    graph routes the same tokens as in the concat layout (the realised skip rates are equal)."""
    docs = {}
    for layout in ("concat", "append"):
        args = ["bench", "--runtime", "onnxruntime", "--shape", "tiny", "--layers", "2", "--seq", "16", "--decode-context", "16",
                "--decode-batch", "2", "--decode-steps", "3", "--warmup", "0", "--iters", "1", "--kv-cache", layout,
                "-o", str(tmp_path / layout)]
        assert main(args) == 0
        docs[layout] = json.loads((tmp_path / layout / "bench.json").read_text())
        assert f"kv cache: {layout}" in capsys.readouterr().out
    assert docs["append"]["kv_cache"] == "append"
    (a,), (c,) = docs["append"]["decode"], docs["concat"]["decode"]
    assert a["steps"] == 3 and a["dense_ms"] > 0 and a["routed_ms"] > 0
    assert a["skip_rate_per_block"] == c["skip_rate_per_block"] and list(a["skip_rate_per_block"]) == ["1"]


def _row(speedup: float, **extra) -> dict:
    return {"batch": 1, "sparsity": 0.4, "dense_ms": 2.0, "routed_ms": 2.0 / speedup, "dense_range_ms": [2.0, 2.0],
            "routed_range_ms": [1.0, 1.0], "speedup": speedup, "ideal": 1.4, "ideal_matmul": 1.5,
            "of_ideal": speedup / 1.4, "of_ideal_matmul": speedup / 1.5, **extra}


def test_report_flags_a_speedup_above_the_ideal(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ftp_export.bench.report import FLAG_NOTE, format_tables, plot, speedup_panel

    prefill = [_row(1.2, seq_len=128), _row(2.0, seq_len=512)]  # 2.0 > all-matmul ideal 1.5
    decode = [_row(1.45, context=128, skip_rate=0.4, skip_rate_per_block={"1": 0.4})]  # above linear only: not flagged
    text = format_tables(prefill, decode)
    rows = {line.split()[1]: line for line in text.splitlines() if line.split()[:1] == ["1"]}
    assert " 2.00!" in rows["512"] and "!" not in rows["128"]
    assert FLAG_NOTE in text and "1.45!" not in text
    assert "1.60!" in format_tables(prefill[:1], [{**decode[0], "speedup": 1.6}])  # decode above its all-matmul ideal
    fig, ax = plt.subplots()
    speedup_panel(ax, prefill, "seq_len", "L", "speedup")
    labels = ax.get_legend_handles_labels()[1]
    assert sum("above ideal" in label for label in labels) == 1 and any("all-matmul ideal" in label for label in labels)
    plt.close(fig)
    plot(prefill, tmp_path / "p.png", "t", decode)
    assert (tmp_path / "p.png").stat().st_size > 1000


@pytest.mark.parametrize("args, message", [
    (["--runtime", "tensorrt"], "invalid choice"),
    (["--seq", "0"], "--seq 0: must be at least 1"),
    (["--seq", "16,abc"], "expected comma-separated integers"),
    (["--decode-context", "128,-5"], "--decode-context -5: must be at least 1"),
    (["--decode-context", ","], "give at least one value"),
    (["--threads", "0"], "--threads 0: must be at least 1"),
    (["--runtime", "onnxruntime", "--device", "cuda"], "CPU provider"),
    (["--runtime", "compile", "--memory"], "--memory with --runtime compile"),
    (["--kv-cache", "append"], "--kv-cache append applies to --runtime onnxruntime only"),
    (["--memory", "-1"], "--memory -1: the number of fresh processes per side must be at least 1"),
    (["--memory", "0"], "--memory 0: the number of fresh processes per side must be at least 1"),
])
def test_bench_bad_inputs_exit_2_with_one_line(args, message, capsys):
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
