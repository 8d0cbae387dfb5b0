"""Make an export folder a complete model folder: ``config.json``, ``generation_config.json`` and the
tokenizer files beside the graphs, so ``AutoConfig`` / ``AutoTokenizer.from_pretrained(folder)``
(and the apps built on them) load it as they load the model's own folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",  # sentencepiece
    "vocab.json",
    "merges.txt",  # byte-level BPE
    "vocab.txt",
    "chat_template.jinja",
    "chat_template.json",
)
# transformers 5 writes its fast tokenizer class as TokenizersBackend, which transformers 4.x does
# not know; PreTrainedTokenizerFast is the same tokenizer (tokenizer.json) under a name both load
PORTABLE_TOKENIZER_CLASS = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def write_model_files(out: Path, hf_model: Any, source: str, tokenizer: Any) -> list[str]:
    """Write the config, generation config and tokenizer of ``hf_model`` (loaded from ``source``,
    a local folder or a hub id) into ``out``; returns the file names written."""
    from transformers import GenerationConfig

    src = Path(source)
    hf_model.config.save_pretrained(out)
    if (src / GENERATION_CONFIG).is_file():
        shutil.copy2(src / GENERATION_CONFIG, out / GENERATION_CONFIG)
    else:
        generation = getattr(hf_model, "generation_config", None) or GenerationConfig.from_model_config(hf_model.config)
        generation.save_pretrained(out)
    copied = [name for name in TOKENIZER_FILES if (src / name).is_file()]
    for name in copied:
        shutil.copy2(src / name, out / name)
    if not copied:  # a hub model (or one whose folder holds no tokenizer files): as transformers saves it
        tokenizer.save_pretrained(out)
    _portable_tokenizer_class(out / "tokenizer_config.json")
    return sorted(p.name for p in out.iterdir() if p.name in (CONFIG, GENERATION_CONFIG, *TOKENIZER_FILES))


def _portable_tokenizer_class(path: Path) -> None:
    if not path.is_file() or not (path.parent / "tokenizer.json").is_file():
        return
    doc = json.loads(path.read_text())
    portable = PORTABLE_TOKENIZER_CLASS.get(doc.get("tokenizer_class"))
    if portable:
        doc["tokenizer_class"] = portable
        path.write_text(json.dumps(doc, indent=2) + "\n")
