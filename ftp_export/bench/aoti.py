"""``ftp-export bench --runtime aoti``: AOTInductor packages, routed against Hugging Face's sdpa
model packaged the same way, on the CPU.

What is timed. The routed model at each overall sparsity (:func:`~.models.bench_schedule`, block 0
dense, decode thresholds calibrated on the timed prompts, :mod:`.decode_calibration`) is exported
by the ``compile`` target, the code ``ftp-export --target compile`` runs (``Target.check``,
``Target.export``: ``decoder_model.pt2`` and ``decoder_with_past_model.pt2``), and the packages are
loaded with ``torch._inductor.aoti_load_package`` (:class:`~ftp_export.runtimes.aoti.AotiRuntime`).

Dense: Hugging Face's ``LlamaForCausalLM`` with its sdpa attention, the same weights: a prefill
wrapper (``logits_to_keep=1`` for ``logits='last'``, a ``DynamicCache`` whose keys and values it
returns) and a decode wrapper (flat ``past_key_values`` in, a ``DynamicCache`` built from them,
logits and ``present`` out), each traced by torch.export and compiled by the compile target's own
:func:`~ftp_export.export.targets.aoti.aoti_package` (same config patches) with the routed graphs'
example inputs and dynamic shapes (:func:`~ftp_export.graph_io.trace_specs` of the same model at
sparsity 0), so the two sides take the same inputs and return the same logits and cache. Unlike
``--runtime onnxruntime`` (dense = the routed pipeline at sparsity 0) this dense side is what a user
would ship without ``ftp-export``: the ratio includes the attention lowering.

How. ``threads`` intra-op threads (``torch.set_num_threads``; the packages' OpenMP kernels and
ATen's matmuls use them). Timing, rows and ideals are the onnxruntime bench's own
(:func:`~.ort.bench_prefill_ort`, :func:`~.ort.bench_decode_ort`: interleaved, alternating which
goes first, median [min-max], the two ideals, realised decode skip rates from the decode package's
``routing.N.rows``); with ``--memory N`` the peak-memory rise of each prefill package over one
prefill of the longest length, N fresh processes a side (:mod:`.memory`). Before timing, each
side's packages are checked against the PyTorch modules they were traced from, a prefill and one
decode step on one prompt (:func:`parity`; max abs logit difference in the JSON's
``parity_max_abs``); past the export's parity tolerance the bench stops."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ftp_export.bench.decode_calibration import calibrated_routed, decode_prompts
from ftp_export.bench.memory import MemoryRow, aoti_args, measure
from ftp_export.bench.ort import (
    OrtDecodeRow,
    OrtPrefillRow,
    OrtSettings,
    prefill_feeds,
    time_cases,
)
from ftp_export.errors import FTPError
from ftp_export.export.request import ExportRequest
from ftp_export.export.targets import get_target
from ftp_export.export.targets.aoti import aoti_package
from ftp_export.export.tolerance import tolerance_for
from ftp_export.graph_io import DEFAULT_LOGITS, INPUTS, signatures, trace_specs
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.runtimes.aoti import AotiRuntime
from ftp_export.schedule import new_schedule

TARGET = "compile"
DENSE_BASELINE = ("Hugging Face's LlamaForCausalLM with sdpa attention (prefill logits_to_keep=1, DynamicCache decode), "
                  "torch.export + AOTInductor by the compile target's aoti_package (same example inputs, dynamic shapes "
                  "and config patches as the routed packages)")


class BenchAoti(AotiRuntime):
    """AotiRuntime taking the onnxruntime bench's numpy feeds (token ids, masks, positions) as well
    as torch tensors (``present`` fed back as returned)."""

    def run(self, graph: str, feeds: dict[str, Any]) -> dict[str, Any]:
        return super().run(graph, {k: self.feed(v) if isinstance(v, np.ndarray) else v for k, v in feeds.items()})


def _flat(logits: torch.Tensor, cache: Any) -> tuple[torch.Tensor, ...]:
    out = [logits]
    for layer in cache.layers:
        # clone(contiguous), not .contiguous(): the prefill cache is a cat onto an empty tensor,
        # which torch.export sees as contiguous (so .contiguous() is dropped) and Inductor turns into
        # the k/v projection's transposed buffer: the package returned [B, H, T, D] with T-major
        # strides, and a decode package (which reads traced strides) got wrong logits
        out += [layer.keys.clone(memory_format=torch.contiguous_format), layer.values.clone(memory_format=torch.contiguous_format)]
    return tuple(out)


class HFPrefill(nn.Module):
    """Hugging Face's prefill with the routed prefill graph's inputs and outputs (no routing)."""

    def __init__(self, hf: Any, logits: str = DEFAULT_LOGITS) -> None:
        super().__init__()
        self.hf, self.keep = hf, 1 if logits == "last" else 0

    def forward(self, input_ids, attention_mask, position_ids):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.hf.config)
        out = self.hf(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                      use_cache=True, logits_to_keep=self.keep)
        return _flat(out.logits, cache)


class HFDecode(nn.Module):
    """One Hugging Face decode step with the routed decode graph's inputs and outputs (no routing)."""

    def __init__(self, hf: Any) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        cache = DynamicCache([(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)], config=self.hf.config)
        out = self.hf(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache, use_cache=True)
        return _flat(out.logits, cache)


