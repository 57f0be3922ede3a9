"""What probing costs, measured side by side in one run (random-init model; costs do not depend
on the weights).

    python bench/probe_cost.py [--layers 6 --d 384 --T 256 --batch 8 --tokens 16384 --rounds 5]

Prints:
1. nnsight overhead: a plain forward vs the same forward inside an nnsight trace that reads
   nothing, and one that reads every MHA output and MLP input (what the CKA probe reads),
   alternating (round-robin) so machine noise hits all alike; medians over rounds.
   The same for a tiny model, where the fixed per-trace cost shows.
2. CKA throughput: tokens/s of the cka probe (3 families, every layer pair) including the
   forward passes, and of the Gram/HSIC arithmetic alone.
3. The wall time of run_probes(all) on ``--tokens`` tokens, per probe.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from falstudy.config import ModelConfig
from falstudy.models import GPT


def timed(fn, rounds: int) -> float:
    return statistics.median(_once(fn) for _ in range(rounds))


def _once(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def overhead(model: GPT, x: torch.Tensor, rounds: int) -> dict[str, float]:
    from falstudy.probe import sites as S

    nm = S.wrap(model)
    order = S.forward_order(model)
    empty = S.make_plan(order, [])
    full = S.make_plan(order, S.layer_sites(model, "attn_out") + S.layer_sites(model, "mlp_in"))
    fns = {
        "plain": lambda: model(x),
        "trace_empty": lambda: S.trace(nm, x, None, empty),
        "trace_sites": lambda: S.trace(nm, x, None, full),
    }
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for fn in fns.values():  # warm-up
            fn()
        for _ in range(rounds):
            for name, fn in fns.items():
                times[name].append(_once(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--T", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--skip-all", action="store_true", help="skip the all-probe run")
    args = ap.parse_args()

    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=args.layers, n_embd=args.d, n_head=args.heads, block_size=args.T, vocab_size=256)
    model = GPT(cfg).eval()
    x = torch.randint(0, 256, (args.batch, args.T))
    print(f"model: {args.layers} layers, d={args.d}, batch {args.batch}x{args.T} tokens, torch threads {torch.get_num_threads()}")

    # 1. nnsight overhead
    t = overhead(model, x, args.rounds)
    print("\n1. forward time (median of rounds)")
    for name, secs in t.items():
        print(f"   {name:12s} {secs * 1e3:8.1f} ms   ratio to plain {secs / t['plain']:.3f}")
    small = GPT(ModelConfig(n_layer=2, n_embd=32, n_head=4, block_size=16, vocab_size=64)).eval()
    ts = overhead(small, torch.randint(0, 64, (2, 16)), max(args.rounds, 20))
    print(f"   tiny model (2x32, 2x16 tokens): plain {ts['plain'] * 1e3:.2f} ms, empty trace "
          f"{ts['trace_empty'] * 1e3:.2f} ms -> fixed cost ~{(ts['trace_empty'] - ts['plain']) * 1e3:.2f} ms/trace")

    # 2. CKA throughput
    from falstudy.probe.cka import CKAAccumulator, cka_probe

    n_batches = max(1, args.tokens // (args.batch * args.T))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, 256, (args.batch, args.T), generator=g),) * 2 for _ in range(n_batches)]
    secs = _once(lambda: cka_probe(model, batches))
    n_tok = n_batches * args.batch * args.T
    per_seq = min(32, args.T - 1)  # the probe's default positions per sequence (position 0 excluded)
    n_samples = n_batches * args.batch * per_seq
    print(f"\n2. cka probe, 3 families x {args.layers}x{args.layers} layer pairs, {n_batches} batches")
    print(f"   {secs:.2f} s: {n_tok / secs:,.0f} forward tokens/s, {n_samples / secs:,.0f} CKA samples/s "
          f"({per_seq} positions per sequence)")
    feats = {k: torch.randn(args.batch * per_seq, args.d) for k in range(2 * args.layers)}
    pairs = [(a, b) for a in feats for b in feats if a <= b]
    acc = CKAAccumulator(pairs)
    gram = timed(lambda: acc.update(feats), args.rounds)
    print(f"   arithmetic alone: {gram * 1e3:.1f} ms per minibatch of {args.batch * per_seq} samples "
          f"({len(feats)} sites, {len(pairs)} pairs) = {args.batch * per_seq / gram:,.0f} samples/s")

    # 3. all probes
    if args.skip_all:
        return
    from falstudy.probe import run_probes

    data = torch.randint(0, 256, (args.tokens // args.T + args.batch, args.T + 1), generator=g)
    t0 = time.perf_counter()
    df = run_probes(model, "all", tokens=args.tokens, batch_size=args.batch, data=data, quiet=True)
    wall = time.perf_counter() - t0
    print(f"\n3. run_probes(all), {args.tokens} tokens: {wall:.1f} s wall, {len(df)} rows")
    for name, s in df.attrs["probe_seconds"].items():
        print(f"   {name:13s} {s:7.1f} s")


if __name__ == "__main__":
    main()
