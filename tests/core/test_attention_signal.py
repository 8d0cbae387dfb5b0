"""The attention signal without a probability matrix leaving attention: ``attend``'s column sums
and own weights equal the definition computed from Hugging Face-style materialised, head-averaged
probabilities (GQA, left padding, sliding window, query subsets), in one shot and in eager chunks."""

from __future__ import annotations

import pytest
import torch

from ftp_export.kernels import cpu_build, cpu_signal
from ftp_export.routed import attention as attention_mod
from ftp_export.routed.attention import KeyMask, attend
from ftp_export.routed.block import attention_mask_for


def _reference(q, k, v, allowed, scaling, weight):
    """The old definition: repeat_kv, masked softmax, head mean, weighted sum over queries."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, k.transpose(2, 3)) * scaling
    scores = scores.masked_fill(~allowed.unsqueeze(1), torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
    out = torch.matmul(probs, v).transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)
    mean = probs.mean(dim=1)
    return out, torch.einsum("gq,gqs->gs", weight, mean), mean


def _key_valid(g, s, past):
    key_valid = torch.ones(g, s, dtype=torch.bool)
    key_valid[0, : past + 5] = False  # row 0 left-padded (fully masked query rows included)
    return key_valid


def _case(seed, g=2, heads=6, kv=2, past=0, t=40, dh=8, subset=None, window=None):
    gen = torch.Generator().manual_seed(seed)
    s = past + t
    key_valid = _key_valid(g, s, past)
    q_tok = torch.arange(t).expand(g, t) if subset is None else torch.sort(torch.randperm(t, generator=gen)[:subset]).values.expand(g, subset)
    q_index = q_tok + past
    allowed = attention_mask_for(key_valid, q_index, window)
    q = torch.randn(g, heads, q_index.shape[1], dh, generator=gen)
    k = torch.randn(g, kv, s, dh, generator=gen) * 2
    v = torch.randn(g, kv, s, dh, generator=gen)
    weight = torch.rand(g, q_index.shape[1], generator=gen) * key_valid.gather(1, q_index)
    return q, k, v, allowed, q_index, weight


@pytest.fixture(params=["c-kernel", "aten"])
def cpu_schedule(request, monkeypatch):
    """Eager CPU chunks with the fused C kernel and with ATen's ops (no compiler, or switched off)."""
    monkeypatch.setenv("FTP_EXPORT_CPU_KERNEL", "1" if request.param == "c-kernel" else "0")
    if request.param == "c-kernel" and cpu_build.library() is None:
        pytest.skip("no C compiler: the kernel cannot be built here")
    return request.param


