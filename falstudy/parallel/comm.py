"""Megatron's two tensor-parallel operators, and the meter that counts what they cost.

    f  identity forward, all-reduce backward   on a replicated tensor entering column-parallel linears
    g  all-reduce forward, identity backward   on partial sums leaving row-parallel linears

They are written as autograd functions on purpose: torch's differentiable all-reduce
(``torch.distributed.nn.functional.all_reduce``) also all-reduces in backward, which for g gives
gradients world_size times too large when the loss is replicated.

``MegatronComm(group)`` carries f and g over one process group; ``parallelize`` assigns one per
block (``block.comm``), tagged with the block's name, so the meter can say which block paid for
which collective. ``CommMeter`` counts collectives by kind and direction, their payload bytes and
the wall time spent inside them; ``rows()`` turns an interval into rows of the ``timings`` table.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.distributed as dist

FWD, BWD = "all_reduce_fwd", "all_reduce_bwd"  # TP collectives (f backward, g forward)
DP = "dp_all_reduce"  # data-parallel gradient averaging
NORM = "norm_all_reduce"  # the global gradient norm under TP (clipping)


class CommMeter:
    """Counts collectives (count, payload bytes, seconds) per kind, and per tag for TP ones.

    Bytes are the payload (the tensor's size), not the bytes on the wire: a ring all-reduce
    moves 2(p-1)/p of it per rank. Seconds are wall time inside the call: gloo on CPU is
    synchronous, so this is the communication including any wait for the slower rank. On CUDA
    the time comes from CUDA events around the call, read when the interval is reported.

    Per step: ``with meter.step(): ...`` times the whole step; ``rows()`` reports every kind plus
    ``step`` (wall time) and ``compute`` (step time minus time in collectives), then ``reset()``.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._kinds: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0.0])  # count, bytes, s
        self._tags: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0, 0.0])
        self._cuda_pending: list[tuple[str, str | None, Any, Any]] = []
        self.steps, self.step_seconds = 0, 0.0
        self._step_t0: float | None = None
        self._paused = False

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Collectives inside are not counted (e.g. evaluation between training steps)."""
        before, self._paused = self._paused, True
        try:
            yield
        finally:
            self._paused = before

    # -- recording ---------------------------------------------------------------------------
    def add(self, kind: str, nbytes: int, seconds: float, tag: str | None = None) -> None:
        for stats in (self._kinds[kind],) + ((self._tags[(tag, kind)],) if tag is not None else ()):
            stats[0] += 1
            stats[1] += nbytes
            stats[2] += seconds

    @contextmanager
    def timed(self, kind: str, tensor: torch.Tensor, tag: str | None = None) -> Iterator[None]:
        """Wrap one synchronous collective on ``tensor``."""
        if self._paused:
            yield
            return
        nbytes = tensor.numel() * tensor.element_size()
        if tensor.is_cuda:  # NCCL is asynchronous: events on the current stream, read later
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            yield
            end.record()
            self.add(kind, nbytes, 0.0, tag)
            self._cuda_pending.append((kind, tag, start, end))
            return
        t0 = time.perf_counter()
        yield
        self.add(kind, nbytes, time.perf_counter() - t0, tag)

    def _resolve_cuda(self) -> None:
        if not self._cuda_pending:
            return
        torch.cuda.synchronize()
        for kind, tag, start, end in self._cuda_pending:
            seconds = start.elapsed_time(end) / 1000.0
            self._kinds[kind][2] += seconds
            if tag is not None:
                self._tags[(tag, kind)][2] += seconds
        self._cuda_pending.clear()

    def start_step(self) -> None:
        self._step_t0 = time.perf_counter()

    def end_step(self, sync: bool = True) -> None:
        if self._step_t0 is None:
            raise RuntimeError("end_step() without start_step()")
        if sync and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        self.step_seconds += time.perf_counter() - self._step_t0
        self.steps += 1
        self._step_t0 = None

    @contextmanager
    def step(self) -> Iterator[None]:
        self.start_step()
        yield
        self.end_step()

    # -- reading -----------------------------------------------------------------------------
    def totals(self) -> dict[str, dict[str, float]]:
        """{kind: {count, bytes, seconds}} over the interval."""
        self._resolve_cuda()
        return {k: {"count": int(c), "bytes": int(b), "seconds": s} for k, (c, b, s) in self._kinds.items()}

    def by_tag(self) -> dict[str, dict[str, int]]:
        """{tag: {kind: count}} for the tagged (per-block) collectives of the interval."""
        out: dict[str, dict[str, int]] = defaultdict(dict)
        for (tag, kind), (count, _, _) in sorted(self._tags.items()):
            out[tag][kind] = int(count)
        return dict(out)

    def comm_seconds(self) -> float:
        return sum(v["seconds"] for v in self.totals().values())

    def rows(self, run_id: str, step: int, rank: int, reset: bool = True) -> list[dict]:
        """Rows of the ``timings`` table for this interval (``step`` = its last step)."""
        totals = self.totals()
        base = {"run_id": run_id, "step": int(step), "rank": int(rank)}
        rows = [{**base, "kind": kind, **v} for kind, v in sorted(totals.items()) if v["count"]]
        if self.steps:
            comm = sum(v["seconds"] for v in totals.values())
            rows.append({**base, "kind": "compute", "count": self.steps, "bytes": 0,
                         "seconds": max(self.step_seconds - comm, 0.0)})
            rows.append({**base, "kind": "step", "count": self.steps, "bytes": 0, "seconds": self.step_seconds})
        if reset:
            self.reset()
        return rows


def group_size_rank(group: Any) -> tuple[int, int]:
    """(size, rank within) of a process group; (1, 0) for a single process without one."""
    if group is None and not dist.is_initialized():
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def all_reduce(tensor: torch.Tensor, group: Any, meter: CommMeter | None, kind: str, tag: str | None = None) -> torch.Tensor:
    """In-place sum all-reduce, metered if a meter is given."""
    if meter is None:
        dist.all_reduce(tensor, group=group)
    else:
        with meter.timed(kind, tensor, tag):
            dist.all_reduce(tensor, group=group)
    return tensor


class _CopyToTP(torch.autograd.Function):
    """f: identity forward; backward sums the partial input-gradients of the ranks."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, comm: "MegatronComm") -> torch.Tensor:
        ctx.comm = comm
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        c = ctx.comm
        # a copy: autograd may hand the same gradient tensor to other branches
        return all_reduce(grad.contiguous().clone(), c.group, c.meter, BWD, c.tag), None


