"""``falstudy data prepare``: documents -> document-level split -> tokens -> shards + manifest.

Everything is written into a temp folder beside the target and renamed into place, so a kill
leaves nothing half-written. An existing complete folder prepared with the same settings is
returned as it is (idempotent); one prepared with other settings, or left incomplete, is an
error that says to pass ``force``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np

from falstudy.data.shards import SPLITS, load_meta, token_dtype, write_split
from falstudy.data.sources import KNOWN_CORPORA, Document, load_corpus, sha256
from falstudy.data.tokenizer import TOKENIZERS, BPETokenizer, ByteTokenizer, Tokenizer
from falstudy.errors import FalstudyError
from falstudy.names import check_name, safe_name

FORMAT = 1  # of the prepared folder


def default_name(corpus: str, tokenizer: str, vocab_size: int) -> str:
    """``shakespeare-byte``, ``shakespeare-bpe2048``, ``<folder or file stem>-gpt2``."""
    stem = corpus if corpus in KNOWN_CORPORA else Path(corpus).expanduser().resolve().stem
    return safe_name(f"{stem}-{tokenizer}" + (str(vocab_size) if tokenizer == "bpe" else ""), "corpus")


def split_documents(docs: list[Document], val_fraction: float, seed: int) -> tuple[list[Document], list[Document], str]:
    """Whole documents go to train or val (shuffled with ``seed``; at least one each). A single
    document is cut once, at the paragraph (else line, else space) boundary nearest its
    ``1 - val_fraction`` point (a boundary far from it does not count)."""
    if len(docs) >= 2:
        order = list(docs)
        random.Random(seed).shuffle(order)
        n_val = min(len(docs) - 1, max(1, round(val_fraction * len(docs))))
        return order[n_val:], order[:n_val], "documents"
    (doc,) = docs
    text = doc.text.rstrip()
    if len(text) < 2:
        raise FalstudyError(f"{doc.name} is the only document and too short to split into train and val; give it more text")
    target = int(len(text) * (1 - val_fraction))
    slack = len(text) * min(val_fraction, 1 - val_fraction) / 2  # keep each side within 50% of its share
    cut = -1
    for boundary in ("\n\n", "\n", " "):
        before, after = text.rfind(boundary, 1, target + 1), text.find(boundary, target, len(text) - 1)
        candidates = [c for c in (before, after) if c > 0 and abs(c - target) <= slack]
        if candidates:
            cut = min(candidates, key=lambda c: abs(c - target))
            break
    if cut <= 0:
        cut = max(1, min(target, len(text) - 1))
    note = f"one document only: characters [0, {cut}) train, [{cut}, {len(text)}) val"
    return [Document(f"{doc.name}[:{cut}]", text[:cut])], [Document(f"{doc.name}[{cut}:]", text[cut:].lstrip())], note


def make_tokenizer(kind: str, train_docs: list[Document], vocab_size: int, quiet: bool) -> Tokenizer:
    if kind == "byte":
        return ByteTokenizer()
    if kind == "gpt2":
        return BPETokenizer.gpt2(quiet=quiet)
    # trained on the train split only, so val text never shapes the vocabulary
    return BPETokenizer.train((d.text for d in train_docs), vocab_size)


def tokenize(docs: list[Document], tok: Tokenizer, dtype: np.dtype, bar) -> np.ndarray:
    """Documents as one flat id array, each followed by the tokenizer's separator."""
    parts = []
    for doc in docs:
        parts.append(np.asarray(tok.encode(doc.text.rstrip() + tok.separator), dtype=dtype))
        bar.update(len(doc.text))
    return np.concatenate(parts)


def _settings(corpus: str, tokenizer: str, vocab_size: int, val_fraction: float, seed: int) -> dict:
    """What the caller asked for; a folder is reused only when these match."""
    where = corpus if corpus in KNOWN_CORPORA else str(Path(corpus).expanduser().resolve())
    return {"corpus": where, "tokenizer": tokenizer, "vocab_size": vocab_size if tokenizer == "bpe" else None,
            "val_fraction": val_fraction, "seed": seed}


def _check_existing(target: Path, settings: dict) -> None:
    """Raise unless ``target`` is a complete corpus prepared with ``settings``."""
    redo = "rerun with --force (force=True) to rebuild it, or choose another --name"
    try:
        meta = load_meta(target)
        manifest = json.loads((target / "manifest.json").read_text())
        for split in SPLITS:
            size = (target / f"{split}.bin").stat().st_size
            if size != int(meta[f"n_{split}"]) * np.dtype(meta["dtype"]).itemsize:
                raise ValueError(f"{split}.bin is {size} bytes")
    except (FalstudyError, OSError, ValueError, KeyError, TypeError) as err:
        raise FalstudyError(f"{target} exists but is incomplete or corrupt ({err}); {redo}") from None
    recorded = manifest.get("settings")
    if recorded is not None and recorded != settings:
        diff = ", ".join(f"{k}={recorded.get(k)!r} (asked {v!r})" for k, v in settings.items() if recorded.get(k) != v)
        raise FalstudyError(f"{target} was prepared with other settings: {diff}; {redo}")


