"""A cost model of a tensor-parallel training step: compute + (number of all-reduces x α–β time).

    step = compute(shape, batch, tp) + n_allreduce(wiring) x t_allreduce(bytes = B*T*d*elem, tp)
    t_allreduce(n, p) = 2(p-1) * alpha_step + 2(p-1)/p * n / bandwidth      (ring all-reduce)

Megatron's TP all-reduces sit on the critical path (nothing overlaps them), so the two terms add.
Compute is either measured (``compute_s``: the step with collectives switched off, see
``measure_compute``) or estimated from FLOPs and a device's effective rate. The all-reduce
parameters are fitted here by ``fit_allreduce`` (this machine's loopback) or taken from the
presets below, which are nominal figures with stated assumptions, not measurements.

Counts per training step (``allreduce_counts``) follow the model's f/g placement exactly and are
checked against the meter and torch.profiler in tests/test_parallel.py:
baseline, fal_plus and ladder blocks 2 fwd + 2 bwd; parallel, fal and fal_ladder blocks 1 + 1; fal
adds 1 bwd for the whole stack (the one f on N_f(a_1)); some fal forms pay one more bwd per block
(see docs/parallel.md). The counts come from each block's plan (falstudy.models.wiring).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from falstudy.config import mlp_hidden
from falstudy.errors import FalstudyError


# -- interconnects and devices (data) -------------------------------------------------------
@dataclass(frozen=True)
class Link:
    name: str
    alpha_s: float  # latency per ring step (seconds)
    bandwidth: float  # achievable bytes/s per direction per GPU
    source: str

    def allreduce_s(self, nbytes: float, p: int) -> float:
        if p <= 1:
            return 0.0
        return 2 * (p - 1) * self.alpha_s + 2 * (p - 1) / p * nbytes / self.bandwidth


@dataclass(frozen=True)
class Device:
    name: str
    flops_per_s: float  # effective (peak x assumed utilisation)
    source: str


A100 = Device(
    "A100 (bf16)",
    312e12 * 0.40,
    "NVIDIA A100 datasheet: 312 TFLOP/s dense bf16; 40% model-FLOP utilisation assumed",
)

PCIE4 = Link(
    "pcie4",
    4e-6,
    31.5e9 * 0.70,
    "PCIe 4.0 x16: 16 GT/s/lane, 128b/130b = 31.5 GB/s per direction (PCI-SIG); 70% achieved by "
    "NCCL assumed; 4 us per ring step assumed",
)
NVLINK = Link(
    "nvlink",
    2e-6,
    300e9 * 0.75,
    "NVLink 3 (A100 SXM): 600 GB/s bidirectional = 300 GB/s per direction (A100 datasheet); 75% "
    "achieved assumed; 2 us per ring step assumed",
)
INFINIBAND = Link(
    "infiniband",
    5e-6,
    25e9 * 0.80,
    "HDR InfiniBand 200 Gb/s = 25 GB/s per direction per GPU-NIC (ConnectX-6); 80% achieved "
    "assumed; 5 us per ring step assumed (TP across hosts: for comparison only)",
)


@dataclass(frozen=True)
class Preset:
    name: str
    link: Link
    device: Device | None  # None: compute must be measured (compute_s)
    bytes_per_elem: int = 2


PRESETS: dict[str, Preset] = {
    "pcie4": Preset("pcie4", PCIE4, A100, 2),
    "nvlink": Preset("nvlink", NVLINK, A100, 2),
    "infiniband": Preset("infiniband", INFINIBAND, A100, 2),
}


def loopback_preset(alpha: float, beta: float, p: int, bytes_per_elem: int = 4) -> Preset:
    """This machine, from ``fit_allreduce``'s t = alpha + beta * bytes at ``p`` ranks."""
    link = Link(
        "loopback",
        alpha / (2 * (p - 1)),
        2 * (p - 1) / (p * beta),
        f"gloo on this host, fitted by fit_allreduce at p={p}: alpha={alpha * 1e6:.1f} us, "
        f"beta={beta * 1e9:.3f} ns/byte",
    )
    return Preset("loopback", link, None, bytes_per_elem)


def get_preset(preset: str | Preset) -> Preset:
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise FalstudyError(f"unknown interconnect preset {preset!r}; use one of {', '.join(PRESETS)} "
                            "(or loopback_preset(...) from fit_allreduce)")
    return PRESETS[preset]


