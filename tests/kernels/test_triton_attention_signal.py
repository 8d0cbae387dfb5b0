"""The Triton attention-signal kernels (ftp_export/kernels/attention_signal.py) against the
reference :func:`ftp_export.routed.attention._one_shot`: output, column sums, own weights and the
routing decision they lead to. Without a CUDA GPU the kernels run in Triton's interpreter on CPU
tensors (``TRITON_INTERPRET=1``, set here for this module only); with one (scripts/gpu_check.sh)
they run compiled on CUDA."""

from __future__ import annotations

import importlib
import importlib.util
import os

import pytest
import torch

from ftp_export.routed import attention as attention_mod
from ftp_export.routed.attention import _one_shot, mask_bias
from ftp_export.routed.block import attention_mask_for
from ftp_export.routing.factors import query_count

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None,
    reason="triton is not installed (the test extra pins it on Linux: pip install -e '.[test]')",
)
ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
DEVICE = "cuda" if ON_GPU else "cpu"
# (out, colsum, own) absolute tolerances; out is compared relative to its scale. Half types: the
# kernel rounds scores to the input dtype as the reference's matmul does; on CPU both accumulate
# alike, on a GPU a different accumulation order (cuBLAS vs tl.dot) can flip a score's rounding by
# one ulp (~1% of one probability), so there the bounds are looser and the routing check is float32's.
# float32 on a GPU: tl.exp is the fast ex2-based exponential (a few ulp; column sums here are <= 2.1).
TOL = {torch.float32: (1e-5, 1e-6, 1e-6), torch.float16: (4e-3, 2e-5, 2e-5), torch.bfloat16: (2e-2, 2e-5, 2e-5)}
if ON_GPU:
    TOL.update({torch.float32: (2e-5, 4e-6, 4e-6), torch.float16: (1e-2, 5e-3, 5e-3), torch.bfloat16: (3e-2, 1e-2, 1e-2)})


@pytest.fixture(scope="module")
def sig():
    """The kernel module, its jit functions built for the interpreter unless on a GPU."""
    if ON_GPU:
        yield importlib.import_module("ftp_export.kernels.attention_signal")
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        mod = importlib.import_module("ftp_export.kernels.attention_signal")
        from triton.runtime.interpreter import InterpretedFunction

        if not isinstance(mod._fwd, InterpretedFunction):  # imported before, compiled mode
            mod = importlib.reload(mod)
        yield mod


