"""Peak host memory of one prefill, each in a fresh process: how far the process's peak resident
set rises over that one call (model or session loaded, inputs made, then the call). A fresh
process per measurement, so nothing an earlier call allocated (a cached buffer, an arena) lowers
or raises it.

On Linux the peak is read from ``/proc/self/status`` (``VmHWM``, reset to the current resident
size just before the call through ``/proc/self/clear_refs``), not from
``getrusage(RUSAGE_SELF).ru_maxrss``: a child inherits its parent's ``ru_maxrss`` across fork and
exec, so a child of a bench process that holds the model and several sessions reported a rise of
0 (measured: 0.0 MiB for a 2048-token prefill that needs ~700 MiB). Elsewhere ``ru_maxrss`` is used.

``python -m ftp_export.bench.memory onnxruntime GRAPH.onnx SEQ BATCH THREADS VOCAB``,
``python -m ftp_export.bench.memory aoti PACKAGE.pt2 SEQ BATCH THREADS VOCAB`` (a prefill package,
routed or Hugging Face's) or ``python -m ftp_export.bench.memory eager SHAPE LAYERS SPARSITY SEQ
BATCH DTYPE`` (sparsity 0: the Hugging Face model itself, as the eager bench's dense side; else
the eager bench's own routed model, :func:`~ftp_export.bench.models.bench_schedule`) prints one
JSON line.

One process's rise is not one number: the same graph rose by 358 or 442 MiB over a 2048-token
onnxruntime prefill in fresh processes of the same machine (and 317 or 377 MiB with the arena
off), and Hugging Face's eager model by 96.7 to 175.2 MiB: the allocator's regions, not the
model, move it. Two measures against that: the children run with glibc's mmap threshold fixed
(:data:`MMAP_THRESHOLD`, through ``GLIBC_TUNABLES``), so every large tensor is its own mapping,
returned when freed, and the peak is the live set's (the same eager model then rose by
89.5-90.4 MiB in five processes); and the bench takes :data:`REPEATS` fresh processes per side
and reports their median, the samples in its JSON.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ftp_export.errors import FTPError

STATUS = Path("/proc/self/status")
REPEATS = 5  # fresh processes per measurement (odd: the median is one of them)
# glibc's default threshold starts at 128 KiB and rises to the size of each large block freed, so
# whether a later tensor is mapped fresh or carved from a fragmented heap, and so the peak, varies
# from process to process; fixed, every large tensor is mapped and unmapped on its own
MMAP_THRESHOLD = 131072


def _status_mib(field: str) -> float | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _start() -> float:
    """Reset the peak to the current resident size where Linux allows it; returns the baseline."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        rss = _status_mib("VmRSS")
        if rss is not None:
            return rss
    except OSError:
        pass
    return _maxrss_mib()


def _peak() -> float:
    hwm = _status_mib("VmHWM")
    return hwm if hwm is not None else _maxrss_mib()


def rise_over(fn: Callable[[], object]) -> float:
    """MiB the process's peak resident set rises by while ``fn`` runs."""
    before = _start()
    fn()
    return max(0.0, _peak() - before)


@dataclass
class MemoryRow:
    runtime: str
    seq_len: int
    batch: int
    sparsity: float
    dense_mib: float  # median over fresh processes of the peak resident set's rise over one prefill
    routed_mib: float
    overhead: float | None  # routed / dense - 1 (None when dense rose by nothing measurable)
    dense_samples_mib: list[float]  # every process's rise
    routed_samples_mib: list[float]

    @classmethod
    def of(cls, runtime: str, seq_len: int, batch: int, sparsity: float, dense: list[float], routed: list[float]) -> MemoryRow:
        d, r = statistics.median(dense), statistics.median(routed)
        return cls(runtime, seq_len, batch, sparsity, d, r, r / d - 1 if d > 0 else None, list(dense), list(routed))


def measure(args: list[str], repeats: int = REPEATS, timeout: float = 1800) -> list[float]:
    """The rises (MiB) printed by ``repeats`` fresh ``python -m ftp_export.bench.memory ARGS``."""
    return [_measure_once(args, timeout) for _ in range(repeats)]


