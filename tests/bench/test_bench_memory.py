"""The memory bench's children run with glibc's mmap threshold fixed (so a process's peak is its live
set's, not where the dynamic threshold happened to land), keeping any tunables the user set."""

from __future__ import annotations

import json
import subprocess

from ftp_export.bench import memory


def test_child_env_fixes_the_mmap_threshold_and_keeps_other_tunables():
    tunable = f"glibc.malloc.mmap_threshold={memory.MMAP_THRESHOLD}"
    assert memory.child_env({"PATH": "/bin"}) == {"PATH": "/bin", "GLIBC_TUNABLES": tunable}
    both = memory.child_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})["GLIBC_TUNABLES"]
    assert both == f"glibc.malloc.arena_max=2:{tunable}"


def test_each_measuring_child_gets_that_environment(monkeypatch):
    seen = []

    def fake_run(cmd, **kw):
        seen.append(kw["env"].get("GLIBC_TUNABLES"))
        return subprocess.CompletedProcess(cmd, 0, stdout=json.dumps({"rise_mib": 12.5}) + "\n", stderr="")

    monkeypatch.setattr(memory.subprocess, "run", fake_run)
    assert memory.measure(["eager", "x"], repeats=3) == [12.5, 12.5, 12.5]
    assert seen == [f"glibc.malloc.mmap_threshold={memory.MMAP_THRESHOLD}"] * 3
