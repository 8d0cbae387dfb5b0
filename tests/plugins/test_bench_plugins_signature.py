"""The callers of the ftp kernel extension agree with its binding, without a GPU.

The binding's functions and keyword names are read from the ``m.def(..., py::arg(...))`` lines of
plugins/torch_ext/ftp_torch_ext.cpp. Every ``ext.<fn>(...)`` / ``load().<fn>(...)`` call in the
benchmark, the wrappers and the GPU tests must bind to one of them, and every
``kernels_ext.<fn>(...)`` call to the Python wrapper's signature: the benchmark once passed a
removed ``rank_mode`` argument and only a GPU run noticed. Then the benchmark's own code runs on
the CPU against a stand-in extension with those signatures that validates like the real one and
computes the reference results.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
from pathlib import Path

import pytest
import torch

from ftp_export.routed.lowering import TorchLowering
from ftp_export.routing import selection
from ftp_export.trt import kernel_checks, kernels_ext

ROOT = Path(__file__).resolve().parents[2]
BINDING = ROOT / "plugins" / "torch_ext" / "ftp_torch_ext.cpp"
BENCH = ROOT / "benchmarks" / "bench_plugins.py"
CALLERS = [BENCH, ROOT / "ftp_export" / "trt" / "kernels_ext.py", ROOT / "tests" / "plugins" / "test_plugin_kernels.py"]
EXT_RECEIVERS = {"ext", "raw", "_ext"}  # names the extension module is bound to in those files


def _def_calls(text: str) -> list[str]:
    """The argument text of every ``m.def(...)``, string literals blanked (they may hold parentheses)."""
    code = re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: '"' + re.sub(r"[^\w]", "_", m.group(0)[1:-1]) + '"', text)
    calls = []
    for m in re.finditer(r"\bm\.def\(", code):
        depth, i = 1, m.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(code[i], 0)
            i += 1
        calls.append(code[m.end() : i - 1])
    return calls


def binding_signatures() -> dict[str, inspect.Signature]:
    """name -> signature of every m.def of the binding (py::arg names, '= ...' as a default)."""
    sigs = {}
    for call in _def_calls(BINDING.read_text()):
        name = re.match(r'\s*"(\w+)"', call).group(1)
        params = [
            inspect.Parameter(
                a.group(1), inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None if a.group(2) else inspect._empty
            )
            for a in re.finditer(r'py::arg\("(\w+)"\)(\s*=)?', call)
        ]
        sigs[name] = inspect.Signature(params)
    return sigs


SIGS = binding_signatures()


def test_binding_declares_what_the_wrappers_use():
    expected = {
        "slot_count",
        "topk_gather_out",
        "topk_scatter_out",
        "threshold_gather_out",
        "row_scatter_out",
        *(f"{node}_workspace_size" for node in kernels_ext.NODES),
    }
    assert expected <= set(SIGS), f"missing from the binding: {sorted(expected - set(SIGS))}"
    assert list(SIGS["topk_gather_out"].parameters) == [
        "hidden", "scores", "valid", "keep_q16", "gathered", "indices", "active", "workspace",
    ]  # fmt: skip
    # the Python *_out wrappers take the binding's arguments in the binding's order
    for name in ("topk_gather_out", "topk_scatter_out", "threshold_gather_out", "row_scatter_out"):
        assert list(inspect.signature(getattr(kernels_ext, name)).parameters) == list(SIGS[name].parameters), name


def _receiver(node: ast.expr) -> str | None:
    """'ext' for ext.f(...), 'load' for load().f(...) / kernels_ext.load().f(...), else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Call):
        f = node.func
        if (isinstance(f, ast.Name) and f.id == "load") or (isinstance(f, ast.Attribute) and f.attr == "load"):
            return "load"
    return None


def _placeholder_call(sig: inspect.Signature, call: ast.Call) -> str | None:
    """Why ``call`` cannot bind to ``sig`` (None if it can; starred arguments are not checked)."""
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        return None
    try:
        sig.bind(*range(len(call.args)), **{k.arg: 0 for k in call.keywords})
    except TypeError as e:
        return str(e)
    return None


