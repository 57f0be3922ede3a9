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

``comm.g_start(x)`` is g split in two, for schedules that overlap the all-reduce with later
compute (the Ladder residual): it launches the all-reduce (``async_op=True``) and returns a
``Pending``; ``pending.wait()`` returns the summed tensor, where the result is first needed. The
pair is two autograd functions whose backward is the identity, like g's, so gradients are the
same as with g. The meter records, for every collective, its seconds in flight (launch to
completion) and its exposed seconds (the time this rank was held up by it: inside the launch and
inside ``wait()``; for a synchronous call, the whole call).
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.distributed as dist

from falstudy.models.gpt import Ready  # a finished pending (one process), as LocalComm.g_start gives

FWD, BWD = "all_reduce_fwd", "all_reduce_bwd"  # TP collectives (f backward, g forward)
DP = "dp_all_reduce"  # data-parallel gradient averaging
NORM = "norm_all_reduce"  # the global gradient norm under TP (clipping)


class CommMeter:
    """Counts collectives (count, payload bytes, seconds) per kind, and per tag for TP ones.

    Bytes are the payload (the tensor's size), not the bytes on the wire: a ring all-reduce
    moves 2(p-1)/p of it per rank. Seconds are wall time inside the calls: a synchronous gloo
    call includes any wait for the slower rank. On CUDA the time comes from CUDA events around
    the call, read when the interval is reported.

    Two more figures per collective: ``in_flight`` (launch to completion) and ``exposed`` (the
    time this rank was held up by it). A synchronous call has in_flight = exposed = seconds. An
    asynchronous one (``start``/``finish``, used by ``MegatronComm.g_start``) is exposed for its
    launch plus its ``wait()`` (= its ``seconds``), and in flight from launch until gloo reports
    it complete (a future callback), at least its exposed time; in_flight - exposed is the
    communication hidden behind compute.

    Per step: ``with meter.step(): ...`` times the whole step; ``rows()`` reports every kind plus
    ``step`` (wall time) and ``compute`` (step time minus time in collectives), then ``reset()``.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        # count, bytes, seconds, in-flight seconds, exposed seconds
        self._kinds: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0.0, 0.0, 0.0])
        self._tags: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0, 0.0, 0.0, 0.0])
        self._cuda_pending: list[tuple[str, str | None, Any, Any, Any]] = []
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
    def add(self, kind: str, nbytes: int, seconds: float, tag: str | None = None,
            in_flight: float | None = None, exposed: float | None = None) -> None:
        """One collective; ``in_flight`` and ``exposed`` default to ``seconds`` (a synchronous call)."""
        exposed = seconds if exposed is None else exposed
        in_flight = max(seconds if in_flight is None else in_flight, exposed)
        for stats in self._stats(kind, tag):
            stats[0] += 1
            stats[1] += nbytes
            stats[2] += seconds
            stats[3] += in_flight
            stats[4] += exposed

    def _stats(self, kind: str, tag: str | None) -> tuple[list[float], ...]:
        return (self._kinds[kind],) + ((self._tags[(tag, kind)],) if tag is not None else ())

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
            self._cuda_pending.append((kind, tag, start, end, None))
            return
        t0 = time.perf_counter()
        yield
        self.add(kind, nbytes, time.perf_counter() - t0, tag)

    # -- asynchronous collectives ------------------------------------------------------------
    def start(self, kind: str, tensor: torch.Tensor, tag: str | None = None) -> "Launch | None":
        """Before launching an asynchronous collective on ``tensor``; None while paused."""
        if self._paused:
            return None
        return Launch(self, kind, tensor.numel() * tensor.element_size(), tag, tensor.is_cuda)

    def _finish(self, rec: "Launch", t_done: float | None, wait_s: float) -> None:
        if rec.cuda:  # events: launch, before wait, after wait; read with the interval
            self.add(rec.kind, rec.nbytes, 0.0, rec.tag, in_flight=0.0, exposed=0.0)
            self._cuda_pending.append((rec.kind, rec.tag, rec.ev_launch, rec.ev_wait, rec.ev_done))
            return
        exposed = rec.launch_s + wait_s
        end = rec.t_waited if t_done is None else min(t_done, rec.t_waited)
        self.add(rec.kind, rec.nbytes, exposed, rec.tag, in_flight=end - rec.t0, exposed=exposed)

    def _resolve_cuda(self) -> None:
        if not self._cuda_pending:
            return
        torch.cuda.synchronize()
        for kind, tag, first, second, third in self._cuda_pending:
            if third is None:  # a synchronous call: the time between its two events
                seconds = in_flight = exposed = first.elapsed_time(second) / 1000.0
            else:  # asynchronous: the compute stream waited from ``second`` to ``third``;
                # in flight until the result was available to it (an upper bound: NCCL's own
                # stream is not visible here)
                seconds = exposed = second.elapsed_time(third) / 1000.0
                in_flight = first.elapsed_time(third) / 1000.0
            for stats in self._stats(kind, tag):
                stats[2] += seconds
                stats[3] += in_flight
                stats[4] += exposed
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
        """{kind: {count, bytes, seconds, in_flight_seconds, exposed_seconds}} over the interval."""
        self._resolve_cuda()
        return {k: _as_row(v) for k, v in self._kinds.items()}

    def by_tag(self) -> dict[str, dict[str, int]]:
        """{tag: {kind: count}} for the tagged (per-block) collectives of the interval."""
        out: dict[str, dict[str, int]] = defaultdict(dict)
        for (tag, kind), stats in sorted(self._tags.items()):
            out[tag][kind] = int(stats[0])
        return dict(out)

    def tag_totals(self) -> dict[str, dict[str, dict[str, float]]]:
        """{tag: {kind: {count, bytes, seconds, in_flight_seconds, exposed_seconds}}}."""
        self._resolve_cuda()
        out: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
        for (tag, kind), stats in sorted(self._tags.items()):
            out[tag][kind] = _as_row(stats)
        return dict(out)

    def comm_seconds(self) -> float:
        return sum(v["seconds"] for v in self.totals().values())

    def rows(self, run_id: str, step: int, rank: int, reset: bool = True) -> list[dict]:
        """Rows of the ``timings`` table for this interval (``step`` = its last step)."""
        totals = self.totals()
        base = {"run_id": run_id, "step": int(step), "rank": int(rank)}
        rows = [{**base, "kind": kind, **v} for kind, v in sorted(totals.items()) if v["count"]]
        if self.steps:  # compute = the time outside collective calls (hidden communication included)
            comm = sum(v["seconds"] for v in totals.values())
            none = {"in_flight_seconds": None, "exposed_seconds": None}
            rows.append({**base, "kind": "compute", "count": self.steps, "bytes": 0,
                         "seconds": max(self.step_seconds - comm, 0.0), **none})
            rows.append({**base, "kind": "step", "count": self.steps, "bytes": 0, "seconds": self.step_seconds, **none})
        if reset:
            self.reset()
        return rows


def _as_row(stats: list[float]) -> dict[str, float]:
    count, nbytes, seconds, in_flight, exposed = stats
    return {"count": int(count), "bytes": int(nbytes), "seconds": seconds,
            "in_flight_seconds": in_flight, "exposed_seconds": exposed}


class Launch:
    """The meter's record of one asynchronous collective, from launch to ``wait()``."""

    def __init__(self, meter: CommMeter, kind: str, nbytes: int, tag: str | None, cuda: bool):
        self.meter, self.kind, self.nbytes, self.tag, self.cuda = meter, kind, nbytes, tag, cuda
        self.t_done: float | None = None  # set by the work's completion callback (gloo's thread)
        self.t_waited = 0.0
        self.launch_s = 0.0
        if cuda:
            self.ev_launch, self.ev_wait, self.ev_done = (torch.cuda.Event(enable_timing=True) for _ in range(3))
            self.ev_launch.record()
        self.t0 = time.perf_counter()

    def launched(self, work: Any) -> None:
        """Right after the launch call returned ``work``."""
        self.launch_s = time.perf_counter() - self.t0
        if not self.cuda:  # NCCL futures complete on the stream, not when the data has arrived
            work.get_future().add_done_callback(self._done)

    def _done(self, _fut: Any) -> None:
        self.t_done = time.perf_counter()

    def wait(self, work: Any) -> None:
        """Wait for ``work``, timing how long this rank is held up."""
        if self.cuda:
            self.ev_wait.record()
            work.wait()
            self.ev_done.record()
            self.meter._finish(self, None, 0.0)
            return
        t0 = time.perf_counter()
        work.wait()
        self.t_waited = time.perf_counter()
        self.meter._finish(self, self.t_done, self.t_waited - t0)


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