class _ReduceFromTP(torch.autograd.Function):
    """g: forward sums the ranks' partial outputs; the gradient passes through unchanged."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, comm: "MegatronComm") -> torch.Tensor:
        return all_reduce(x.contiguous().clone(), comm.group, comm.meter, FWD, comm.tag)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class MegatronComm:
    """f and g over ``group``; drop-in for ``Block.comm`` (see falstudy/models/gpt.py)."""

    def __init__(self, group: Any = None, meter: CommMeter | None = None, tag: str | None = None):
        self.group = group
        self.meter = meter
        self.tag = tag
        self.world_size = group_size_rank(group)[0]

    def tagged(self, tag: str) -> "MegatronComm":
        return MegatronComm(self.group, self.meter, tag)

    def f(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.world_size == 1 else _CopyToTP.apply(x, self)

    def g(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.world_size == 1 else _ReduceFromTP.apply(x, self)

    def g_start(self, x: torch.Tensor):
        """A g whose result is waited for later (ladder blocks). Synchronous for now: the
        asynchronous all-reduce is the TP-overlap work's (parallel/comm.py on its branch)."""
        from falstudy.models.gpt import Ready

        return Ready(self.g(x))

    def __deepcopy__(self, memo: dict) -> "MegatronComm":  # process groups cannot be copied
        return self

    def __repr__(self) -> str:
        return f"MegatronComm(world_size={self.world_size}, tag={self.tag!r})"