def export_dense(hf: Any, folder: Path, logits: str) -> BenchAoti:
    """Hugging Face's sdpa model as prefill and decode AOTInductor packages, traced like the routed ones."""
    folder.mkdir(parents=True, exist_ok=True)
    n = int(hf.config.num_hidden_layers)
    specs = trace_specs(RoutedCausalLM(hf, new_schedule(hf.config, [0.0] * n)).eval(), logits)
    modules = {"prefill": HFPrefill(hf, logits).eval(), "decode": HFDecode(hf).eval()}
    files = {g: aoti_package(modules[g], s.args, s.signature.dynamic_shapes(), folder / f"{s.signature.stem}.pt2")
             for g, s in specs.items()}
    return BenchAoti(files, {g: s.signature for g, s in specs.items()}, "cpu")


def export_routed(model: RoutedCausalLM, folder: Path, dtype: str, logits: str, attention: str = "op") -> BenchAoti:
    """``model`` exported by the ``compile`` target into ``folder`` (no parity run; ``attention``:
    its ``--aoti-attention``), loaded."""
    folder.mkdir(parents=True, exist_ok=True)
    target = get_target(TARGET)
    req = ExportRequest(target=TARGET, output=str(folder), dtype=dtype, device="cpu", logits=logits, parity=False,
                        aoti_attention=attention)
    target.check(req)
    result = target.export(model, folder, req, lambda _msg: None)
    files = {g: folder / entry["file"] for g, entry in result.manifest["graphs"].items()}
    return BenchAoti(files, signatures(model, logits), "cpu")


@torch.no_grad()
def parity(rt: BenchAoti, modules: dict[str, nn.Module], vocab: int, seq: int, dtype: str) -> float:
    """Max abs difference of ``rt``'s logits from its PyTorch ``modules``' ('prefill', 'decode': the
    flat wrappers it was traced from) over a ``seq``-token prefill and one decode step fed the
    prefill's ``present`` as returned; an FTPError past the export's parity tolerance for ``dtype``."""
    ids = np.random.default_rng(7).integers(0, vocab, (1, seq + 1), dtype=np.int64)
    pre = prefill_feeds(ids[:, :seq])
    step = {"input_ids": ids[:, seq:], "attention_mask": np.ones((1, seq + 1), dtype=np.int64),
            "position_ids": np.array([[seq]], dtype=np.int64)}
    sig = rt.signatures["prefill"]
    want = sig.named(modules["prefill"](*(rt.feed(pre[k]) for k in INPUTS)))
    got = rt.run("prefill", pre)
    want_step = modules["decode"](*(rt.feed(step[k]) for k in INPUTS), *(want[k] for k in sig.present))[0]
    got_step = rt.run("decode", {**step, **sig.past_feeds(got)})["logits"]
    pairs = [(got["logits"], want["logits"]), (got_step, want_step)]
    diff = max(float((g.float() - w.float()).abs().max()) for g, w in pairs)
    bound = tolerance_for(dtype).bound(max(float(w.float().abs().max()) for _, w in pairs))
    if diff > bound:
        raise FTPError(f"aoti bench: a package's logits are {diff:.3g} from its PyTorch model's (bound {bound:.3g}); not timing it")
    return diff


def run_aoti(model: Any, s: OrtSettings, workdir: Path | None = None, attention: str = "op") -> dict[str, Any]:
    """Package dense (Hugging Face, sdpa) and routed (compile target, ``--aoti-attention attention``)
    models, time them; returns the rows."""
    cfg = model.config
    vocab = int(cfg.vocab_size)
    prompts = decode_prompts(vocab, s.decode_contexts, max(s.decode_batches), s.decode_steps)
    cases = len(s.sparsities) * (len(s.batches) * len(s.seqs) + len(s.decode_batches) * len(prompts))
    prefill: list[OrtPrefillRow] = []
    decode: list[OrtDecodeRow] = []
    memory: list[MemoryRow] = []
    checked: dict[str, float] = {}  # max abs logit difference, package vs PyTorch
    threads = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="ftp-bench-aoti-", dir=workdir) as tmp:
            bar = tqdm(total=1 + len(s.sparsities) + cases, desc="aoti bench", unit="step")
            bar.set_postfix_str("package dense (Hugging Face sdpa)")
            dense = export_dense(model, Path(tmp) / "dense", s.logits)
            hf = {"prefill": HFPrefill(model, s.logits).eval(), "decode": HFDecode(model).eval()}
            checked["dense"] = parity(dense, hf, vocab, min(s.seqs), s.dtype)
            bar.update()
            dense_mib = _rise(dense, s, vocab) if s.memory else None
            for sp in s.sparsities:
                bar.set_postfix_str(f"s={sp}: decode thresholds, package")
                routed_model = calibrated_routed(model, sp, prompts, s.decode_steps)
                schedule = routed_model.schedule
                routed = export_routed(routed_model, Path(tmp) / f"s{sp}", s.dtype, s.logits, attention)
                graphs = {g: spec.module for g, spec in trace_specs(routed_model, s.logits).items()}
                checked[f"routed s={sp}"] = parity(routed, graphs, vocab, min(s.seqs), s.dtype)
                bar.update()
                rows = time_cases(dense, routed, cfg, schedule.block_sparsity, sp, s, prompts, bar)
                prefill += rows[0]
                decode += rows[1]
                if dense_mib is not None:
                    memory.append(MemoryRow.of("aoti", max(s.seqs), s.batches[0], sp, dense_mib, _rise(routed, s, vocab)))
                del routed
            bar.close()
    finally:
        torch.set_num_threads(threads)
    return {"prefill": prefill, "decode": decode, "memory": memory, "parity": checked}


def _rise(rt: BenchAoti, s: OrtSettings, vocab: int) -> list[float]:
    """Peak-memory rises of the prefill package over one prefill of the longest length, fresh processes."""
    return measure(aoti_args(rt.files["prefill"], max(s.seqs), s.batches[0], s.threads, vocab), s.memory)
