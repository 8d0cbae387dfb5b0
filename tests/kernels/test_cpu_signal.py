"""The eager CPU attention kernel: built once per machine into the cache, the ATen schedule where it
cannot be built, never on a path that needs gradients, clear errors on bad arguments, and the same
result whatever the thread count."""

from __future__ import annotations

import pytest
import torch

from ftp_export.kernels import cpu_build, cpu_signal
from ftp_export.routed import attention as attention_mod
from ftp_export.routed.block import attention_mask_for


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """An empty kernel cache and no library loaded yet (restored for later tests)."""
    monkeypatch.setenv("FTP_EXPORT_CACHE", str(tmp_path))
    monkeypatch.setenv("FTP_EXPORT_CPU_KERNEL", "1")
    cpu_build.library.cache_clear()
    yield tmp_path
    cpu_build.library.cache_clear()


def _case(seed=0, g=2, heads=6, kv=2, s=90, nq=40, dh=16, pad=7):
    gen = torch.Generator().manual_seed(seed)
    q_index = torch.stack([torch.sort(torch.randperm(s, generator=gen)[:nq]).values for _ in range(g)])
    key_valid = torch.ones(g, s, dtype=torch.bool)
    key_valid[0, :pad] = False
    allowed = attention_mask_for(key_valid, q_index, None)
    q = torch.randn(g, heads, nq, dh, generator=gen) * 0.3
    k = torch.randn(g, kv, s, dh, generator=gen) * 2
    v = torch.randn(g, kv, s, dh, generator=gen)
    weight = torch.rand(g, nq, generator=gen) * allowed.any(-1)
    return q, k, v, allowed, weight


def _aten(q, k, v, allowed, weight):
    out, colsum, _ = attention_mod._one_shot(q, k, v, attention_mod.mask_bias(allowed, q.dtype), weight, None)
    return out, colsum


def test_builds_once_into_the_cache_and_matches_aten(fresh_build, monkeypatch):
    monkeypatch.setenv("FTP_EXPORT_CPU_KERNEL", "0")  # the switch is read per call, never cached with the library
    lib = cpu_build.library()
    monkeypatch.setenv("FTP_EXPORT_CPU_KERNEL", "1")
    if lib is None:
        pytest.skip("no C compiler here")
    (built,) = fresh_build.glob("kernels/*/cpu_softmax_colsum.so")
    stamp = built.stat().st_mtime_ns
    cpu_build.library.cache_clear()
    assert cpu_build.library() is not None and built.stat().st_mtime_ns == stamp  # loaded, not rebuilt
    q, k, v, allowed, weight = _case()
    out, colsum = cpu_signal.attend(q, k, v, allowed, weight)
    ref_out, ref_sum = _aten(q, k, v, allowed, weight)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(colsum, ref_sum, rtol=1e-5, atol=1e-6)
    out_only, none = cpu_signal.attend(q, k, v, allowed, None)
    assert none is None
    torch.testing.assert_close(out_only, ref_out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cc", ["/nonexistent/cc", "false"])
def test_without_a_working_compiler_attention_falls_back_to_aten(fresh_build, monkeypatch, cc):
    monkeypatch.setenv("CC", cc)
    with pytest.warns(UserWarning, match="ATen"):
        assert cpu_build.library() is None
    q, k, v, allowed, weight = _case(1)
    assert not cpu_signal.supports(q, k, v, weight)
    q_index = torch.arange(q.shape[2]).expand(q.shape[0], -1) + (k.shape[2] - q.shape[2])
    out, colsum, _ = attention_mod.attend(q, k, v, allowed, 1.0, q_index, col_weight=weight)
    assert torch.isfinite(out).all() and colsum.shape == (q.shape[0], k.shape[2])


def test_a_broken_library_in_the_cache_falls_back_with_a_warning(fresh_build, monkeypatch):
    monkeypatch.setenv("CC", "cc")
    if cpu_build.shutil.which("cc") is None:
        pytest.skip("no C compiler here")
    path = cpu_build.library_path("cc")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a shared library")
    with pytest.warns(UserWarning, match="loading the CPU attention kernel"):
        assert cpu_build.library() is None


def test_switched_off_and_gradient_paths_keep_aten(monkeypatch):
    q, k, v, allowed, weight = _case(2)
    monkeypatch.setenv("FTP_EXPORT_CPU_KERNEL", "0")
    assert not cpu_signal.supports(q, k, v, weight)
    monkeypatch.setenv("FTP_EXPORT_CPU_KERNEL", "1")
    assert not cpu_signal.supports(q.bfloat16(), k.bfloat16(), v.bfloat16(), weight)
    # the trainer's routers learn through the column sums: the kernel has no backward
    w = weight.clone().requires_grad_()
    assert not cpu_signal.supports(q, k, v, w)
    q_index = torch.stack([torch.arange(40) + 50] * 2)
    _, colsum, _ = attention_mod.attend(q, k, v, allowed, 1.0, q_index, col_weight=w)
    colsum.sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()
    with torch.no_grad():
        assert cpu_signal.supports(q, k, v, w) == (cpu_build.library() is not None)


def test_structured_mask_equals_the_boolean_one():
    """key validity + query indices + window, read by the kernel row by row, give what the
    [G, Q, S] mask gives (padding, a window, fully masked rows)."""
    if cpu_build.library() is None:
        pytest.skip("no C compiler here")
    q, k, v, _, weight = _case(5)
    gen = torch.Generator().manual_seed(5)
    q_index = torch.stack([torch.sort(torch.randperm(90, generator=gen)[:40]).values for _ in range(2)])
    key_valid = torch.rand(2, 90, generator=gen) > 0.2
    for window in (None, 6):
        allowed = attention_mask_for(key_valid, q_index, window)
        dense = cpu_signal.attend(q, k, v, allowed, weight)
        parts = cpu_signal.attend(q, k, v, None, weight, key_valid, q_index, window)
        torch.testing.assert_close(parts[0], dense[0], rtol=0, atol=0)
        torch.testing.assert_close(parts[1], dense[1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="key_valid and q_index"):
        cpu_signal.attend(q, k, v, None, weight, key_valid, None)
    with pytest.raises(ValueError, match="key_valid must be bool"):
        cpu_signal.attend(q, k, v, None, weight, key_valid[:, :-1], q_index)
    with pytest.raises(ValueError, match="q_index must be"):
        cpu_signal.attend(q, k, v, None, weight, key_valid, q_index[:, :-1])


def test_bad_arguments_raise_value_errors():
    if cpu_build.library() is None:
        pytest.skip("no C compiler here")
    q, k, v, allowed, weight = _case(3)
    with pytest.raises(ValueError, match="allowed must be bool"):
        cpu_signal.attend(q, k, v, allowed[:, :-1], weight)
    with pytest.raises(ValueError, match="allowed must be bool"):
        cpu_signal.attend(q, k, v, allowed.float(), weight)
    with pytest.raises(ValueError, match="col_weight must be"):
        cpu_signal.attend(q, k, v, allowed, weight[:, :-1])


def test_thread_count_changes_nothing_but_rounding():
    if cpu_build.library() is None:
        pytest.skip("no C compiler here")
    q, k, v, allowed, weight = _case(4, g=1, s=300, nq=200)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu_signal.attend(q, k, v, allowed, weight)
        torch.set_num_threads(2)
        two = cpu_signal.attend(q, k, v, allowed, weight)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(one[0], two[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(one[1], two[1], rtol=1e-5, atol=1e-6)
