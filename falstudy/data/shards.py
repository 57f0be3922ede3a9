"""Token shards: ``train.bin`` / ``val.bin`` (flat token ids, memory-mapped) plus ``meta.json``.

``meta.json`` holds at least ``vocab_size``, ``dtype``, ``n_train`` and ``n_val``; the ``.bin``
files are raw little-endian arrays of that dtype (nanoGPT's layout: ``np.memmap`` reads them).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from falstudy.data.sources import KNOWN_CORPORA
from falstudy.errors import FalstudyError

if TYPE_CHECKING:
    import torch

SPLITS = ("train", "val")
REQUIRED_META = ("vocab_size", "dtype", "n_train", "n_val")


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds ids 0..vocab_size-1 (uint16 up to 65536 ids)."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def prepare_hint(path: Path) -> str:
    """The `falstudy data prepare` command that would build ``path`` (read off its name)."""
    m = re.fullmatch(r"(.+)-(byte|bpe(\d+)|gpt2)", path.name)
    args = ["falstudy data prepare"]
    if m is None:
        args += ["--corpus ...", f"--name {path.name}"]
    else:
        if m[1] != "shakespeare":
            args.append(f"--corpus {m[1]}" if m[1] in KNOWN_CORPORA else "--corpus path/to/texts")
        if m[2] != "byte":
            args.append("--tokenizer " + ("gpt2" if m[2] == "gpt2" else f"bpe --vocab-size {m[3]}"))
    if path.parent != Path("data"):
        args.append(f"--out {path.parent}")
    return " ".join(args)


def load_meta(path: str | Path) -> dict:
    """The corpus folder's meta.json, or a FalstudyError saying how to prepare it."""
    path = Path(path)
    if not path.is_dir():
        raise FalstudyError(f"corpus folder {path} not found: run `{prepare_hint(path)}`")
    meta_path = path / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
        missing = [key for key in REQUIRED_META if key not in meta]
    except FileNotFoundError:
        raise FalstudyError(f"{path} is not a prepared corpus (no meta.json): run `{prepare_hint(path)} --force`") from None
    except (ValueError, TypeError):
        missing = ["valid JSON"]
    if missing:
        raise FalstudyError(f"{meta_path} lacks {', '.join(missing)}: rebuild with `{prepare_hint(path)} --force`")
    return meta


class TokenShards:
    """One split of a prepared corpus, sampled as (x, y) windows with y = x shifted by one."""

    def __init__(self, path: str | Path, split: str = "train") -> None:
        if split not in SPLITS:
            raise FalstudyError(f"split {split!r} is not one of {', '.join(SPLITS)}")
        self.path, self.split = Path(path), split
        self.meta = load_meta(self.path)
        self.vocab_size: int = int(self.meta["vocab_size"])
        file = self.path / f"{split}.bin"
        dtype = np.dtype(self.meta["dtype"])
        expected = int(self.meta[f"n_{split}"])
        if not file.is_file() or file.stat().st_size != expected * dtype.itemsize:
            raise FalstudyError(f"{file} is missing or not {expected} tokens long: rebuild with `{prepare_hint(self.path)} --force`")
        # an empty file cannot be memory-mapped
        self.tokens = np.memmap(file, dtype=dtype, mode="r") if expected else np.zeros(0, dtype)

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def __len__(self) -> int:
        return self.n_tokens

    def __repr__(self) -> str:
        return f"TokenShards({str(self.path)!r}, {self.split!r}: {self.n_tokens} tokens, vocab {self.vocab_size})"

    def _check(self, batch_size: int, seq_len: int) -> None:
        if batch_size < 1 or seq_len < 1:
            raise FalstudyError(f"batch_size={batch_size} and seq_len={seq_len} must both be at least 1")
        if self.n_tokens < seq_len + 1:
            fix = "a larger val_fraction (--val-fraction)" if self.split == "val" else "more text"
            raise FalstudyError(
                f"{self.path}/{self.split}.bin has {self.n_tokens} tokens, fewer than seq_len+1 = {seq_len + 1}: "
                f"lower seq_len (train.seq_len / model.block_size) or prepare the corpus with {fix}"
            )

    def _windows(self, starts: np.ndarray, seq_len: int, device) -> tuple["torch.Tensor", "torch.Tensor"]:
        import torch

        rows = self.tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64)
        xy = torch.from_numpy(rows)
        x, y = xy[:, :-1].contiguous(), xy[:, 1:].contiguous()
        if torch.device(device).type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)

    def get_batch(self, batch_size: int, seq_len: int, generator: "torch.Generator", device="cpu"):
        """``batch_size`` random windows; the generator alone decides which (same seed, same batch)."""
        import torch

        self._check(batch_size, seq_len)
        starts = torch.randint(self.n_tokens - seq_len, (batch_size,), generator=generator).numpy()
        return self._windows(starts, seq_len, device)

    def eval_batches(self, batch_size: int, seq_len: int, n_batches: int, device="cpu") -> Iterator:
        """``n_batches`` batches of windows spread evenly over the split: the same at every call,
        so losses are comparable across steps and runs (windows overlap if the split is short)."""
        self._check(batch_size, seq_len)
        starts = np.linspace(0, self.n_tokens - seq_len - 1, batch_size * n_batches).round().astype(np.int64)
        for i in range(n_batches):
            yield self._windows(starts[i * batch_size : (i + 1) * batch_size], seq_len, device)


def write_split(folder: str | Path, split: str, ids, dtype) -> int:
    """Write token ids as ``folder/<split>.bin``; returns how many were written."""
    arr, dtype = np.asarray(ids), np.dtype(dtype)
    if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(dtype).max):
        raise ValueError(f"token ids {arr.min()}..{arr.max()} do not fit {dtype}")
    arr = arr.astype(dtype, copy=False)
    arr.tofile(Path(folder) / f"{split}.bin")
    return len(arr)
