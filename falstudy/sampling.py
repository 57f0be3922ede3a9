"""Sampling text from a trained run: ``falstudy.generate`` and ``falstudy sample RUN --prompt ...``.

The prompt is encoded with the tokenizer of the run's own corpus (``data.path`` of its config:
byte-level or the BPE saved there), the model is sampled autoregressively over its last
``block_size`` tokens with temperature and top-k (nanoGPT's ``generate``), and the new tokens
are decoded back. One seed makes a sample repeatable.
"""

from __future__ import annotations

from pathlib import Path

import torch

from falstudy.errors import FalstudyError


@torch.no_grad()
def sample_ids(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """``idx`` (B, T) extended by ``max_new_tokens`` sampled tokens (greedy at temperature 0)."""
    block = model.config.block_size
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -block:])
        logits = logits[:, -1, :].float()
        if temperature == 0:
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
        idx = torch.cat([idx, nxt], dim=1)
    return idx


def generate(run: str | Path, prompt: str = "\n", max_new_tokens: int = 200, *, temperature: float = 0.8,
             top_k: int | None = 50, seed: int = 0, data: str | Path | None = None) -> str:
    """The text a trained run (a run folder or checkpoint) writes after ``prompt``.
    ``data``: the corpus folder whose tokenizer to use (default: the run's ``data.path``)."""
    from falstudy.data.tokenizer import load_tokenizer
    from falstudy.models import load_checkpoint

    if max_new_tokens < 1:
        raise FalstudyError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0:
        raise FalstudyError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise FalstudyError(f"top_k must be at least 1 (or None for no limit), got {top_k}")
    model, cfg = load_checkpoint(run)
    tok = load_tokenizer(Path(data) if data is not None else Path(cfg.data.path))
    ids = tok.encode(prompt)
    if not ids:
        raise FalstudyError("the prompt encodes to no tokens; give at least one character")
    if max(ids) >= cfg.model.vocab_size:
        raise FalstudyError(f"the prompt has token ids up to {max(ids)} but the model's vocabulary is "
                            f"{cfg.model.vocab_size}: pass the corpus it was trained on (data=...)")
    gen = torch.Generator().manual_seed(seed)
    out = sample_ids(model, torch.tensor([ids], dtype=torch.long), max_new_tokens, temperature, top_k, gen)
    return tok.decode(out[0, len(ids):].tolist())
