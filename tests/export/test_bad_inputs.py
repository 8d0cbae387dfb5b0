"""Bad inputs to ``ftp-export`` and ``ftp-export schedule``, driven through the command line in
subprocesses the way a user meets them (issue 15): each argument's range and each path kind of
``-o``, ``--model`` and ``--schedule`` (missing, a file for a folder or a folder for a file, a folder
of the user's own files, read-only, ``.``, the current export itself) ends in exit 2, exactly one
``error:`` line on stderr and no traceback, with the user's files (a canary) and a previous good
export byte-identical and nothing new written. Every case fails before any model is exported; the
cases run a few at a time (``python -m ftp_export.cli`` costs ~2 s to start), once per module.
Parity failures (exit 1) and signals (130/143) are in test_output_safety.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from transformers import AutoConfig

from ftp_export.export.manifest import FORMAT
from ftp_export.schedule import new_schedule, save_schedule, sha256_file
from tests.helpers import build_tiny

LONGROPE = {"rope_type": "longrope", "factor": 2.0, "short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
            "original_max_position_embeddings": 16}
ROOT = os.geteuid() == 0  # root writes into a chmod 555 folder: read-only is then a file as the parent

# id: (argv, working folder inside the world, needles of the error line). Paths are relative to the
# world (see the fixture); an export without -o gets "-o new-<id>", which must not appear.
CASES: dict[str, tuple[list[str], str, tuple[str, ...]]] = {
    # ranges and choices of every ftp-export argument, refused when parsed
    "atol-negative": (["--atol", "-1"], ".", ("--atol",)),
    "atol-nan": (["--atol", "nan"], ".", ("--atol",)),
    "atol-inf": (["--atol", "inf"], ".", ("--atol",)),
    "atol-text": (["--atol", "abc"], ".", ("--atol", "expected a number")),
    "parity-tokens-0": (["--parity-tokens", "0"], ".", ("--parity-tokens",)),
    "parity-tokens-negative": (["--parity-tokens", "-3"], ".", ("--parity-tokens",)),
    "parity-tokens-fraction": (["--parity-tokens", "1.5"], ".", ("--parity-tokens", "integer")),
    "rtol-negative": (["--rtol", "-1e-5"], ".", ("--rtol",)),
    "rtol-nan": (["--rtol", "nan"], ".", ("--rtol",)),
    "dtype-unknown": (["--dtype", "float64"], ".", ("--dtype: invalid choice: 'float64'", "'fp16'")),
    "dtype-onnx-cpu-bfloat16": (["--dtype", "bfloat16"], ".", ("bfloat16", "float32")),
    "dtype-onnx-cpu-bf16": (["--dtype", "bf16"], ".", ("bfloat16", "onnxruntime's CPU provider")),
    # float16 trt graphs are checked on the CPU (reference nodes); bfloat16 needs TensorRT
    "dtype-trt-without-tensorrt": (["--dtype", "bfloat16", "--target", "trt"], ".", ("needs TensorRT", "float16")),
    "decode-lowering-not-trt": (["--decode-lowering", "static"], ".", ("--decode-lowering static", "--target trt")),
    "decode-lowering-unknown": (["--decode-lowering", "fast", "--target", "trt"], ".", ("--decode-lowering: invalid choice: 'fast'",)),
    "aoti-attention-not-compile": (["--aoti-attention", "graph"], ".", ("--aoti-attention graph", "--target compile")),
    "aoti-attention-unknown": (["--aoti-attention", "fused", "--target", "compile"], ".", ("--aoti-attention: invalid choice: 'fused'",)),
    "target-unknown": (["--target", "nope"], ".", ("--target: invalid choice: 'nope'", "'onnx'")),
    "quantize-unknown": (["--quantize", "int4"], ".", ("--quantize: invalid choice: 'int4'",)),
    "quantize-trt": (["--quantize", "int8", "--target", "trt"], ".", ("--quantize int8", "--target trt")),
    "quantize-fp16": (["--quantize", "int8", "--dtype", "fp16"], ".", ("--quantize int8", "--dtype float16")),
    "device-cuda-absent": (["--device", "cuda"], ".", ("--device cuda", "no CUDA")),
    "device-unknown": (["--device", "banana"], ".", ("--device: invalid choice: 'banana'", "'cuda:N'")),
    "device-bad-index": (["--device", "cuda:one"], ".", ("--device: invalid choice: 'cuda:one'",)),
    "logits-unknown": (["--logits", "first"], ".", ("--logits: invalid choice: 'first' (choose from 'last', 'all')",)),
    "flag-unknown": (["--bogus"], ".", ("unrecognized arguments: --bogus",)),
    # -o: a file, the user's folder, `.`, the current export as `.`, an unwritable place, the working folder's parent
    "out-is-a-file": (["-o", "afile"], ".", ("afile", "not a folder")),
    "out-user-folder": (["-o", "mine"], ".", ("mine", "not an ftp-export output")),
    "out-dot": (["-o", "."], "mine", ("current folder",)),
    "out-current-export": (["-o", "."], "prev", ("current folder",)),
    "out-holds-working-folder": (["-o", ".."], "mine", ("current folder",)),
    "out-under-a-file": (["-o", "afile/sub/out"], ".", ("cannot write",)),
    "out-read-only": (["-o", "ro/out"], ".", ("cannot write",)),
    # --model: missing, a file, the user's folder, `.`, the current export, corrupt weights, refused RoPE
    "model-missing": (["--model", "missing"], ".", ("--model missing", "no such directory")),
    "model-is-a-file": (["--model", "afile"], ".", ("--model afile", "config.json")),
    "model-user-folder": (["--model", "mine"], ".", ("--model mine", "config.json")),
    "model-dot": (["--model", "."], "mine", ("--model .", "config.json")),
    "model-current-export": (["--model", "prev"], ".", ("--model prev", "config.json")),
    "model-truncated-weights": (["--model", "broken", "--schedule", "sched/s.json"], ".", ("model.safetensors", "truncated")),
    "model-rope-dynamic": (["--model", "dynamic"], ".", ("'dynamic'", "supported: default")),
    "model-rope-longrope": (["--model", "longrope"], ".", ("'longrope'", "supported: default")),
    # --schedule: missing, a folder, the user's files, `.`, the current export, and schedules refused on load
    "schedule-missing": (["--model", "tiny", "--schedule", "missing.json"], ".", ("missing.json", "not found")),
    "schedule-is-a-folder": (["--model", "tiny", "--schedule", "mine"], ".", ("mine",)),
    "schedule-user-file": (["--model", "tiny", "--schedule", "mine/canary.txt"], ".", ("canary.txt", "not valid JSON")),
    "schedule-other-json": (["--model", "tiny", "--schedule", "mine/notes.json"], ".", ("notes.json", "not an ftp-export schedule")),
    "schedule-dot": (["--model", "../tiny", "--schedule", "."], "mine", ("--schedule",)),
    "schedule-current-export": (["--model", "tiny", "--schedule", "prev"], ".", ("prev",)),
    "schedule-all-blocks-dropped": (["--model", "tiny", "--schedule", "dropped/s.json"], ".", ("no block would run",)),
    "schedule-nan-routers": (["--model", "tiny", "--schedule", "nan/s.json"], ".", ("NaN or inf",)),
    "schedule-other-model": (["--model", "theta", "--schedule", "sched/s.json"], ".", ("rope",)),
    # ftp-export schedule: ranges, calibration text, device, and -o as a folder, `.`, an unwritable place
    "uniform-0": (["schedule", "--uniform", "0", "-o", "s.json"], ".", ("--uniform",)),
    "uniform-1": (["schedule", "--uniform", "1", "-o", "s.json"], ".", ("--uniform",)),
    "uniform-negative": (["schedule", "--uniform", "-0.2", "-o", "s.json"], ".", ("--uniform",)),
    "uniform-nan": (["schedule", "--uniform", "nan", "-o", "s.json"], ".", ("--uniform",)),
    "uniform-missing": (["schedule", "-o", "s.json"], ".", ("--uniform",)),
    "samples-0": (["schedule", "--uniform", "0.4", "--samples", "0", "-o", "s.json"], ".", ("--samples",)),
    "max-context-1": (["schedule", "--uniform", "0.4", "--max-context", "1", "-o", "s.json"], ".", ("--max-context",)),
    "calibrate-samples-0": (["calibrate", "--schedule", "s.json", "--samples", "0", "-o", "t.json"], ".", ("--samples",)),
    "calibrate-decode-tokens-0": (["calibrate", "--schedule", "s.json", "--decode-tokens", "0", "-o", "t.json"], ".", ("--decode-tokens",)),
    "schedule-decode-tokens-0": (["schedule", "--uniform", "0.3", "--decode-tokens", "0", "-o", "t.json"], ".", ("--decode-tokens",)),
    "calibration-text-missing": (["schedule", "--uniform", "0.4", "--calibration-text", "missing.txt", "-o", "s.json"], ".",
                                 ("--calibration-text", "not found")),
    "calibration-text-empty": (["schedule", "--uniform", "0.4", "--calibration-text", "blank.txt", "-o", "s.json"], ".",
                               ("--calibration-text", "empty")),
    "schedule-device-unknown": (["schedule", "--uniform", "0.4", "--device", "banana", "-o", "s.json"], ".",
                                ("--device: invalid choice: 'banana'",)),
    "schedule-out-folder": (["schedule", "--uniform", "0.4", "-o", "mine"], ".", ("existing folder",)),
    "schedule-out-dot": (["schedule", "--uniform", "0.4", "-o", "."], "mine", ("existing folder",)),
    "schedule-out-under-a-file": (["schedule", "--uniform", "0.4", "-o", "afile/sub/s.json"], ".", ("cannot write",)),
}
if ROOT:
    CASES.pop("out-read-only")


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder``: a file's bytes, None for a folder."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A working folder as a user has it: tiny models, a schedule, a previous good export, a folder
    of the user's own files (with a canary), a plain file, a read-only folder."""
    w = tmp_path_factory.mktemp("world")
    tiny = build_tiny(w / "tiny")
    config = AutoConfig.from_pretrained(tiny)
    sched = save_schedule(new_schedule(config, [0.0, 0.4, 0.4, 0.4]), w / "sched" / "s.json")
    build_tiny(w / "theta", rope_parameters={"rope_type": "default", "rope_theta": 500000.0})  # same shape, other RoPE
    build_tiny(w / "dynamic", rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    build_tiny(w / "longrope", rope_parameters={**LONGROPE, "rope_theta": 10000.0})
    shutil.copytree(tiny, w / "broken")
    weights = w / "broken" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for name in ("dropped", "nan"):
        shutil.copytree(w / "sched", w / name)
    doc = json.loads((w / "dropped" / "s.json").read_text())
    doc["block_sparsity"] = [1.0] * 4
    doc.pop("target_sparsity")
    (w / "dropped" / "s.json").write_text(json.dumps(doc))
    from safetensors.torch import load_file, save_file

    routers = w / "nan" / sched.with_name(json.loads(sched.read_text())["router"]["weights"]).name
    tensors = load_file(str(routers))
    first = sorted(tensors)[0]
    tensors[first].view(-1)[0] = float("nan")
    save_file(tensors, str(routers))
    doc = json.loads((w / "nan" / "s.json").read_text())
    doc["router"]["sha256"] = sha256_file(routers)  # the weights' digest matches: only the values are wrong
    (w / "nan" / "s.json").write_text(json.dumps(doc))
    prev = w / "prev"  # a previous export whose parity passed (as its manifest says)
    shutil.copytree(w / "sched", prev / "schedule")
    (prev / "model.onnx").write_bytes(b"\x08\x07onnx-bytes")
    (prev / "manifest.json").write_text(json.dumps({"format": FORMAT, "parity": {"passed": True}}))
    (w / "mine").mkdir()
    (w / "mine" / "canary.txt").write_bytes(b"the user's own \x00 bytes\n")
    (w / "mine" / "notes.json").write_text('{"mine": true}')
    (w / "afile").write_text("a plain file\n")
    (w / "blank.txt").write_text(" \n\n")
    (w / "ro").mkdir()
    (w / "ro").chmod(0o555)
    return w


@pytest.fixture(scope="module")
def results(world, request) -> tuple[dict[str, subprocess.CompletedProcess], dict[str, bytes | None], dict[str, bytes | None]]:
    """Run the selected cases, a few at a time; (results by id, the world before, the world after)."""
    wanted = [item.callspec.params["case"] for item in request.session.items
              if item.originalname == "test_bad_input" and item.path == request.path]
    before = _snapshot(world)

    def run(case: str) -> subprocess.CompletedProcess:
        argv, cwd, _ = CASES[case]
        if argv[0] != "schedule" and "-o" not in argv:
            argv = [*argv, "-o", f"new-{case}"]
        return subprocess.run([sys.executable, "-m", "ftp_export.cli", *argv], cwd=world / cwd,
                              capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=4) as pool:
        done = dict(zip(wanted, pool.map(run, wanted)))
    (world / "ro").chmod(0o755)
    return done, before, _snapshot(world)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, results):
    done, before, after = results
    proc = done[case]
    err = proc.stderr
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    for needle in CASES[case][2]:
        assert needle in errors[0], errors[0]
    assert "[2/4]" not in proc.stdout  # refused before anything is exported
    if case.startswith(("dtype-", "device-", "target-", "rtol-", "atol-")):
        assert "[1/4]" not in proc.stdout  # refused with the arguments, before anything is loaded
    # nothing written anywhere, the canary and the previous export byte-identical
    assert after == before, sorted(set(after) ^ set(before)) or [k for k in after if after[k] != before[k]]


