"""Shared fixtures: tiny deterministic models saved and re-loaded through the real Hugging Face
path (save_pretrained -> from_pretrained on a local folder)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ftp_export.architectures import ModelRef, load_model

TINY = dict(
    vocab_size=259,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


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


def pytest_collection_modifyitems(config, items):
    if os.environ.get("FTP_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: set FTP_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    return load_model(ModelRef("tiny", str(tiny_dir)))
