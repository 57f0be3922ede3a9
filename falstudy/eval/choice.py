"""Multiple choice from JSONL, lm-eval style: ``{"context": ..., "choices": [...], "gold": i}``
per line. Each choice is scored as the continuation ``" " + choice`` of the context (lm-eval's
default target delimiter). ``acc``: the choice with the highest summed log-probability is the
gold one; ``acc_norm``: the same after dividing each by the choice's length in characters
(lm-eval's acc_norm). The first of tied choices wins, as with lm-eval's argmax.
"""

from __future__ import annotations

from pathlib import Path

from falstudy.errors import FalstudyError
from falstudy.eval.pairs import DELIMITER, accuracy, read_jsonl


def read_choices(path: str | Path) -> list[dict]:
    items = read_jsonl(path, ("context", "choices", "gold"))
    for i, it in enumerate(items, start=1):
        ok = (isinstance(it["context"], str) and isinstance(it["choices"], list) and len(it["choices"]) >= 2
              and all(isinstance(c, str) and c for c in it["choices"]) and isinstance(it["gold"], int)
              and not isinstance(it["gold"], bool) and 0 <= it["gold"] < len(it["choices"]))
        if not ok:
            raise FalstudyError(f"{path}: item {i}: context must be text, choices two or more non-empty strings, "
                                "gold the 0-based index of the right one")
    return items


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda k: (values[k], -k))


def score_choices(scorer, items: list[dict], progress=None) -> dict:
    requests = [(it["context"], DELIMITER + c) for it in items for c in it["choices"]]
    scores = iter(scorer.score(requests, progress))
    raw, norm, lls = [], [], []
    for it in items:
        lp = [next(scores).logprob for _ in it["choices"]]
        lls.append(lp)
        raw.append(_argmax(lp) == it["gold"])
        norm.append(_argmax([v / len(c) for v, c in zip(lp, it["choices"])]) == it["gold"])
    acc, se = accuracy(raw)
    acc_norm, se_norm = accuracy(norm)
    return {"acc": acc, "acc_stderr": se, "acc_norm": acc_norm, "acc_norm_stderr": se_norm, "n": len(items),
            "logprobs": lls}
