"""Token shards: ``train.bin`` / ``val.bin`` (flat token ids, memory-mapped) plus ``meta.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from falstudy.errors import FalstudyError

SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


def load_meta(path: str | Path) -> dict:
    path = Path(path)
    meta = path / "meta.json"
    if not meta.is_file():
        raise FalstudyError(
            f"corpus folder {path} not found or not prepared: run `falstudy data prepare` "
            "(or pass --data / data.path to a prepared folder)"
        )
    return json.loads(meta.read_text())


class TokenShards:
    """One split of a prepared corpus, sampled as (x, y) windows."""

    def __init__(self, path: str | Path, split: str = "train") -> None:
        if split not in SPLITS:
            raise FalstudyError(f"split {split!r} is not one of {SPLITS}")
        self.path, self.split = Path(path), split
        self.meta = load_meta(self.path)
        self.vocab_size: int = self.meta["vocab_size"]
        file = self.path / f"{split}.bin"
        dtype = np.dtype(self.meta["dtype"])
        if not file.is_file() or file.stat().st_size != self.meta[f"n_{split}"] * dtype.itemsize:
            raise FalstudyError(f"{file} is missing or truncated; rebuild with `falstudy data prepare --force`")
        self.tokens = np.memmap(file, dtype=dtype, mode="r")

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def __len__(self) -> int:
        return self.n_tokens

    def _check(self, seq_len: int) -> None:
        if self.n_tokens < seq_len + 1:
            raise FalstudyError(
                f"{self.path.name}/{self.split} has {self.n_tokens} tokens, fewer than seq_len+1={seq_len + 1}; "
                "use a shorter train.seq_len / model.block_size or a larger corpus"
            )

    def _windows(self, starts: np.ndarray, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.stack([self.tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64)
        xy = torch.from_numpy(rows)
        x, y = xy[:, :-1], xy[:, 1:]
        if torch.device(device).type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.contiguous().to(device), y.contiguous().to(device)

    def get_batch(self, batch_size: int, seq_len: int, generator: torch.Generator, device="cpu"):
        """Random windows; the generator alone decides which (deterministic given its state)."""
        self._check(seq_len)
        starts = torch.randint(self.n_tokens - seq_len, (batch_size,), generator=generator).numpy()
        return self._windows(starts, seq_len, device)

    def eval_batches(self, batch_size: int, seq_len: int, n_batches: int, device="cpu") -> Iterator:
        """A fixed set of windows spread evenly over the split: the same at every call."""
        self._check(seq_len)
        count = batch_size * n_batches
        starts = np.linspace(0, self.n_tokens - seq_len - 1, count).astype(np.int64)
        for i in range(n_batches):
            yield self._windows(starts[i * batch_size : (i + 1) * batch_size], seq_len, device)


def write_split(folder: Path, split: str, ids: list[int] | np.ndarray, dtype: np.dtype) -> int:
    arr = np.asarray(ids, dtype=dtype)
    arr.tofile(folder / f"{split}.bin")
    return len(arr)
