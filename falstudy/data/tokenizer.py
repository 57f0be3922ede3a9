"""Tokenizers: byte-level (vocab 256) and a byte-level BPE trained with HF ``tokenizers``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from falstudy.errors import FalstudyError

EOT = "<|endoftext|>"


class ByteTokenizer:
    name = "byte"
    vocab_size = 256
    separator = "\n\n"  # between documents (no room for a special token in 256 ids)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def save(self, folder: Path) -> None:
        (Path(folder) / "tokenizer.json").write_text(json.dumps({"kind": "byte"}))


class BPETokenizer:
    name = "bpe"
    separator = EOT

    def __init__(self, tok) -> None:
        self._tok = tok
        self.vocab_size = tok.get_vocab_size()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "BPETokenizer":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < 257:
            raise FalstudyError(f"BPE vocab_size={vocab_size} must be above 256 (the byte alphabet)")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def save(self, folder: Path) -> None:
        self._tok.save(str(Path(folder) / "tokenizer.json"))


def load_tokenizer(folder: str | Path) -> ByteTokenizer | BPETokenizer:
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise FalstudyError(f"{path} not found: prepare the corpus with `falstudy data prepare`")
    if json.loads(path.read_text()).get("kind") == "byte":
        return ByteTokenizer()
    from tokenizers import Tokenizer

    return BPETokenizer(Tokenizer.from_file(str(path)))
