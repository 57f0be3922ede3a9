"""Tensor-parallel step time of each wiring against baseline, measured side by side at TP=2,
with the cost model's prediction next to each measurement, and its projection to GPT-2 shapes.

    falstudy bench tp [--min-rounds 5 --max-rounds 30 --target 0.03 --steps 3] [--out results/bench] [--shape comm-heavy]
    python bench/tp_step.py [...]          # the same (options: falstudy/parallel/cli.py)

Re-executes itself under torchrun with 2 ranks (refused on fewer than 2 cores). Two shapes:
``comm-heavy`` (small width and batch: all-reduce latency dominates) and ``compute-heavy``. For
each wiring it times full training steps (forward, backward, AdamW) with real collectives, and
the same steps with the collectives switched off (each rank's compute alone). Models take turns
(round-robin) so machine noise hits all alike; per wiring the figure is the median over rounds
of the slower rank. Each ratio to baseline is taken per round and reported with its 95 %
bootstrap interval (``falstudy.benchstats``); rounds go on until every ratio's and cost-model
error's interval is within ``--target`` of its median, or ``--max-rounds`` (then it says so). The
machine's load average at start and end is printed and stored. The communication share comes from the CommMeter (time inside gloo calls).
The meter also gives each step's all-reduce seconds in flight and exposed (the rank waited):
their difference is the communication hidden behind compute (the ladder wirings' async g).

Prediction = measured compute-only step + exposed all-reduce time, each all-reduce costing
alpha + beta x bytes (``falstudy.parallel.overlap``: an async one is hidden behind the next
module's compute), with alpha and beta fitted by a microbenchmark (``costmodel.fit_allreduce``)
on the same ranks at the start of every round (medians over rounds).

Writes results/bench/tp_step.parquet (measurements) and results/bench/tp_projection.parquet
(predicted fal/baseline and parallel/baseline for GPT-2 small/medium/large at TP 2/4/8 on the
PCIe 4 and NVLink presets) for notebooks.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist

from falstudy import benchstats
from falstudy.errors import FalstudyError
from falstudy.benchstats import Rounds
from falstudy.config import ModelConfig
from falstudy.models import GPT, VARIANTS
from falstudy.parallel import costmodel, overlap
from falstudy.parallel.comm import CommMeter
from falstudy.parallel.launch import init_distributed, maybe_relaunch, shutdown
from falstudy.parallel.tp import parallelize

TP = 2
WIRINGS = ("baseline", "parallel", "fal") + overlap.available()
SHAPES = {  # name: (model fields, batch)
    "comm-heavy": (dict(n_layer=4, n_embd=64, n_head=4, block_size=32, vocab_size=256), 2),
    "compute-heavy": (dict(n_layer=4, n_embd=384, n_head=6, block_size=128, vocab_size=256), 4),
}


def write_rows(path: Path, rows: list[dict]) -> None:
    from falstudy.store import write_parquet

    write_parquet(path, rows)


class Case:
    """One model at one shape and wiring, sharded over the TP group, with its own meter."""

    def __init__(self, shape: str, wiring: str, group) -> None:
        fields, self.batch = SHAPES[shape]
        self.shape, self.wiring = shape, wiring
        torch.manual_seed(0)
        self.cfg = ModelConfig(**fields, **VARIANTS[wiring])  # a preset: ladder is a wiring plus residual="ladder"
        self.meter = CommMeter()
        self.model = parallelize(GPT(self.cfg), group, self.meter)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=0.0)  # timing only: weights stay put
        g = torch.Generator().manual_seed(1)
        T, V = self.cfg.block_size, self.cfg.vocab_size
        self.x = torch.randint(0, V, (self.batch, T), generator=g)
        self.y = torch.randint(0, V, (self.batch, T), generator=g)
        self.times: dict[str, list[float]] = {"tp": [], "compute": []}
        self.comm_share: list[float] = []
        self.in_flight: list[float] = []  # all-reduce seconds per step, in flight and exposed
        self.exposed: list[float] = []

    def step(self) -> None:
        _, loss = self.model(self.x, self.y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def run(self, mode: str, steps: int, group) -> None:
        saved = [b.comm for b in self.model.blocks]
        if mode == "compute":  # the same step with f and g as identities: compute alone
            from falstudy.models.gpt import LOCAL

            for b in self.model.blocks:
                b.comm = LOCAL
        try:
            self.step()  # warm
            self.meter.reset()
            dist.barrier(group=group)
            t0 = time.perf_counter()
            for _ in range(steps):
                with self.meter.step():
                    self.step()
            self.times[mode].append((time.perf_counter() - t0) / steps)
            if mode == "tp":
                t = self.meter.totals()
                self.comm_share.append(sum(v["seconds"] for v in t.values()) / self.meter.step_seconds)
                self.in_flight.append(sum(v["in_flight_seconds"] for v in t.values()) / steps)
                self.exposed.append(sum(v["exposed_seconds"] for v in t.values()) / steps)
                self.counts = {k: v["count"] // steps for k, v in t.items()}
        finally:
            for b, c in zip(self.model.blocks, saved):
                b.comm = c


def _series(cases: list, slow: dict, fits: list[tuple[float, float]]) -> dict[tuple[str, str, str], list[float]]:
    """Per-round values of what the benchmark reports: each wiring's step time over its shape's
    baseline of the same round, and the cost model's predicted / measured (with that round's fit)
    per case, a ratio too, so one relative target fits both."""
    out: dict[tuple[str, str, str], list[float]] = {}
    for case in cases:
        times = slow[(case.shape, case.wiring)]
        if case.wiring != "baseline":
            out[("ratio", case.shape, case.wiring)] = benchstats.ratios(times["tp"], slow[(case.shape, "baseline")]["tp"])
        shape = costmodel.Shape.of(case.cfg)
        out[("error", case.shape, case.wiring)] = [
            overlap.breakdown(shape, case.batch, TP, costmodel.loopback_preset(a, b, TP), case.wiring,
                              compute_s=compute).total_s / step
            for (a, b), step, compute in zip(fits, times["tp"], times["compute"])]  # predicted / measured
    return out


def mean(value: float, group) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, group=group)
    return float(t.item()) / dist.get_world_size(group)


def run(rounds: int | None = None, min_rounds: int = 5, max_rounds: int = 30, target: float = 0.03, steps: int = 3,
        out: str | Path = "results/bench", shapes: list[str] | None = None) -> None:
    """Time every wiring at each shape (``SHAPES`` keys; default all) until the intervals are within
    ``target`` (or ``max_rounds``; ``rounds`` fixes the count), print the table, write Parquet."""
    shapes = list(SHAPES) if not shapes else list(shapes)
    lo_r, hi_r = (rounds, rounds) if rounds else (min_rounds, max_rounds)
    try:
        schedule = Rounds(lo_r, hi_r, target)
    except ValueError as err:
        raise FalstudyError(f"falstudy bench tp: {err}") from None

    maybe_relaunch(tp=TP)
    ctx = init_distributed(tp=TP, backend="gloo")  # the benchmark's tensors live on the CPU
    group = ctx.tp_group
    cases = [Case(s, w, group) for s in shapes for w in WIRINGS]
    load_start = benchstats.load()
    t_start = time.perf_counter()
    fits: list[tuple[float, float]] = []
    slow: dict[tuple[str, str], dict[str, list[float]]] = {(c.shape, c.wiring): {"tp": [], "compute": []} for c in cases}
    while True:  # the all-reduce fit is repeated each round: it drifts with the machine
        fits.append(costmodel.fit_allreduce(group, reps=10))
        for case in cases:
            for mode in ("tp", "compute"):
                case.run(mode, steps, group)
        # this round's figure per case and mode: the slower rank's (one collective for all)
        t = torch.tensor([c.times[m][-1] for c in cases for m in ("tp", "compute")], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
        values = iter(t.tolist())
        for c in cases:
            for m in ("tp", "compute"):
                slow[(c.shape, c.wiring)][m].append(next(values))
        series = _series(cases, slow, fits)
        stop = torch.tensor([1.0 if schedule.done(list(series.values())) else 0.0])
        dist.broadcast(stop, src=0, group=group)  # rank 0 decides, so every rank stops together
        if stop.item():
            break
    load_end = benchstats.load()
    alpha = statistics.median(a for a, _ in fits)
    beta = statistics.median(b for _, b in fits)
    loop = costmodel.loopback_preset(alpha, beta, TP)
    n_rounds = len(fits)
    spreads = {key: benchstats.Spread.of(values) for key, values in _series(cases, slow, fits).items()}

    rows = []
    for case in cases:
        times = slow[(case.shape, case.wiring)]
        step, compute = statistics.median(times["tp"]), statistics.median(times["compute"])
        share = mean(statistics.median(case.comm_share), group)
        in_flight, exposed = mean(statistics.median(case.in_flight), group), mean(statistics.median(case.exposed), group)
        pred = overlap.breakdown(costmodel.Shape.of(case.cfg), case.batch, TP, loop, case.wiring, compute_s=compute)
        err = spreads[("error", case.shape, case.wiring)]
        row = {
            "shape": case.shape, "wiring": case.wiring, "tp": TP, "batch": case.batch,
            "n_layer": case.cfg.n_layer, "n_embd": case.cfg.n_embd, "seq_len": case.cfg.block_size,
            "step_s": step, "compute_only_s": compute, "comm_share": share,
            "allreduce_fwd": case.counts.get("all_reduce_fwd", 0), "allreduce_bwd": case.counts.get("all_reduce_bwd", 0),
            "bytes_per_allreduce": pred.bytes_per_allreduce, "predicted_s": pred.total_s,
            "predicted_comm_s": pred.comm_s, "alpha_s": alpha, "beta_s_per_byte": beta,
            # per step, mean over ranks: all-reduce seconds in flight, and exposed (the rest was hidden)
            "comm_in_flight_s": in_flight, "comm_exposed_s": exposed,
            "predicted_exposed_s": pred.exposed_s, "predicted_hidden_s": pred.hidden_s,
            "rounds": n_rounds, "steps_per_round": steps, "target": target,
            # the error is predicted / measured - 1; its interval is the ratio's, shifted
            "prediction_error_median": err.median - 1, "prediction_error_lo": err.lo - 1, "prediction_error_hi": err.hi - 1,
            "load_1m_start": load_start["load_1m"], "load_1m_end": load_end["load_1m"], "cores": int(load_end["cores"]),
        }
        ratio = spreads.get(("ratio", case.shape, case.wiring))
        if ratio is not None:
            row.update({"ratio_median": ratio.median, "ratio_lo": ratio.lo, "ratio_hi": ratio.hi,
                        "ratio_q1": ratio.q1, "ratio_q3": ratio.q3, "ratio_narrow": ratio.narrow(target)})
        rows.append(row)
    for r in rows:
        base = next(b for b in rows if b["shape"] == r["shape"] and b["wiring"] == "baseline")
        r["ratio_measured"] = r["step_s"] / base["step_s"]
        r["ratio_predicted"] = r["predicted_s"] / base["predicted_s"]
        r["prediction_error"] = r["predicted_s"] / r["step_s"] - 1

    projection = overlap.wide_projection()

    if ctx.is_main:
        out = Path(out)
        write_rows(out / "tp_step.parquet", rows)
        write_rows(out / "tp_projection.parquet", projection)
        print(f"\nTP={TP} on {TP} gloo ranks (1 thread each); {n_rounds} rounds x {steps} steps, "
              f"{time.perf_counter() - t_start:.0f}s; all-reduce fit: alpha={alpha * 1e6:.1f} us, "
              f"beta={beta * 1e9:.3f} ns/B ({1 / beta / 1e9:.2f} GB/s)")
        print(f"machine load (1 min) {load_start['load_1m']:.2f} at start, {load_end['load_1m']:.2f} at end, "
              f"on {int(load_end['cores'])} cores" + ("  (busy: other work competed)" if max(
                  load_start["load_1m"], load_end["load_1m"]) > load_end["cores"] else ""))
        print(f"{'shape':14s} {'wiring':10s} {'AR f+b':>7s} {'step ms':>9s} {'comm %':>7s} {'hidden ms':>10s} "
              f"{'comp ms':>9s} {'pred ms':>9s} {'err [95% CI]':>20s} {'/base meas [95% CI]':>24s} {'/base pred':>10s}")
        for r in rows:
            meas = (f"{r['ratio_median']:.3f} [{r['ratio_lo']:.3f}, {r['ratio_hi']:.3f}]" if "ratio_median" in r
                    else "1 (reference)")
            err = (f"{100 * r['prediction_error_median']:+.0f}% [{100 * r['prediction_error_lo']:+.0f}, "
                   f"{100 * r['prediction_error_hi']:+.0f}]")
            hidden = f"{(r['comm_in_flight_s'] - r['comm_exposed_s']) * 1e3:.2f}/{r['predicted_hidden_s'] * 1e3:.2f}"
            print(f"{r['shape']:14s} {r['wiring']:10s} {r['allreduce_fwd']:>3d}+{r['allreduce_bwd']:<3d} "
                  f"{r['step_s'] * 1e3:9.2f} {100 * r['comm_share']:6.1f}% {hidden:>10s} {r['compute_only_s'] * 1e3:9.2f} "
                  f"{r['predicted_s'] * 1e3:9.2f} {err:>20s} {meas:>24s} {r['ratio_predicted']:10.3f}")
        print("comm % = time inside all-reduce calls (exposed) / step; hidden ms = all-reduce time in flight "
              "but not waited for, measured/predicted per step")
        print(schedule.verdict(list(spreads.values())))
        print("\nprojection (cost model; A100-class compute, bf16, vocab-parallel head, 8 x 1024 tokens per step):")
        ladders = overlap.available()
        print(f"{'shape':12s} {'preset':7s} {'tp':>3s} {'base comm %':>11s} {'fal/base':>9s} {'par/base':>9s}"
              + "".join(f" {w + '/base':>15s}" for w in ladders))
        for p in projection:
            flag = "" if p["heads_divisible"] else "  (n_head not divisible by tp)"
            print(f"{p['shape']:12s} {p['preset']:7s} {p['tp']:3d} {100 * p['baseline_comm_share']:10.1f}% "
                  f"{p['fal_over_baseline']:9.3f} {p['parallel_over_baseline']:9.3f}"
                  + "".join(f" {p[w + '_over_baseline']:15.3f}" for w in ladders) + flag)
        print(f"\nwrote {out / 'tp_step.parquet'} and {out / 'tp_projection.parquet'}")
    shutdown()


if __name__ == "__main__":  # torchrun's ranks re-enter through the CLI (bench/tp_step.py, falstudy bench tp)
    raise SystemExit("run `falstudy bench tp` or `python bench/tp_step.py`")
