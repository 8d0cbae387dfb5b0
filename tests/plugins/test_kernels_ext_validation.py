"""Argument validation of the ftp kernel wrappers (ftp_export/trt/kernels_ext.py), without a GPU.

The validators read metadata only, so CPU and meta tensors stand in for CUDA ones
(``require_cuda=False``); by default a CPU tensor is refused. Every wrapper validates before it
loads the extension (``load`` is replaced by a function that fails the test). The last part reads
the sources: the launch path has nothing that breaks CUDA graph capture, and the binding has
nothing that throws a C++ exception at Python (see plugins/torch_ext/ftp_torch_ext.cpp).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from ftp_export.routing import selection
from ftp_export.trt import kernel_checks as kc
from ftp_export.trt import kernels_ext as kx

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "plugins"
BINDING = PLUGINS / "torch_ext" / "ftp_torch_ext.cpp"
CPU = torch.device("cpu")


@pytest.fixture
def no_extension(monkeypatch):
    def load(*_, **__):
        raise AssertionError("the extension was loaded before the arguments were validated")

    monkeypatch.setattr(kx, "load", load)
    monkeypatch.setattr(kx, "_module", None)


def gather_args(b=2, t=10, d=4, dtype=torch.float16, device=CPU, q16=39322):
    k = selection.slot_count(t, q16)
    return dict(
        hidden=torch.zeros(b, t, d, dtype=dtype, device=device),
        scores=torch.zeros(b, t, device=device),
        valid=torch.ones(b, t, dtype=torch.bool, device=device),
        keep_q16=q16,
        gathered=torch.empty(b, k, d, dtype=dtype, device=device),
        indices=torch.empty(b, k, dtype=torch.int64, device=device),
        active=torch.empty(b, k, dtype=torch.bool, device=device),
    )


def scatter_args(b=2, t=10, k=6, d=4, dtype=torch.bfloat16, device=CPU):
    return dict(
        residual=torch.zeros(b, t, d, dtype=dtype, device=device),
        rows=torch.zeros(b, k, d, dtype=dtype, device=device),
        indices=torch.zeros(b, k, dtype=torch.int64, device=device),
        active=torch.zeros(b, k, dtype=torch.bool, device=device),
        out=torch.empty(b, t, d, dtype=dtype, device=device),
    )


def threshold_args(b=3, t=5, d=4, dtype=torch.float32, device=CPU):
    return dict(
        hidden=torch.zeros(b, t, d, dtype=dtype, device=device),
        scores=torch.zeros(b, t, device=device),
        valid=torch.ones(b, t, dtype=torch.bool, device=device),
        threshold=0.5,
        gathered=torch.empty(b * t, d, dtype=dtype, device=device),
        rows=torch.empty(b * t, dtype=torch.int64, device=device),
        count=torch.empty((), dtype=torch.int32, device=device),
    )


def row_scatter_args(b=3, t=5, n=4, d=4, dtype=torch.float16, device=CPU):
    return dict(
        residual=torch.zeros(b, t, d, dtype=dtype, device=device),
        rows_data=torch.zeros(n, d, dtype=dtype, device=device),
        rows=torch.zeros(n, dtype=torch.int64, device=device),
        out=torch.empty(b, t, d, dtype=dtype, device=device),
    )


CHECKS = {
    "topk_gather": (kc.check_topk_gather, gather_args),
    "topk_scatter": (kc.check_topk_scatter, scatter_args),
    "threshold_gather": (kc.check_threshold_gather, threshold_args),
    "row_scatter": (kc.check_row_scatter, row_scatter_args),
}


# ---- slot counts --------------------------------------------------------------------------------------


def test_slot_count_is_the_selection_formula(no_extension):
    for q16 in (1, 2, 13107, 39322, 65535, 65536):
        for t in (*range(0, 40), 513, 4096, 131072):
            assert kx.slot_count(t, q16) == selection.slot_count(t, q16)


@pytest.mark.parametrize(
    ("args", "exc"),
    [
        ((131073, 39322), ValueError),
        ((-1, 39322), ValueError),
        ((10, 0), ValueError),
        ((10, 65537), ValueError),
        ((10, 2**32 + 1), ValueError),
        ((10.0, 39322), TypeError),
        ((10, True), TypeError),
        ((10, torch.tensor(39322)), TypeError),  # reading it would synchronise a CUDA tensor
        (("10", 39322), TypeError),
    ],
)
def test_slot_count_rejects(no_extension, args, exc):
    with pytest.raises(exc, match="ftp kernels: "):
        kx.slot_count(*args)


# ---- validators -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_valid_arguments_pass(device):
    dev = torch.device(device)
    assert kc.check_topk_gather(**gather_args(device=dev), require_cuda=False) == (2, 10, 4, 6)
    assert kc.check_topk_scatter(**scatter_args(device=dev), require_cuda=False) == (2, 10, 6, 4)
    assert kc.check_threshold_gather(**threshold_args(device=dev), require_cuda=False) == (3, 5, 4)
    assert kc.check_row_scatter(**row_scatter_args(device=dev), require_cuda=False) == (3, 5, 4, 4)
    # outputs are optional (the allocating wrappers check inputs first)
    args = gather_args(device=dev)
    for out in ("gathered", "indices", "active"):
        args.pop(out)
    assert kc.check_topk_gather(**args, require_cuda=False) == (2, 10, 4, 6)


@pytest.mark.parametrize("node", list(CHECKS))
def test_cpu_tensors_are_refused_by_default(node):
    check, make = CHECKS[node]
    with pytest.raises(ValueError, match="must be a CUDA tensor, got one on cpu"):
        check(**make())


def _non_contiguous(t):
    return t.transpose(-1, -2).contiguous().transpose(-1, -2) if t.dim() >= 2 else t.repeat(2)[::2]


BAD = [
    # (node, argument, replacement(args) -> value, exception, message fragment)
    ("topk_gather", "hidden", lambda a: a["hidden"].double(), TypeError, "hidden must be float32"),
    ("topk_gather", "hidden", lambda a: a["hidden"][0], ValueError, "hidden must have 3 dims"),
    ("topk_gather", "hidden", lambda a: [1, 2], TypeError, "hidden must be a torch.Tensor"),
    ("topk_gather", "hidden", lambda a: torch.zeros(2, 10, 4).to_sparse(), ValueError, "dense"),
    ("topk_gather", "hidden", lambda a: _non_contiguous(a["hidden"]), ValueError, "hidden must be contiguous"),
    ("topk_gather", "scores", lambda a: a["scores"].half(), TypeError, "scores must be float32"),
    ("topk_gather", "scores", lambda a: a["scores"][:, :9].contiguous(), ValueError, "scores has shape"),
    ("topk_gather", "scores", lambda a: a["scores"].to("meta"), ValueError, "scores is on meta, expected cpu"),
    ("topk_gather", "valid", lambda a: a["valid"].int(), TypeError, "valid must be bool"),
    ("topk_gather", "keep_q16", lambda a: 0, ValueError, "keep_q16 must be in 1..65536"),
    ("topk_gather", "keep_q16", lambda a: 0.6, TypeError, "keep_q16 must be an int"),
    ("topk_gather", "gathered", lambda a: a["gathered"][:, :5].contiguous(), ValueError, "gathered has shape"),
    ("topk_gather", "gathered", lambda a: a["gathered"].float(), TypeError, "gathered must be float16"),
    ("topk_gather", "indices", lambda a: a["indices"].int(), TypeError, "indices must be int64"),
    ("topk_gather", "active", lambda a: a["active"][None], ValueError, "active must have 2 dims"),
    (
        "topk_gather",
        "gathered",
        lambda a: a["hidden"].view(-1)[:48].view(2, 6, 4),
        ValueError,
        "gathered overlaps hidden",
    ),
    ("topk_scatter", "rows", lambda a: a["rows"].half(), TypeError, "rows must be bfloat16"),
    ("topk_scatter", "rows", lambda a: a["rows"][:, :5].contiguous(), ValueError, "rows has shape"),
    ("topk_scatter", "active", lambda a: a["active"][:, :5].contiguous(), ValueError, "active has shape"),
    ("topk_scatter", "out", lambda a: a["residual"], ValueError, "out overlaps residual"),
    ("topk_scatter", "out", lambda a: a["out"][:, :9].contiguous(), ValueError, "out has shape"),
    ("threshold_gather", "threshold", lambda a: "0.5", TypeError, "threshold must be a Python float"),
    ("threshold_gather", "threshold", lambda a: torch.tensor(0.5), TypeError, "threshold must be a Python float"),
    ("threshold_gather", "count", lambda a: a["count"][None], ValueError, "count must have 0 dims"),
    ("threshold_gather", "rows", lambda a: a["rows"][:14], ValueError, "rows (upper bound B*T rows) has shape"),
    (
        "threshold_gather",
        "rows",
        lambda a: a["gathered"].view(-1).view(torch.int64)[:15],
        ValueError,
        "gathered overlaps rows",
    ),
    ("threshold_gather", "valid", lambda a: a["valid"].T, ValueError, "valid must be contiguous"),
    ("row_scatter", "rows", lambda a: a["rows"].int(), TypeError, "rows must be int64"),
    ("row_scatter", "rows_data", lambda a: a["rows_data"][:, :3].contiguous(), ValueError, "rows_data has shape"),
    ("row_scatter", "out", lambda a: a["residual"].clone(), None, None),  # same values, other memory: fine
    ("row_scatter", "out", lambda a: a["residual"][:, :], ValueError, "out overlaps residual"),
]


@pytest.mark.parametrize(("node", "arg", "replace", "exc", "match"), BAD, ids=lambda x: x if isinstance(x, str) else "")
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_bad_arguments_are_named(node, arg, replace, exc, match, device):
    check, make = CHECKS[node]
    args = make(device=torch.device(device))
    args[arg] = replace(args)
    if exc is None:
        check(**args, require_cuda=False)
        return
    if device == "meta" and match and "overlaps" in match:
        pytest.skip("meta tensors have no addresses: overlap is checked on real memory only")
    if device == "meta" and match and "is on meta" in match:
        pytest.skip("already on meta")
    with pytest.raises(exc, match=re.escape(match)):
        check(**args, require_cuda=False)


def test_size_limits_on_meta_tensors():
    """The limits of the kernels, on shapes too large to allocate."""
    meta = torch.device("meta")
    with pytest.raises(ValueError, match="at most 131072"):
        kc.check_topk_gather(**gather_args(b=1, t=131073, d=1, device=meta), require_cuda=False)
    assert kc.check_topk_gather(**gather_args(b=1, t=131072, d=1, device=meta), require_cuda=False)[1] == 131072
    big = 2**16
    with pytest.raises(ValueError, match="int32 row map"):
        kc.check_topk_scatter(**scatter_args(b=big, t=big, k=1, d=1, device=meta), require_cuda=False)
    with pytest.raises(ValueError, match="int32 row map"):
        kc.check_row_scatter(**row_scatter_args(b=big, t=big, n=1, d=1, device=meta), require_cuda=False)
    with pytest.raises(ValueError, match="too large"):
        kc.check_threshold_gather(
            hidden=torch.empty(big, big, 1, device=meta),
            scores=torch.empty(big, big, device=meta),
            valid=torch.empty(big, big, dtype=torch.bool, device=meta),
            threshold=0.0,
            require_cuda=False,
        )
    with pytest.raises(ValueError, match="more than the 4 tokens"):
        kc.check_topk_scatter(**scatter_args(t=4, k=5, device=meta), require_cuda=False)


def test_workspace_checks():
    ws = torch.empty(64, dtype=torch.uint8)
    kc.check_workspace(ws, 64, CPU, require_cuda=False)
    kc.check_workspace(torch.empty(0, dtype=torch.uint8), 0, CPU, require_cuda=False)
    with pytest.raises(ValueError, match="workspace has 64 bytes, the launch needs 65"):
        kc.check_workspace(ws, 65, CPU, require_cuda=False)
    with pytest.raises(TypeError, match="workspace must be uint8"):
        kc.check_workspace(ws.view(torch.int32), 4, CPU, require_cuda=False)
    with pytest.raises(ValueError, match="workspace must have 1 dims"):
        kc.check_workspace(ws.view(8, 8), 4, CPU, require_cuda=False)
    with pytest.raises(ValueError, match="must be a CUDA tensor"):
        kc.check_workspace(ws, 4, CPU)


def test_check_status():
    kc.check_status("", "x")
    with pytest.raises(RuntimeError, match="^ftp kernels: launch failed$"):
        kc.check_status("ftp kernels: launch failed", "x")
    with pytest.raises(RuntimeError, match="x returned None"):
        kc.check_status(None, "x")


# ---- the wrappers validate before they load the extension ----------------------------------------------


def _wrapper_calls():
    g, s, t, r = gather_args(), scatter_args(), threshold_args(), row_scatter_args()
    return {
        "topk_gather": lambda: kx.topk_gather(g["hidden"], g["scores"], g["valid"], g["keep_q16"]),
        "topk_gather_out": lambda: kx.topk_gather_out(**g),
        "topk_scatter": lambda: kx.topk_scatter(s["residual"], s["rows"], s["indices"], s["active"]),
        "topk_scatter_out": lambda: kx.topk_scatter_out(**s),
        "threshold_gather": lambda: kx.threshold_gather(t["hidden"], t["scores"], t["valid"], t["threshold"]),
        "threshold_gather_padded": lambda: kx.threshold_gather_padded(
            t["hidden"], t["scores"], t["valid"], t["threshold"]
        ),
        "threshold_gather_out": lambda: kx.threshold_gather_out(**t),
        "row_scatter": lambda: kx.row_scatter(r["residual"], r["rows_data"], r["rows"]),
        "row_scatter_out": lambda: kx.row_scatter_out(**r),
        "flags_out": lambda: kx.flags_out(torch.ones(2, 3, dtype=torch.int32), torch.empty(2, 3, dtype=torch.bool)),
        "convert_flags": lambda: kx.convert_flags(torch.ones(2, 3, dtype=torch.bool)),
    }


@pytest.mark.parametrize("name", list(_wrapper_calls()))
def test_wrappers_validate_before_loading(no_extension, name):
    with pytest.raises(ValueError, match="must be a CUDA tensor"):
        _wrapper_calls()[name]()


def test_allocating_wrappers_convert_only_float_scores(no_extension):
    g = gather_args()
    with pytest.raises(ValueError, match="CUDA"):  # bf16 scores are read as float32: past the dtype check
        kx.topk_gather(g["hidden"], g["scores"].bfloat16(), g["valid"], 39322)
    with pytest.raises(ValueError, match="CUDA"):  # non-contiguous inputs are made contiguous
        kx.topk_gather(_non_contiguous(g["hidden"]), g["scores"], g["valid"], 39322)
    # the device check comes first; on a matching device an integer score dtype is refused
    with pytest.raises(TypeError, match="scores must be float32"):
        kc.check_topk_gather(g["hidden"], g["scores"].long(), g["valid"], 39322, require_cuda=False)
    with pytest.raises(ValueError, match="unknown node"):
        kx.workspace_size("topk", 1, 1)


def test_flag_conversion_checks():
    """int32 -> bool or bool -> int32 (the TensorRT glue's conversions), same shape, no aliasing."""
    i32, b8 = torch.ones(2, 3, dtype=torch.int32), torch.empty(2, 3, dtype=torch.bool)
    kc.check_flags(i32, b8, require_cuda=False)
    kc.check_flags(b8, i32, require_cuda=False)
    with pytest.raises(TypeError, match="flags must be int32, bool"):
        kc.check_flags(i32.long(), b8, require_cuda=False)
    with pytest.raises(TypeError, match="out must be bool"):
        kc.check_flags(i32, i32.clone(), require_cuda=False)
    with pytest.raises(TypeError, match="out must be int32"):
        kc.check_flags(b8, b8.clone(), require_cuda=False)
    with pytest.raises(ValueError, match="shape"):
        kc.check_flags(i32, b8[:1], require_cuda=False)
    with pytest.raises(ValueError, match="overlaps"):
        kc.check_flags(i32, i32.view(-1).view(torch.uint8)[:6].view(torch.bool).view(2, 3), require_cuda=False)
    with pytest.raises(TypeError, match="flags must be a torch.Tensor"):
        kc.check_flags([1, 0], b8, require_cuda=False)


# ---- the extension in a child process --------------------------------------------------------------------


def test_exception_probe_runs():
    result = kx.diagnose_exception_path(modes=("torch", "std"), timeout_s=300)
    assert result["torch"].startswith("raised RuntimeError"), result
    if kx.is_available():
        assert result["std"].startswith(("raised RuntimeError", "crashed")), result
    else:
        assert result["std"].startswith("raised FTPError: cannot build the ftp kernel extension"), result


# ---- sources: capturable launches, a binding that never throws -------------------------------------------


def _strip_comments(code: str) -> str:
    code = re.sub(r"/\*.*?\*/", "", code, flags=re.S)
    return re.sub(r"//[^\n]*", "", code)


KERNEL_FILES = sorted([*PLUGINS.glob("*/*.cu"), *PLUGINS.glob("*/*.cuh")])
# host synchronisation, allocation, host copies, legacy / per-thread default streams
NOT_CAPTURABLE = re.compile(
    r"\b(cudaMalloc\w*|cudaFree\w*|cudaMemcpy\w*|cudaMemset(?!Async)\w*|cuda\w*Synchronize|cudaStreamQuery"
    r"|cudaEventQuery|cudaHostAlloc|cudaStreamLegacy|cudaStreamPerThread|cudaDeviceReset)\b"
)


def test_kernel_sources_found():
    assert len([p for p in KERNEL_FILES if p.suffix == ".cu"]) == len(kx.KERNEL_SOURCES)


@pytest.mark.parametrize("path", [*KERNEL_FILES, BINDING], ids=lambda p: p.name)
def test_launch_path_is_capturable(path):
    code = _strip_comments(path.read_text())
    assert not NOT_CAPTURABLE.findall(code), f"{path.name}: not capturable in a CUDA graph"
    for config in re.findall(r"<<<(.*?)>>>", code, re.S):
        parts = [p.strip() for p in re.split(r",(?![^<(]*[>)])", config)]
        assert len(parts) == 4 and parts[3] == "stream", f"{path.name}: launch <<<{config}>>> not on `stream`"
    for call in re.findall(r"cub::Device\w+::\w+\((.*?)\);", code, re.S):
        args = [a.strip() for a in call.split(",")]
        assert args[0] == "nullptr" or args[-1] == "stream", f"{path.name}: CUB call not on `stream`: {call}"


def test_binding_never_throws_at_python():
    code = _strip_comments(BINDING.read_text())
    probe = re.search(r"std::string probeException\(.*?\n\}\n", code, re.S)
    assert probe, "the diagnostic probe moved: update this test"
    rest = code.replace(probe.group(0), "")
    for pattern in (r"\bTORCH_CHECK", r"\bAT_ERROR", r"\bTORCH_INTERNAL_ASSERT", r"\bthrow\b", r"data_ptr<"):
        assert not re.search(pattern, rest), f"the binding uses {pattern} outside the probe"
    assert not re.search(r"\bat::(empty|zeros|ones)\b|\.item\s*\(", rest), "the launch path allocates or syncs"
    # every bound function except the probe is noexcept
    module = rest[rest.index("PYBIND11_MODULE") :]
    bound = set(re.findall(r"&(\w+)", module))
    assert bound >= {"slotCount", "workspaceSize", "topkGatherOut", "topkScatterOut", "rowScatterOut"}
    for name in bound - {"probeException"}:
        definition = re.search(rf"\b{name}\((.*?)\)\s*(noexcept)?\s*\{{", rest, re.S)
        assert definition and definition.group(2), f"{name} is bound but not noexcept"
