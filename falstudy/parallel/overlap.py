"""The cost model's overlap term: communication hidden behind compute (the Ladder residual).

    step = compute + exposed communication
    exposed = sum over all-reduces of max(0, t_allreduce - overlappable compute)

A synchronous all-reduce (Megatron's g and f) has no overlappable compute: it is exposed whole,
and this model then equals ``costmodel.breakdown``. An asynchronous one (``comm.g_start``,
waited one module later, as in the Ladder residual) runs behind the forward compute of the next
module: a module is what runs between two collective points (an attention or an MLP; both, for
a parallel-form block whose one all-reduce carries their sum). The last module's all-reduce has
nothing after it in the stack (the final norm needs it) and stays exposed. Backward all-reduces
(f's) are synchronous in falstudy and are exposed whole.

Compute per module comes from FLOPs: its share of ``costmodel.step_flops`` times the step's
compute time (measured, ``compute_s``, or from the preset's device). The model assumes the
link works on its own while the cores compute; on CPUs that run gloo's threads on the same
cores as the compute (this machine), hidden communication still costs core time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from falstudy.parallel import costmodel
from falstudy.parallel.costmodel import Shape, get_preset, step_flops

# presets whose forward g's are launched asynchronously and waited one module later
LADDER_WIRINGS = ("ladder", "fal_ladder")


@dataclass(frozen=True)
class Module:
    """Forward work between two collective points, and the all-reduce that follows it."""

    name: str  # blocks.<i>.attn | blocks.<i>.mlp | blocks.<i> (a parallel-form block: one reduce)
    flops: float  # forward FLOPs on one rank
    reduce: str  # "sync" | "async"


def module_flops(shape: Shape, batch: int, tp: int) -> tuple[float, float]:
    """Forward FLOPs on one rank of one attention and one MLP (the terms of ``step_flops``)."""
    from falstudy.config import mlp_hidden

    d, T = shape.n_embd, shape.seq_len
    mats = 3 if shape.mlp == "swiglu" else 2
    tokens = batch * T
    attn = tokens * (2 * 4 * d * d + 2 * T * d) / tp  # causal attention ~ half of 4Td
    mlp = tokens * 2 * mats * d * mlp_hidden(d, shape.mlp_ratio, shape.mlp) / tp
    return attn, mlp


def forward_modules(cfg: Any, shape: Shape, batch: int, tp: int) -> list[Module]:
    """The forward modules of ``cfg``'s blocks in execution order, each with the g that follows
    it, from the blocks' plans (falstudy.models.wiring): async where the plan says ladder."""
    from falstudy.models.wiring import block_plans

    attn, mlp = module_flops(shape, batch, tp)
    flops = {"attn": attn, "mlp": mlp, "attn+mlp": attn + mlp}
    out: list[Module] = []
    for plan in block_plans(cfg):
        for g in plan.g:  # in execution order: attn before mlp (serial), one for both (parallel form)
            name = f"blocks.{plan.layer}" if g == "attn+mlp" else f"blocks.{plan.layer}.{g}"
            out.append(Module(name, flops[g], "async" if plan.ladder else "sync"))
    return out


def exposed_forward(modules: list[Module], t_allreduce: float, seconds_per_flop: float) -> tuple[float, float]:
    """(in flight, exposed) seconds of the forward all-reduces after ``modules``: an async one
    is hidden behind the next module's compute, up to its length."""
    in_flight = exposed = 0.0
    for i, mod in enumerate(modules):
        in_flight += t_allreduce
        behind = modules[i + 1].flops * seconds_per_flop if mod.reduce == "async" and i + 1 < len(modules) else 0.0
        exposed += max(0.0, t_allreduce - behind)
    return in_flight, exposed


@dataclass
class OverlapPrediction:
    total_s: float  # compute + exposed communication
    compute_s: float
    comm_s: float  # all-reduce seconds in flight
    exposed_s: float  # of which the rank waits for
    n_allreduce: int
    bytes_per_allreduce: int
    extra: dict = field(default_factory=dict)

    @property
    def hidden_s(self) -> float:
        return self.comm_s - self.exposed_s

    @property
    def comm_share(self) -> float:
        """Exposed communication's share of the step (as costmodel.Prediction's, without overlap)."""
        return self.exposed_s / self.total_s if self.total_s else 0.0


