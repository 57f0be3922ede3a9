"""Where the trainer's model lives: one process, or tensor x data parallel under torchrun.

The training loop talks to a ``Layout`` and never to torch.distributed, so the loop reads the
same for every layout (parallelism apart from model code, as in torchtitan):

- ``Single``: today's one-process path; every method is the plain-PyTorch one.
- ``Distributed``: ``falstudy.parallel`` underneath: the model is sharded over the TP group,
  each DP rank keeps its rows of the same global batch, gradients are averaged over the DP group,
  clipping uses the full model's norm, checkpoints are gathered into an ordinary single-process
  file, and every collective is counted by a ``CommMeter`` for the ``timings`` table.

Only global rank 0 (``is_main``) writes the spool, the checkpoint and the progress bar.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from falstudy.errors import FalstudyError


class Single:
    """One process (CPU or one GPU)."""

    is_main = True
    rank = 0
    tp = dp = None  # the runs table's NULL: not a parallel run

    def __init__(self, device: torch.device):
        self.device = device

    def share(self, value: Any) -> Any:
        """``value`` as global rank 0 has it (same on every rank)."""
        return value

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def batch(self, data, batch_size: int, seq_len: int, gen: torch.Generator):
        return data.get_batch(batch_size, seq_len, gen, self.device)

    def rows(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of a global batch."""
        return x, y

    def step(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def paused(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def sync_grads(self, model: torch.nn.Module) -> None:
        pass

    def clip(self, model: torch.nn.Module, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm, foreach=True)

    def mean(self, value: torch.Tensor | float) -> float:
        """The mean over the DP ranks of a per-rank loss (TP ranks already agree)."""
        return float(value)

    def state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict | None, dict | None]:
        return model.state_dict(), optimizer.state_dict()

    def load(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])

    def timing_rows(self, run_id: str, step: int) -> list[dict]:
        return []

    def close(self) -> None:
        pass


class Distributed(Single):
    """TP x DP ranks under torchrun; see docs/parallel.md for what each call costs."""

    def __init__(self, ctx: Any):  # a falstudy.parallel.DistContext
        from falstudy.parallel import CommMeter

        super().__init__(ctx.device)
        self.ctx = ctx
        self.is_main, self.rank = ctx.is_main, ctx.rank
        self.tp, self.dp = ctx.tp, ctx.dp
        self.meter = CommMeter()

    def share(self, value: Any) -> Any:
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        from falstudy.parallel import parallelize

        return parallelize(model, self.ctx.tp_group, self.meter)

    def batch(self, data, batch_size: int, seq_len: int, gen: torch.Generator):
        # every rank draws the same global batch (same data seed) and keeps its DP rows
        return self.rows(*data.get_batch(batch_size * self.dp, seq_len, gen, self.device))

    def rows(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from falstudy.parallel import shard_batch

        return shard_batch(x.to(self.device), y.to(self.device), self.ctx.dp_rank, self.dp)

    def step(self) -> contextlib.AbstractContextManager:
        return self.meter.step()

    def paused(self) -> contextlib.AbstractContextManager:
        return self.meter.paused()

    def sync_grads(self, model: torch.nn.Module) -> None:
        from falstudy.parallel import allreduce_grads

        allreduce_grads(model, self.ctx.dp_group, self.meter)

    def clip(self, model: torch.nn.Module, max_norm: float) -> torch.Tensor:
        from falstudy.parallel import clip_grad_norm_

        return clip_grad_norm_(model, max_norm)

    def mean(self, value: torch.Tensor | float) -> float:
        import torch.distributed as dist

        if self.dp == 1:
            return float(value)
        total = torch.as_tensor(value, dtype=torch.float64, device=self.device).detach().reshape(1).clone()
        with self.meter.paused():  # logging and eval, not training: kept out of the timings
            dist.all_reduce(total, group=self.ctx.dp_group)
        return total.item() / self.dp

    def state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict | None, dict | None]:
        """The single-process state dicts on global rank 0, None elsewhere (collective)."""
        from falstudy.parallel import gather_optimizer_state_dict, gather_state_dict

        if self.ctx.dp_rank != 0:  # the other replicas hold the same weights: only replica 0 gathers
            return None, None
        with self.meter.paused():
            full_model = gather_state_dict(model)
            full_optimizer = gather_optimizer_state_dict(model, optimizer)
        if not self.is_main:
            return None, None
        return full_model, _to_cpu(full_optimizer)

    def load(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        from falstudy.parallel import load_full_optimizer_state_dict, load_full_state_dict

        with self.meter.paused():
            load_full_state_dict(model, state["model"])
            load_full_optimizer_state_dict(model, optimizer, state["optimizer"])

    def timing_rows(self, run_id: str, step: int) -> list[dict]:
        """Every rank's collective and compute accounting since the last call, on rank 0."""
        import torch.distributed as dist

        mine = self.meter.rows(run_id, step, self.rank)
        everyone: list[list[dict]] = [[] for _ in range(self.ctx.world)]
        with self.meter.paused():
            dist.all_gather_object(everyone, mine)
        return [row for rows in everyone for row in rows] if self.is_main else []

    def close(self) -> None:
        from falstudy.parallel import shutdown

        with contextlib.suppress(Exception):  # a failed rank must not hide the real error
            shutdown()


def _to_cpu(obj: Any) -> Any:
    """A state dict with every tensor on the CPU (an ordinary, loadable-anywhere checkpoint)."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def make_layout(parallel: Any, device: torch.device) -> Single:
    """The layout a run's ``parallel`` config asks for (``device`` from ``train.device``)."""
    from falstudy.parallel.launch import in_torchrun

    if parallel.world == 1 and not in_torchrun():
        return Single(device)
    from falstudy.parallel import init_distributed

    backend = parallel.backend
    if backend == "auto":  # follow the device the run asked for
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise FalstudyError("parallel.backend=nccl needs train.device=cuda (or auto on a GPU machine); use gloo on CPU")
    if backend == "gloo" and device.type == "cuda":  # init_distributed would quietly train on CPU
        raise FalstudyError("parallel.backend=gloo trains on CPU; use nccl (or auto) for train.device=cuda, "
                            "or set train.device=cpu")
    return Distributed(init_distributed(parallel.tp, parallel.dp, backend))
