"""``ftp-export bench``: prefill and decode, dense vs routed, same runtime, same process.

Prints a table, writes JSON and a PNG of speedup vs sequence length beside the FLOP ideal(s).
Runtimes: ``eager`` and ``compile`` (PyTorch, :mod:`ftp_export.bench.runner`) and
``onnxruntime`` (the exported graphs, CPU provider, :mod:`ftp_export.bench.ort`), ``aoti`` (the compile
target's AOTInductor packages against Hugging Face's sdpa model packaged the same way, CPU, :mod:`ftp_export.bench.aoti`).
Example (GPU): ftp-export bench --shape llama2-7b --device cuda --dtype bfloat16 --runtime compile
Example (CPU, exported): ftp-export bench --runtime onnxruntime --shape smollm2-135m --seq 128,512 --decode-context 128,512
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ftp_export.bench.memory import REPEATS, MemoryRow, eager_args, measure
from ftp_export.bench.models import SHAPES, random_llama
from ftp_export.bench.report import format_tables, plot, title
from ftp_export.bench.runner import bench_decode, bench_prefill, rows_to_json
from ftp_export.cli.parser import Parser, comma_floats, comma_ints
from ftp_export.devices import resolve_device, torch_dtype
from ftp_export.errors import FTPError
from ftp_export.export.request import AOTI_ATTENTION
from ftp_export.routed.cache import KV_CACHE_CHOICES

RUNTIMES = ("eager", "compile", "onnxruntime", "aoti")


def _sparsities(text: str) -> list[float]:
    vals = comma_floats(text)
    for v in vals:
        if not 0.0 < v < 1.0:
            raise FTPError(f"--sparsity {v}: must be in (0, 1)")
    return vals


def _lengths(flag: str, text: str, minimum: int = 1) -> list[int]:
    """A comma list of integers >= ``minimum``, duplicates dropped, order kept; one error line otherwise."""
    try:
        vals = comma_ints(text)
    except FTPError:
        raise FTPError(f"{flag} {text!r}: expected comma-separated integers, e.g. 128,512") from None
    if not vals:
        raise FTPError(f"{flag} {text!r}: give at least one value")
    for v in vals:
        if v < minimum:
            raise FTPError(f"{flag} {v}: must be at least {minimum}")
    return list(dict.fromkeys(vals))


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="ftp-export bench", description="Dense vs routed timing on one runtime.")
    p.add_argument("--shape", default="tiny", help=f"random-weight model shape: {', '.join(SHAPES)}")
    p.add_argument("--layers", type=int, help="number of blocks (default: the shape's)")
    p.add_argument("--device", default=None, help="cuda where available, else cpu (onnxruntime: cpu only)")
    p.add_argument("--dtype", default=None, help="bfloat16 on CUDA, float32 on CPU by default")
    p.add_argument("--runtime", default="eager", choices=list(RUNTIMES),
                   help="eager / compile: PyTorch; onnxruntime: graphs exported by the onnx target, CPU provider; "
                        "aoti: AOTInductor packages of the compile target against Hugging Face's sdpa model, CPU")
    p.add_argument("--batch", default="1", help="prefill batch sizes, e.g. 1,8")
    p.add_argument("--seq", default="64,128", help="prefill lengths, e.g. 512,2048,4096")
    p.add_argument("--sparsity", default="0.4", help="overall sparsities, e.g. 0.22,0.4,0.6")
    p.add_argument("--decode-batch", default="1", help="decode batch sizes, e.g. 1,8,32")
    p.add_argument("--decode-context", default="128", help="decode context lengths, e.g. 128,512,2048")
    p.add_argument("--decode-steps", type=int, default=8,
                   help="consecutive one-token decode steps per timed iteration (times are per step)")
    p.add_argument("--threads", type=int, default=1,
                   help="onnxruntime / aoti intra-op threads (default 1, for reproducibility)")
    p.add_argument("--memory", type=int, nargs="?", const=REPEATS, default=None, metavar="N",
                   help="also measure peak host memory (rise of the peak resident set) of one prefill of the longest "
                        f"--seq, dense and routed, the median of N fresh processes each (default N {REPEATS}; eager, aoti "
                        "and onnxruntime on CPU; glibc's mmap threshold fixed in them, so a peak is the live set's)")
    p.add_argument(
        "--logits", default="last", choices=["last", "all"],
        help="prefill logits on both sides: last position only (default, as generation) or all positions",
    )
    p.add_argument("--kv-cache", default="concat", choices=list(KV_CACHE_CHOICES),
                   help="--runtime onnxruntime: both sides' decode cache layout, as ftp-export --kv-cache makes it: "
                        "concat (present = the whole cache, copied every step) or append (present = the new token's "
                        "K/V, written into a buffer the bench keeps) (default concat)")
    p.add_argument("--aoti-attention", default="op", choices=list(AOTI_ATTENTION),
                   help="--runtime aoti: the routed packages' prefill attention, as ftp-export --target compile "
                        "--aoti-attention makes it (default op)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("-o", "--output", default="exported/bench", help="folder for bench.json and bench.png")
    return p


def _check(a: argparse.Namespace) -> None:
    if a.shape not in SHAPES:
        raise FTPError(f"--shape {a.shape}: choose one of {', '.join(SHAPES)}")
    for flag, value, low in (("--layers", a.layers, 1), ("--iters", a.iters, 1), ("--warmup", a.warmup, 0),
                             ("--threads", a.threads, 1), ("--decode-steps", a.decode_steps, 1)):
        if value is not None and value < low:
            raise FTPError(f"{flag} {value}: must be at least {low}")
    if a.runtime == "onnxruntime":
        if a.device not in (None, "cpu"):
            raise FTPError(f"--device {a.device} with --runtime onnxruntime: the onnxruntime bench runs the CPU provider; use --device cpu")
        if a.logits != "last":
            raise FTPError("--logits all with --runtime onnxruntime: the bench times the export's default prefill graph (logits last)")
    if a.runtime == "aoti":
        if a.device not in (None, "cpu"):
            raise FTPError(f"--device {a.device} with --runtime aoti: the AOTInductor bench packages and times on the CPU; use --device cpu")
    if a.kv_cache != "concat" and a.runtime != "onnxruntime":
        raise FTPError(f"--kv-cache {a.kv_cache} applies to --runtime onnxruntime only")
    if a.aoti_attention != "op" and a.runtime != "aoti":
        raise FTPError(f"--aoti-attention {a.aoti_attention} applies to --runtime aoti only")
    if a.memory is not None and a.memory < 1:
        raise FTPError(f"--memory {a.memory}: the number of fresh processes per side must be at least 1")
    if a.memory and a.runtime == "compile":
        raise FTPError("--memory with --runtime compile: the first compiled call compiles, so its memory rise is not a prefill's; "
                       "use --runtime eager or onnxruntime")


def git_revision(root: Path | None = None) -> str | None:
    """``git rev-parse --short HEAD`` of the code that ran, with ``+dirty`` when files under
    ``root`` (default: the ftp_export package) differ from it, or ``$FTP_EXPORT_REVISION`` when set
    (a copy outside git, e.g. ``git archive HEAD`` plus uncommitted bench files, says what it is)."""
    if os.environ.get("FTP_EXPORT_REVISION"):
        return os.environ["FTP_EXPORT_REVISION"]
    root = root or Path(__file__).resolve().parents[1]
    try:
        rev = _git(root, "rev-parse", "--short", "HEAD")
        changed = _git(root, "status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return None
    return None if not rev else rev + ("+dirty" if changed else "")


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=cwd).stdout.strip()


def cmd_bench(argv: list[str]) -> int:
    a = parser().parse_args(argv)
    _check(a)
    batches, seqs = _lengths("--batch", a.batch), _lengths("--seq", a.seq)
    sparsities = _sparsities(a.sparsity)
    decode_batches, contexts = _lengths("--decode-batch", a.decode_batch), _lengths("--decode-context", a.decode_context)
    gpu_ok = a.runtime in ("eager", "compile") and torch.cuda.is_available()
    device = str(resolve_device(a.device or ("cuda" if gpu_ok else "cpu")))
    if a.memory and device != "cpu":
        raise FTPError(f"--memory measures host memory (ru_maxrss); on {device} the bench reports peak CUDA memory itself")
    dtype_name = a.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    load_before = os.getloadavg()
    model = random_llama(a.shape, a.layers, torch_dtype(dtype_name), device)
    extra: dict[str, Any] = {}
    if a.runtime == "onnxruntime":
        import onnxruntime

        from ftp_export.bench.ort import OrtSettings, run_onnxruntime

        settings = OrtSettings(batches, seqs, sparsities, decode_batches, contexts, a.decode_steps, a.warmup, a.iters,
                               a.threads, dtype_name, a.memory or 0, kv_cache=a.kv_cache)
        res = run_onnxruntime(model, settings)
        prefill, decode, memory = res["prefill"], res["decode"], res["memory"]
        extra = {
            "onnxruntime": onnxruntime.__version__,
            "opset": res["opset"],
            "threads": a.threads,
            "decode_steps": a.decode_steps,
            "kv_cache": a.kv_cache,
            "dense_baseline": "the same model exported by the onnx target with every block sparsity 0 (same exporter, "
                              "opset, attention code and logits policy)",
            "decode_thresholds": "calibrated block by block on the timed decode prompts (ftp_export.bench.decode_calibration)",
        }
    elif a.runtime == "aoti":
        from ftp_export.bench.aoti import DENSE_BASELINE, OrtSettings, run_aoti

        settings = OrtSettings(batches, seqs, sparsities, decode_batches, contexts, a.decode_steps, a.warmup, a.iters,
                               a.threads, dtype_name, a.memory or 0, a.logits)
        res = run_aoti(model, settings, attention=a.aoti_attention)
        prefill, decode, memory = res["prefill"], res["decode"], res["memory"]
        extra = {"aoti_attention": a.aoti_attention, "threads": a.threads, "decode_steps": a.decode_steps, "dense_baseline": DENSE_BASELINE,
                 "decode_thresholds": "calibrated block by block on the timed decode prompts (ftp_export.bench.decode_calibration)",
                 "parity_max_abs": res["parity"]}
    else:
        prefill = [bench_prefill(model, b, s, sp, a.runtime, device, a.warmup, a.iters, a.logits)
                   for b, s, sp in tqdm([(b, s, sp) for b in batches for s in seqs for sp in sparsities], desc="prefill", unit="case")]
        dgrid = [(b, c, sp) for b in decode_batches for c in contexts for sp in sparsities]
        decode = [bench_decode(model, b, c, sp, device, a.warmup, a.iters, a.decode_steps)
                  for b, c, sp in tqdm(dgrid, desc="decode", unit="case")]
        memory = _eager_memory(a, model.config.num_hidden_layers, seqs, batches, sparsities, dtype_name) if a.memory else []
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    device_name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu"
    doc = {
        "shape": a.shape,
        "layers": model.config.num_hidden_layers,
        "dtype": dtype_name,
        "device": device_name,
        "runtime": a.runtime,
        "logits": a.logits,  # prefill logits of both sides: 'last' position or 'all'
        "torch": torch.__version__,
        **extra,
        "git": git_revision(),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_count": os.cpu_count(),
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},  # 1, 5, 15 minutes
        "prefill": rows_to_json(prefill),
        "decode": rows_to_json(decode),
        "memory": rows_to_json(memory),
    }
    (out / "bench.json").write_text(json.dumps(doc, indent=2) + "\n")
    plot(doc["prefill"], out / "bench.png", title(doc), doc["decode"])
    print(title(doc))
    print(format_tables(doc["prefill"], doc["decode"], doc["memory"]))
    print(f"wrote {out / 'bench.json'} and {out / 'bench.png'}")
    return 0


def _eager_memory(a: argparse.Namespace, layers: int, seqs: list[int], batches: list[int], sparsities: list[float],
                  dtype: str) -> list[MemoryRow]:
    seq, batch = max(seqs), batches[0]
    dense = measure(eager_args(a.shape, layers, 0.0, seq, batch, dtype), a.memory)
    rows = []
    for sp in tqdm(sparsities, desc="memory", unit="case"):
        routed = measure(eager_args(a.shape, layers, sp, seq, batch, dtype), a.memory)
        rows.append(MemoryRow.of("eager", seq, batch, sp, dense, routed))
    return rows