def _check_one_block(corpus: str, counts: dict[str, int], val_fraction: float) -> None:
    """Each split must hold one sequence of the default context (block_size + 1 tokens: inputs and
    the shifted targets), or training would fail at its first batch or eval."""
    from falstudy.config import ModelConfig

    need = ModelConfig().block_size + 1
    if counts["train"] < need:
        raise FalstudyError(f"{corpus}: the train split has {counts['train']} tokens, fewer than one block of the "
                            f"default context ({need} tokens); use a larger corpus")
    if counts["val"] < need:
        raise FalstudyError(f"{corpus}: the validation split has {counts['val']} tokens, fewer than one block of "
                            f"the default context ({need} tokens); use a larger corpus or a larger --val-fraction "
                            f"(now {val_fraction:g})")


def _tmp_prefix(name: str) -> str:
    return f".{name}.tmp-{socket.gethostname()}-"


def _reap_stale_tmp(out_dir: Path, name: str) -> None:
    """Remove temp folders left by killed prepares of ``name`` on this host."""
    prefix = _tmp_prefix(name)
    for tmp in out_dir.glob(f"{prefix}*"):
        try:
            pid = int(tmp.name[len(prefix):].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, PermissionError):
            pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: Path, target: Path, force: bool) -> Path:
    """Rename ``tmp`` to ``target``. A complete folder that appeared meanwhile (a concurrent
    prepare) wins unless ``force``."""
    if force and target.exists():
        old = target.with_name(f"{tmp.name}-old")
        target.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        tmp.rename(target)
    except OSError:
        if not target.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return target


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
    """Tokenise ``corpus`` into ``<out_dir>/<name>/`` and return that folder.

    ``corpus``: a name in ``KNOWN_CORPORA`` or a path to a text file or folder of .txt/.md files.
    ``tokenizer``: "byte" (256 ids), "bpe" (trained on the train split, ``vocab_size`` ids) or
    "gpt2" (GPT-2's 50257 ids). ``name`` defaults to ``<corpus>-<tokenizer>``, e.g.
    ``shakespeare-byte`` or ``shakespeare-bpe2048``.
    """
    corpus = str(corpus)
    if tokenizer not in TOKENIZERS:
        raise FalstudyError(f"unknown tokenizer {tokenizer!r}; use one of {', '.join(TOKENIZERS)}")
    if not 0 < val_fraction < 1:
        raise FalstudyError(f"val_fraction={val_fraction} must be between 0 and 1 (exclusive)")
    name = check_name(name, "--name") if name is not None else default_name(corpus, tokenizer, vocab_size)
    out_dir = Path(out_dir)
    target = out_dir / name
    settings = _settings(corpus, tokenizer, vocab_size, val_fraction, seed)
    if target.exists() and not force:
        _check_existing(target, settings)
        return target

    docs, source = load_corpus(corpus, quiet=quiet)
    train_docs, val_docs, split_by = split_documents(docs, val_fraction, seed)
    tok = make_tokenizer(tokenizer, train_docs, vocab_size, quiet)
    dtype = token_dtype(tok.vocab_size)

    out_dir.mkdir(parents=True, exist_ok=True)
    _reap_stale_tmp(out_dir, name)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_tmp_prefix(name)}{os.getpid()}-", dir=out_dir))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the corpus is for everyone
        from tqdm.auto import tqdm

        counts = {}
        with tqdm(total=sum(len(d.text) for d in train_docs + val_docs), desc=f"tokenising {name}", unit="char",
                  unit_scale=True, disable=quiet, leave=False) as bar:
            for split, split_docs in (("train", train_docs), ("val", val_docs)):
                counts[split] = write_split(tmp, split, tokenize(split_docs, tok, dtype, bar), dtype)
        _check_one_block(corpus, counts, val_fraction)
        tok.save(tmp)  # tokenizer.json (BPE kinds) and the kind in meta.json
        meta = {"name": name, "corpus": corpus, "tokenizer": tok.name, "vocab_size": tok.vocab_size,
                "dtype": dtype.name, "n_train": counts["train"], "n_val": counts["val"], "format": FORMAT}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        from falstudy import __version__
        from falstudy.provenance import now_iso, provenance

        manifest = {
            "name": name,
            "format": FORMAT,
            "settings": settings,
            "source": source,
            "split": {"by": split_by, "seed": seed, "val_fraction": val_fraction,
                      "train": [d.name for d in train_docs], "val": [d.name for d in val_docs]},
            "tokenizer": {"kind": tok.name, "vocab_size": tok.vocab_size, "separator": tok.separator,
                          "trained_on": "train split" if tok.name == "bpe" else None},
            "tokens": {"dtype": dtype.name, "n_train": counts["train"], "n_val": counts["val"]},
            "files": {f.name: sha256(f) for f in sorted(tmp.iterdir()) if f.name != "meta.json"},
            "created_at": now_iso(),
            "falstudy": __version__,
            "provenance": provenance(),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        return _publish(tmp, target, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
