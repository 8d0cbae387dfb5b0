"""bench.json's ``git`` says which code ran: the commit, and ``+dirty`` when the package's files
differ from it (a run of uncommitted code must not pass for the commit's)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from ftp_export.cli.bench import git_revision

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(cwd, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_revision_marks_uncommitted_package_changes(tmp_path, monkeypatch):
    monkeypatch.delenv("FTP_EXPORT_REVISION", raising=False)
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "code.py").write_text("x = 1\n")
    (tmp_path / "notes.md").write_text("a\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "c")
    head = _git(tmp_path, "rev-parse", "--short", "HEAD")
    assert git_revision(pkg) == head
    (tmp_path / "notes.md").write_text("b\n")  # outside the package: not the code that ran
    assert git_revision(pkg) == head
    (pkg / "code.py").write_text("x = 2\n")
    assert git_revision(pkg) == head + "+dirty"
    monkeypatch.setenv("FTP_EXPORT_REVISION", "abc1234")
    assert git_revision(pkg) == "abc1234"


def test_revision_outside_git_is_none(tmp_path, monkeypatch):
    monkeypatch.delenv("FTP_EXPORT_REVISION", raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert git_revision(tmp_path) is None
