"""Minimal pairs: a grammatical sentence and a minimally different bad one (BLiMP's JSONL:
``{"sentence_good": ..., "sentence_bad": ...}`` per line); the model is right on a pair when it
gives the good sentence at least the summed log-probability of the bad one (ties count as right,
as lm-eval's argmax over [good, bad] does). Each sentence is scored as lm-eval's BLiMP tasks
score it: the continuation ``" " + sentence`` of an empty context (so after the tokenizer's
separator); the space costs both sentences the same, so it never changes a pair's outcome.

``wordswap_pairs`` builds a set offline from held-out text: a sentence, and the same sentence
with two adjacent words swapped. It needs no download, but it is a weak proxy for syntax: many
swaps are also detectable from character statistics alone, some swapped sentences are still
grammatical, and the set is drawn from one corpus (docs/eval.md).
"""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

from falstudy.errors import FalstudyError

DELIMITER = " "  # lm-eval's default target delimiter, put before every scored continuation
WORDSWAP = "wordswap-"  # built-in pair sets: wordswap-<corpus>
_SENTENCE = re.compile(r"[^.!?]*[.!?]")
_WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?")


def read_jsonl(path: str | Path, required: tuple[str, ...]) -> list[dict]:
    """Items of a JSONL file, each a JSON object with the ``required`` keys; one clear error otherwise."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise FalstudyError(f"{path}: no such JSONL file") from None
    except (UnicodeDecodeError, IsADirectoryError):
        raise FalstudyError(f"{path} is not a UTF-8 JSONL file") from None
    items = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as err:
            raise FalstudyError(f"{path}:{i}: not JSON ({err.args[0][:80]})") from None
        missing = [k for k in required if not isinstance(item, dict) or k not in item]
        if missing:
            raise FalstudyError(f"{path}:{i}: needs the key(s) {', '.join(missing)}")
        items.append(item)
    if not items:
        raise FalstudyError(f"{path} holds no items")
    return items


def read_pairs(path: str | Path) -> list[dict]:
    items = read_jsonl(path, ("sentence_good", "sentence_bad"))
    for i, it in enumerate(items, start=1):
        if not (isinstance(it["sentence_good"], str) and isinstance(it["sentence_bad"], str)):
            raise FalstudyError(f"{path}: item {i}: sentence_good and sentence_bad must be strings")
    return items


def wordswap_pairs(text: str, n: int = 500, seed: int = 0) -> list[dict]:
    """Up to ``n`` pairs from ``text``: sentences of 5 to 15 plain words, the bad one with two
    adjacent words swapped (never the first or last word, never two equal words)."""
    rng = random.Random(seed)
    candidates = []
    for m in _SENTENCE.finditer(text):
        sentence = " ".join(m.group().split())
        words = sentence[:-1].split(" ")
        if 5 <= len(words) <= 15 and all(_WORD.fullmatch(w) for w in words):
            candidates.append(words)
    rng.shuffle(candidates)
    out = []
    for words in candidates:
        i = rng.randrange(1, len(words) - 2)
        if words[i].lower() == words[i + 1].lower():
            continue
        bad = words[:i] + [words[i + 1], words[i]] + words[i + 2 :]
        out.append({"sentence_good": " ".join(words) + ".", "sentence_bad": " ".join(bad) + ".", "swap_at": i})
        if len(out) == n:
            break
    return out


def accuracy(correct: list[bool]) -> tuple[float, float]:
    """Mean and its standard error (sample sd / sqrt n, as lm-eval reports it)."""
    n = len(correct)
    p = sum(correct) / n
    se = math.sqrt(p * (1 - p) * n / (n - 1) / n) if n > 1 else math.nan
    return p, se


def score_pairs(scorer, items: list[dict], progress=None) -> dict:
    requests = [("", DELIMITER + it[k]) for it in items for k in ("sentence_good", "sentence_bad")]
    scores = scorer.score(requests, progress)
    correct = [g.logprob >= b.logprob for g, b in zip(scores[::2], scores[1::2])]
    acc, se = accuracy(correct)
    return {"acc": acc, "n": len(items), "stderr": se, "correct": correct,
            "logprobs": [(g.logprob, b.logprob) for g, b in zip(scores[::2], scores[1::2])]}
