"""RoPE types: position-wise ones (default, linear, llama3, yarn) route exactly like the dense
model; ones whose cos/sin depend on the longest position shown (dynamic, longrope) are refused."""

from __future__ import annotations

import pytest
import torch

from ftp_export.architectures import ModelRef, load_model
from ftp_export.errors import UnsupportedModelError
from ftp_export.export.parity import pad_batch
from ftp_export.routed.generation import greedy_generate
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.schedule import new_schedule, uniform_sparsity
from tests.core.test_dense_equivalence import hf_greedy
from tests.helpers import build_tiny

THETA = {"rope_theta": 10000.0}
SUPPORTED = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    },
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
}
REFUSED = {
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "longrope": {
        "rope_type": "longrope",
        "factor": 2.0,
        "short_factor": [1.0] * 8,
        "long_factor": [2.0] * 8,
        "original_max_position_embeddings": 16,
    },
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_position_dependent_rope_is_refused(tmp_path, name):
    folder = build_tiny(tmp_path / name, rope_parameters={**REFUSED[name], **THETA})
    with pytest.raises(UnsupportedModelError) as err:
        load_model(ModelRef(name, str(folder)))
    line = str(err.value)
    assert "\n" not in line and f"RoPE type {name!r}" in line and "default, linear, llama3, yarn" in line


@pytest.fixture(scope="module", params=sorted(SUPPORTED))
def rope_model(request, tmp_path_factory):
    folder = build_tiny(tmp_path_factory.mktemp(request.param), rope_parameters={**SUPPORTED[request.param], **THETA})
    model = load_model(ModelRef(request.param, str(folder)))
    assert model.config.rope_parameters["rope_type"] == request.param
    return model


def _batch():
    g = torch.Generator().manual_seed(5)
    seqs = [torch.randint(3, 259, (n,), generator=g).tolist() for n in (23, 9)]  # past original_max 16
    return pad_batch(seqs, pad_id=0, side="left")


def test_keep_ratio_one_equals_hf(rope_model):
    routed = RoutedCausalLM(rope_model, new_schedule(rope_model.config, [0.0] * 4))
    ids, mask = _batch()
    steps = 4
    expected = hf_greedy(rope_model, ids, mask, steps)
    got = greedy_generate(routed, ids, mask, steps).step_logits
    assert (expected[0] - got[0])[mask.bool()].abs().max() <= 1e-5
    for step in range(1, steps):
        assert (expected[step] - got[step]).abs().max() <= 1e-5, f"decode step {step}"


def test_rotary_of_a_gathered_subset_equals_the_whole(rope_model):
    rotary = rope_model.model.rotary_emb
    pos = torch.arange(40).unsqueeze(0)
    x = torch.zeros(1, 40, 64)
    cos, sin = rotary(x, pos)
    subset = torch.tensor([[0, 3, 17, 39]])
    s_cos, s_sin = rotary(x[:, :4], subset)
    assert torch.allclose(cos[:, subset[0]], s_cos) and torch.allclose(sin[:, subset[0]], s_sin)


@torch.no_grad()
def test_routed_prefill_and_decode_with_an_empty_block(rope_model):
    # thresholds above every score: the routed blocks compute zero tokens at decode
    schedule = new_schedule(rope_model.config, uniform_sparsity(4, 0.3), decode_thresholds=[None, 1e9, 1e9, 1e9])
    routed = RoutedCausalLM(rope_model, schedule).eval()
    ids, mask = _batch()
    pre = routed(ids, attention_mask=mask)
    assert torch.isfinite(pre.logits).all()
    nxt = pre.logits[:, -1].argmax(-1, keepdim=True)
    pos = mask.sum(-1, keepdim=True)
    mask2 = torch.cat([mask, torch.ones_like(nxt)], 1)
    step = routed(nxt, attention_mask=mask2, position_ids=pos, past_key_values=pre.past_key_values)
    assert step.logits.shape == (2, 1, rope_model.config.vocab_size)
    assert torch.isfinite(step.logits).all()
    for b in (1, 2, 3):
        assert step.routing[b].rows.numel() == 0
