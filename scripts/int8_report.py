"""int8 of the default export, routed against dense: export the embedded default model with its
s40 schedule (routed) and with every block sparsity 0 (dense) through the onnx target's exporter,
quantize both the same way (ftp_export.export.quantize), and print logit drift against the float32
PyTorch model, routing agreement with the float32 routed model, greedy-token agreement, sizes, and
every prefill routing flip next to the measured drift of its block's scores.

    python scripts/int8_report.py [--work DIR] [--new-tokens 32] [--sweep] [--naive] [--flips] [--json FILE]

The int8 rows come for the default options (weight-only 8-bit, ``MatMulNBits``) and for dynamic
quantization (``quantize_dynamic``, per-channel int8 weights). ``--sweep`` adds other choices
(symmetric or per-128 weight-only scales; per-tensor, uint8, LM head float32, blocks before the first
routed block float32 for dynamic); ``--naive`` adds onnxruntime's ``quantize_dynamic`` with its
defaults and no exclusions (what the issue measured).

The comparison itself (:func:`int8_report`, :func:`variant_row`, :func:`routing_flips`,
:func:`format_int8_table`) lives here, not in ``ftp_export.export.quantize``, because the package's
files are held to 400 lines (tests/core/test_code_shape.py); it imports only the package, so it can
move into a package module as it is. tests/export/test_quantize.py loads it from this path.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ftp_export.export.quantize import (  # noqa: E402
    DEFAULT_INT8,
    ROUTER_MODULE,
    Int8Options,
    files_bytes,
    is_router_node,
    module_path,
    quantize_int8,
)

LONG_PROMPT = (
    "In the beginning the town had one road, one well and one bell. The road ran east to the river and west to the "
    "hills, the well stood where the road bent, and the bell hung in a wooden frame beside it. When the river rose "
    "the bell was rung, and when the hills burned it was rung again, and the people of the town learned to tell"
)


def _score_outputs(path: Path, dst: Path) -> dict[int, str]:
    """Copy of the graph at ``path`` to ``dst`` with each routed block's router score ([B, T], the
    last router node's output) as an extra graph output; returns {block: output name}."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    blocks: dict[int, list[Any]] = defaultdict(list)
    for node in graph.node:
        if is_router_node(node):
            m = re.search(rf"(?:^|\.){ROUTER_MODULE}\.blocks\.(\d+)", module_path(node) or "")
            if m:
                blocks[int(m.group(1))].append(node)
    names: dict[int, str] = {}
    for b, nodes in sorted(blocks.items()):
        # the block's score: the output of its last router node (nodes are in topological order;
        # found this way also when a quantizer replaced the router's MatMuls)
        names[b] = nodes[-1].output[0]
        graph.output.append(onnx.helper.make_tensor_value_info(names[b], onnx.TensorProto.FLOAT, None))
    onnx.save(model, str(dst))
    return names


def _flip_margins(ref_scores: np.ndarray, got_scores: np.ndarray, ref_kept: np.ndarray, got_kept: np.ndarray,
                  valid: np.ndarray, threshold: np.ndarray | None = None) -> list[dict[str, float]]:
    """Each flipped decision of one block and row set: its reference score's distance to the
    decision boundary (the k-th/(k+1)-th kept score for top-k, the threshold for decode) next to the
    measured score drift (max |got - ref| over the row's valid tokens; a top-k flip is covered when
    its gap is at most twice the drift, a threshold flip when at most the token's own drift)."""
    flips = []
    for r in range(ref_scores.shape[0]):
        v = valid[r].astype(bool)
        drift_row = float(np.abs(got_scores[r][v] - ref_scores[r][v]).max()) if v.any() else 0.0
        for t in np.nonzero(v & (ref_kept[r] != got_kept[r]))[0]:
            s = float(ref_scores[r, t])
            if threshold is not None:
                gap, drift = abs(s - float(threshold[r, t])), abs(float(got_scores[r, t]) - s)
                covered = gap <= drift
            else:
                kept = ref_scores[r][v & ref_kept[r]]
                skipped = ref_scores[r][v & ~ref_kept[r]]
                boundary = float(skipped.max()) if ref_kept[r, t] else float(kept.min())
                gap, drift = abs(s - boundary), drift_row
                covered = gap <= 2 * drift
            flips.append({"row": r, "token": int(t), "gap": gap, "drift": drift, "covered": bool(covered)})
    return flips


