"""Training throughput and memory of the wirings, measured side by side in one process.

A case is one model (shape x variant x mode) with its own AdamW; mode is ``eager``, ``streams``
(MHA and MLP of parallel-form blocks on two CUDA streams, ``falstudy.parallel.concurrent``) or
``compile`` (``torch.compile``). Cases of a group take turns, a few steps each per round, so
the machine's noise hits them alike; each ratio to baseline is taken per round and summarised
by its median and 95 % bootstrap interval (``falstudy.benchstats``). Every case of a shape
starts from the same weights (same seed) and the same batch, so the first step's loss must
agree across modes (a cheap numerics check of streams and compile at full size).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from falstudy import benchstats

VARIANTS = ("baseline", "parallel", "fal", "fal_plus")
MODES = ("eager", "streams", "compile")
STREAM_VARIANTS = ("parallel", "fal")  # parallel-form blocks (falstudy.parallel.concurrent.PARALLEL_FORM)


@dataclass(frozen=True)
class Shape:
    name: str
    n_layer: int
    n_embd: int
    n_head: int
    seq_len: int
    batch: int
    vocab_size: int = 256  # byte-level, as the default corpus

    def model_fields(self) -> dict[str, Any]:
        return dict(n_layer=self.n_layer, n_embd=self.n_embd, n_head=self.n_head, block_size=self.seq_len,
                    vocab_size=self.vocab_size)

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len


# GPT-2 small's transformer (12 x 768, 12 heads, T=1024), and GPT-2 medium's at twice the batch:
# ~6 GB of weights and AdamW state per case, six resident cases plus one step's activations
# stay well inside an H200's 139 GiB
GPU_SHAPES = (Shape("gpt2-small", 12, 768, 12, 1024, 16), Shape("gpt2-medium", 24, 1024, 16, 1024, 32))
TINY_SHAPES = (Shape("tiny", 2, 32, 2, 32, 4), Shape("tiny-wide", 2, 64, 4, 64, 4))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast_for(device: torch.device, bf16: bool):
    import contextlib

    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def build_model(variant: str, fields: dict[str, Any], device: torch.device, seed: int = 0) -> torch.nn.Module:
    """The falstudy GPT of a variant preset, initialised on the CPU from ``seed`` (the same
    weights on every device), then moved."""
    from falstudy.config import RunConfig
    from falstudy.models import GPT

    torch.manual_seed(seed)
    return GPT(RunConfig(variant=variant, model=fields).model).to(device)


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class Case:
    shape: Shape
    variant: str
    mode: str
    device: torch.device
    bf16: bool
    model: torch.nn.Module = field(init=False, repr=False)
    rates: list[float] = field(default_factory=list)  # tokens/s per round
    warmup_s: float = math.nan  # the first step: compile included for mode=compile
    first_loss: float = math.nan
    step_peak_gb: float = math.nan  # peak allocated during its steps minus allocated before them
    resident_gb: float = math.nan  # weights + AdamW state

    def __post_init__(self) -> None:
        from falstudy.parallel.concurrent import concurrent_branches

        self.model = build_model(self.variant, self.shape.model_fields(), self.device)
        self.n_params = self.model.num_params()
        if self.mode == "streams":
            concurrent_branches(self.model)
        self.forward = torch.compile(self.model) if self.mode == "compile" else self.model
        # lr 0: timing only, the weights stay put (AdamW still does all its work)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=0.0, fused=self.device.type in ("cuda", "cpu"))

    @property
    def name(self) -> str:
        return f"{self.shape.name}/{self.variant}/{self.mode}"

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast_for(self.device, self.bf16):
            _, loss = self.forward(x, y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss

    def warm(self, x: torch.Tensor, y: torch.Tensor, steps: int = 2) -> None:
        sync(self.device)
        t0 = time.perf_counter()
        self.first_loss = float(self.step(x, y).detach())
        self.warmup_s = time.perf_counter() - t0
        for _ in range(steps - 1):
            self.step(x, y)
        sync(self.device)
        state = [t for s in self.opt.state.values() for t in s.values() if torch.is_tensor(t)]
        self.resident_gb = tensor_bytes(list(self.model.parameters()) + state) / 1e9

    def timed(self, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
        cuda = self.device.type == "cuda"
        if cuda:
            sync(self.device)
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step(x, y)
        sync(self.device)
        self.rates.append(steps * self.shape.tokens / (time.perf_counter() - t0))
        if cuda:
            peak = (torch.cuda.max_memory_allocated(self.device) - before) / 1e9
            self.step_peak_gb = peak if math.isnan(self.step_peak_gb) else max(self.step_peak_gb, peak)

    def release(self) -> None:
        del self.model, self.forward, self.opt


def batch_for(shape: Shape, device: torch.device, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, shape.vocab_size, (shape.batch, shape.seq_len), generator=g)
    y = torch.randint(0, shape.vocab_size, (shape.batch, shape.seq_len), generator=g)
    return x.to(device), y.to(device)


def plan(shape: Shape, modes: tuple[str, ...], variants: tuple[str, ...] = VARIANTS) -> list[tuple[str, str]]:
    """(variant, mode) of a group: every variant per mode; streams only where blocks are parallel-form."""
    return [(v, m) for m in modes for v in variants if m != "streams" or v in STREAM_VARIANTS]


def measure(cases: list[Case], rounds: int, steps: int, batches: dict[str, tuple],
            keep_going: Callable[[], bool] = lambda: True) -> int:
    """Round-robin timing (order reversed every other round); returns the rounds done. Stops
    early, after at least two rounds, once ``keep_going()`` says the time budget is spent."""
    done = 0
    for r in range(rounds):
        if done >= 2 and not keep_going():
            break
        for case in cases if r % 2 == 0 else list(reversed(cases)):
            case.timed(*batches[case.shape.name], steps)
        done += 1
    return done


def rows(cases: list[Case], device_name: str) -> list[dict]:
    """One row per case: medians, ratios to the same shape's baseline (eager baseline for the
    streams mode, compiled baseline for compile) and to the same variant's eager case."""
    by = {(c.shape.name, c.variant, c.mode): c for c in cases}
    out = []
    for c in cases:
        base = by.get((c.shape.name, "baseline", "compile" if c.mode == "compile" else "eager"))
        eager = by.get((c.shape.name, c.variant, "eager"))
        med = statistics.median(c.rates) if c.rates else math.nan
        row = {
            "device": device_name, "shape": c.shape.name, "variant": c.variant, "mode": c.mode,
            "n_layer": c.shape.n_layer, "n_embd": c.shape.n_embd, "n_head": c.shape.n_head,
            "seq_len": c.shape.seq_len, "batch": c.shape.batch, "n_params": c.n_params, "bf16": c.bf16,
            "rounds": len(c.rates), "tokens_per_s": med, "step_ms": 1000 * c.shape.tokens / med if c.rates else math.nan,
            "warmup_s": c.warmup_s,
            # the first step less a steady one: the cold compile (and for eager, allocator and kernel warm-up)
            "compile_s": c.warmup_s - (c.shape.tokens / med if c.rates else 0.0),
            "first_loss": c.first_loss, "resident_gb": c.resident_gb, "step_peak_gb": c.step_peak_gb,
        }
        for label, ref in (("baseline", base), ("eager", eager)):
            if ref is None or ref is c or not c.rates or len(ref.rates) != len(c.rates):
                continue
            sp = benchstats.Spread.of(benchstats.ratios(c.rates, ref.rates))
            row |= {f"vs_{label}": sp.median, f"vs_{label}_lo": sp.lo, f"vs_{label}_hi": sp.hi}
        out.append(row)
    return out
