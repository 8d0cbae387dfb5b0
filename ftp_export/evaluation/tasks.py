"""Zero-shot multiple-choice tasks built offline from the POS-tagged Brown corpus.

Both tasks use held-out documents only (the routers and the ShortGPT influence never see them)
and a seeded RNG, so the same corpus and seed give the same items.

``brown-cloze`` (one-word cloze, LAMBADA-like but multiple choice): the context is the previous
sentence plus the current sentence up to its last content word (noun, verb, adjective or adverb
at word index >= 6; proper nouns excluded); the choices are that word and 3 distractors of the
same Brown tag drawn from the held-out vocabulary (words seen >= 3 times, alphabetic, not the
answer). Grammar cannot tell them apart; meaning and context can. Chance is 25%.

``brown-next-sentence`` (StoryCloze/HellaSwag-like): the context is two consecutive sentences,
the choices are the true next sentence and 3 sentences from other held-out documents whose
length is within 30% of the true one's. Chance is 25%.

Scoring (see :mod:`ftp_export.evaluation.scoring`) is the lm-evaluation-harness rule: sum of
the continuation's token log-probabilities; ``acc`` takes the argmax of the sum, ``acc_norm``
of the sum divided by the continuation's length in bytes.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from ftp_export.evaluation.assets import base_tag, detokenise

CONTENT_TAGS = {"nn", "nns", "vb", "vbd", "vbg", "vbn", "vbz", "jj", "rb"}
TASKS = ("brown-cloze", "brown-next-sentence")


@dataclass(frozen=True)
class Item:
    task: str
    context: str
    choices: list[str]  # continuations, each starting with a space
    label: int
    source: str  # document id and sentence index

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _held_out(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    docs = [d for d in documents if d.get("split") == "held_out"]
    if not docs:
        raise ValueError("no held-out documents (split == 'held_out') to build tasks from")
    return docs


def _clean(word: str) -> bool:
    return word.isalpha() and word.isascii()


def cloze_items(documents: list[dict[str, Any]], count: int, seed: int = 0) -> list[Item]:
    docs = _held_out(documents)
    vocab: dict[str, Counter[str]] = {}
    for d in docs:
        for sent in d["sentences"]:
            for w, t in sent:
                if _clean(w) and w.islower():
                    vocab.setdefault(base_tag(t), Counter())[w] += 1
    pools = {t: sorted(w for w, c in cnt.items() if c >= 3) for t, cnt in vocab.items()}
    candidates = []
    for d in docs:
        sents = d["sentences"]
        for i in range(1, len(sents)):
            words = [w for w, _ in sents[i]]
            if not 10 <= len(words) <= 40:
                continue
            for j in range(len(words) - 1, 5, -1):
                w, t = sents[i][j]
                tag = base_tag(t)
                if tag in CONTENT_TAGS and _clean(w) and w.islower() and len(pools.get(tag, ())) >= 20:
                    candidates.append((d["id"], i, j, tag))
                    break
    rng = random.Random(seed)
    rng.shuffle(candidates)
    by_id = {d["id"]: d for d in docs}
    items = []
    for doc_id, i, j, tag in candidates[:count]:
        sents = by_id[doc_id]["sentences"]
        answer = sents[i][j][0]
        prev = detokenise([w for w, _ in sents[i - 1]])
        context = prev + " " + detokenise([w for w, _ in sents[i][:j]])
        pool = [w for w in pools[tag] if w.lower() != answer.lower()]
        choices = [answer, *rng.sample(pool, 3)]
        rng.shuffle(choices)
        items.append(Item("brown-cloze", context, [" " + c for c in choices], choices.index(answer), f"{doc_id}:{i}"))
    return items


def next_sentence_items(documents: list[dict[str, Any]], count: int, seed: int = 0) -> list[Item]:
    docs = _held_out(documents)
    pool = [(d["id"], detokenise([w for w, _ in s]), len(s)) for d in docs for s in d["sentences"] if 6 <= len(s) <= 50]
    candidates = [(d["id"], i) for d in docs for i in range(2, len(d["sentences"])) if 6 <= len(d["sentences"][i]) <= 50]
    rng = random.Random(seed + 1)
    rng.shuffle(candidates)
    by_id = {d["id"]: d for d in docs}
    items = []
    for doc_id, i in candidates[:count]:
        sents = by_id[doc_id]["sentences"]
        n = len(sents[i])
        context = " ".join(detokenise([w for w, _ in s]) for s in sents[i - 2 : i])
        answer = detokenise([w for w, _ in sents[i]])
        near = [text for other, text, m in pool if other != doc_id and abs(m - n) <= 0.3 * n and text != answer]
        if len(near) < 3:
            continue
        choices = [answer, *rng.sample(near, 3)]
        rng.shuffle(choices)
        items.append(Item("brown-next-sentence", context, [" " + c for c in choices], choices.index(answer), f"{doc_id}:{i}"))
    return items


BUILDERS = {"brown-cloze": cloze_items, "brown-next-sentence": next_sentence_items}


def build_tasks(documents: list[dict[str, Any]], names: list[str], count: int, seed: int = 0) -> dict[str, list[Item]]:
    """``count`` items for each task in ``names`` (fewer if the corpus has fewer candidates)."""
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    return {name: BUILDERS[name](documents, count, seed) for name in names}
