"""An export never destroys the user's files or a good export (issue 15): it refuses a folder of
other files and the working folder, keeps a passing export when a rerun fails parity, cleans up on
SIGTERM at any stage (exit 143) and removes the partial folders that a SIGKILL left behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ftp_export.atomic import atomic_dir, remove_stale_partials
from ftp_export.cli import main
from ftp_export.export.job import DEFAULT_SCHEDULE, FAULT_ENV, _failed_beside, check_output


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _fake_export(folder: Path, passed: bool | None) -> Path:
    folder.mkdir(parents=True)
    parity = None if passed is None else {"passed": passed}
    (folder / "manifest.json").write_text(json.dumps({"format": "ftp-export-manifest", "parity": parity}))
    return folder


def test_folder_of_user_files_is_refused_untouched(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "canary.txt").write_bytes(b"precious\x00bytes")
    (mine / "manifest.json").write_text('{"format": "something-else"}')
    before = _snapshot(mine)
    assert main(["-o", str(mine), "--parity-tokens", "2"]) == 2
    captured = capsys.readouterr()
    assert "[1/4]" not in captured.out  # refused before any work
    (line,) = _error_lines(captured.err)
    assert "not an ftp-export output" in line
    assert _snapshot(mine) == before and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


@pytest.mark.parametrize("where", [".", "parent"])
def test_working_folder_is_refused(where, tmp_path, monkeypatch, capsys):
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    (cwd / "notes.txt").write_text("keep")
    monkeypatch.chdir(cwd)
    assert main(["-o", "." if where == "." else str(tmp_path / "a")]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "current folder" in line
    assert (cwd / "notes.txt").read_text() == "keep"


def test_empty_folder_and_previous_export_are_accepted(tmp_path):
    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty")
    check_output(_fake_export(tmp_path / "old", passed=False))
    check_output(tmp_path / "new")


def test_failed_export_goes_beside_a_passing_one_only(tmp_path):
    failing, passing = {"passed": False}, {"passed": True}
    good = _fake_export(tmp_path / "good", passed=True)
    dest = _failed_beside(good, failing)
    assert dest is not None and dest.parent == tmp_path and dest.name.startswith("good.failed-")
    assert _failed_beside(good, passing) is None and _failed_beside(good, None) is None
    assert _failed_beside(_fake_export(tmp_path / "bad", passed=False), failing) is None
    assert _failed_beside(_fake_export(tmp_path / "none", passed=None), failing) is None
    assert _failed_beside(tmp_path / "absent", failing) is None


def test_atomic_dir_divert_keeps_target(tmp_path):
    target = _fake_export(tmp_path / "out", passed=True)
    before = _snapshot(target)
    with atomic_dir(target, lambda: tmp_path / "out.failed-x") as tmp:
        (tmp / "model.onnx").write_bytes(b"new")
    assert _snapshot(target) == before
    assert (tmp_path / "out.failed-x" / "model.onnx").read_bytes() == b"new"
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_stale_partials_of_dead_processes_only(tmp_path):
    dead = tmp_path / f".out.partial-{_dead_pid()}-0123abcd"
    alive = tmp_path / f".out.partial-{os.getpid()}-4567cdef"
    unrelated = tmp_path / ".out.partial-notes"
    for p in (dead, alive, unrelated):
        p.mkdir()
    assert remove_stale_partials(tmp_path) == [dead]
    assert alive.is_dir() and unrelated.is_dir() and not dead.exists()


def test_failing_rerun_keeps_the_passing_export(default_export, tmp_path, capsys):
    rc, made, _ = default_export("onnx", "shipped")
    assert rc == 0
    out = tmp_path / "out"
    shutil.copytree(made, out)
    before = _snapshot(out)
    killed = subprocess.run(  # an export SIGKILLed once its partial folder exists leaves that folder
        [sys.executable, "-m", "ftp_export.cli", "-o", str(out), "--parity-tokens", "2"],
        env={**os.environ, FAULT_ENV: "exporting:KILL"}, capture_output=True, timeout=300,
    )
    assert killed.returncode == -9
    (stale,) = [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial-")]
    capsys.readouterr()
    args = ["--schedule", str(DEFAULT_SCHEDULE), "-o", str(out), "--parity-tokens", "2", "--atol", "0"]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert _snapshot(out) == before
    assert not stale.exists() and f"removed {stale}" in captured.out
    (failed,) = [p for p in tmp_path.iterdir() if p.name.startswith("out.failed-")]
    assert json.loads((failed / "manifest.json").read_text())["parity"]["passed"] is False
    err = [ln for ln in captured.err.splitlines() if "parity failed" in ln]
    assert len(err) == 1 and str(failed) in err[0]
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name or ".old-" in p.name]


@pytest.mark.parametrize("stage", ["loading", "exporting", "parity", "manifest"])
def test_sigterm_at_each_stage_keeps_the_previous_export(stage, default_export, tmp_path):
    """SIGTERM at every stage boundary of an export into a folder holding a good export: exit 143,
    one error line, the good export byte-identical, no partial folder left."""
    rc, made, _ = default_export("onnx", "shipped")
    assert rc == 0
    shutil.copytree(made, tmp_path / "out")
    before = _snapshot(tmp_path / "out")
    proc = subprocess.run(
        [sys.executable, "-m", "ftp_export.cli", "-o", "out", "--parity-tokens", "2"],
        cwd=tmp_path, env={**os.environ, FAULT_ENV: stage}, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 143, proc.stderr
    (line,) = _error_lines(proc.stderr)
    assert "SIGTERM" in line and "Traceback" not in proc.stderr
    assert _snapshot(tmp_path / "out") == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