def breakdown(shape: Shape, batch: int, tp: int, preset: Any, wiring: str = "baseline",
              compute_s: float | None = None, vocab_parallel: bool = False) -> OverlapPrediction:
    """Predicted step time with overlap; equals ``costmodel.breakdown`` for synchronous wirings."""
    base = costmodel.breakdown(shape, batch, tp, preset, wiring, compute_s, vocab_parallel)
    if tp <= 1:
        return OverlapPrediction(base.total_s, base.compute_s, 0.0, 0.0, 0, base.bytes_per_allreduce, base.extra)
    pre = get_preset(preset)
    cfg = shape.config(wiring)
    t_ar = pre.link.allreduce_s(base.bytes_per_allreduce, tp)
    seconds_per_flop = base.compute_s / step_flops(shape, batch, tp, vocab_parallel)
    modules = forward_modules(cfg, shape, batch, tp)
    fwd_in_flight, fwd_exposed = exposed_forward(modules, t_ar, seconds_per_flop)
    exposed = base.comm_s - fwd_in_flight + fwd_exposed  # the rest (backward, head) stays exposed
    extra = {**base.extra, "forward_in_flight_s": fwd_in_flight, "forward_exposed_s": fwd_exposed,
             "modules": len(modules)}
    return OverlapPrediction(base.compute_s + exposed, base.compute_s, base.comm_s, exposed,
                             base.n_allreduce, base.bytes_per_allreduce, extra)


def predict(shape: Shape, batch: int, tp: int, preset: Any, wiring: str = "baseline",
            compute_s: float | None = None, vocab_parallel: bool = False) -> float:
    return breakdown(shape, batch, tp, preset, wiring, compute_s, vocab_parallel).total_s


def gpt2_projection(batch: int = 8, tps: tuple[int, ...] = (2, 4, 8), presets: tuple[str, ...] = ("pcie4", "nvlink"),
                    wirings: tuple[str, ...] = ("baseline", "parallel", "fal") + LADDER_WIRINGS) -> list[dict[str, Any]]:
    """Predicted step time, in-flight and exposed communication of each wiring for the GPT-2
    shapes by TP degree and interconnect (vocab-parallel head; one row per wiring)."""
    rows = []
    for name, shape in costmodel.GPT2_SHAPES.items():
        for preset in presets:
            for tp in tps:
                preds = {w: breakdown(shape, batch, tp, preset, w, vocab_parallel=True) for w in wirings}
                base = preds["baseline"].total_s
                for w, p in preds.items():
                    rows.append({
                        "shape": name, "preset": preset, "tp": tp, "wiring": w, "batch": batch,
                        "seq_len": shape.seq_len, "heads_divisible": shape.n_head % tp == 0,
                        "step_s": p.total_s, "compute_s": p.compute_s, "comm_in_flight_s": p.comm_s,
                        "comm_exposed_s": p.exposed_s, "comm_hidden_s": p.hidden_s,
                        "over_baseline": p.total_s / base, "n_allreduce": p.n_allreduce,
                    })
    return rows


def available(wirings: tuple[str, ...] = LADDER_WIRINGS) -> tuple[str, ...]:
    """Those of ``wirings`` this falstudy's ModelConfig knows (wiring names or presets)."""
    from falstudy.errors import FalstudyError

    out = []
    for w in wirings:
        try:
            costmodel.GPT2_SHAPES["gpt2-small"].config(w)
        except FalstudyError:
            continue
        out.append(w)
    return tuple(out)


def wide_projection(batch: int = 8, tps: tuple[int, ...] = (2, 4, 8),
                    presets: tuple[str, ...] = ("pcie4", "nvlink")) -> list[dict[str, Any]]:
    """``costmodel.gpt2_projection()``'s rows (fal and parallel against baseline, no overlap in
    them), each with ``<w>_over_baseline``, ``<w>_s`` and ``<w>_hidden_share`` (hidden / in-flight
    communication) added for the ladder wirings: the rows of tp_projection.parquet."""
    rows = costmodel.gpt2_projection(batch, tps, presets)
    ladders = available()
    for row in rows:
        shape = costmodel.GPT2_SHAPES[row["shape"]]
        for w in ladders:
            p = breakdown(shape, batch, row["tp"], row["preset"], w, vocab_parallel=True)
            row[f"{w}_s"] = p.total_s
            row[f"{w}_over_baseline"] = p.total_s / row["baseline_s"]
            row[f"{w}_hidden_share"] = p.hidden_s / p.comm_s if p.comm_s else 0.0
    return rows


__all__ = ["available", "wide_projection", "LADDER_WIRINGS", "Module", "OverlapPrediction", "breakdown", "exposed_forward", "forward_modules",
           "gpt2_projection", "module_flops", "predict"]