def _calls(path: Path) -> list[ast.Call]:
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)]


@pytest.mark.parametrize("path", CALLERS, ids=lambda p: p.name)
def test_extension_calls_match_the_binding(path):
    problems, seen = [], 0
    for call in _calls(path):
        f = call.func
        if not isinstance(f, ast.Attribute):
            continue
        receiver = _receiver(f.value)
        if receiver in EXT_RECEIVERS or receiver == "load":
            seen += 1
            if f.attr not in SIGS:
                problems.append(f"line {call.lineno}: {f.attr} is not a function of the binding")
            elif (why := _placeholder_call(SIGS[f.attr], call)) is not None:
                problems.append(f"line {call.lineno}: {f.attr}{SIGS[f.attr]}: {why}")
        elif receiver == "kernels_ext" and callable(getattr(kernels_ext, f.attr, None)):
            if (why := _placeholder_call(inspect.signature(getattr(kernels_ext, f.attr)), call)) is not None:
                problems.append(f"line {call.lineno}: kernels_ext.{f.attr}: {why}")
    assert not problems, f"{path.name}:\n" + "\n".join(problems)
    if path == BENCH:
        assert seen >= 5, "the benchmark no longer calls the extension through `ext`: update this test"


def test_the_old_drift_would_be_caught():
    """The calls the GPU run failed on (an extra rank_mode argument) are rejected."""
    stmt = ast.parse("ext.slot_count(T, keep_q16, 0)").body[0]
    assert _placeholder_call(SIGS["slot_count"], stmt.value) is not None
    # this one now has the binding's arity (workspace was added), but 0 lands on a tensor argument
    h, s, v = torch.zeros(1, 4, 2), torch.zeros(1, 4), torch.ones(1, 4, dtype=torch.bool)
    g, i, a = torch.empty(1, 3, 2), torch.empty(1, 3, dtype=torch.int64), torch.empty(1, 3, dtype=torch.bool)
    with pytest.raises(TypeError, match="gathered must be a torch.Tensor"):
        FakeExt().topk_gather_out(h, s, v, 39322, 0, g, i, a)


# ---- the benchmark's code on the CPU, against a stand-in extension ------------------------------------


