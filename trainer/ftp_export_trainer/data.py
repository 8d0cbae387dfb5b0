"""Calibration data: text from local files (or the packaged sample text) -> fixed-length token
windows, with a held-out split.

- ``.txt``: ``--txt-mode lines`` (default) treats every non-empty line as one sample,
  ``--txt-mode file`` the whole file as one document; samples are tokenized, joined with the
  EOS token and cut into windows of ``seq_len`` tokens.
- ``.jsonl``: one JSON object per line, text in ``--text-field`` (default ``text``).
- no ``--data``: :func:`ftp_export.calibration.textdata.load_sample_text`, split with ``split_text``.

The held-out split is taken from the *end* of the text (last ``held_out_fraction`` of the
documents / characters), never from the training windows.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ftp_export.calibration.windows import windows
from ftp_export.errors import FTPError


@dataclass
class CalibrationData:
    train: torch.Tensor  # [N, L] int64
    held_out: torch.Tensor  # [M, L] int64: the comparison table's windows
    validation: torch.Tensor  # [V, L] int64 (V may be 0): held-out windows after those, picks the final schedule
    source: dict[str, Any]
    stream: torch.Tensor | None = None  # [N] int64: the training text's ids, for decode-threshold calibration


class ByteTokenizer:
    """Fallback for models without a tokenizer: UTF-8 bytes as ids (vocab >= 256)."""

    eos_token_id = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


def read_documents(path: Path, text_field: str = "text", txt_mode: str = "lines") -> list[str]:
    """The text samples in ``path`` (.txt or .jsonl)."""
    if not path.is_file():
        raise FTPError(f"--data {path}: file not found")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise FTPError(f"--data {path}: not UTF-8 text") from None
    if path.suffix == ".jsonl":
        docs = []
        for i, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise FTPError(f"--data {path}: line {i} is not valid JSON") from None
            if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str):
                raise FTPError(f"--data {path}: line {i} has no string field {text_field!r}; set --text-field")
            if obj[text_field].strip():
                docs.append(obj[text_field])
    elif txt_mode == "file":
        docs = [raw] if raw.strip() else []
    else:
        docs = [line for line in raw.splitlines() if line.strip()]
    if not docs:
        raise FTPError(f"--data {path}: file is empty (no text samples)")
    return docs


def get_tokenizer(model_source: str, vocab_size: int) -> Any:
    """The model's tokenizer, or byte ids when the model folder has none and vocab >= 256."""
    from ftp_export.architectures import ModelRef, load_tokenizer

    try:
        return load_tokenizer(ModelRef("model", model_source))
    except FTPError:
        if vocab_size >= 256:
            return ByteTokenizer()
        raise


def tokenize(docs: list[str], tokenizer: Any) -> list[int]:
    """Concatenate the documents' token ids, separated by EOS when the tokenizer has one."""
    ids: list[int] = []
    eos = getattr(tokenizer, "eos_token_id", None)
    for doc in docs:
        ids.extend(tokenizer.encode(doc, add_special_tokens=False) if not isinstance(tokenizer, ByteTokenizer) else tokenizer.encode(doc))
        if eos is not None:
            ids.append(int(eos))
    return ids


def load_data(
    data: str | None,
    model_source: str,
    vocab_size: int,
    samples: int,
    seq_len: int,
    held_out_samples: int,
    text_field: str = "text",
    txt_mode: str = "lines",
    held_out_fraction: float = 0.1,
    validation_samples: int = 0,
) -> CalibrationData:
    """Tokenize the calibration source into train, held-out and validation windows (the
    validation windows follow the held-out ones in the held-out text; fewer, or none, when
    the text runs out)."""
    tokenizer = get_tokenizer(model_source, vocab_size)
    if data is None:
        try:
            from ftp_export.calibration.textdata import load_sample_text, split_text
        except ImportError:
            raise FTPError("no --data given and the packaged sample text (ftp_export.calibration.textdata) is missing") from None
        train_text, held_text = split_text(load_sample_text(), held_out_fraction=held_out_fraction)
        train_docs, held_docs = [train_text], [held_text]
        source = {"kind": "packaged", "name": "ftp_export.calibration.textdata", "held_out_fraction": held_out_fraction}
    else:
        docs = read_documents(Path(data), text_field, txt_mode)
        if len(docs) >= 2:
            cut = max(1, min(len(docs) - 1, math.floor(len(docs) * (1 - held_out_fraction))))
            train_docs, held_docs = docs[:cut], docs[cut:]
        else:
            text = docs[0]
            cut = int(len(text) * (1 - held_out_fraction))
            train_docs, held_docs = [text[:cut]], [text[cut:]]
        source = {"kind": "file", "path": str(Path(data).resolve()), "format": Path(data).suffix.lstrip(".") or "txt",
                  "text_field": text_field, "txt_mode": txt_mode, "held_out_fraction": held_out_fraction}
    train_ids = tokenize(train_docs, tokenizer)
    held_ids = tokenize(held_docs, tokenizer)
    train = windows(train_ids, seq_len, samples)
    if len(held_ids) < seq_len:  # tiny files: fall back to the tail of the training text
        held_ids = train_ids[-seq_len * max(1, held_out_samples):]
        source["held_out_note"] = "held-out text shorter than one window; used the end of the training text"
    all_held = windows(held_ids, seq_len, None)
    held = all_held[:held_out_samples]
    validation = all_held[held_out_samples : held_out_samples + validation_samples]
    source.update(train_tokens=len(train_ids), held_out_tokens=len(held_ids), tokenizer=type(tokenizer).__name__,
                  validation_windows=len(validation))
    return CalibrationData(train=train, held_out=held, validation=validation, source=source,
                           stream=torch.tensor(train_ids, dtype=torch.int64))
