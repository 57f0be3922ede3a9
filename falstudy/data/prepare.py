"""``falstudy data prepare``: documents -> document-level split -> tokens -> shards + manifest.

Everything is written into a temp folder and renamed into place, so a kill leaves nothing
half-written; an existing complete folder is returned as it is (idempotent).
"""

from __future__ import annotations

import json
import random
import shutil
from datetime import datetime, timezone
from pathlib import Path

from falstudy.data.shards import token_dtype, write_split
from falstudy.data.sources import Document, load_corpus
from falstudy.data.tokenizer import BPETokenizer, ByteTokenizer
from falstudy.errors import FalstudyError

TOKENIZERS = ("byte", "bpe")


def default_name(corpus: str, tokenizer: str, vocab_size: int) -> str:
    stem = Path(corpus).stem if Path(corpus).exists() else corpus
    return f"{stem}-{tokenizer}" + (str(vocab_size) if tokenizer == "bpe" else "")


def split_documents(docs: list[Document], val_fraction: float, seed: int) -> tuple[list[Document], list[Document], str]:
    if len(docs) >= 2:
        order = list(docs)
        random.Random(seed).shuffle(order)
        n_val = min(len(docs) - 1, max(1, round(val_fraction * len(docs))))
        return order[n_val:], order[:n_val], "documents"
    # a single document: hold out its tail, cut at a paragraph boundary
    text = docs[0].text
    cut = int(len(text) * (1 - val_fraction))
    para = text.rfind("\n\n", 0, cut)
    cut = para if para > len(text) // 2 else cut
    return [Document(docs[0].name + "[train]", text[:cut])], [Document(docs[0].name + "[val]", text[cut:])], "tail of one document"


def prepare(
    corpus: str = "shakespeare",
    tokenizer: str = "byte",
    vocab_size: int = 2048,
    out_dir: str | Path = "data",
    name: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    force: bool = False,
    quiet: bool = False,
) -> Path:
    if tokenizer not in TOKENIZERS:
        raise FalstudyError(f"unknown tokenizer {tokenizer!r}; use one of {', '.join(TOKENIZERS)}")
    if not 0 < val_fraction < 1:
        raise FalstudyError(f"val_fraction={val_fraction} must be between 0 and 1")
    target = Path(out_dir) / (name or default_name(corpus, tokenizer, vocab_size))
    if target.exists() and not force:
        if (target / "manifest.json").is_file():
            return target
        raise FalstudyError(f"{target} exists but is incomplete; rerun with --force")

    docs, source = load_corpus(corpus)
    train_docs, val_docs, split_by = split_documents(docs, val_fraction, seed)
    tok = ByteTokenizer() if tokenizer == "byte" else BPETokenizer.train((d.text for d in train_docs), vocab_size)
    dtype = token_dtype(tok.vocab_size)

    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    counts = {}
    from tqdm.auto import tqdm

    for split, split_docs in (("train", train_docs), ("val", val_docs)):
        ids: list[int] = []
        for doc in tqdm(split_docs, desc=f"tokenising {split}", unit="doc", disable=quiet, leave=False):
            ids.extend(tok.encode(doc.text + tok.separator))
        counts[split] = write_split(tmp, split, ids, dtype)
    tok.save(tmp)
    meta = {"name": target.name, "corpus": corpus, "tokenizer": tok.name, "vocab_size": tok.vocab_size,
            "dtype": dtype.name, "n_train": counts["train"], "n_val": counts["val"]}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    from falstudy import __version__

    manifest = {
        **meta,
        "source": source,
        "split": {"by": split_by, "seed": seed, "val_fraction": val_fraction,
                  "train": [d.name for d in train_docs], "val": [d.name for d in val_docs]},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "falstudy": __version__,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))  # written last: marks complete
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target
