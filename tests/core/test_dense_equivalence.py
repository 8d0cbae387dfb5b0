"""Keep ratio 1.0 on every block must reproduce the unmodified Hugging Face model."""

from __future__ import annotations

import pytest
import torch

from ftp_export.architectures import ModelRef, load_model
from ftp_export.export.parity import pad_batch
from ftp_export.routed.generation import greedy_generate
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.schedule import new_schedule
from tests.helpers import build_tiny


@torch.no_grad()
def hf_greedy(model, ids, mask, steps):
    """Reference loop on the plain HF model with its own DynamicCache."""
    from transformers import DynamicCache

    cache = DynamicCache()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True).logits
    out = [logits]
    for _ in range(steps - 1):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        pos = mask.sum(-1, keepdim=True)
        mask = torch.cat([mask, torch.ones_like(nxt)], 1)
        logits = model(input_ids=nxt, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True).logits
        out.append(logits)
    return out


@pytest.mark.parametrize(
    "family,extra",
    [("llama", {}), ("qwen2", {}), ("mistral", {"sliding_window": 6})],
)
@pytest.mark.parametrize("side", ["left", "right"])
def test_dense_schedule_equals_hf(tmp_path, family, extra, side):
    ref = ModelRef(family, str(build_tiny(tmp_path / family, family, **extra)))
    model = load_model(ref)
    routed = RoutedCausalLM(model, new_schedule(model.config, [0.0] * model.config.num_hidden_layers))
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(3, 259, (n,), generator=g).tolist() for n in (11, 6)]
    ids, mask = pad_batch(seqs, pad_id=0, side=side)
    steps = 16
    expected = hf_greedy(model, ids, mask, steps)
    got = greedy_generate(routed, ids, mask, steps).step_logits
    valid = mask.bool()
    assert (expected[0] - got[0])[valid].abs().max() <= 1e-5
    for step in range(1, steps):
        assert (expected[step] - got[step]).abs().max() <= 1e-5, f"decode step {step}"
