"""Calibration data loading: formats, windows, held-out split, packaged default text."""

import sys
import types

import pytest
import torch

from ftp_export.errors import FTPError
from ftp_export_trainer.data import load_data, read_documents, windows


def test_txt_modes_and_jsonl(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("first line\n\nsecond line\n")
    assert read_documents(p) == ["first line", "second line"]
    assert read_documents(p, txt_mode="file") == ["first line\n\nsecond line\n"]
    j = tmp_path / "a.jsonl"
    j.write_text('{"text": "x y"}\n\n{"text": "z"}\n')
    assert read_documents(j) == ["x y", "z"]
    j.write_text('{"text": 1}\n')
    with pytest.raises(FTPError, match="text-field"):
        read_documents(j)
    j.write_text("{oops\n")
    with pytest.raises(FTPError, match="not valid JSON"):
        read_documents(j)


def test_windows_disjoint_then_overlapping():
    ids = list(range(100))
    w = windows(ids, 10, 5)
    assert w.shape == (5, 10) and w[1, 0] == 20  # spread over the text
    w = windows(ids, 10, 30)  # more than the 10 disjoint windows: overlapping, evenly spaced
    assert w.shape == (30, 10) and w[-1, -1] == 99
    with pytest.raises(FTPError, match="fewer than"):
        windows(ids[:5], 10, 1)


def test_held_out_is_the_end_of_the_file(tiny_dir, tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("\n".join(f"line number {i} " * 4 for i in range(50)) + "\n")
    d = load_data(str(p), str(tiny_dir), 259, samples=4, seq_len=16, held_out_samples=2)
    assert d.train.shape == (4, 16) and d.held_out.shape == (2, 16)
    held_text = bytes(d.held_out[0].tolist()).decode()
    assert "line number 4" in held_text  # lines 45.. are held out
    assert d.source["kind"] == "file" and d.train.dtype == torch.int64


def test_packaged_default_text(tiny_dir, monkeypatch):
    fake = types.ModuleType("ftp_export.calibration.textdata")
    fake.load_sample_text = lambda: "The quick brown fox jumps over the lazy dog. " * 200
    fake.split_text = lambda text, held_out_fraction=0.1: (text[: int(len(text) * 0.9)], text[int(len(text) * 0.9) :])
    monkeypatch.setitem(sys.modules, "ftp_export.calibration.textdata", fake)
    d = load_data(None, str(tiny_dir), 259, samples=3, seq_len=32, held_out_samples=2)
    assert d.source["kind"] == "packaged" and d.train.shape == (3, 32) and len(d.held_out) == 2