def _score_runtime(files: dict[str, Path], signatures: dict[str, Any], names: dict[str, dict[int, str]]) -> Any:
    """An :class:`~ftp_export.runtimes.ort.OrtRuntime` over graphs with score outputs
    (:func:`_score_outputs`; ``names``: graph -> {block: output}) that appends each step's router
    scores ({block: [B, T]}) to its ``scores`` list."""
    from ftp_export.runtimes.ort import OrtRuntime

    class ScoreRuntime(OrtRuntime):
        def run(self, graph: str, feeds: dict[str, Any]) -> dict[str, Any]:
            outs = super().run(graph, feeds)
            self.scores.append({b: outs[name] for b, name in names[graph].items()})
            return outs

    runtime = ScoreRuntime(files, signatures, device="cpu")
    runtime.scores = []
    return runtime


def routing_flips(model: Any, files: dict[str, Path], cases: list[Any], workdir: Path, logits: str = "last") -> dict[str, Any]:
    """Every routing decision of the graphs ``files`` ({'prefill', 'decode'}) that differs from the
    float32 PyTorch routed ``model`` on the same inputs, next to the measured drift of the router
    scores. The graphs run their own greedy loop; the reference is then run on the tokens they
    chose (so a decode step compares decisions on one context even after the tokens diverged).

    A prefill flip is *within the drift* when the reference score's distance to the block's k-th
    boundary (the lowest kept score for a token the graph dropped, the highest skipped one for a
    token it added) is at most twice the row's largest score drift (both sides of the boundary may
    move); a decode flip when the distance of its score to the threshold is at most its own score
    drift. Runs copies of the graphs with the router scores as extra outputs (in ``workdir``)."""
    import torch
    from transformers import DynamicCache

    from ftp_export.graph_io import signatures
    from ftp_export.routing.selection import decode_dither

    names, probes = {}, {}
    for graph, path in files.items():
        probes[graph] = workdir / f"{graph}-scores.onnx"
        names[graph] = _score_outputs(path, probes[graph])
    flips: list[dict[str, Any]] = []
    decisions = {"prefill": 0, "decode": 0}
    drift: dict[str, dict[int, float]] = {"prefill": {}, "decode": {}}
    for case in cases:
        runtime = _score_runtime(probes, signatures(model, logits), names)
        trace = runtime.generate(case.input_ids.numpy(), case.attention_mask.numpy(), case.new_tokens)
        mask = case.attention_mask.clone()
        pos = (torch.cumsum(mask, -1) - 1).clamp(min=0)
        ids, cache = case.input_ids, DynamicCache()
        for step, got in enumerate(trace.routing):
            graph = "prefill" if step == 0 else "decode"
            with torch.no_grad():
                ref = model(ids, mask, pos, past_key_values=cache, mode=graph, keep_scores=True)
            valid = mask[:, -ids.shape[1]:].numpy().astype(bool)
            n_tok = torch.cumsum(mask, -1)[:, -ids.shape[1]:]
            for b, routed in enumerate(ref.routing):
                if routed is None or routed.scores is None or b not in runtime.scores[step]:
                    continue
                ref_s = routed.scores.float().numpy()
                got_s = runtime.scores[step][b].reshape(ref_s.shape)
                if graph == "decode":  # the graph's score output is the router's, before the tie-break
                    got_s = got_s + decode_dither(pos, ids).numpy()
                    thr = model.schedule.decode_thresholds.at(b, n_tok).numpy()
                    ref_kept = _rows_mask(routed.rows.numpy(), ref_s.shape)
                    got_kept = _rows_mask(got[f"routing.{b}.rows"], ref_s.shape)
                else:
                    thr = None
                    ref_kept = _kept_mask(routed.indices.numpy(), routed.active.numpy(), ref_s.shape[1])
                    got_kept = _kept_mask(got[f"routing.{b}.indices"], got[f"routing.{b}.active"], ref_s.shape[1])
                decisions[graph] += int(valid.sum())
                d = float(np.abs(got_s - ref_s)[valid].max()) if valid.any() else 0.0
                drift[graph][b] = max(drift[graph].get(b, 0.0), d)
                for f in _flip_margins(ref_s, got_s, ref_kept, got_kept, valid, thr):
                    flips.append({"case": case.name, "step": step, "block": b, **f})
            if step + 1 < len(trace.routing):
                ids = torch.from_numpy(trace.tokens[:, step : step + 1])
                pos = mask.sum(-1, keepdim=True)
                mask = torch.cat([mask, torch.ones_like(ids)], dim=1)
    return {"decisions": decisions, "flips": flips, "all_within_drift": all(f["covered"] for f in flips),
            "score_drift": {g: {str(b): v for b, v in sorted(d.items())} for g, d in drift.items()}}


