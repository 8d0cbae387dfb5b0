"""Shared test helpers: tiny deterministic models saved and re-loaded through the real Hugging Face
path (save_pretrained -> from_pretrained on a local folder), and the parity cases and verdict
every export test uses (left padding, repeated tokens: tied router inputs)."""

from __future__ import annotations

from pathlib import Path

import torch

from ftp_export.export.parity import ParityCase, pad_batch

# 4 blocks, GQA (4 query heads, 2 K/V heads), byte vocabulary like the embedded model's
TINY = {"vocab_size": 259, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 4}
TINY |= {"num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}


def build_tiny(folder: Path, family: str = "llama", seed: int = 0, **overrides) -> Path:
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    classes = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "mistral": (MistralConfig, MistralForCausalLM),
    }
    cfg_cls, model_cls = classes[family]
    cfg = cfg_cls(**{**TINY, **overrides})
    torch.manual_seed(seed)
    model = model_cls(cfg)
    # larger-than-default init so attention is far from uniform and routing matters
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    model.save_pretrained(folder)
    return folder


ATOL = 1e-4


def export_logits(target: str, which: str) -> str:
    """Prefill logits of the session's CLI exports (tests/export/conftest.py): the shipped schedule's
    export as the target does by default (no --logits), drop+0.9's with the other choice, so every
    target is checked both ways at no extra export."""
    from ftp_export.export.targets import get_target

    default = get_target(target).default_logits
    return default if which == "shipped" else {"last": "all", "all": "last"}[default]


def parity_cases(new_tokens=32):
    g = torch.Generator().manual_seed(11)
    a = torch.randint(3, 259, (21,), generator=g).tolist()
    b = torch.randint(3, 259, (9,), generator=g).tolist()
    rep = [77] * 14  # repeated token: tied attention factors
    ids3, mask3 = pad_batch([a, b, rep], 0, side="left")
    ids1, mask1 = pad_batch([a], 0)
    idsr, maskr = pad_batch([rep], 0)
    return [
        ParityCase("batch3-left-padded", ids3, mask3, new_tokens),
        ParityCase("batch1", ids1, mask1, new_tokens),
        ParityCase("batch1-repeated", idsr, maskr, new_tokens),
    ]


def assert_parity(report):
    for c in report["cases"]:
        assert c["prefill_max_abs_diff"] <= ATOL, c
        assert c["decode_max_abs_diff"] <= ATOL, c
        assert c["routing_identical"], c["routing_mismatches"]
        assert c["tokens_identical"], c
    assert report["passed"]


def assert_router_object_refused(schedule, path: Path, mutate, needle: str) -> None:
    """``schedule`` saved to ``path``, its ``router`` object changed by ``mutate``: loading it is one
    ScheduleError line containing ``needle``."""
    import json

    import pytest

    from ftp_export.errors import ScheduleError
    from ftp_export.schedule import load_schedule, save_schedule

    saved = save_schedule(schedule, path)
    doc = json.loads(saved.read_text())
    mutate(doc["router"])
    saved.write_text(json.dumps(doc))
    with pytest.raises(ScheduleError) as err:
        load_schedule(saved)
    assert needle in str(err.value) and "\n" not in str(err.value)