# -- shapes ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    n_layer: int
    n_embd: int
    n_head: int
    seq_len: int
    vocab_size: int
    mlp_ratio: float = 4.0
    mlp: str = "gelu"

    @classmethod
    def of(cls, cfg: Any, seq_len: int | None = None) -> "Shape":
        return cls(cfg.n_layer, cfg.n_embd, cfg.n_head, seq_len or cfg.block_size, cfg.vocab_size,
                   cfg.mlp_ratio, cfg.mlp)

    def config(self, wiring: str = "baseline") -> Any:
        """A ModelConfig of this shape; ``wiring`` is a wiring or a named variant."""
        from falstudy.config import ModelConfig
        from falstudy.models.variants import VARIANTS

        fields = dict(VARIANTS[wiring]) if wiring in VARIANTS else {"wiring": wiring}
        fields.update(n_layer=self.n_layer, n_embd=self.n_embd, n_head=self.n_head,
                      block_size=self.seq_len, vocab_size=self.vocab_size, mlp_ratio=self.mlp_ratio)
        if "mlp" not in fields:
            fields["mlp"] = self.mlp
        try:
            return ModelConfig(**fields)
        except Exception as err:
            raise FalstudyError(f"shape {self} with wiring {wiring!r}: {err}") from None


GPT2_SHAPES: dict[str, Shape] = {  # Radford et al. 2019, context 1024, GPT-2 BPE vocabulary
    "gpt2-small": Shape(12, 768, 12, 1024, 50257),
    "gpt2-medium": Shape(24, 1024, 16, 1024, 50257),
    "gpt2-large": Shape(36, 1280, 20, 1024, 50257),
}


# -- counting --------------------------------------------------------------------------------
def allreduce_counts(cfg: Any) -> dict[str, Any]:
    """TP all-reduces of one training step (forward + backward) for a ModelConfig.

    Returns {"fwd", "bwd", "blocks": [(fwd, bwd) per block], "stack": bwd all-reduces of the
    one f on the substitute signal}, read from each block's plan (falstudy.models.wiring), which
    is what the model's f/g calls follow."""
    from falstudy.models.wiring import block_plans

    plans = block_plans(cfg)
    blocks = [p.collectives for p in plans]
    stack = sum(p.stack_f for p in plans)
    return {"fwd": sum(b[0] for b in blocks), "bwd": sum(b[1] for b in blocks) + stack,
            "blocks": blocks, "stack": stack}


def step_flops(shape: Shape, batch: int, tp: int, vocab_parallel: bool = False) -> float:
    """FLOPs of one rank's training step (forward + backward = 3 x forward matmul FLOPs)."""
    d, T = shape.n_embd, shape.seq_len
    hidden = mlp_hidden(d, shape.mlp_ratio, shape.mlp)
    mlp_mats = 3 if shape.mlp == "swiglu" else 2
    block = 2 * (4 * d * d + mlp_mats * d * hidden) + 2 * T * d  # per token; causal attention ~ half of 4Td
    head = 2 * d * shape.vocab_size
    tokens = batch * T
    return 3 * tokens * (shape.n_layer * block / tp + head / (tp if vocab_parallel else 1))


@dataclass
class Prediction:
    total_s: float
    compute_s: float
    comm_s: float
    n_allreduce: int
    bytes_per_allreduce: int
    extra: dict = field(default_factory=dict)

    @property
    def comm_share(self) -> float:
        return self.comm_s / self.total_s if self.total_s else 0.0


def breakdown(
    shape: Shape,
    batch: int,
    tp: int,
    preset: str | Preset,
    wiring: str = "baseline",
    compute_s: float | None = None,
    vocab_parallel: bool = False,
) -> Prediction:
    """Predicted step time and its parts. ``batch`` = sequences per TP group per step."""
    pre = get_preset(preset)
    counts = allreduce_counts(shape.config(wiring))
    if compute_s is None:
        if pre.device is None:
            raise FalstudyError(f"preset {pre.name!r} has no device model: pass a measured compute_s")
        compute_s = step_flops(shape, batch, tp, vocab_parallel) / pre.device.flops_per_s
    nbytes = batch * shape.seq_len * shape.n_embd * pre.bytes_per_elem
    n = counts["fwd"] + counts["bwd"]
    comm = n * pre.link.allreduce_s(nbytes, tp)
    if vocab_parallel and tp > 1:  # Megatron: embedding g + head f, and 3 small reductions in the loss
        n += 2
        comm += 2 * pre.link.allreduce_s(nbytes, tp) + 3 * pre.link.allreduce_s(batch * shape.seq_len * 4, tp)
    return Prediction(compute_s + comm, compute_s, comm, n if tp > 1 else 0, nbytes, {"counts": counts})


def predict(
    shape: Shape,
    batch: int,
    tp: int,
    preset: str | Preset,
    wiring: str = "baseline",
    compute_s: float | None = None,
    vocab_parallel: bool = False,
) -> float:
    """Predicted seconds per training step."""
    return breakdown(shape, batch, tp, preset, wiring, compute_s, vocab_parallel).total_s