class Pending:
    """An all-reduce in flight, from ``MegatronComm.g_start``; ``wait()`` returns its result.

    Waiting twice returns the same tensor (one wait is recorded)."""

    def __init__(self, x: torch.Tensor, comm: "MegatronComm"):
        self.comm = comm
        self.work: Any = None
        self.record: Launch | None = None
        self._result: torch.Tensor | None = None
        self._reducing = _StartReduce.apply(x, self)

    def wait(self) -> torch.Tensor:
        if self._result is None:
            self._result = _WaitReduce.apply(self._reducing, self)
            self._reducing = None  # the result holds it now
        return self._result


class _StartReduce(torch.autograd.Function):
    """g's first half: launch the sum all-reduce of a copy of ``x``; identity backward.

    Its output is the buffer being reduced into: only ``_WaitReduce`` may read it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, pending: Pending) -> torch.Tensor:
        c = pending.comm
        buf = x.contiguous().clone()
        pending.record = c.meter.start(FWD, buf, c.tag) if c.meter is not None else None
        pending.work = dist.all_reduce(buf, group=c.group, async_op=True)
        if pending.record is not None:
            pending.record.launched(pending.work)
        return buf

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class _WaitReduce(torch.autograd.Function):
    """g's second half: wait for the all-reduce; identity backward (the gradient of a sum whose
    output is replicated is the output's gradient, as for g)."""

    @staticmethod
    def forward(ctx, buf: torch.Tensor, pending: Pending) -> torch.Tensor:
        if pending.record is not None:
            pending.record.wait(pending.work)
        else:
            pending.work.wait()
        return buf.view_as(buf)

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

    def g_start(self, x: torch.Tensor) -> "Pending | Ready":
        """g, asynchronously: launch the all-reduce now, ``.wait()`` for the sum later."""
        return Ready(x) if self.world_size == 1 else Pending(x, self)

    def __deepcopy__(self, memo: dict) -> "MegatronComm":  # process groups cannot be copied
        return self

    def __repr__(self) -> str:
        return f"MegatronComm(world_size={self.world_size}, tag={self.tag!r})"