@pytest.mark.parametrize("chunk", [1000, 7])
@pytest.mark.parametrize(("subset", "window", "past"), [(None, None, 0), (23, None, 0), (None, 9, 0), (17, None, 11)])
@pytest.mark.parametrize("form", ["tensor", "key-mask"])
def test_column_sums_equal_materialised_definition(monkeypatch, cpu_schedule, chunk, subset, window, past, form):
    """Both mask forms: the [G, Q, S] tensor, and eager's KeyMask (key validity, query indices,
    window), which the C kernel reads without forming the tensor."""
    monkeypatch.setattr(attention_mod, "CHUNK", chunk)
    q, k, v, allowed, q_index, weight = _case(0, subset=subset, window=window, past=past)
    mask = allowed if form == "tensor" else KeyMask(_key_valid(q.shape[0], k.shape[2], past), q_index, window)
    out, colsum, own = attend(q, k, v, mask, 0.35, q_index, col_weight=weight)
    ref_out, ref_sum, _ = _reference(q, k, v, allowed, 0.35, weight)
    assert own is None
    valid_rows = allowed.any(-1)  # fully masked (padding) rows carry no signal and no output anyone reads
    torch.testing.assert_close(out[valid_rows], ref_out[valid_rows], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(colsum, ref_sum, rtol=1e-5, atol=1e-6)
    assert colsum.dtype == torch.float32 and colsum.shape == (q.shape[0], k.shape[2])


def test_own_weight_is_diagonal_of_head_mean():
    q, k, v, allowed, q_index, weight = _case(1, past=30, t=3)
    out, colsum, own = attend(q, k, v, allowed, 0.35, q_index, own=True)
    _, _, mean = _reference(q, k, v, allowed, 0.35, weight)
    assert colsum is None
    torch.testing.assert_close(own, mean.gather(2, q_index.unsqueeze(-1)).squeeze(-1), rtol=1e-5, atol=1e-7)


def test_chunks_only_see_keys_up_to_their_last_query(monkeypatch, cpu_schedule):
    """Eager chunks run against the keys up to their last query only (the causal saving), and
    the result still equals one shot."""
    q, k, v, allowed, q_index, weight = _case(2, g=1, t=64)
    full = attend(q, k, v, allowed, 0.35, q_index, col_weight=weight)
    monkeypatch.setattr(attention_mod, "CHUNK", 16)
    seen: list[int] = []
    owner, name = (cpu_signal, "attend") if cpu_schedule == "c-kernel" else (attention_mod, "_one_shot")
    real = getattr(owner, name)

    def spy(q_, k_, *rest):
        seen.append(k_.shape[2])
        return real(q_, k_, *rest)

    monkeypatch.setattr(owner, name, spy)
    chunked = attend(q, k, v, allowed, 0.35, q_index, col_weight=weight)
    assert seen == [16, 32, 48, 64]
    torch.testing.assert_close(chunked[1], full[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked[0][:, 5:], full[0][:, 5:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("subset", "past", "t"), [(None, 0, 40), (23, 0, 40), (17, 11, 40), (None, 0, 3), (None, 5, 2)])
def test_shape_bounded_chunks_equal_one_shot(monkeypatch, subset, past, t):
    """The chunks used where host reads are dear (CUDA), with key extents bounded from the shapes
    alone, equal one shot, for query counts not divisible by the chunk count and for fewer
    queries than chunks (empty chunks); chunk c reads S - Q + end_c keys."""
    q, k, v, allowed, q_index, weight = _case(3, subset=subset, past=past, t=t)
    bias = attention_mod.mask_bias(allowed, q.dtype)
    full = attention_mod._one_shot(q * 0.35, k, v, bias, weight, None)
    spy: list[int] = []
    real = attention_mod._one_shot
    monkeypatch.setattr(attention_mod, "_one_shot", lambda q_, k_, *rest: spy.append(k_.shape[2]) or real(q_, k_, *rest))
    out, colsum, _ = attention_mod._in_chunks(q * 0.35, k, v, bias, weight, attention_mod._shape_spans(q.shape[2], k.shape[2], 4))
    nq, s = q.shape[2], k.shape[2]
    assert spy == [s - nq + ((c + 1) * nq) // 4 for c in range(4)]
    rows = allowed.any(-1)
    torch.testing.assert_close(colsum, full[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.transpose(1, 2)[rows], full[0].transpose(1, 2)[rows], rtol=1e-5, atol=1e-5)


def test_traced_graphs_run_one_shot(monkeypatch):
    """Under tracing (ONNX, AOTInductor) attention is one call over all keys: no host reads."""
    q, k, v, allowed, q_index, weight = _case(5, t=600)
    spy: list[int] = []
    real = attention_mod._one_shot
    monkeypatch.setattr(attention_mod, "_one_shot", lambda q_, k_, *rest: spy.append(k_.shape[2]) or real(q_, k_, *rest))
    monkeypatch.setattr(attention_mod, "tracing", lambda: True)
    attend(q, k, v, allowed, 0.35, q_index, col_weight=weight)
    assert spy == [600]


@pytest.mark.parametrize("causal", [True, False])
def test_blocks_without_signal_run_fused_sdpa_with_the_same_output(causal):
    """A block no later routed block reads returns no signal; eager runs PyTorch's SDPA (causal
    when the mask is exactly the lower triangle), with the output of the explicit computation."""
    q, k, v, allowed, q_index, weight = _case(4, g=1 if causal else 2, t=48)
    if causal:
        allowed = torch.ones_like(allowed).tril()
    out, colsum, own = attend(q, k, v, allowed, 0.35, q_index, causal=causal)
    ref_out, _, _ = _reference(q, k, v, allowed, 0.35, weight)
    rows = allowed.any(-1)
    assert colsum is None and own is None
    torch.testing.assert_close(out[rows], ref_out[rows], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(out).all()  # fully masked padding rows stay finite
