"""Decode routing (docs/routing.md, "Decode selection"): a call with a past routes each new token
as if decoded alone, thresholds follow the context length, ties are split by position, and the
shipped schedule holds its sparsity at short and long contexts."""

from __future__ import annotations

import json

import pytest
import torch

from ftp_export.calibration.thresholds import measure_decode_skip_rates
from ftp_export.errors import ScheduleError
from ftp_export.export.job import DEFAULT_SCHEDULE
from ftp_export.routed.cache import TensorCache
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.routing.decode_thresholds import DecodeThresholds
from ftp_export.routing.selection import DITHER
from ftp_export.schedule import load_schedule, new_schedule, save_schedule, uniform_sparsity


def _routed(model, seed=0, thresholds=None):
    n = model.config.num_hidden_layers
    sch = new_schedule(model.config, uniform_sparsity(n, 0.4), decode_thresholds=thresholds)
    gen = torch.Generator().manual_seed(seed)
    for b in range(1, n):
        for w in (sch.routers.blocks[b].fc1.weight, sch.routers.blocks[b].fc2.weight):
            w.data.copy_(torch.randn(w.shape, generator=gen))
    return RoutedCausalLM(model, sch).eval()


@torch.no_grad()
def test_one_call_with_many_new_tokens_equals_one_token_steps(tiny_model):
    """Chunked prefill, multi-turn chat and assisted decoding send several new tokens with a past:
    routing rows, logits and cache equal token-by-token decoding (left padding included)."""
    model = _routed(tiny_model, seed=1, thresholds=[None] + [float("-inf")] * 3)
    ids = torch.randint(3, 259, (3, 20), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding
    past = TensorCache()
    model(ids[:, :8], mask[:, :8], past_key_values=past, mode="prefill")
    probe = model(ids[:, 8:], mask, past_key_values=TensorCache(past.present), mode="decode", keep_scores=True)
    med = [float(r.scores.median()) if r is not None else 0.0 for r in probe.routing]
    # curves through each block's median score (not flat, so the per-token context length matters)
    model.schedule.decode_thresholds = DecodeThresholds([10, 14, 20], [None] + [[m - 0.05, m, m + 0.05] for m in med[1:]])
    one = model(ids[:, 8:], mask, past_key_values=TensorCache(past.present), mode="decode")
    cache, logits, kept = TensorCache(past.present), [], [[] for _ in range(4)]
    for t in range(8, 20):
        step = model(ids[:, t : t + 1], mask[:, : t + 1], past_key_values=cache, mode="decode")
        cache = TensorCache(cache.present)
        logits.append(step.logits)
        for b in range(1, 4):  # flat row b * 1 + 0 of this step -> row b * 12 + (t - 8) of the one call
            kept[b] += [int(r) * 12 + (t - 8) for r in step.routing[b].rows]
    torch.testing.assert_close(one.logits, torch.cat(logits, dim=1), rtol=0, atol=2e-5)
    for b in range(1, 4):
        assert sorted(kept[b]) == one.routing[b].rows.tolist(), b
        assert 0 < len(kept[b]) < 36, b  # some computed, some skipped: the check is not empty
    for (k1, v1), (k2, v2) in zip(one_present(model, ids, mask, past), cache.past, strict=True):
        torch.testing.assert_close(k1, k2, rtol=0, atol=2e-5)
        torch.testing.assert_close(v1, v2, rtol=0, atol=2e-5)


def one_present(model, ids, mask, past):
    cache = TensorCache(past.present)
    model(ids[:, 8:], mask, past_key_values=cache, mode="decode")
    return cache.present


@torch.no_grad()
def test_tied_scores_are_split_by_position_and_token(tiny_model):
    """A router whose output is constant gives every decoded token one score; the tie-break (a
    hash of position and token) splits them at the threshold instead of computing all or none,
    also across sequences decoding at the same positions."""
    n = tiny_model.config.num_hidden_layers
    sch = new_schedule(tiny_model.config, uniform_sparsity(n, 0.4), decode_thresholds=[None] + [DITHER / 2] * (n - 1))
    for b in range(1, n):
        for p in sch.routers.blocks[b].parameters():
            p.data.zero_()  # score 0 for every token
    model = RoutedCausalLM(tiny_model, sch).eval()
    # one sequence decoding 200 tokens; 200 sequences decoding one token each at the same position
    for shape, seed, tol in (((1, 210), 3, 0.05), ((200, 11), 4, 0.1)):
        ids = torch.randint(3, 259, shape, generator=torch.Generator().manual_seed(seed))
        past = TensorCache()
        model(ids[:, :10], torch.ones_like(ids[:, :10]), past_key_values=past, mode="prefill")
        out = model(ids[:, 10:], torch.ones_like(ids), past_key_values=TensorCache(past.present), mode="decode")
        for b in range(1, n):
            assert abs(out.routing[b].rows.numel() / 200 - 0.5) <= tol, (shape, b)


def test_format_1_schedules_load_with_constant_thresholds(tmp_path, tiny_model):
    sch = new_schedule(tiny_model.config, uniform_sparsity(4, 0.3), decode_thresholds=[None, 0.5, 0.25, 0.125])
    path = save_schedule(sch, tmp_path / "s.json")
    doc = json.loads(path.read_text())
    doc["format_version"] = 1
    doc["decode_thresholds"] = [None, 0.5, 0.25, 0.125]
    for key in ("head_dim", "rope", "sliding_window", "tie_word_embeddings"):
        del doc["base_model"]["fingerprint"][key]
    path.write_text(json.dumps(doc))
    old = load_schedule(path)
    assert old.format_version == 1 and old.decode_thresholds.values == [None, [0.5], [0.25], [0.125]]
    RoutedCausalLM(tiny_model, old)  # the fields format 1 lacks are not checked


def test_schedule_for_other_rope_settings_is_refused(tmp_path, tiny_model):
    sch = new_schedule(tiny_model.config, uniform_sparsity(4, 0.3))
    sch.base_model["fingerprint"]["rope"] = {"rope_theta": 500000.0, "rope_type": "default"}
    with pytest.raises(ScheduleError, match="rope"):
        RoutedCausalLM(tiny_model, load_schedule(save_schedule(sch, tmp_path / "s.json")))


@torch.no_grad()
def test_shipped_schedule_holds_its_sparsity_at_64_256_and_1000_tokens(default_model):
    """Issue 16's acceptance on the embedded model: teacher-forced decoding of held-out text,
    1024 decoded tokens per length (512 windows x 2), every routed block within 0.05 of its
    sparsity at contexts 64, 256 and 1000."""
    from transformers import AutoTokenizer

    from ftp_export.calibration.textdata import load_sample_text, split_text

    schedule = load_schedule(DEFAULT_SCHEDULE)
    model = RoutedCausalLM(default_model, schedule).eval()
    held = split_text(load_sample_text())[1]
    tok = AutoTokenizer.from_pretrained(DEFAULT_SCHEDULE.parent)
    ids = torch.tensor(tok(held, add_special_tokens=False)["input_ids"])
    rates = measure_decode_skip_rates(model, ids, [64, 256, 1000], windows=512, decode_tokens=2)
    assert min(rates.tokens) >= 500
    for b, rs in enumerate(rates.rates):
        if rs is not None:
            for length, r in zip(rates.lengths, rs, strict=True):
                assert abs(r - schedule.block_sparsity[b]) <= 0.05, (b, length, r, schedule.block_sparsity[b])
