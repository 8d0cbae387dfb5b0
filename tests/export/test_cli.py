"""Every bad input a user can give `ftp-export`: one clear error line, non-zero exit, nothing
half-written (the successful exports are in test_targets.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ftp_export.atomic import atomic_dir
from ftp_export.cli import main
from ftp_export.export.job import DEFAULT_SCHEDULE


def _one_error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def _no_leftovers(folder: Path) -> None:
    assert not [p for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_uniform_schedule_command(tmp_path):
    out = tmp_path / "s30.json"
    assert main(["schedule", "--uniform", "0.3", "-o", str(out), "--samples", "2", "--max-context", "24"]) == 0
    from ftp_export.schedule import load_schedule

    sch = load_schedule(out)
    assert abs(sch.target_sparsity - 0.3) < 1e-6 and sch.block_sparsity[0] == 0.0
    assert all(t is not None for t in sch.decode_thresholds[1:])
    assert 22 <= sch.decode_thresholds.lengths[-1] <= 24 and len(sch.decode_thresholds.lengths) >= 3  # last knot: the longest context
    more = tmp_path / "s30-4.json"  # --decode-tokens: each window decodes that many tokens per knot
    assert main(["schedule", "--uniform", "0.3", "-o", str(more), "--samples", "2", "--max-context", "24", "--decode-tokens", "4"]) == 0
    record = load_schedule(more).produced_by["calibration"]["decode_thresholds"]
    assert record["decode_tokens_per_window"] == 4 and sch.produced_by["calibration"]["decode_thresholds"]["decode_tokens_per_window"] == 2


def test_calibrate_command_upgrades_a_format_1_schedule(tmp_path, capsys):
    """Routers and sparsities kept, thresholds become curves, the fingerprint gets the format-2 fields."""
    from ftp_export.schedule import load_schedule

    doc = json.loads(DEFAULT_SCHEDULE.read_text())
    shutil.copy2(DEFAULT_SCHEDULE.parent / doc["router"]["weights"], tmp_path / doc["router"]["weights"])
    routed = [b for b, v in enumerate(doc["decode_thresholds"]["per_block"]) if v is not None]
    doc["format_version"] = 1
    doc["decode_thresholds"] = [0.0 if b in routed else None for b in range(len(doc["block_sparsity"]))]
    for key in ("head_dim", "rope", "sliding_window", "tie_word_embeddings"):
        doc["base_model"]["fingerprint"].pop(key)
    (tmp_path / "old.json").write_text(json.dumps(doc))
    out = tmp_path / "new" / "s40.json"
    assert main(["calibrate", "--schedule", str(tmp_path / "old.json"), "-o", str(out), "--samples", "2", "--max-context", "32",
                 "--decode-tokens", "4"]) == 0
    old, new = load_schedule(tmp_path / "old.json"), load_schedule(out)
    record = new.produced_by["calibration"]["decode_thresholds"]
    assert record["windows_per_length"] == 2 and record["decode_tokens_per_window"] == 4
    assert new.format_version == 2 and new.block_sparsity == old.block_sparsity
    assert new.base_model["fingerprint"]["rope"]["rope_type"] == "default"
    assert all(torch.equal(a, b) for a, b in zip(old.routers.state_dict().values(), new.routers.state_dict().values(), strict=True))
    assert 30 <= new.decode_thresholds.lengths[-1] <= 32 and [t is not None for t in new.decode_thresholds] == [b in routed for b in range(6)]
    assert "decode skip rate" in capsys.readouterr().out


@pytest.fixture()
def schedule_copy(tmp_path):
    doc = json.loads(DEFAULT_SCHEDULE.read_text())
    shutil.copy2(DEFAULT_SCHEDULE, tmp_path / "s.json")
    shutil.copy2(DEFAULT_SCHEDULE.parent / doc["router"]["weights"], tmp_path / doc["router"]["weights"])
    return tmp_path / "s.json"


def _mutate(path: Path, fn) -> Path:
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))
    return path


BAD_SCHEDULES = {
    "malformed": (lambda p: (p.write_text("{oops"), p)[1], "not valid JSON"),
    "block-count": (lambda p: _mutate(p, lambda d: d.update(block_sparsity=d["block_sparsity"][:-1])), "entries but the model has"),
    "sparsity-above-one": (lambda p: _mutate(p, lambda d: d["block_sparsity"].__setitem__(1, 1.2)), "block_sparsity[1]"),
    "sparsity-negative": (lambda p: _mutate(p, lambda d: d["block_sparsity"].__setitem__(1, -0.2)), "block_sparsity[1]"),
    "weights-missing": (lambda p: (p.with_name(json.loads(p.read_text())["router"]["weights"]).unlink(), p)[1], "not found"),
    "weights-tampered": (
        lambda p: (p.with_name(json.loads(p.read_text())["router"]["weights"]).write_bytes(b"x" * 64), p)[1],
        "modified",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SCHEDULES))
def test_bad_schedule_is_one_line_and_writes_nothing(case, schedule_copy, tmp_path, capsys):
    make, needle = BAD_SCHEDULES[case]
    sched = make(schedule_copy)
    out = tmp_path / "out"
    assert main(["--schedule", str(sched), "-o", str(out)]) == 2
    assert needle in _one_error_line(capsys)
    assert not out.exists()
    _no_leftovers(tmp_path)


def test_unknown_target(tmp_path, capsys):
    assert main(["--target", "tflite", "-o", str(tmp_path / "o")]) == 2
    line = _one_error_line(capsys)
    assert "--target: invalid choice: 'tflite'" in line and "'onnx'" in line and "'compile'" in line
    assert not (tmp_path / "o").exists()


def test_help_lists_the_commands_and_the_choices(capsys):
    """``ftp-export --help``: every command on one line with what it does; --target, --dtype (optimum's
    spellings too) and --device as choices with help."""
    from ftp_export.cli import COMMANDS
    from ftp_export.export.targets import target_names

    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for name, text in COMMANDS.items():
        (line,) = [ln for ln in lines if ln.split()[:1] == [name]]
        assert text in line
    assert "{" + ",".join(target_names()) + "}" in out
    assert "{float32,fp32,float16,fp16,bfloat16,bf16}" in out and "{cpu,cuda,cuda:N}" in out
    assert "--rtol" in out and "atol + rtol * max|reference logit|" in " ".join(out.split())


@pytest.mark.parametrize("argv", [["--dtype", "float64"], ["--device", "gpu"], ["--device", "cuda:x"], ["--rtol", "-1"]])
def test_choices_are_refused_when_parsed(argv, tmp_path, capsys):
    assert main([*argv, "-o", str(tmp_path / "o")]) == 2
    line = _one_error_line(capsys)
    assert f"argument {argv[0]}:" in line and argv[1] in line
    assert not (tmp_path / "o").exists()


def test_dtype_spellings():
    from ftp_export.devices import canonical_dtype, device_choice, torch_dtype

    assert [canonical_dtype(d) for d in ("fp16", "float16", "fp32", "bf16")] == ["float16", "float16", "float32", "bfloat16"]
    assert torch_dtype("fp16") == torch.float16 and torch_dtype("float32") == torch.float32
    assert [device_choice(d) for d in ("cpu", "cuda", "cuda:3")] == ["cpu", "cuda", "cuda:3"]


def test_unsupported_architecture(tmp_path, capsys):
    model = tmp_path / "gpt2"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    assert main(["--model", str(model), "--schedule", str(DEFAULT_SCHEDULE), "-o", str(tmp_path / "o")]) == 2
    line = _one_error_line(capsys)
    assert "GPT2LMHeadModel" in line and "not supported" in line


def test_model_without_schedule_says_how_to_make_one(tmp_path, capsys):
    from tests.helpers import build_tiny

    model = build_tiny(tmp_path / "m")
    capsys.readouterr()  # drop save_pretrained's progress output
    assert main(["--model", str(model)]) == 2
    assert "ftp-export schedule --uniform" in _one_error_line(capsys)


def test_schedule_for_another_model(tmp_path, capsys):
    from tests.helpers import build_tiny

    model = build_tiny(tmp_path / "m", hidden_size=32)
    capsys.readouterr()
    assert main(["--model", str(model), "--schedule", str(DEFAULT_SCHEDULE), "-o", str(tmp_path / "o")]) == 2
    assert "make a schedule for this model" in _one_error_line(capsys)


def test_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["-o", str(blocker / "out")]) == 2
    assert "cannot write to output folder" in _one_error_line(capsys)


def test_interrupted_export_leaves_nothing(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as tmp:
        (tmp / "decoder_model.onnx").write_bytes(b"partial")
        raise KeyboardInterrupt
    assert not target.exists()
    _no_leftovers(tmp_path)


def test_console_script_exit_code(tmp_path):
    exe = Path(sys.executable).with_name("ftp-export")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ftp_export.cli"]
    proc = subprocess.run([*cmd, "--target", "nope", "-o", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ftp-export: argument --target: invalid choice: 'nope'")
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU error")
@pytest.mark.parametrize(
    "argv",
    [
        ["--device", "cuda"],
        ["schedule", "--uniform", "0.4", "-o", "s.json", "--device", "cuda"],
        ["bench", "--device", "cuda"],
        ["eval", "--device", "cuda:1"],
        ["train", "--sparsity", "0.4", "-o", "s.json", "--device", "cuda"],
    ],
    ids=["export", "schedule", "bench", "eval", "ftp-train"],
)
def test_cuda_without_a_gpu_is_one_line_before_any_work(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if argv[0] == "train":
        from ftp_export_trainer.cli import main as train_main

        rc = train_main(argv[1:])
    else:
        rc = main(argv)
    assert rc == 2
    assert "no CUDA device is available" in _one_error_line(capsys)
    assert not list(tmp_path.iterdir())  # nothing written
