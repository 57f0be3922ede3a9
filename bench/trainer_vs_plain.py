"""falstudy's whole training step against a plain nanoGPT-style loop, at the default study's shape.

    python bench/trainer_vs_plain.py [--rounds 6 --steps 60 --threads 1]

Both train on the same prepared corpus (data/shakespeare-byte), with the same shape, batch,
AdamW settings and gradient clipping. falstudy's side is ``falstudy.train`` itself (taps,
wiring switches, layout hooks, metric spooling, its AdamW); its tokens/s are read from the
trainer's own meter (``tokens_per_s`` rows, the first interval of each round dropped as warm-up).
The plain side is ``PlainGPT`` from bench/train_throughput.py (fused qkv, no taps, no switches)
in a nanoGPT-style loop: random windows from the memmap, forward, backward, clip, AdamW with
nanoGPT's CPU default (the per-tensor loop; nanoGPT turns the fused kernel on for CUDA only).
The two take turns for ``--rounds`` rounds so load hits both alike; the ratio is reported per
round with its median and range. Compile time is not part of either.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import PlainGPT  # noqa: E402

SHAPE = dict(n_layer=4, n_head=4, n_embd=64, block_size=64)  # sweeps/bypass.yaml
BATCH, LR = 32, 1e-2


def falstudy_round(steps: int, data: str, out: Path, log_every: int, compile_: bool) -> float:
    import falstudy

    result = falstudy.train(
        {"variant": "baseline", "model": SHAPE, "data": {"path": data}, "name": "bench", "results_dir": str(out),
         "train": {"steps": steps, "batch_size": BATCH, "lr": LR, "warmup_steps": 10, "eval_interval": 10 * steps,
                   "eval_batches": 1, "log_interval": log_every, "checkpoint_interval": 0,
                   "threads": torch.get_num_threads(), "compile": compile_}},
        quiet=True, ingest=False, resume=False)
    rates = [m["value"] for m in result.metrics if m["name"] == "tokens_per_s"]
    shutil.rmtree(result.run_dir, ignore_errors=True)
    return statistics.median(rates[1:])  # the first interval holds the warm-up


def plain_round(model, optimizer, train, steps: int, gen: torch.Generator) -> float:
    T = SHAPE["block_size"]
    # warm-up steps, as the falstudy side drops its first interval
    for i in range(steps + 5):
        if i == 5:
            t0 = time.perf_counter()
        x, y = train.get_batch(BATCH, T, gen, torch.device("cpu"))
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps * BATCH * T / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/shakespeare-byte")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=60, help="timed steps per side per round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="falstudy side with train.compile (compile time excluded)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from falstudy.data import TokenShards

    train = TokenShards(args.data, "train")
    torch.manual_seed(0)
    plain = PlainGPT(train.vocab_size, SHAPE["block_size"], SHAPE["n_layer"], SHAPE["n_embd"], SHAPE["n_head"])
    decay = [p for p in plain.parameters() if p.dim() >= 2]
    rest = [p for p in plain.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                  lr=LR, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(0)
    log_every = max(5, args.steps // 6)
    out = Path(tempfile.mkdtemp(prefix="falstudy-bench-"))
    try:
        rows = []
        for r in range(args.rounds):
            sides = ["falstudy", "plain"] if r % 2 == 0 else ["plain", "falstudy"]
            rate = {}
            for side in sides:
                if side == "falstudy":
                    rate[side] = falstudy_round(args.steps + log_every, args.data, out, log_every, args.compile)
                else:
                    rate[side] = plain_round(plain, optimizer, train, args.steps, gen)
            rows.append(rate)
            print(f"round {r}: falstudy {rate['falstudy']:.0f} tok/s, plain {rate['plain']:.0f} tok/s, "
                  f"ratio {rate['falstudy'] / rate['plain']:.3f}", flush=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    ratios = [r["falstudy"] / r["plain"] for r in rows]
    load = " ".join(f"{x:.2f}" for x in __import__("os").getloadavg())
    print(f"\nfalstudy trainer / plain nanoGPT-style loop, {SHAPE['n_layer']}L d={SHAPE['n_embd']} T={SHAPE['block_size']} "
          f"batch {BATCH}, {args.threads} thread(s){', train.compile' if args.compile else ''}: "
          f"median {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f} over {len(ratios)} rounds); "
          f"load average {load}")


if __name__ == "__main__":
    main()
