"""ftp-train end to end on a tiny random Llama: output validity, determinism + resume, user errors."""

import json
import math
from pathlib import Path

import pytest

from ftp_export.evaluation.oracle import ORACLE_TITLE
from ftp_export.schedule import load_schedule
from ftp_export_trainer.checkpoints import INTERRUPT_ENV
from ftp_export_trainer.cli import main
from tests.helpers import build_tiny

TINY_ARGS = ["--sparsity", "0.4", "--samples", "6", "--seq-len", "32", "--generations", "2", "--population", "4",
             "--router-steps", "3", "--router-batch", "2", "--held-out-samples", "3", "--calib-samples", "2",
             "--no-progress", "--seed", "3"]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    import random

    rng = random.Random(0)
    words = "the of and to in a is that for it as was with be by on not he this are or from at which".split()
    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(8, 25))) for _ in range(120)) + "\n")
    return path


@pytest.fixture(scope="module")
def first_run(tiny_dir, text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "s40.json"
    assert main(["--model", str(tiny_dir), "--data", str(text_file), "-o", str(out), *TINY_ARGS]) == 0
    return out


def _doc(path: Path) -> dict:
    doc = json.loads(path.read_text())
    doc["produced_by"].pop("created")
    doc["produced_by"]["settings"].pop("output")
    doc["produced_by"]["settings"].pop("evaluate", None)
    return doc


def test_output_schedule_is_valid(first_run):
    sched = load_schedule(first_run)
    assert abs(sched.target_sparsity - 0.4) < 1e-6
    assert sched.block_sparsity[0] == 0.0
    assert all(0 <= s <= 1 for s in sched.block_sparsity)
    # a threshold for exactly the routed blocks (the GA may leave a block dense or drop it)
    assert [t is not None for t in sched.decode_thresholds] == [0 < s < 1 for s in sched.block_sparsity]
    pb = sched.produced_by
    assert pb["tool"] == "ftp-train" and pb["seed"] == 3 and pb["data"]["kind"] == "file"
    report = json.loads(first_run.with_name("s40.report.json").read_text())
    methods = [r["method"] for r in report["comparison"]]
    assert methods[0] == "dense" and any("ShortGPT" in m for m in methods) and len(methods) >= 6
    assert report["comparison"][0]["kl_to_dense"] == pytest.approx(0.0, abs=1e-6)
    # layer dropping at the routed FLOPs: between the bracketing drop counts, linear in FLOPs
    steps = report["comparison"][2:5]
    chosen = int(report["selection"]["chosen"][-1])
    assert [r["method"].endswith(" = FTP") for r in steps] == [k == chosen for k in (1, 2, 3)]
    ftp = next(r for r in steps if r["method"].endswith(" = FTP"))
    assert ftp["flop_ratio"] == pytest.approx(report["flop_ratio_dense_over_routed"])
    # the oracle router (the scored text's own skip costs) at the same sparsities and FLOPs
    oracle = report["comparison"][5]
    assert oracle["method"] == ORACLE_TITLE and oracle["flop_ratio"] == pytest.approx(ftp["flop_ratio"])
    assert 0 < oracle["kl_to_dense"] < math.inf
    drops = report["comparison"][6:]
    short, greedy, (interp, greedy_interp) = drops[:2], drops[2:4], drops[4:]
    assert interp["flop_ratio"] == ftp["flop_ratio"] and [r["flop_ratio"] <= ftp["flop_ratio"] for r in short] == [True, False]
    (x0, k0), (x1, k1) = [(r["flop_ratio"], r["kl_to_dense"]) for r in short]
    w = (1 / ftp["flop_ratio"] - 1 / x0) / (1 / x1 - 1 / x0)  # share of requests on the cheaper count
    assert 0 < w < 1 and interp["kl_to_dense"] == pytest.approx(k0 + w * (k1 - k0))
    # the same for dropping the first blocks of the greedy KL removal order
    order = report["block_removal"]["order"]
    n = len(sched.block_sparsity)
    counts = [round(n - n / r["flop_ratio"]) for r in short]
    assert [r["method"] for r in greedy] == [f"greedy KL drop {c} blocks {sorted(order[:c])}" for c in counts]
    (g0, q0), (g1, q1) = [(r["flop_ratio"], r["kl_to_dense"]) for r in greedy]
    assert (g0, g1) == (x0, x1) and greedy_interp["kl_to_dense"] == pytest.approx(q0 + w * (q1 - q0))
    assert greedy_interp["method"] == "greedy KL at equal FLOPs (interpolated)"
    # the final schedule is the step with the lowest KL on the validation windows (ties: the later step)
    sel = report["selection"]
    assert sel["windows"] > 0 and set(sel["kl"]) == {"step 1", "step 2", "step 3"}
    assert sel["kl"][sel["chosen"]] == min(sel["kl"].values())
    chosen_sp = report["block_sparsity"]["step1_ga_static" if sel["chosen"] in ("step 1", "step 2") else "step3_ga_dynamic"]
    assert sched.block_sparsity == pytest.approx(chosen_sp, abs=1e-6)
    # step 2 starts from whichever of the fitted and static routers routes the calibration windows better
    fit = report["router_fit"]
    assert fit["start"] == ("fitted" if fit["kl_fitted"] <= fit["kl_static"] else "static")
    # step 2a fits the blocks step 1 routed (--fit-all-blocks: every free one)
    step1 = report["block_sparsity"]["step1_ga_static"]
    assert [v is not None for v in fit["fit_explained"]] == [0 < s < 1 for s in step1]
    assert report["router_history"][0]["selection"] == pytest.approx(min(fit["kl_fitted"], fit["kl_static"]), rel=1e-6)
    # the greedy removal order (GA seed) names as many distinct routed blocks as s fills at the cap
    removal = report["block_removal"]
    assert len(removal["order"]) == len(set(removal["order"])) == len(removal["kl"]) == math.ceil(0.4 * n - 1e-9)
    assert 0 not in removal["order"] and all(k > 0 for k in removal["kl"])
    for png in ("s40.sparsity.png", "s40.losses.png"):
        assert first_run.with_name(png).stat().st_size > 1000
    assert not (first_run.parent / "s40.json.ckpt").exists()  # a finished run removes its checkpoints


@pytest.mark.parametrize("stop", ["ga1:1", "step1", "step2", "ga3:1"])
def test_interrupt_then_resume_matches(first_run, tiny_dir, text_file, tmp_path, monkeypatch, stop):
    out = tmp_path / "s40.json"
    args = ["--model", str(tiny_dir), "--data", str(text_file), "-o", str(out), *TINY_ARGS, "--no-eval"]
    monkeypatch.setenv(INTERRUPT_ENV, stop)
    assert main(args) == 130
    assert not out.exists()
    monkeypatch.delenv(INTERRUPT_ENV)
    assert main([*args, "--resume"]) == 0
    assert _doc(out) == _doc(first_run)
    assert out.with_name("s40.routers.safetensors").read_bytes() == first_run.with_name("s40.routers.safetensors").read_bytes()


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_bad_inputs(tiny_dir, text_file, tmp_path, capsys):
    base = ["--model", str(tiny_dir), "-o", str(tmp_path / "x.json"), "--no-progress"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    assert "empty" in _error(capsys, [*base, "--data", str(empty), "--sparsity", "0.4"])
    for bad in ("0", "1", "1.5", "-0.2"):
        assert "(0, 1)" in _error(capsys, [*base, "--data", str(text_file), "--sparsity", bad])
    assert "not found" in _error(capsys, [*base, "--data", str(tmp_path / "missing.txt"), "--sparsity", "0.4"])
    assert "--threads -1" in _error(capsys, [*base, "--data", str(text_file), "--sparsity", "0.4", "--threads", "-1"])
    assert "--calib-decode-tokens must be >= 1" in _error(capsys, [*base, "--data", str(text_file), "--sparsity", "0.4", "--calib-decode-tokens", "0"])
    one = build_tiny(tmp_path / "one-block", num_hidden_layers=1)
    capsys.readouterr()  # saving a model may draw a progress bar
    msg = _error(capsys, ["--model", str(one), "-o", str(tmp_path / "y.json"), "--data", str(text_file), "--sparsity", "0.4"])
    assert "blocks" in msg
    two = build_tiny(tmp_path / "two-block", num_hidden_layers=2)
    capsys.readouterr()
    assert "blocks" in _error(capsys, ["--model", str(two), "-o", str(tmp_path / "y.json"), "--data", str(text_file), "--sparsity", "0.6"])


def test_corrupt_checkpoint_on_resume(tiny_dir, text_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "s.json"
    args = ["--model", str(tiny_dir), "--data", str(text_file), "-o", str(out), *TINY_ARGS, "--no-eval"]
    monkeypatch.setenv(INTERRUPT_ENV, "ga1:0")
    assert main(args) == 130
    monkeypatch.delenv(INTERRUPT_ENV)
    capsys.readouterr()
    (tmp_path / "s.json.ckpt" / "ga1.json").write_text("{not json")
    assert "corrupt" in _error(capsys, [*args, "--resume"])
    (tmp_path / "s.json.ckpt" / "meta.json").write_text("garbage")
    assert "corrupt" in _error(capsys, [*args, "--resume"])


def test_jsonl_data_and_text_field(tiny_dir, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"body": "some words here " * 20}) for _ in range(6)) + "\n")
    base = ["--model", str(tiny_dir), "-o", str(tmp_path / "j.json"), "--data", str(data), *TINY_ARGS, "--no-eval",
            "--generations", "0", "--router-steps", "1"]
    assert "text-field" in _error(capsys, base)
    assert main([*base, "--text-field", "body"]) == 0
    assert load_schedule(tmp_path / "j.json").produced_by["data"]["format"] == "jsonl"


