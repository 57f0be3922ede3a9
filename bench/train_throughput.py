"""Training throughput of the wirings, as ratios measured side by side in one run.

    python bench/train_throughput.py [--layers 6 --d 384 --T 256 --batch 8 --min-rounds 5 --max-rounds 30 --steps 3]

Models take turns (round-robin, a few optimizer steps each per round) so that machine noise
hits all of them alike; the figure per model is the median over rounds, and each ratio to
baseline is taken per round and reported with its 95 % bootstrap interval and interquartile
range (``falstudy.benchstats``). Rounds go on until every interval is within ``--target`` of its
median or ``--max-rounds`` is reached (then it says so); the machine's load is printed. Besides the wirings,
it times ``PlainGPT``: the plainest GPT we can write (nanoGPT-style, fused qkv, no taps, no
comm hooks, no wiring switches), to show what falstudy's wiring machinery costs.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from falstudy import benchstats
from falstudy.benchstats import Rounds
from falstudy.config import RunConfig
from falstudy.models import GPT


class PlainBlock(nn.Module):
    def __init__(self, d: int, h: int):
        super().__init__()
        self.h = h
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.fc2(F.gelu(self.fc1(self.ln_2(x)), approximate="tanh"))


class PlainGPT(nn.Module):
    def __init__(self, vocab: int, T: int, L: int, d: int, h: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(T, d)
        self.blocks = nn.ModuleList(PlainBlock(d, h) for _ in range(L))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--T", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=None, help="exactly this many rounds (sets --min-rounds and --max-rounds)")
    ap.add_argument("--min-rounds", type=int, default=5)
    ap.add_argument("--max-rounds", type=int, default=30)
    ap.add_argument("--target", type=float, default=0.03,
                    help="stop once every ratio's 95%% interval is within +- this share of its median")
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per model per round")
    args = ap.parse_args()
    try:
        rounds = Rounds(*((args.rounds, args.rounds) if args.rounds else (args.min_rounds, args.max_rounds)), args.target)
    except ValueError as err:
        ap.error(str(err))

    shape = dict(n_layer=args.layers, n_embd=args.d, n_head=args.heads, block_size=args.T, vocab_size=args.vocab)
    torch.manual_seed(0)
    models: dict[str, nn.Module] = {"plain_gpt": PlainGPT(args.vocab, args.T, args.layers, args.d, args.heads)}
    for variant in ("baseline", "parallel", "fal", "fal_plus"):
        models[variant] = GPT(RunConfig(variant=variant, model=shape).model)
    optims = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    x = torch.randint(0, args.vocab, (args.batch, args.T))
    y = torch.randint(0, args.vocab, (args.batch, args.T))

    def step(name: str) -> None:
        _, loss = models[name](x, y)
        loss.backward()
        optims[name].step()
        optims[name].zero_grad(set_to_none=True)

    for name in models:  # warm-up: allocator, kernels
        step(name)
    rates: dict[str, list[float]] = {k: [] for k in models}
    tokens = args.batch * args.T * args.steps
    load_start = benchstats.load()
    r = 0
    while True:
        order = list(models) if r % 2 == 0 else list(reversed(models))
        for name in order:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(name)
            rates[name].append(tokens / (time.perf_counter() - t0))
        r += 1
        per_round = {k: benchstats.ratios(v, rates["baseline"]) for k, v in rates.items() if k != "baseline"}
        if rounds.done(list(per_round.values())):
            break
    load_end = benchstats.load()

    med = {k: statistics.median(v) for k, v in rates.items()}
    spreads = {k: benchstats.Spread.of(v) for k, v in per_round.items()}
    print(f"training throughput, {args.layers} layers, d={args.d}, T={args.T}, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, {r} rounds x {args.steps} steps (median, 95% bootstrap interval)")
    print(f"machine load (1 min) {load_start['load_1m']:.2f} at start, {load_end['load_1m']:.2f} at end, "
          f"on {int(load_end['cores'])} cores")
    print(f"{'model':<10} {'tokens/s':>10} {'/ baseline [95% CI]':>24} {'IQR':>15}")
    for name, rate in med.items():
        if name == "baseline":
            print(f"{name:<10} {rate:>10.0f} {'1 (reference)':>24}")
            continue
        sp = spreads[name]
        print(f"{name:<10} {rate:>10.0f} {sp.text():>24} {f'[{sp.q1:.3f}, {sp.q3:.3f}]':>15}")
    print(rounds.verdict(list(spreads.values())))
    overhead = med["plain_gpt"] / med["baseline"] - 1
    plain = spreads["plain_gpt"]
    print(f"wiring machinery cost (plain_gpt / baseline - 1): {plain.median - 1:+.1%} "
          f"[{plain.lo - 1:+.1%}, {plain.hi - 1:+.1%}]")
    assert math.isfinite(overhead)


if __name__ == "__main__":
    main()
