"""Greedy tokens of optimum's ``ORTModelForCausalLM`` on an ``ftp-export --target onnx`` folder
against the PyTorch routed model's. Two steps, in two environments (optimum-onnx caps transformers
below 4.58, this project needs 5.x), driven by scripts/optimum_check.sh:

    python scripts/optimum_check.py reference FOLDER > ref.json       # this project's venv
    OPTIMUM_VENV/bin/python scripts/optimum_check.py optimum FOLDER ref.json

The reference step writes the parity prompts' token ids (batch 1 each, and the three left-padded
in one batch) and the routed model's greedy tokens; the optimum step generates from the same ids
(greedy, past EOS like the reference) and prints one line per case; exit 1 on any difference."""

from __future__ import annotations

import json
import sys
from pathlib import Path

NEW_TOKENS = 8


def reference(folder: Path) -> dict:
    import torch

    from ftp_export.architectures import load_model, load_tokenizer, resolve_model
    from ftp_export.export.job import PARITY_PROMPTS
    from ftp_export.export.parity import pad_batch
    from ftp_export.routed.generation import greedy_generate
    from ftp_export.routed.model import RoutedCausalLM
    from ftp_export.schedule import load_schedule

    manifest = json.loads((folder / "manifest.json").read_text())
    ref = resolve_model(manifest["model"]["source"])
    schedule = load_schedule(next((folder / "schedule").glob("*.json")))
    routed = RoutedCausalLM(load_model(ref, torch.float32, "cpu"), schedule).eval()
    tok = load_tokenizer(ref)
    encoded = [tok(p)["input_ids"] for p in PARITY_PROMPTS]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    batches = [pad_batch([e], pad) for e in encoded] + [pad_batch(encoded, pad, side="left")]
    cases = []
    for ids, mask in batches:
        tokens = greedy_generate(routed, ids, mask, NEW_TOKENS).tokens
        cases.append({"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "tokens": tokens.tolist()})
    return {"folder": str(folder), "pad_token_id": pad, "cases": cases}


def optimum(folder: Path, ref_file: Path) -> int:
    from importlib.metadata import version

    import numpy as np
    import torch
    import transformers
    from optimum.onnxruntime import ORTModelForCausalLM

    ref = json.loads(ref_file.read_text())
    model = ORTModelForCausalLM.from_pretrained(folder, use_cache=True, use_io_binding=False)
    print(f"optimum-onnx {version('optimum-onnx')}, optimum {version('optimum')}, transformers {transformers.__version__}, "
          f"ORTModelForCausalLM on {folder} ({', '.join(sorted(p.name for p in folder.glob('*.onnx')))})")
    failed = 0
    for case in ref["cases"]:
        ids, mask = torch.tensor(case["input_ids"]), torch.tensor(case["attention_mask"])
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                             do_sample=False, num_beams=1, eos_token_id=None, pad_token_id=ref["pad_token_id"])
        got = out[:, ids.shape[1]:].numpy()
        want = np.array(case["tokens"])
        same = got.shape == want.shape and bool((got == want).all())
        failed += not same
        agree = float((got == want).mean()) if got.shape == want.shape else 0.0
        print(f"batch {ids.shape[0]} lengths {mask.sum(-1).tolist()}: greedy tokens {'identical' if same else 'DIFFER'} "
              f"({agree:.0%} agree) {got.tolist()}")
    print("PASS" if not failed else f"FAIL: {failed} of {len(ref['cases'])} cases differ")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "reference":
        print(json.dumps(reference(Path(sys.argv[2]))))
    elif len(sys.argv) == 4 and sys.argv[1] == "optimum":
        sys.exit(optimum(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        sys.exit(__doc__)