def _case(seed, g=2, heads=4, kv=2, past=0, t=40, dh=64, subset=None, window=None, pad=5, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    s = past + t
    key_valid = torch.ones(g, s, dtype=torch.bool)
    key_valid[0, : past + pad] = False  # row 0 left-padded: its first query rows are fully masked
    if subset is None:
        q_tok = torch.arange(t).expand(g, t)
    else:
        q_tok = torch.stack([torch.sort(torch.randperm(t, generator=gen)[:subset]).values for _ in range(g)])
    q_index = q_tok + past
    q = torch.randn(g, heads, q_index.shape[1], dh, generator=gen)
    k = torch.randn(g, kv, s, dh, generator=gen) * 2
    v = torch.randn(g, kv, s, dh, generator=gen)
    weight = torch.rand(g, q_index.shape[1], generator=gen) * key_valid.gather(1, q_index)
    to = dict(device=DEVICE)
    return dict(
        q=q.to(dtype=dtype, **to), k=k.to(dtype=dtype, **to), v=v.to(dtype=dtype, **to), q_index=q_index.to(**to),
        key_valid=key_valid.to(**to), window=window, weight=weight.to(**to), q_tok=q_tok.to(**to), t=t,
    )


def _reference(c, scaling):
    q, k, v = c["q"], c["k"], c["v"]
    allowed = attention_mask_for(c["key_valid"], c["q_index"], c["window"])
    out, colsum, own = _one_shot(q * scaling, k, v, mask_bias(allowed, q.dtype), c["weight"], c["q_index"])
    g, h, nq, dh = q.shape
    return out.transpose(1, 2).reshape(g, nq, h * dh), colsum, own


def _run(sig, c, scaling, dense=False, **blocks):
    mask = {"allowed": attention_mask_for(c["key_valid"], c["q_index"], c["window"])} if dense else {
        "key_valid": c["key_valid"], "window": c["window"]}
    return sig.attention_with_signal(
        c["q"], c["k"], c["v"], c["q_index"], scaling, col_weight=c["weight"], own=True, **mask, **blocks)


def _routing(colsum, c, sparsity=0.6):
    """The tokens a top-k block would keep from this signal: mean received attention over the
    call's tokens (the keys after the past), valid tokens first."""
    past = c["key_valid"].shape[1] - c["t"]
    cur = colsum[:, past:]
    mean = cur / query_count(c["q_tok"], c["weight"], c["t"]).clamp(min=1)
    mean = mean.masked_fill(~c["key_valid"][:, past:], -1.0)
    return torch.sort(torch.topk(mean, max(1, int(sparsity * c["t"])), dim=-1).indices, dim=-1).values


CASES = {
    "causal-prefill-gqa": dict(pad=0),
    "left-padding-mha": dict(heads=4, kv=4),
    "sliding-window": dict(window=7, t=48),
    "topk-subset": dict(subset=13, past=0),
    "topk-subset-past": dict(subset=11, past=9, t=30),
    "decode": dict(t=1, past=37, pad=3),
    "head-dim-128": dict(dh=128, t=24, heads=8, kv=2),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference(sig, name, dtype):
    c = _case(1, dtype=dtype, **CASES[name])
    scaling = c["q"].shape[-1] ** -0.5
    ref_out, ref_col, ref_own = _reference(c, scaling)
    out, colsum, own = _run(sig, c, scaling)
    t_out, t_col, t_own = TOL[dtype]
    assert out.dtype == dtype and out.shape == ref_out.shape
    assert colsum.dtype == torch.float32 and own.dtype == torch.float32
    scale = ref_out.float().abs().max().clamp(min=1)
    assert (out.float() - ref_out.float()).abs().max() <= t_out * scale
    assert (colsum - ref_col).abs().max() <= t_col
    assert (own - ref_own).abs().max() <= t_own
    if c["q_index"].shape[1] > 1 and (dtype == torch.float32 or not ON_GPU):
        assert torch.equal(_routing(colsum, c), _routing(ref_col, c))


@pytest.mark.parametrize("name", ["left-padding-mha", "sliding-window", "topk-subset-past"])
def test_dense_mask_form_matches_structured(sig, name):
    c = _case(2, **CASES[name])
    scaling = c["q"].shape[-1] ** -0.5
    structured = _run(sig, c, scaling)
    dense = _run(sig, c, scaling, dense=True)
    for a, b, tol in zip(structured, dense, TOL[torch.float32], strict=True):
        assert (a - b).abs().max() <= tol


@pytest.mark.parametrize("dense", [False, True], ids=["structured", "dense"])
@pytest.mark.parametrize("name", ["sliding-window", "topk-subset-past", "left-padding-mha"])
def test_small_tiles(sig, name, dense):
    """16 x 16 tiles: many key tiles per row, skipped tiles, and blocks mixing masked rows."""
    c = _case(7, **CASES[name])
    scaling = c["q"].shape[-1] ** -0.5
    ref = _reference(c, scaling)
    got = _run(sig, c, scaling, dense=dense, block_m=16, block_n=16)
    for a, b, tol in zip(got, ref, TOL[torch.float32], strict=True):
        assert (a - b).abs().max() <= tol * 2


def test_fully_masked_rows_are_uniform_over_all_keys(sig):
    """A row with no allowed key (left padding, and a whole sequence of padding) attends
    uniformly to all S keys, as adding float32's minimum to every score does."""
    c = _case(3, pad=0)
    c["key_valid"][1] = False
    c["key_valid"][0, :6] = False
    scaling = c["q"].shape[-1] ** -0.5
    ref_out, ref_col, ref_own = _reference(c, scaling)
    out, colsum, own = _run(sig, c, scaling)
    s = c["k"].shape[2]
    assert torch.allclose(own[1], torch.full_like(own[1], 1 / s)) and torch.allclose(own[0, :6], own.new_full((6,), 1 / s))
    mean_v = c["v"][1].float().mean(dim=1).repeat_interleave(2, dim=0).reshape(-1)  # [H*Dh]
    assert (out[1].float() - mean_v).abs().max() <= 1e-5
    assert (out - ref_out).abs().max() <= 2e-5 and (colsum - ref_col).abs().max() <= TOL[torch.float32][1]


def test_no_signal_requested(sig):
    c = _case(4)
    scaling = 0.125
    out, colsum, own = sig.attention_with_signal(c["q"], c["k"], c["v"], c["q_index"], scaling, key_valid=c["key_valid"])
    assert colsum is None and own is None
    assert (out - _reference(c, scaling)[0]).abs().max() <= 2e-5


def test_strided_queries(sig):
    """Queries as the routed block makes them: a [G, Q, H, Dh] projection transposed to [G, H, Q, Dh]."""
    c = _case(5, subset=17)
    c["q"] = c["q"].transpose(1, 2).contiguous().transpose(1, 2)
    scaling = c["q"].shape[-1] ** -0.5
    ref = _reference(c, scaling)
    got = _run(sig, c, scaling)
    for a, b, tol in zip(got, ref, TOL[torch.float32], strict=True):
        assert (a - b).abs().max() <= 2 * tol


@pytest.mark.parametrize("name", ["sliding-window", "topk-subset-past", "left-padding-mha"])
def test_eager_key_mask_goes_in_as_its_parts(sig, monkeypatch, name):
    """attend()'s Triton call (attention._triton) hands an eager KeyMask to the kernels as key
    validity, query indices and window, never forming the [G, Q, S] tensor, and gets what the
    reference gets from that tensor; a traced graph's tensor mask goes in as it is."""
    c = _case(3, **CASES[name])
    scaling = c["q"].shape[-1] ** -0.5
    mask = attention_mod.KeyMask(c["key_valid"], c["q_index"], c["window"])
    calls = []
    real = sig.attention_with_signal
    monkeypatch.setattr(attention_mod.kernels, "attention_with_signal",
                        lambda *a, **kw: calls.append(sorted(kw)) or real(*a, **kw))
    monkeypatch.setattr(attention_mod.KeyMask, "dense", lambda self: pytest.fail("the [G, Q, S] mask was formed"))
    out, colsum, _ = attention_mod._triton(c["q"], c["k"], c["v"], c["q_index"], scaling, mask, c["weight"])
    ref_out, ref_col, _ = _reference(c, scaling)
    g, h, nq, dh = c["q"].shape
    assert (out.transpose(1, 2).reshape(g, nq, h * dh) - ref_out).abs().max() <= TOL[torch.float32][0] * 4
    assert (colsum - ref_col).abs().max() <= TOL[torch.float32][1] * 2
    dense = attention_mask_for(c["key_valid"], c["q_index"], c["window"])
    attention_mod._triton(c["q"], c["k"], c["v"], c["q_index"], scaling, dense, c["weight"])
    assert calls == [["col_weight", "key_valid", "window"], ["allowed", "col_weight"]]


def test_key_validity_of_the_wrong_length_is_refused(sig):
    c = _case(4, **CASES["left-padding-mha"])
    with pytest.raises(ValueError, match="key_valid has shape"):
        sig.attention_with_signal(c["q"], c["k"], c["v"], c["q_index"], 0.125, key_valid=c["key_valid"][:, 1:])


def test_attend_dispatch_switch(monkeypatch):
    """attend() picks the kernel only for eager CUDA calls; FTP_EXPORT_TRITON=0 turns it off."""
    q, k = torch.zeros(1, 4, 3, 64, device=DEVICE), torch.zeros(1, 2, 3, 64, device=DEVICE)
    monkeypatch.setenv("FTP_EXPORT_TRITON", "0")
    assert not attention_mod._triton_ok(q, k)
    monkeypatch.setenv("FTP_EXPORT_TRITON", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert attention_mod._triton_ok(q, k) == ON_GPU
    assert not attention_mod._triton_ok(q[..., :48], k[..., :48])  # head size not a power of two


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU: attend() uses the kernel only there")
def test_attend_uses_the_kernel_on_cuda(monkeypatch):
    """attend() on CUDA runs the kernel, and agrees with the static chunks it replaces (a fully
    masked row aside: the chunks make it uniform over their key extent, the kernel and _one_shot
    over all keys; such rows carry no weight in the signal)."""
    c = _case(6, subset=23, dtype=torch.bfloat16)
    allowed = attention_mask_for(c["key_valid"], c["q_index"], None)
    args = (c["q"], c["k"], c["v"], allowed, 0.125, c["q_index"], c["weight"])
    calls = []
    real = attention_mod.kernels.attention_with_signal
    monkeypatch.setattr(attention_mod.kernels, "attention_with_signal", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    got = attention_mod.attend(*args)
    assert calls == [1]
    monkeypatch.setenv("FTP_EXPORT_TRITON", "0")
    chunks = attention_mod.attend(*args)
    assert calls == [1]
    rows = allowed.any(-1)
    assert (got[0][rows].float() - chunks[0][rows].float()).abs().max() <= 0.05
    assert (got[1] - chunks[1]).abs().max() <= 1e-2
