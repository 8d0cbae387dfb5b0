"""The default export folder is a complete model folder (issue 18 item 1, folder parts): config,
generation config and tokenizer load with transformers; the ONNX graph names its dynamic
dimensions as optimum does, declares the shapes it returns (onnxruntime prints no warning at
warning level), and keeps its weights inline (no external data under 2 GB)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import onnx
import pytest

from ftp_export.architectures import DEFAULT_MODEL_DIR
from ftp_export.graph_io import BATCH, PAST, SEQUENCE, TOTAL

MODEL_FILES = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}


@pytest.fixture(scope="module")
def folder(default_export):
    rc, out, _ = default_export("onnx", "shipped")
    assert rc == 0
    return out


def test_config_generation_config_and_tokenizer_load_from_the_folder(folder):
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    assert MODEL_FILES <= {p.name for p in folder.iterdir()}
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "llama" and config.num_hidden_layers == 6 and config.vocab_size == 259
    assert GenerationConfig.from_pretrained(folder).eos_token_id == 257
    tok, source = AutoTokenizer.from_pretrained(folder), AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
    text = "The quick brown fox"
    assert tok(text)["input_ids"] == source(text)["input_ids"] and tok.eos_token == source.eos_token
    # a class name transformers 4.x knows too (5.x writes TokenizersBackend)
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    manifest = {f["path"] for f in json.loads((folder / "manifest.json").read_text())["files"]}
    assert MODEL_FILES <= manifest


def test_dynamic_dimensions_are_named_as_optimum_names_them(folder):
    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    graph = onnx.load(str(folder / "model.onnx"))  # the single graph: decode's inputs, both graphs' outputs
    ins = {v.name: dims(v) for v in graph.graph.input}
    outs = {v.name: dims(v) for v in graph.graph.output}
    assert ins["input_ids"] == ins["position_ids"] == [BATCH, SEQUENCE]
    assert ins["attention_mask"] == [BATCH, TOTAL]
    pasts = [d for name, d in ins.items() if name.startswith("past_key_values.")]
    assert len(pasts) == 12 and all(d[0] == BATCH and d[2] == PAST for d in pasts)  # one name shared by every layer
    assert all(d[0] == BATCH and d[2] == TOTAL for name, d in outs.items() if name.startswith("present."))
    assert outs["logits"] == [BATCH, SEQUENCE, 259]  # the onnx target's default: every token (onnxruntime-genai)
    assert all(d[:1] == [BATCH] for name, d in outs.items() if name.endswith((".indices", ".active")))
    assert all(d == [f"routed_tokens_{name.split('.')[1]}"] for name, d in outs.items() if name.endswith(".rows"))


def test_weights_are_inline_under_2_gb(folder):
    assert not [p.name for p in folder.iterdir() if p.suffix == ".data" or p.name.endswith(".onnx_data")]
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    assert graph.graph.initializer and not any(t.external_data for t in graph.graph.initializer)


ORT_WARNINGS = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numpy as np, onnxruntime as ort
    from ftp_export.graph_io import GraphSignature
    from ftp_export.runtimes.ort import OrtRuntime

    folder = Path(sys.argv[1])
    manifest = json.loads((folder / "manifest.json").read_text())

    def session(path, providers):
        opts = ort.SessionOptions()
        opts.log_severity_level = 2  # warnings and worse
        return ort.InferenceSession(str(path), opts, providers=providers)

    entry = manifest["graphs"]["model"]  # the single graph runs both steps
    outputs = entry["outputs"]
    layers = sum(o.startswith("present.") for o in outputs) // 2
    sigs = {
        "prefill": GraphSignature("prefill", layers, tuple(o for o in outputs if o.endswith((".indices", ".active"))), manifest["logits"]),
        "decode": GraphSignature("decode", layers, tuple(o for o in outputs if o.endswith(".rows"))),
    }
    runtime = OrtRuntime({"model": folder / entry["file"]}, sigs, session_factory=session)
    ids = np.random.default_rng(0).integers(3, 250, (3, 37))
    mask = np.ones_like(ids)
    mask[1, :11] = 0
    runtime.generate(ids, mask, 4)
    print(json.dumps(runtime.shape_problems))
""")


def test_onnxruntime_prints_no_warning_and_shapes_match_declarations(folder, tmp_path):
    """Parity fails on a declared shape that a run contradicts; onnxruntime at warning level is silent."""
    proc = subprocess.run([sys.executable, "-c", ORT_WARNINGS, str(folder)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    assert "[W:onnxruntime" not in proc.stderr and "[E:onnxruntime" not in proc.stderr, proc.stderr[-3000:]
    parity = json.loads((folder / "parity.json").read_text())
    assert parity["shape_problems"] == [] and parity["passed"]


def test_parity_report_states_the_criterion_and_the_export_step_its_time(folder):
    parity = json.loads((folder / "parity.json").read_text())
    assert (parity["atol"], parity["rtol"], parity["reference_dtype"]) == (1e-4, 2e-5, "float32")
    printed = (folder.parent / "stdout.txt").read_text()
    assert any(line.strip().startswith("exported in ") and line.endswith(" s") for line in printed.splitlines())
    assert "atol 1e-04 + rtol 2.0e-05 * max|ref| per step, routing identical (float32 export vs float32 PyTorch)" in printed
