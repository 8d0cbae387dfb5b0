"""Decode-mode perplexity (issue 16 item 2): prompt by prefill, the rest of the window
teacher-forced through the decode path with the KV cache, in ONE call.

DEPENDS ON the routing definition of issue 16 item 1 (ftp_export/routed/model.py, owned
elsewhere): a forward call with a past routes every new token in decode (threshold) mode and is
causal, so one call carrying D new tokens after a prefill equals D one-token decode steps. The
first test checks exactly that on the embedded default model with its shipped s40 schedule
(trained routers, calibrated thresholds); if it fails, the multi-token decode call is not (yet)
causal, and the harness's decode-mode perplexity is not what generation would see.
"""

from __future__ import annotations

import math

import pytest
import torch

from ftp_export.architectures import DEFAULT_MODEL_DIR, load_model, load_tokenizer, resolve_model
from ftp_export.evaluation import methods as M
from ftp_export.evaluation.harness import measure_perplexity
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.schedule import load_schedule

TEXT = ("The jury further said in term-end presentments that the City Executive Committee, which had over-all charge "
        "of the election, deserves the praise and thanks of the City of Atlanta for the manner in which the election "
        "was conducted. The September-October term jury had been charged by Fulton Superior Court Judge Durwood Pye "
        "to investigate reports of possible irregularities in the hard-fought primary which was won by Mayor-nominate "
        "Ivan Allen Jr. Only a relative handful of such reports was received, the jury said, considering the widespread "
        "interest in the election, the number of voters and the size of this city.")


@pytest.fixture(scope="module")
def default():
    ref = resolve_model(str(DEFAULT_MODEL_DIR))
    hf = load_model(ref, torch.float32, "cpu")
    ids = torch.tensor(load_tokenizer(ref).encode(TEXT, add_special_tokens=False))
    return hf, load_schedule(DEFAULT_MODEL_DIR / "s40.json"), ids


def _decode_nll(logits: torch.Tensor, ids: torch.Tensor, prefill: int) -> float:
    """Mean NLL of tokens prefill.. from logits columns prefill - 1 .. L - 2."""
    logp = torch.log_softmax(logits[:, prefill - 1 : -1].double(), dim=-1)
    return float(-logp.gather(-1, ids[:, prefill:].unsqueeze(-1)).mean())


@pytest.mark.parametrize("seq_len, prefill", [(96, 48), (192, 40)])
def test_one_call_decode_ppl_equals_token_by_token(default, seq_len, prefill):
    """Needs issue 16 item 1's causal multi-token decode (see the module docstring)."""
    hf, sched, ids = default
    assert ids.numel() >= seq_len + 64
    windows = torch.stack([ids[:seq_len], ids[64 : 64 + seq_len]])
    model = RoutedCausalLM(hf, sched).eval()
    one_call = M.decode_logits(model, windows, prefill)
    stepwise = M.stepwise_decode_logits(model, windows, prefill)
    a, b = math.exp(_decode_nll(one_call, windows, prefill)), math.exp(_decode_nll(stepwise, windows, prefill))
    assert a == pytest.approx(b, rel=1e-4), f"one call: PPL {a:.6f}, token by token: {b:.6f}"
    # and the harness's per-window figures are the one-call ones
    method = M.ftp(hf, sched, "s40")
    units = measure_perplexity(method, windows, prefill, "cpu", show=False)
    want = [float(-torch.log_softmax(stepwise[i : i + 1, prefill - 1 : -1].double(), -1)
                  .gather(-1, windows[i : i + 1, prefill:].unsqueeze(-1)).sum()) for i in range(2)]
    assert units["decode_window_tokens"] == seq_len - prefill
    assert units["decode_window_nll"] == pytest.approx(want, rel=1e-4)


def test_decode_routing_is_exercised(default):
    """The equality above is not vacuous: in the decode call some routed tokens are computed and
    some skipped."""
    from transformers import DynamicCache

    hf, sched, ids = default
    model = RoutedCausalLM(hf, sched).eval()
    window = ids[None, :96]
    cache = DynamicCache()
    mask = torch.ones_like(window)
    with torch.no_grad():
        model(window[:, :48], mask[:, :48], past_key_values=cache, mode="prefill")
        out = model(window[:, 48:], mask, past_key_values=cache, mode="decode")
    kept = [r.rows.numel() for r in out.routing if r is not None and r.rows is not None]
    assert kept and any(0 < k < 48 for k in kept), kept


def test_non_routed_methods_decode_as_they_prefill(default):
    """Dense and layer dropping have no routing: decode mode equals prefill mode on the same
    tokens (their decoders are the routed model with no schedule / a 0-1 schedule)."""
    hf, sched, ids = default
    windows = torch.stack([ids[:80], ids[100:180]])
    for method in (M.dense(hf), M.shortgpt(hf, [0.5, 0.1, 0.3, 0.2, 0.4, 0.6], 2), M.greedy_drop(hf, [3, 0, 5], 2)):
        u = measure_perplexity(method, windows, 40, "cpu", show=False)
        assert u["decode_window_nll"] == pytest.approx(u["prefill_tail_window_nll"], rel=1e-4), method.name


def test_static_uniform_has_no_decoder(default):
    hf, _, _ = default
    m = M.uniform_static(hf, 0.3)
    assert m.decoder is None and "decode thresholds" in m.decode_note
    u = measure_perplexity(m, torch.randint(0, 200, (1, 32)), 16, "cpu", show=False)
    assert "decode_window_nll" not in u and "prefill_tail_window_nll" in u
