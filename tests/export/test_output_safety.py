"""An export never destroys the user's files or a good export (issue 15): it refuses a folder of
other files and the working folder, keeps a passing export when a rerun fails parity, cleans up on
SIGTERM at any stage (exit 143) and removes the partial folders that a SIGKILL left behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftp_export import atomic
from ftp_export.atomic import atomic_dir, remove_stale_partials
from ftp_export.cli import main
from ftp_export.cli.parser import Terminated, _raise_terminated
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


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_replacing_an_export_leaves_no_old_folder(exchange, tmp_path, monkeypatch):
    if not exchange:  # a kernel or file system without RENAME_EXCHANGE
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    target = _fake_export(tmp_path / "out", passed=True)
    (target / "stale.bin").write_bytes(b"old")
    with atomic_dir(target) as tmp:
        (tmp / "model.onnx").write_bytes(b"new")
    assert _snapshot(target) == {"model.onnx": b"new"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_sigterm_while_swapping_is_held_until_the_new_export_is_in_place(tmp_path, monkeypatch):
    def exchange(a: Path, b: Path) -> bool:  # the signal arrives between the two renames of the fallback
        os.kill(os.getpid(), signal.SIGTERM)
        return False

    monkeypatch.setattr(atomic, "_exchange", exchange)
    target = _fake_export(tmp_path / "out", passed=True)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        with pytest.raises(Terminated), atomic_dir(target) as tmp:
            (tmp / "model.onnx").write_bytes(b"new")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert _snapshot(target) == {"model.onnx": b"new"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_old_folders_of_dead_processes_are_removed_or_restored(tmp_path):
    """A SIGKILL between the fallback's two renames leaves ``.NAME.old-PID-*`` (and the partial):
    the next export restores it when NAME is missing, else removes it; a live owner's is kept."""
    dead = _dead_pid()
    kept = _fake_export(tmp_path / "kept", passed=True)
    old_beside_kept = _fake_export(tmp_path / f".kept.old-{dead}-0123abcd", passed=True)
    lost_old = _fake_export(tmp_path / f".lost.old-{dead}-4567cdef", passed=True)
    (lost_old / "model.onnx").write_bytes(b"previous")
    lost_partial = _fake_export(tmp_path / f".lost.partial-{dead}-89abcdef", passed=True)
    alive = _fake_export(tmp_path / f".busy.old-{os.getpid()}-0123abcd", passed=True)
    said: list[str] = []
    assert remove_stale_partials(tmp_path, said.append) == [old_beside_kept, lost_partial]
    assert kept.is_dir() and alive.is_dir() and not lost_old.exists()
    assert (tmp_path / "lost" / "model.onnx").read_bytes() == b"previous"
    assert said == [f"restored {tmp_path / 'lost'} from {lost_old}, left by a process killed while replacing it"]


def _start_export(cwd: Path, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    return subprocess.Popen([sys.executable, "-m", "ftp_export.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _signal_mid_export(proc: subprocess.Popen, parent: Path, sig: int) -> Path:
    """Wait until the export has made its partial folder, then a short delay, then ``sig``."""
    deadline = time.monotonic() + 240
    while not (partials := [p for p in parent.iterdir() if ".partial-" in p.name]):
        assert proc.poll() is None and time.monotonic() < deadline, "the export ended before its partial folder appeared"
        time.sleep(0.05)
    time.sleep(0.5)
    assert proc.poll() is None, "the export ended before the signal"
    proc.send_signal(sig)
    return partials[0]


def _export_then_signal(default_export, tmp_path, sig):
    """A previous good export at tmp_path/out, then a new export into it stopped by ``sig`` once its
    partial folder exists. Returns (process, the partial folder, snapshot of the previous export)."""
    rc, made, _ = default_export("onnx", "shipped")
    assert rc == 0
    shutil.copytree(made, tmp_path / "out")
    before = _snapshot(tmp_path / "out")
    proc = _start_export(tmp_path, "-o", "out", "--parity-tokens", "2")
    return proc, _signal_mid_export(proc, tmp_path, sig), before


def test_timed_sigterm_keeps_the_previous_export(default_export, tmp_path):
    proc, _, before = _export_then_signal(default_export, tmp_path, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    (line,) = _error_lines(err)
    assert "SIGTERM" in line and "Traceback" not in err
    assert _snapshot(tmp_path / "out") == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_timed_sigkill_partial_is_removed_by_the_next_export(default_export, tmp_path):
    proc, stale, before = _export_then_signal(default_export, tmp_path, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and stale.is_dir()
    assert _snapshot(tmp_path / "out") == before
    # the next export into the same parent (stopped once it starts loading, to stay cheap)
    nxt = subprocess.run([sys.executable, "-m", "ftp_export.cli", "-o", "other"], cwd=tmp_path,
                         env={**os.environ, FAULT_ENV: "loading"}, capture_output=True, text=True, timeout=300)
    assert nxt.returncode == 143, nxt.stderr
    assert f"removed {stale}, left by an export that was killed" in nxt.stdout
    assert _snapshot(tmp_path / "out") == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


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
    args = ["--schedule", str(DEFAULT_SCHEDULE), "-o", str(out), "--parity-tokens", "2", "--atol", "0", "--rtol", "0"]
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
