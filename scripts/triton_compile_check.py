"""Compile the Triton attention-signal kernels (ftp_export/kernels/attention_signal.py) for a GPU
target ahead of time, on a machine without one, and report what ptxas says of each.

    python scripts/triton_compile_check.py                 # sm_90 (H100, H200), the default cases
    python scripts/triton_compile_check.py --arch 80 --json build/triton_compile.json

Triton's whole NVIDIA pipeline runs (TTIR, TTGIR, LLVM, PTX, its bundled ptxas to a cubin): the
interpreter that runs the CPU parity tests lowers nothing, so layout, dot-shape and type errors of
the compiled path would otherwise first show on a lent GPU. The configurations are the wrapper's own
(``launch_flags``). Registers, spills and stack come from ``ptxas -v`` on the PTX (bundled with
Triton); spills are reported, not judged. Run it with ``TRITON_INTERPRET`` unset: triton.language's
own helpers are built for one mode when triton is imported. Exit status 1 when a kernel fails.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

POINTER = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}
FLOAT32_BUFFERS = {"M", "L", "OWN", "W", "PART"}  # softmax statistics, own weights, column weights and partials
INT32_BUFFERS = {"QI", "LO", "HI"}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# (dtype, head size, dense mask, window): the LLaMA-2-7B bench's (bfloat16, 128) and SmolLM2's (64)
# with both mask forms; float16; float32, which on a GPU runs only the small default model's parity
CASES = [("bf16", 128, False, False), ("bf16", 128, True, True), ("bf16", 64, False, False),
         ("bf16", 64, True, True), ("fp16", 64, False, True), ("fp32", 64, False, False)]


def signature(fn, dtype: torch.dtype, dense: bool) -> dict[str, str]:
    """Argument types as ``attention_with_signal`` passes them: the unused mask pointer is
    q_index (int32); strides and sizes are int32 at these sizes; upper-case names after NB are
    compile-time."""
    types = {}
    for name in fn.arg_names:
        if name in ("Q", "K", "V", "OUT"):
            types[name] = POINTER[dtype]
        elif name in FLOAT32_BUFFERS:
            types[name] = "*fp32"
        elif name in INT32_BUFFERS:
            types[name] = "*i32"
        elif name in ("KVALID", "ALLOWED"):
            types[name] = "*u8" if (name == "ALLOWED") == dense else "*i32"
        elif name == "scale":
            types[name] = "fp32"
        elif name.isupper() and fn.arg_names.index(name) > fn.arg_names.index("NB"):
            types[name] = "constexpr"
        else:
            types[name] = "i32"
    return types


def ptxas_report(ptx: str, arch: int) -> dict[str, int]:
    """Registers, spill bytes and stack of a PTX text, from Triton's bundled ptxas (-v)."""
    from triton.backends.nvidia.compiler import get_ptxas

    # 3.6 and 3.9 take the target (a newer ptxas for Blackwell); older releases take nothing
    tool = get_ptxas(arch) if "arch" in inspect.signature(get_ptxas).parameters else get_ptxas()
    suffix = "a" if arch >= 90 else ""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.ptx"
        path.write_text(ptx)
        done = subprocess.run([tool.path, "-v", f"-arch=sm_{arch}{suffix}", str(path), "-o", os.devnull],
                              capture_output=True, text=True, timeout=300)
    text = done.stdout + done.stderr

    def num(pattern: str) -> int:
        found = re.search(pattern, text)
        return int(found.group(1)) if found else 0

    return {"registers": num(r"Used (\d+) registers"), "spill_stores": num(r"(\d+) bytes spill stores"),
            "spill_loads": num(r"(\d+) bytes spill loads"), "stack": num(r"(\d+) bytes (?:cumulative )?stack")}


def compile_case(module, kernel: str, dtype: torch.dtype, dh: int, dense: bool, window: bool, arch: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(module, kernel)
    flags = module.launch_flags(dtype, dh, emulate=False, dense=dense, window=window)
    options = {"num_warps": flags.pop("num_warps"), "num_stages": flags.pop("num_stages")}
    if kernel == "_fwd":
        flags["OWN_ON"] = False  # the eager prefill's call: column sums, no own weights
    sig = signature(fn, dtype, dense)
    expected = {n for n, t in sig.items() if t == "constexpr"}
    if set(flags) != expected:
        raise RuntimeError(f"{kernel}'s compile-time arguments changed: {sorted(expected)} vs {sorted(flags)}")
    constexprs = {(fn.arg_names.index(name),): value for name, value in flags.items()}
    compiled = triton.compile(ASTSource(fn, sig, constexprs=constexprs), target=GPUTarget("cuda", arch, 32),
                              options=options)
    if not compiled.asm.get("cubin") or f".target sm_{arch}" not in compiled.asm["ptx"]:
        raise RuntimeError("no cubin for the target")
    return {"shared": compiled.metadata.shared, **options, **ptxas_report(compiled.asm["ptx"], arch)}


def run(arch: int) -> list[dict]:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise SystemExit("unset TRITON_INTERPRET: the interpreter lowers nothing")
    from ftp_export.kernels import attention_signal

    rows = []
    for dt_name, dh, dense, window in CASES:
        for kernel in ("_fwd", "_colsum"):
            row = {"kernel": kernel, "dtype": dt_name, "head_size": dh, "mask": "dense" if dense else "structured",
                   "window": window}
            try:
                row.update(status="ok", **compile_case(attention_signal, kernel, DTYPES[dt_name], dh, dense, window, arch))
            except Exception as exc:  # report every case, then fail
                row.update(status="FAIL", error=f"{type(exc).__name__}: {str(exc)[-400:]}")
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


def format_row(r: dict) -> str:
    head = f"{r['kernel']:<8} {r['dtype']:<5} D={r['head_size']:<4} {r['mask']:<10} {'window' if r['window'] else '':<6}"
    if r["status"] != "ok":
        return f"{head} FAIL  {r['error']}"
    return (f"{head} ok    regs {r['registers']:>3}  spill {r['spill_stores']:>4} B  stack {r['stack']:>5} B  "
            f"smem {r['shared'] // 1024:>3} KiB  warps {r['num_warps']} stages {r['num_stages']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: H100/H200)")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args(argv)
    rows = run(args.arch)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"arch": args.arch, "rows": rows}, indent=1))
    failed = sum(r["status"] != "ok" for r in rows)
    print(f"{len(rows) - failed}/{len(rows)} compiled for sm_{args.arch}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
