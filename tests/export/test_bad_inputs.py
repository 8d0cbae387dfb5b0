"""Bad inputs to ``ftp-export`` and ``ftp-export schedule`` end in exactly one ``error:`` line and
exit 2, before any work: no traceback, nothing written into the output (issue 15). No model is
exported here; every error must come before the export."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig

from ftp_export.cli import main
from ftp_export.schedule import new_schedule, save_schedule
from tests.helpers import build_tiny


def one_error(capsys, argv, *needles):
    """Run the CLI in-process; assert exit 2 and a single ``error:`` line holding every needle."""
    status = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert status == 2, err
    assert "Traceback" not in err
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture()
def out(tmp_path):
    folder = tmp_path / "out"
    yield folder
    assert not folder.exists(), "nothing may be written for a bad input"


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--atol", "-1"], "--atol"),
        (["--atol", "nan"], "--atol"),
        (["--atol", "inf"], "--atol"),
        (["--parity-tokens", "0"], "--parity-tokens"),
        (["--parity-tokens", "-3"], "--parity-tokens"),
        (["--dtype", "bfloat16"], "bfloat16"),
        (["--dtype", "bfloat16", "--target", "onnx", "--device", "cpu"], "float32"),
        (["--dtype", "float16", "--target", "trt"], "needs TensorRT"),
    ],
)
def test_export_flags(capsys, out, flags, needle):
    one_error(capsys, [*flags, "-o", str(out)], needle)


@pytest.fixture(scope="module")
def tiny_with_schedule(tmp_path_factory):
    """A tiny model folder and a valid schedule JSON for it."""
    folder = build_tiny(tmp_path_factory.mktemp("tiny"))
    config = AutoConfig.from_pretrained(folder)
    schedule = save_schedule(new_schedule(config, [0.0, 0.4, 0.4, 0.4]), tmp_path_factory.mktemp("sched") / "s.json")
    return folder, schedule


def test_truncated_safetensors_names_the_file(capsys, out, tmp_path, tiny_with_schedule):
    import shutil

    folder, schedule = tiny_with_schedule
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    one_error(capsys, ["--model", str(broken), "--schedule", str(schedule), "-o", str(out)], str(weights), "truncated")


@pytest.mark.parametrize("with_target", [True, False])
def test_all_blocks_dropped_schedule(capsys, out, tmp_path, tiny_with_schedule, with_target):
    folder, schedule = tiny_with_schedule
    doc = json.loads(schedule.read_text())
    doc["block_sparsity"] = [1.0] * 4
    if with_target:
        doc["target_sparsity"] = 1.0
    else:
        doc.pop("target_sparsity")
    edited = schedule.parent / f"all-dropped-{with_target}.json"
    edited.write_text(json.dumps(doc))
    one_error(capsys, ["--model", str(folder), "--schedule", str(edited), "-o", str(out)], "no block would run")


@pytest.mark.parametrize("rope", [{"rope_type": "dynamic", "factor": 2.0}])
def test_position_dependent_rope_refused(capsys, out, tmp_path, rope):
    folder = build_tiny(tmp_path / "rope", rope_parameters={**rope, "rope_theta": 10000.0})
    one_error(capsys, ["--model", str(folder), "-o", str(out)], "'dynamic'", "supported: default")


def schedule_error(capsys, tmp_path, flags, *needles):
    before = sorted(p.name for p in tmp_path.iterdir())
    line = one_error(capsys, ["schedule", *flags], *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "nothing may be written"
    return line


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--uniform", "0"], "--uniform"),
        (["--uniform", "1"], "--uniform"),
        (["--uniform", "1.5"], "--uniform"),
        (["--uniform", "-0.2"], "--uniform"),
        (["--uniform", "nan"], "--uniform"),
        (["--uniform", "0.4", "--samples", "0"], "--samples"),
        (["--uniform", "0.4", "--seq-len", "3"], "--seq-len"),
    ],
)
def test_schedule_flags(capsys, tmp_path, flags, needle):
    schedule_error(capsys, tmp_path, [*flags, "-o", str(tmp_path / "s.json")], needle)


def test_schedule_output_is_a_folder(capsys, tmp_path):
    (tmp_path / "existing").mkdir()
    schedule_error(capsys, tmp_path, ["--uniform", "0.4", "-o", str(tmp_path / "existing")], "existing folder")
    assert not any((tmp_path / "existing").iterdir())


def test_schedule_output_in_unwritable_place(capsys, tmp_path):
    # a regular file as the parent: unwritable even for root, unlike a chmod'ed folder
    (tmp_path / "afile").write_text("x")
    schedule_error(
        capsys, tmp_path, ["--uniform", "0.4", "-o", str(tmp_path / "afile" / "sub" / "s.json")], "cannot write"
    )
    assert (tmp_path / "afile").read_text() == "x"