def _rows_mask(rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    kept = np.zeros(int(np.prod(shape)), dtype=bool)
    kept[np.asarray(rows, dtype=np.int64)] = True
    return kept.reshape(shape)


def _kept_mask(indices: np.ndarray, active: np.ndarray, length: int) -> np.ndarray:
    kept = np.zeros((indices.shape[0], length), dtype=bool)
    for r in range(indices.shape[0]):
        kept[r, indices[r][active[r].astype(bool)]] = True
    return kept


@dataclass
class Variant:
    """One export to compare: its graph files ({'prefill', 'decode'}) and the float32 PyTorch model
    it is judged against (the routed model, or the dense one for the dense baseline)."""

    name: str
    files: dict[str, Path]
    reference: Any  # RoutedCausalLM, float32
    routed: bool = True


def variant_row(variant: Variant, cases: list[Any], logits: str, workdir: Path | None = None) -> dict[str, Any]:
    """Parity figures of one variant: max logit drift (prefill, decode), max |ref| logit, routing
    agreement with the float32 routed model, greedy-token agreement, file sizes (run_parity: each
    side follows its own greedy tokens); with ``workdir``, a routed variant's flips
    (:func:`routing_flips`)."""
    from ftp_export.export.parity import run_parity
    from ftp_export.export.tolerance import Tolerance
    from ftp_export.graph_io import signatures
    from ftp_export.runtimes.ort import OrtRuntime

    sigs = signatures(variant.reference, logits)
    runtime = OrtRuntime(variant.files, sigs, device="cpu")
    report = run_parity(variant.reference, runtime, cases, Tolerance(atol=math.inf, rtol=0.0, routing_agreement=0.0))
    cs = report["cases"]
    decisions = sum(c["routing_decisions"] for c in cs)
    agree = sum(c["routing_agreement"] * c["routing_decisions"] for c in cs) / decisions if decisions else None
    row: dict[str, Any] = {
        "variant": variant.name,
        "bytes": sum(files_bytes(p) for p in variant.files.values()),
        "prefill_max_abs_diff": max(c["prefill_max_abs_diff"] for c in cs),
        "decode_max_abs_diff": max(c["decode_max_abs_diff"] for c in cs),
        "max_abs_ref": max(max(c["prefill_max_abs_ref"], c["decode_max_abs_ref"]) for c in cs),
        "routing_agreement": agree,
        "routing_decisions": decisions,
        "prefill_routing_identical": all(not any(m.startswith("step 0 ") for m in c["routing_mismatches"]) for c in cs),
        "token_agreement": sum(c["token_agreement"] for c in cs) / len(cs),
        "tokens_identical": all(c["tokens_identical"] for c in cs),
        "cases": [{k: c[k] for k in ("name", "prefill_max_abs_diff", "decode_max_abs_diff", "routing_agreement", "token_agreement")} for c in cs],
    }
    if variant.routed and workdir is not None:
        row["flips"] = routing_flips(variant.reference, variant.files, cases, workdir, logits)
    return row


def int8_report(routed: Any, dense: Any, routed_files: dict[str, Path], dense_files: dict[str, Path], cases: list[Any],
                workdir: Path, logits: str = "last", options: Int8Options = DEFAULT_INT8,
                variants: tuple[str, ...] = ("routed-fp32", "routed-int8", "dense-fp32", "dense-int8")) -> dict[str, Any]:
    """The int8 acceptance figures: quantize the routed and the dense export (``*_files``:
    {'prefill', 'decode'} float32 graphs) with ``options`` into ``workdir`` and compare each against
    its float32 PyTorch model (``routed``/``dense``: float32 :class:`RoutedCausalLM`; dense = the same
    model with every block sparsity 0) on ``cases`` (:class:`~ftp_export.export.parity.ParityCase`).
    ``variants``: which rows, of routed/dense x fp32/int8. Returns {"rows": [...], "quantize": {...},
    "options": {...}}: one row per variant (:func:`variant_row`); :func:`format_int8_table` prints it."""
    workdir.mkdir(parents=True, exist_ok=True)
    quantized: dict[str, dict[str, Path]] = {}
    qinfo: dict[str, Any] = {}
    for kind, files in (("routed", routed_files), ("dense", dense_files)):
        if f"{kind}-int8" not in variants:
            continue
        quantized[kind] = {}
        for graph, path in files.items():
            dst = workdir / f"{kind}-int8" / path.name
            info = quantize_int8(path, dst, options)
            quantized[kind][graph] = dst
            qinfo[f"{kind}/{graph}"] = {k: info[k] for k in ("bytes_before", "bytes_after", "matmul_integer", "matmul_nbits", "router_matmuls", "routing_nodes")}
    table = {
        "routed-fp32": Variant("routed-fp32", dict(routed_files), routed),
        "routed-int8": Variant("routed-int8", quantized.get("routed", {}), routed),
        "dense-fp32": Variant("dense-fp32", dict(dense_files), dense, routed=False),
        "dense-int8": Variant("dense-int8", quantized.get("dense", {}), dense, routed=False),
    }
    rows = []
    for name in variants:
        probe = workdir / f"{name}-probe"
        probe.mkdir(exist_ok=True)
        rows.append(variant_row(table[name], cases, logits, probe))
    return {"rows": rows, "quantize": qinfo, "options": options.__dict__}


def format_int8_table(report: dict[str, Any]) -> str:
    """The comparison as a fixed-width table (MB: graph files with external data; |d|: max |logit
    difference|, decode on each side's own greedy path, so it grows once the tokens diverge;
    routing/tokens: agreement with the float32 PyTorch model; flips: decisions that differ on the
    same inputs, and how many lie within the measured router score drift)."""
    head = f"{'variant':<14}{'MB':>8}{'prefill |d|':>13}{'decode |d|':>12}{'max|ref|':>10}{'routing':>10}{'tokens':>9}{'flips (in drift)':>18}"
    lines = [head, "-" * len(head)]
    for r in report["rows"]:
        routing = "-" if r["routing_agreement"] is None or not r["routing_decisions"] else f"{r['routing_agreement']:.2%}"
        flips = r.get("flips")
        flip = "-" if flips is None else f"{len(flips['flips'])} ({sum(f['covered'] for f in flips['flips'])})"
        lines.append(f"{r['variant']:<14}{r['bytes'] / 1e6:>8.2f}{r['prefill_max_abs_diff']:>13.3e}{r['decode_max_abs_diff']:>12.3e}"
                     f"{r['max_abs_ref']:>10.3g}{routing:>10}{r['token_agreement']:>9.1%}{flip:>18}")
    return "\n".join(lines)


def cases(tokenizer, new_tokens: int):
    from ftp_export.export.job import parity_cases
    from ftp_export.export.parity import ParityCase, pad_batch

    found = parity_cases(tokenizer, new_tokens)
    ids, mask = pad_batch([tokenizer(LONG_PROMPT)["input_ids"]], tokenizer.pad_token_id or 0)
    return [*found, ParityCase(f"batch1-long-{ids.shape[1]}", ids, mask, new_tokens)]


def naive_rows(routed, dense, routed_files, dense_files, case_list, work: Path, logits: str):
    """onnxruntime's quantize_dynamic, defaults, nothing excluded."""
    from onnxruntime.quantization import quantize_dynamic

    rows = []
    for kind, files, ref in (("routed", routed_files, routed), ("dense", dense_files, dense)):
        out = {}
        for graph, path in files.items():
            dst = work / f"naive-{kind}" / path.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            quantize_dynamic(path, dst)
            out[graph] = dst
        probe = work / f"naive-{kind}-probe"
        probe.mkdir(exist_ok=True)
        row = variant_row(Variant(f"{kind}-naive", out, ref, routed=kind == "routed"), case_list, logits, probe)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="folder for the exports (default: a temporary one)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--sweep", action="store_true", help="also per-tensor, uint8 and float32-LM-head variants")
    ap.add_argument("--naive", action="store_true", help="also onnxruntime's quantize_dynamic with no exclusions")
    ap.add_argument("--flips", action="store_true", help="list every routing flip")
    ap.add_argument("--json", type=Path, default=None, help="write the full report here")
    args = ap.parse_args(argv)

    import logging

    import torch

    logging.getLogger().setLevel(logging.ERROR)
    torch.set_num_threads(1)
    from ftp_export.architectures import load_model, load_tokenizer, resolve_model
    from ftp_export.export.job import DEFAULT_SCHEDULE
    from ftp_export.export.onnx_export import export_onnx
    from ftp_export.graph_io import DEFAULT_LOGITS
    from ftp_export.routed.model import RoutedCausalLM
    from ftp_export.schedule import load_schedule, new_schedule

    ref = resolve_model(None)
    model = load_model(ref, torch.float32, "cpu")
    tokenizer = load_tokenizer(ref)
    schedule = load_schedule(DEFAULT_SCHEDULE)
    routed = RoutedCausalLM(model, schedule).eval()
    dense = RoutedCausalLM(model, new_schedule(model.config, [0.0] * model.config.num_hidden_layers)).eval()
    case_list = cases(tokenizer, args.new_tokens)
    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="int8-report-")
        args.work = Path(tmp.name)
    work = args.work
    files = {}
    for kind, m in (("routed", routed), ("dense", dense)):
        folder = work / f"{kind}-fp32"
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "decoder_with_past_model.onnx").exists():
            print(f"exporting {kind} ...", flush=True)
            export_onnx(m, folder, logits=DEFAULT_LOGITS)
        files[kind] = {"prefill": folder / "decoder_model.onnx", "decode": folder / "decoder_with_past_model.onnx"}
    print(f"model {ref.name}, schedule {DEFAULT_SCHEDULE.name} (block sparsity {schedule.block_sparsity}), "
          f"cases: {', '.join(f'{c.name} ({int(c.attention_mask.sum())} prompt tokens)' for c in case_list)}, "
          f"{args.new_tokens} greedy tokens each")
    full = {}
    options = [Int8Options(), Int8Options(method="dynamic")]
    if args.sweep:
        first_routed = min(b for b in range(len(schedule.block_sparsity)) if schedule.is_routed(b))
        before = "|".join(str(b) for b in range(first_routed))
        options += [Int8Options(symmetric=True), Int8Options(block_size=128),
                    Int8Options(method="dynamic", per_channel=False),
                    Int8Options(method="dynamic", per_channel=False, weight_type="uint8"),
                    Int8Options(method="dynamic", keep_lm_head=True),
                    Int8Options(method="dynamic", keep_float=(rf"/layers\.({before})/",))]
    for i, opt in enumerate(options):
        which = ("routed-fp32", "routed-int8", "dense-fp32", "dense-int8") if i == 0 else ("routed-int8", "dense-int8")
        report = int8_report(routed, dense, files["routed"], files["dense"], case_list, work / f"opt{i}",
                             logits=DEFAULT_LOGITS, options=opt, variants=which)
        print(f"\nint8 options: {opt}")
        print(format_int8_table(report))
        for row in report["rows"]:
            flips = row.get("flips")
            if flips:
                counts = ", ".join(f"{g} {n}" for g, n in flips["decisions"].items())
                print(f"  {row['variant']}: routing decisions {counts}; flips {len(flips['flips'])}, "
                      f"{sum(f['covered'] for f in flips['flips'])} within the score drift; max router score drift per block: "
                      + "; ".join(f"{g} " + ", ".join(f"{b}: {d:.2e}" for b, d in dr.items()) for g, dr in flips["score_drift"].items()))
                if args.flips:
                    for f in flips["flips"]:
                        print(f"    {f['case']} step {f['step']} block {f['block']} row {f['row']} token {f['token']}: "
                              f"gap {f['gap']:.3g}, drift {f['drift']:.3g} -> {'within' if f['covered'] else 'OUTSIDE'}")
            print(f"  {row['variant']} per case: " + "; ".join(
                f"{c['name']} routing {c['routing_agreement']:.2%} tokens {c['token_agreement']:.0%}" for c in row["cases"]))
        full[str(opt)] = report
    if args.naive:
        rows = naive_rows(routed, dense, files["routed"], files["dense"], case_list, work, DEFAULT_LOGITS)
        print("\nonnxruntime quantize_dynamic, defaults, nothing excluded (per-tensor int8, router quantized):")
        print(format_int8_table({"rows": rows}))
        for row in rows:
            flips = row.get("flips")
            if flips:
                print(f"  {row['variant']}: flips {len(flips['flips'])}, {sum(f['covered'] for f in flips['flips'])} within the score drift; "
                      "max router score drift per block: " + "; ".join(
                          f"{g} " + ", ".join(f"{b}: {d:.2e}" for b, d in dr.items()) for g, dr in flips["score_drift"].items()))
            print(f"  {row['variant']} per case: " + "; ".join(
                f"{c['name']} routing {c['routing_agreement']:.2%} tokens {c['token_agreement']:.0%}" for c in row["cases"]))
        full["naive"] = {"rows": rows}
    if args.json:
        args.json.write_text(json.dumps(full, indent=2, default=str) + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