def test_console_script_error_exit_code(tmp_path):
    import shutil
    import subprocess
    import sys

    exe = shutil.which("ftp-train")
    cmd = [exe] if exe else [sys.executable, "-m", "ftp_export_trainer.cli"]
    proc = subprocess.run([*cmd, "--sparsity", "1.2", "-o", str(tmp_path / "x.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("error: --sparsity 1.2")


def test_router_training_returns_the_best_routers_it_scored(tiny_model):
    """Model selection: the returned routers score the minimum of every evaluation made,
    the starting (static + noise) routers included."""
    import torch

    from ftp_export.routing.router import static_router_bank
    from ftp_export_trainer.evaluate import dense_logits, routed_kl, routed_model
    from ftp_export_trainer.router_training import RouterTrainConfig, train_routers

    data = torch.randint(0, 259, (4, 24), generator=torch.Generator().manual_seed(0))
    ref = dense_logits(tiny_model, data, 4)
    sparsity = [0.0, 0.5, 0.5, 0.5]

    def score(bank):
        return routed_kl(routed_model(tiny_model, sparsity, bank), data, ref, 4)

    cfg = RouterTrainConfig(steps=6, batch_size=2, lr=0.05, select_every=2)
    bank, history = train_routers(tiny_model, sparsity, static_router_bank(4), data, ref, cfg, seed=0, evaluate=score)
    scored = [r["selection"] for r in history if "selection" in r]
    assert [r["step"] for r in history if "selection" in r] == [0, 2, 4, 6]
    assert score(bank) == pytest.approx(min(scored), abs=1e-9)


def test_dropped_kl_is_zero_for_the_dense_model_and_grows_with_removals(tiny_model):
    import torch

    from ftp_export_trainer.block_search import dropped_kl
    from ftp_export_trainer.evaluate import dense_logits

    data = torch.randint(0, 259, (3, 20), generator=torch.Generator().manual_seed(1))
    ref = dense_logits(tiny_model, data, 2)
    assert dropped_kl(tiny_model, [], data, ref, 2) == pytest.approx(0.0, abs=1e-6)
    one, two = dropped_kl(tiny_model, [2], data, ref, 2), dropped_kl(tiny_model, [1, 2], data, ref, 2)
    assert 0 < one < two


def test_fit_all_blocks_fits_every_free_block(tiny_dir, text_file, tmp_path):
    out = tmp_path / "s40.json"
    assert main(["--model", str(tiny_dir), "--data", str(text_file), "-o", str(out), *TINY_ARGS, "--no-eval", "--fit-all-blocks"]) == 0
    report = json.loads(out.with_name("s40.report.json").read_text())
    assert report["settings"]["fit_all_blocks"] is True
    explained = report["router_fit"]["fit_explained"]
    assert explained[0] is None and all(v is not None for v in explained[1:])  # block 0 is not free