def child_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The measuring child's environment: ``base`` (this process's) with glibc's mmap threshold
    fixed at :data:`MMAP_THRESHOLD` (:envvar:`GLIBC_TUNABLES`, added to any tunables already set)."""
    env = dict(os.environ if base is None else base)
    tunable = f"glibc.malloc.mmap_threshold={MMAP_THRESHOLD}"
    env["GLIBC_TUNABLES"] = f"{env['GLIBC_TUNABLES']}:{tunable}" if env.get("GLIBC_TUNABLES") else tunable
    return env


def _measure_once(args: list[str], timeout: float) -> float:
    proc = subprocess.run(
        [sys.executable, "-m", __name__, *args], capture_output=True, text=True, timeout=timeout, env=child_env()
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise FTPError(f"memory measurement ({' '.join(args[:2])}) failed: {tail[:300]}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["rise_mib"])


def ort_args(graph: Path, seq: int, batch: int, threads: int, vocab: int) -> list[str]:
    return ["onnxruntime", str(graph), str(seq), str(batch), str(threads), str(vocab)]


def aoti_args(package: Path, seq: int, batch: int, threads: int, vocab: int) -> list[str]:
    return ["aoti", str(package), str(seq), str(batch), str(threads), str(vocab)]


def eager_args(shape: str, layers: int, sparsity: float, seq: int, batch: int, dtype: str) -> list[str]:
    return ["eager", shape, str(layers), str(sparsity), str(seq), str(batch), dtype]


def _ort_prefill(graph: str, seq: int, batch: int, threads: int, vocab: int) -> float:
    import numpy as np

    from ftp_export.bench.artefacts import ort_session_factory
    from ftp_export.runtimes.ort import empty_past

    sess = ort_session_factory(threads)(Path(graph), ["CPUExecutionProvider"])
    ids = np.random.default_rng(0).integers(0, vocab, (batch, seq), dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.tile(np.arange(seq, dtype=np.int64), (batch, 1))}
    feeds.update(empty_past(sess, batch))  # the single graph starts a sequence with an empty past
    return rise_over(lambda: sess.run(None, feeds))


def _aoti_prefill(package: str, seq: int, batch: int, threads: int, vocab: int) -> float:
    import torch

    from ftp_export.routed import attention_op  # noqa: F401  (the op a routed package may call)

    torch.set_num_threads(threads)
    runner = torch._inductor.aoti_load_package(package)
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(seq).unsqueeze(0).expand(batch, seq).contiguous()
    with torch.no_grad():
        return rise_over(lambda: runner(ids, torch.ones_like(ids), pos))


def _eager_prefill(shape: str, layers: int, sparsity: float, seq: int, batch: int, dtype: str) -> float:
    import torch

    from ftp_export.bench.models import bench_schedule, random_llama
    from ftp_export.devices import torch_dtype
    from ftp_export.routed.model import RoutedCausalLM

    model = random_llama(shape, layers, torch_dtype(dtype), "cpu")
    cfg = model.config
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    if sparsity > 0:
        routed = RoutedCausalLM(model, bench_schedule(cfg, sparsity)).eval()  # the timed model's routers
        run = lambda: routed(ids, mask, mode="prefill", logits="last")  # noqa: E731
    else:
        # use_cache=True: a prefill writes its KV cache, as the routed one does
        run = lambda: model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)  # noqa: E731
    with torch.no_grad():
        return rise_over(run)


def main(argv: list[str]) -> int:
    kind, *rest = argv
    if kind in ("onnxruntime", "aoti"):
        artefact, seq, batch, threads, vocab = rest
        run = _ort_prefill if kind == "onnxruntime" else _aoti_prefill
        rise = run(artefact, int(seq), int(batch), int(threads), int(vocab))
    else:
        shape, layers, sparsity, seq, batch, dtype = rest
        rise = _eager_prefill(shape, int(layers), float(sparsity), int(seq), int(batch), dtype)
    print(json.dumps({"rise_mib": round(rise, 2), "peak_mib": round(_peak(), 2), "ru_maxrss_mib": round(_maxrss_mib(), 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