def test_float16_export_passes_against_the_float32_reference(tmp_path):
    """``--dtype fp16`` (optimum's spelling) on the CPU: onnxruntime runs the float16 graph, parity
    compares it with the float32 PyTorch model under float16's tolerance and passes (exit 0), the
    drift and routing agreement reported."""
    proc = subprocess.run([sys.executable, "-m", "ftp_export.cli", "--dtype", "fp16", "--parity-tokens", "2", "-o", "f16"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verdict = [line for line in proc.stdout.splitlines() if "(float16 export vs float32 PyTorch)" in line]
    assert len(verdict) == 1 and verdict[0].startswith("atol 1e-02 + rtol 7.8e-03") and verdict[0].endswith(": PASS"), proc.stdout
    parity = json.loads((tmp_path / "f16" / "parity.json").read_text())
    assert parity["dtype"] == "float16" and parity["reference_dtype"] == "float32" and parity["passed"]
    assert (parity["atol"], parity["rtol"], parity["routing_agreement_min"]) == (1e-2, 2**-7, 0.99)
    for case in parity["cases"]:
        assert 0 < case["prefill_max_abs_diff"] <= 1e-2 + 2**-7 * case["prefill_max_abs_ref"], case  # float16 drift, reported
        assert case["routing_agreement"] >= 0.99 and case["routing_decisions"] > 0 and case["tokens_identical"], case
    manifest = json.loads((tmp_path / "f16" / "manifest.json").read_text())
    assert manifest["model"]["dtype"] == "float16" and manifest["parity"]["reference_dtype"] == "float32"
