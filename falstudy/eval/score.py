"""Log-likelihoods of continuations under a falstudy model: the one scoring path that held-out
bits per byte, minimal pairs, multiple choice and the lm-evaluation-harness adapter all share,
so their numbers agree by construction.

A request is (context, continuation) as text. Both are encoded the way lm-eval's Hugging Face
model does it: trailing spaces of the context move onto the continuation, the whole string is
encoded, and the continuation is what follows the context's tokens. An empty context becomes the
tokenizer's document separator (``"\\n\\n"`` for bytes, ``<|endoftext|>`` for BPE), the text a
document starts after in training. A sequence longer than the model's context is scored in
windows of ``block_size`` targets, each window conditioned on up to ``block_size`` tokens before
its first target (the same context the trainer's validation loss sees).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from falstudy.errors import FalstudyError


@dataclass(frozen=True)
class Score:
    logprob: float  # summed natural-log probability of the continuation's tokens
    n_tokens: int
    greedy: bool  # every continuation token was the model's argmax


class Scorer:
    """A model and its tokenizer, scoring (context, continuation) requests in batches."""

    def __init__(self, model: torch.nn.Module, tokenizer, batch_size: int = 32, device: str | torch.device = "cpu"):
        if batch_size < 1:
            raise FalstudyError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model.eval()
        self.tok = tokenizer
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.block = int(model.config.block_size)
        self.vocab = int(model.config.vocab_size)
        if tokenizer.vocab_size > self.vocab:
            raise FalstudyError(f"the tokenizer has {tokenizer.vocab_size} ids but the model only {self.vocab}: "
                                "pass the corpus folder the run was trained on (--data)")

    @property
    def prefix(self) -> str:
        return self.tok.separator

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if not context:
            context = self.prefix
        n_space = len(context) - len(context.rstrip(" "))
        if n_space and context.rstrip(" "):
            context, continuation = context[:-n_space], context[-n_space:] + continuation
        whole = self.tok.encode(context + continuation)
        ctx = self.tok.encode(context)
        if whole[: len(ctx)] == ctx:
            return ctx, whole[len(ctx):]
        return ctx, self.tok.encode(continuation)  # a merge across the boundary: encode apart

    def score(self, requests: Sequence[tuple[str, str]], progress=None) -> list[Score]:
        return self.score_ids([self.encode_pair(c, x) for c, x in requests], progress)

    def score_ids(self, pairs: Sequence[tuple[list[int], list[int]]], progress=None) -> list[Score]:
        """Scores of token-id requests: (context ids, continuation ids), context non-empty."""
        windows = []  # (request index, input ids, number of targets at the end of the window)
        for i, (ctx, cont) in enumerate(pairs):
            if not ctx:
                raise FalstudyError("a request needs at least one context token")
            full = list(ctx) + list(cont)
            if full and max(full) >= self.vocab:
                raise FalstudyError(f"token id {max(full)} is outside the model's vocabulary of {self.vocab}")
            start = len(ctx)  # index in full of the first target
            while start < len(full):
                end = min(start + self.block, len(full))  # targets full[start:end]
                lo = max(0, end - 1 - self.block)
                windows.append((i, full[lo : end - 1], full[lo + 1 : end], end - start))
                start = end
        logprob = [0.0] * len(pairs)
        greedy = [True] * len(pairs)
        # longest first: similar lengths share a batch, so little padding
        order = sorted(range(len(windows)), key=lambda k: -len(windows[k][1]))
        with torch.no_grad():
            for b in range(0, len(order), self.batch_size):
                chunk = [windows[k] for k in order[b : b + self.batch_size]]
                T = max(len(w[1]) for w in chunk)
                x = torch.zeros(len(chunk), T, dtype=torch.long)
                y = torch.zeros(len(chunk), T, dtype=torch.long)
                for r, (_, inp, tgt, _) in enumerate(chunk):
                    x[r, : len(inp)] = torch.tensor(inp)  # right padding: causal, never seen by real positions
                    y[r, : len(tgt)] = torch.tensor(tgt)
                logits, _ = self.model(x.to(self.device))
                logp = F.log_softmax(logits.float(), dim=-1).cpu()
                picked = logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
                best = logp.argmax(-1)
                for r, (i, inp, tgt, n) in enumerate(chunk):
                    sl = slice(len(tgt) - n, len(tgt))
                    logprob[i] += float(picked[r, sl].double().sum())
                    greedy[i] = greedy[i] and bool((best[r, sl] == y[r, sl]).all())
                if progress is not None:
                    progress(len(chunk))
        return [Score(lp, len(c), g) for lp, g, (_, c) in zip(logprob, greedy, pairs)]
