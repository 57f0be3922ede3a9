"""Shared fixtures: a tiny prepared corpus (six short documents, byte-level) for training,
sweep and parallel tests."""

from __future__ import annotations

from pathlib import Path

import pytest

VERSE = (
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.\n"
    "Rough winds do shake the darling buds of May, and summer's lease hath all too short a date.\n"
)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    import falstudy

    root = tmp_path_factory.mktemp("corpus")
    texts = root / "texts"
    texts.mkdir()
    for i in range(6):
        (texts / f"doc{i}.txt").write_text(f"Sonnet {i}.\n" + VERSE * 40)
    return falstudy.prepare(corpus=str(texts), out_dir=root / "data", name="tiny", quiet=True)
