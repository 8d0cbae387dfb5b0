"""Every registered target on the embedded default model passes parity through the CLI, with its
shipped schedule (the target's default prefill logits: every token for onnx, each row's last valid
token for trt and compile) and with a schedule holding a dropped block and a block at sparsity 0.9
(the other ``--logits`` choice)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftp_export.export.targets import target_names
from tests.helpers import export_logits

# every export folder is a complete model folder (config, generation config, tokenizer) beside its graphs
MODEL_FILES = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
EXPECTED_FILES = {
    "onnx": {"model.onnx", *MODEL_FILES},  # + genai_config.json with --logits all (the default)
    "trt": {"decoder_model.onnx", "decoder_with_past_model.onnx", "build_engines.sh", "plugins/CMakeLists.txt", *MODEL_FILES},
    "compile": {"decoder_model.pt2", "decoder_with_past_model.pt2", *MODEL_FILES},
}


@pytest.mark.parametrize("target", target_names())
@pytest.mark.parametrize("which", ["shipped", "drop+0.9"])
def test_target_passes_parity_on_the_default_model(default_export, target, which):
    rc, out, parity = default_export(target, which)
    assert rc == 0, parity
    assert parity["passed"] and {c["name"] for c in parity["cases"]} == {"batch3-left-padded", "batch1"}
    for case in parity["cases"]:
        assert case["prefill_max_abs_diff"] <= 1e-4 and case["decode_max_abs_diff"] <= 1e-4, case
        assert case["steps_over_tolerance"] == [] and case["routing_agreement"] == 1.0, case
        assert case["routing_identical"] and case["tokens_identical"], case
    logits = export_logits(target, which)
    assert parity["logits"] == logits and all(c["prefill_logits"] == logits for c in parity["cases"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"] == target and manifest["parity"]["passed"]
    assert (manifest["parity"]["atol"], manifest["parity"]["rtol"]) == (parity["atol"], parity["rtol"]) == (1e-4, 2e-5)
    assert manifest["logits"] == logits
    files = {f["path"] for f in manifest["files"]}
    assert EXPECTED_FILES[target] <= files
    if target == "onnx":  # one graph: top-k routing when the past is empty, threshold routing otherwise
        assert list(manifest["graphs"]) == ["model"] and not (files & {"decoder_model.onnx", "decoder_with_past_model.onnx"})
        assert manifest["graphs"]["model"]["logits"].startswith("empty past: [batch, 1, vocab]" if logits == "last" else "[batch, tokens, vocab]")
        assert ("genai_config.json" in files) == (logits == "all")
        outputs = manifest["graphs"]["model"]["outputs"]
        assert "routing.2.indices" in outputs and "routing.2.rows" in outputs
        assert "past_key_values.0.key" in manifest["graphs"]["model"]["inputs"]
    else:
        assert manifest["graphs"]["prefill"]["logits"].startswith("[batch, 1, vocab]" if logits == "last" else "[batch, tokens, vocab]")
        assert manifest["graphs"]["decode"]["logits"] == "[batch, tokens, vocab]"
        outputs = manifest["graphs"]["prefill"]["outputs"]
    assert any(p.startswith("schedule/") and p.endswith(".safetensors") for p in files)
    if which == "drop+0.9":  # a dropped block has no routing output; the 0.9 block has one
        assert "routing.1.indices" not in outputs and "routing.2.indices" in outputs
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_trt_note_names_paths_that_exist(default_export):
    """The note printed after ``--target trt`` (the manifest's ``engine.message``) names the folder the
    export ends in, not the hidden temporary folder it was built in: every path it names exists."""
    rc, out, _ = default_export("trt", "shipped")
    assert rc == 0
    message = json.loads((out / "manifest.json").read_text())["engine"]["message"]
    printed = (out.parent / "stdout.txt").read_text()
    assert message in printed.splitlines()
    assert ".partial-" not in printed
    paths = [w.rstrip(".,;:") for w in message.split() if "/" in w or w.endswith(".sh")]
    assert paths, message
    for path in paths:
        assert Path(path).exists(), f"{path} (named by {message!r}) does not exist"
    assert any(Path(p).resolve() in (out.resolve(), (out / "build_engines.sh").resolve()) for p in paths), message