# -- measuring -------------------------------------------------------------------------------
def fit_allreduce(
    group: Any = None,
    sizes: tuple[int, ...] = tuple(2**k for k in range(12, 23, 2)),
    reps: int = 30,
    gap_s: float = 5e-4,
    device: Any = "cpu",
) -> tuple[float, float]:
    """Fit t = alpha + beta * bytes to timed float32 all-reduces over ``group`` (collective).

    Timed the way a training step calls them: each after ``gap_s`` of compute (a rank that
    waits in a collective may be descheduled; waking it is part of the cost), and averaged, not
    the median, because a step pays every slow call. Means are averaged over ranks and fitted
    by least squares on relative error. Returns (alpha seconds, beta seconds per byte)."""
    import torch
    import torch.distributed as dist

    work = torch.randn(96, 96, device=device)
    means = []
    for nbytes in sizes:
        t = torch.ones(max(nbytes // 4, 1), device=device)
        times = []
        dist.barrier(group=group)
        for i in range(reps + 3):
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < gap_s:
                work @ work
            if t.is_cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            dist.all_reduce(t, group=group)
            if t.is_cuda:
                torch.cuda.synchronize()
            if i >= 3:  # warm-up calls excluded
                times.append(time.perf_counter() - t0)
        means.append(statistics.fmean(times))
    avg = torch.tensor(means, dtype=torch.float64, device=device)
    dist.all_reduce(avg, group=group)
    ts = (avg / dist.get_world_size(group)).cpu().tolist()
    return fit_alpha_beta(list(sizes), ts)


def fit_alpha_beta(sizes: list[float], times: list[float]) -> tuple[float, float]:
    """Weighted least squares of t = a + b*n minimising relative error; a, b >= 0."""
    import numpy as np

    n, t = np.asarray(sizes, dtype=float), np.asarray(times, dtype=float)
    A = np.stack([np.ones_like(n), n], axis=1) / t[:, None]
    (a, b), *_ = np.linalg.lstsq(A, np.ones_like(t), rcond=None)
    return max(float(a), 0.0), max(float(b), 1e-15)


def measure_compute(run_step, model: Any, reps: int = 5, warmup: int = 2) -> float:
    """Median seconds of ``run_step()`` with the model's collectives switched off (each block's
    comm set to the identity): one rank's compute on its shard, without communication. The
    numerics of such steps are wrong; use it on a throwaway copy or restore the weights."""
    from falstudy.models.gpt import LOCAL

    saved = [b.comm for b in model.blocks]
    try:
        for b in model.blocks:
            b.comm = LOCAL
        for _ in range(warmup):
            run_step()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            run_step()
            times.append(time.perf_counter() - t0)
    finally:
        for b, c in zip(model.blocks, saved):
            b.comm = c
    return statistics.median(times)


__all__ = [
    "A100", "GPT2_SHAPES", "INFINIBAND", "NVLINK", "PCIE4", "PRESETS", "Device", "Link", "Prediction",
    "Preset", "Shape", "allreduce_counts", "breakdown", "fit_allreduce", "fit_alpha_beta", "get_preset",
    "loopback_preset", "measure_compute", "predict", "step_flops",
]


def gpt2_projection(batch: int = 8, tps: tuple[int, ...] = (2, 4, 8),
                    presets: tuple[str, ...] = ("pcie4", "nvlink")) -> list[dict[str, Any]]:
    """Predicted step times of baseline, fal and parallel for the GPT-2 shapes by TP degree and
    interconnect (``batch`` x 1024 tokens per step, vocab-parallel head): the rows of
    ``falstudy bench tp``'s tp_projection.parquet, which the report plots."""
    rows = []
    for name, shape in GPT2_SHAPES.items():
        for preset in presets:
            for tp in tps:
                pb, pf, pp = (breakdown(shape, batch, tp, preset, w, vocab_parallel=True)
                              for w in ("baseline", "fal", "parallel"))
                rows.append({
                    "shape": name, "preset": preset, "tp": tp, "batch": batch, "seq_len": shape.seq_len,
                    "heads_divisible": shape.n_head % tp == 0, "baseline_s": pb.total_s, "fal_s": pf.total_s,
                    "parallel_s": pp.total_s, "baseline_comm_share": pb.comm_share,
                    "fal_over_baseline": pf.total_s / pb.total_s, "parallel_over_baseline": pp.total_s / pb.total_s,
                    "vocab_parallel": True, "bytes_per_elem": get_preset(preset).bytes_per_elem,
                })
    return rows
