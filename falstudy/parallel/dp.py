"""Data parallelism, alone or with tensor parallelism on a 2-D layout of ranks.

Layout: ``world = dp x tp`` with TP ranks adjacent (rank = dp_rank * tp + tp_rank), so a TP group
sits on one host (its all-reduces are the latency-critical ones) and DP groups span hosts.

Gradients are averaged over the DP group with one flat all-reduce after backward
(``allreduce_grads``), which the meter counts as ``dp_all_reduce``; ``wrap_ddp`` is the torch DDP
alternative (it overlaps the reduce with backward on GPUs, but its buckets are not metered).
Each DP rank takes its slice of one global batch (``shard_batch``), so DP=n with batch B per rank
sees exactly the data, and takes exactly the step, of one process with batch n*B.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from falstudy.errors import FalstudyError
from falstudy.parallel.comm import DP, CommMeter, all_reduce, group_size_rank


def mesh_ranks(world: int, tp: int, dp: int) -> tuple[list[list[int]], list[list[int]]]:
    """(TP groups, DP groups) as lists of global ranks, TP ranks adjacent."""
    if tp < 1 or dp < 1:
        raise FalstudyError(f"tp={tp} and dp={dp} must be >= 1")
    if world != tp * dp:
        raise FalstudyError(f"world size {world} != tp x dp = {tp} x {dp}; launch tp*dp processes")
    tp_groups = [[d * tp + t for t in range(tp)] for d in range(dp)]
    dp_groups = [[d * tp + t for d in range(dp)] for t in range(tp)]
    return tp_groups, dp_groups


def new_groups(tp: int, dp: int) -> tuple[Any, Any, int, int]:
    """Create the process groups of the layout; returns (tp_group, dp_group, tp_rank, dp_rank).

    Collective: every rank creates every group, in the same order (torch requires it)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    tp_groups, dp_groups = mesh_ranks(world, tp, dp)
    tp_group = dp_group = None
    for ranks in tp_groups:
        g = dist.new_group(ranks)
        if rank in ranks:
            tp_group = g
    for ranks in dp_groups:
        g = dist.new_group(ranks)
        if rank in ranks:
            dp_group = g
    return tp_group, dp_group, rank % tp, rank // tp


def shard_batch(x: torch.Tensor, y: torch.Tensor | None, dp_rank: int, dp: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """This DP rank's rows of a global batch (every rank draws the same global batch)."""
    if x.size(0) % dp:
        raise FalstudyError(f"global batch {x.size(0)} is not divisible by dp={dp}")
    b = x.size(0) // dp
    rows = slice(dp_rank * b, (dp_rank + 1) * b)
    return x[rows], (y[rows] if y is not None else None)


def allreduce_grads(model: nn.Module, dp_group: Any, meter: CommMeter | None = None) -> None:
    """Average the gradients over the DP group: one flat all-reduce (call after backward).

    Every rank of a DP group holds the same parameters (same TP rank), so the flat buffers
    line up; a parameter without a gradient on every rank is skipped everywhere."""
    world = group_size_rank(dp_group)[0]
    if world == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)
    all_reduce(flat, dp_group, meter, DP)
    flat.div_(world)
    for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


def wrap_ddp(model: nn.Module, dp_group: Any, device: torch.device | None = None) -> nn.Module:
    """torch DDP over the DP group (the alternative to ``allreduce_grads``); use ``.module`` for
    the model underneath. Under TP every DP group has one TP rank, so DDP sees one shard."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    device = device or next(model.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids, process_group=dp_group, broadcast_buffers=False)