class FakeExt:
    """The binding's functions with its signatures: validates like it (CPU tensors allowed), computes
    the reference results, returns its status strings."""

    def __getattr__(self, name):
        if name not in SIGS:
            raise AttributeError(f"the binding has no function {name!r}")
        impl = getattr(self, f"_{name}", None)
        if impl is None and name.endswith("_workspace_size"):
            impl = self._workspace_size
        sig = SIGS[name]

        def call(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)  # TypeError like pybind11 on a signature mismatch
            return impl(**bound.arguments)

        return call

    @staticmethod
    def _slot_count(T, keep_q16):
        ok = 0 <= T <= kernel_checks.MAX_TOKENS and 1 <= keep_q16 <= kernel_checks.Q16
        return selection.slot_count(T, keep_q16) if ok else -1

    @staticmethod
    def _workspace_size(B, T):
        return B * T * 4  # nonzero, so the benchmark's workspace plumbing is exercised

    @staticmethod
    def _topk_gather_out(hidden, scores, valid, keep_q16, gathered, indices, active, workspace):
        b, t, _, _ = kernel_checks.check_topk_gather(
            hidden, scores, valid, keep_q16, gathered, indices, active, require_cuda=False
        )
        kernel_checks.check_workspace(workspace, b * t * 4, hidden.device, require_cuda=False)
        g, i, a = TorchLowering().topk_gather(hidden, scores, valid, keep_q16)
        gathered.copy_(g)
        indices.copy_(i)
        active.copy_(a)
        return ""

    @staticmethod
    def _topk_scatter_out(residual, rows, indices, active, out, workspace):
        b, t, _, _ = kernel_checks.check_topk_scatter(residual, rows, indices, active, out, require_cuda=False)
        kernel_checks.check_workspace(workspace, b * t * 4, residual.device, require_cuda=False)
        out.copy_(TorchLowering().topk_scatter(residual, rows, indices, active))
        return ""

    @staticmethod
    def _threshold_gather_out(hidden, scores, valid, threshold, gathered, rows, count, workspace):
        b, t, d = kernel_checks.check_threshold_gather(
            hidden, scores, valid, threshold, gathered, rows, count, require_cuda=False
        )
        kernel_checks.check_workspace(workspace, b * t * 4, hidden.device, require_cuda=False)
        kept = selection.threshold_select(scores, valid, threshold)
        rows[: kept.numel()] = kept
        gathered[: kept.numel()] = hidden.reshape(b * t, d)[kept]
        count.fill_(kept.numel())
        return ""

    @staticmethod
    def _row_scatter_out(residual, rows_data, rows, out, workspace):
        b, t, _, d = kernel_checks.check_row_scatter(residual, rows_data, rows, out, require_cuda=False)
        kernel_checks.check_workspace(workspace, b * t * 4, residual.device, require_cuda=False)
        flat = residual.reshape(b * t, d).clone()
        flat[rows] = rows_data
        out.copy_(flat.reshape(b, t, d))
        return ""


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_plugins_under_test", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_runs_against_the_binding_signatures(capsys):
    bench = _load_bench()
    args = bench.parse_args(["--quick", "--batches", "1,3", "--lengths", "7,40", "--dim", "8", "--iters", "2"])
    assert (args.warmup, args.iters) == (bench.QUICK["warmup"], 2)
    timings = []

    def timer(fn, warmup, iters):
        fn()
        timings.append((warmup, iters))
        return 1.0

    result = bench.run(args, FakeExt(), device="cpu", timer=timer)
    assert [(r["B"], r["L"]) for r in result["prefill"]] == [(1, 7), (1, 40), (3, 7), (3, 40)]
    assert [r["B"] for r in result["decode"]] == [1, 3]
    assert result["all_bit_exact"], result  # the stand-in computes the reference: the checks must agree
    assert timings and all(t == (args.warmup, 2) for t in timings)
    assert "exact True" in capsys.readouterr().out


def test_benchmark_flags_a_wrong_kernel_result():
    bench = _load_bench()
    args = bench.parse_args(["--batches", "2", "--lengths", "9", "--dim", "4", "--no-decode"])

    class Wrong(FakeExt):
        @staticmethod
        def _topk_gather_out(hidden, scores, valid, keep_q16, gathered, indices, active, workspace):
            FakeExt._topk_gather_out(hidden, scores, valid, keep_q16, gathered, indices, active, workspace)
            indices.copy_(indices.flip(1))
            return ""

    result = bench.run(args, Wrong(), device="cpu", timer=lambda fn, w, n: 1.0)
    assert not result["all_bit_exact"]


def test_benchmark_raises_on_an_extension_error():
    bench = _load_bench()
    args = bench.parse_args(["--batches", "1", "--lengths", "9", "--dim", "4", "--no-decode"])

    class Failing(FakeExt):
        @staticmethod
        def _topk_scatter_out(residual, rows, indices, active, out, workspace):
            return "ftp kernels: ftp_topk_scatter_launch failed: cudaErrorInvalidValue"

    with pytest.raises(RuntimeError, match="cudaErrorInvalidValue"):
        bench.run(args, Failing(), device="cpu", timer=lambda fn, w, n: 1.0)


def test_quick_defaults_and_explicit_overrides():
    bench = _load_bench()
    quick = bench.parse_args(["--quick"])
    assert (quick.batches, quick.lengths, quick.warmup, quick.iters) == tuple(
        bench.QUICK[k] for k in ("batches", "lengths", "warmup", "iters")
    )
    full = bench.parse_args([])
    assert (full.batches, full.lengths, full.warmup, full.iters) == tuple(
        bench.FULL[k] for k in ("batches", "lengths", "warmup", "iters")
    )
    assert bench.parse_args(["--quick", "--lengths", "64"]).lengths == "64"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit path")
def test_benchmark_main_without_gpu_exits_2(tmp_path):
    bench = _load_bench()
    assert bench.main(["--quick", "--out", str(tmp_path / "b.json")]) == 2
    assert not (tmp_path / "b.json").exists()
