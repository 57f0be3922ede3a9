"""Launching: re-execute a command under torchrun, then set up the process groups inside it.

    maybe_relaunch(tp=2, dp=1)       # outside torchrun: exec `python -m torch.distributed.run ...`
    ctx = init_distributed(tp=2)     # inside: backend, device, threads, TP and DP groups

One host: ``--standalone``. Many hosts: the same command on each with ``nnodes`` and a c10d
rendezvous endpoint (``HOST:PORT`` of any one of them). Ranks never oversubscribe the cores:
each gets ``max(1, cores // local ranks)`` threads, and more local ranks than cores is refused
unless ``allow_oversubscribe`` (for correctness runs; never time such a run).
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from falstudy.errors import FalstudyError

BACKENDS = ("auto", "gloo", "nccl")
OVERSUBSCRIBE_ENV = "FALSTUDY_ALLOW_OVERSUBSCRIBE"


def cpu_cores() -> int:
    """Cores this process may run on (affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def in_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _check_cores(local_ranks: int, allow_oversubscribe: bool) -> None:
    cores = cpu_cores()
    if local_ranks > cores and not allow_oversubscribe:
        raise FalstudyError(
            f"{local_ranks} ranks on this host but only {cores} cores; lower tp x dp, add hosts, "
            "or pass --allow-oversubscribe (correctness only: never time such a run)"
        )


def _program(argv: Sequence[str] | None) -> list[str]:
    """How to run the program again. ``argv`` given: a script path and its arguments (or
    ``["-m", module, ...]``). None: this process's own command (``-m pkg`` if started with -m)."""
    if argv is None:
        main = sys.modules.get("__main__")
        spec = getattr(main, "__spec__", None)
        if spec is not None and spec.name:
            return ["-m", spec.name.removesuffix(".__main__"), *sys.argv[1:]]
        argv = sys.argv
    if not argv or argv[0] in ("", "-c", "-"):
        raise FalstudyError("cannot relaunch an interactive session under torchrun; run a script or `falstudy train`")
    return list(argv)


def torchrun_command(
    tp: int,
    dp: int = 1,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    argv: Sequence[str] | None = None,
    python: str = sys.executable,
) -> list[str]:
    """The torchrun command line that runs ``argv`` on ``tp * dp`` ranks."""
    world = tp * dp
    if tp < 1 or dp < 1:
        raise FalstudyError(f"tp={tp} and dp={dp} must be >= 1")
    if nnodes < 1 or world % nnodes:
        raise FalstudyError(f"tp x dp = {world} ranks cannot be split evenly over nnodes={nnodes}")
    cmd = [python, "-m", "torch.distributed.run"]
    if nnodes == 1 and rdzv_endpoint is None:
        cmd.append("--standalone")
    else:
        if not rdzv_endpoint or ":" not in rdzv_endpoint:
            raise FalstudyError(f"nnodes={nnodes} needs rdzv_endpoint=HOST:PORT (a host all nodes can reach)")
        cmd += [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}"]
    cmd.append(f"--nproc-per-node={world // nnodes}")
    return cmd + _program(argv)


def maybe_relaunch(
    tp: int,
    dp: int = 1,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    allow_oversubscribe: bool = False,
    argv: Sequence[str] | None = None,
    exec_fn: Callable[[str, list[str]], Any] = os.execv,
) -> None:
    """Outside torchrun with tp*dp > 1: replace this process by the same command under torchrun.
    Inside torchrun (RANK set), or for a single process, return and carry on."""
    if in_torchrun() or tp * dp == 1:
        return
    cmd = relaunch_command(tp, dp, nnodes, rdzv_endpoint, allow_oversubscribe, argv)
    sys.stdout.flush()
    sys.stderr.flush()
    exec_fn(cmd[0], cmd)


def relaunch_command(
    tp: int,
    dp: int = 1,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    allow_oversubscribe: bool = False,
    argv: Sequence[str] | None = None,
) -> list[str]:
    """The torchrun command for ``maybe_relaunch`` (or a supervising parent), after the core
    check; sets this process's environment for the ranks (threads, oversubscription)."""
    cmd = torchrun_command(tp, dp, nnodes, rdzv_endpoint, argv)
    local = tp * dp // nnodes
    _check_cores(local, allow_oversubscribe)
    if allow_oversubscribe:
        os.environ[OVERSUBSCRIBE_ENV] = "1"
    # set explicitly (torchrun would force 1 and warn); init_distributed sets torch's threads too
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cpu_cores() // local)))
    return cmd


@dataclass
class DistContext:
    """Where this process sits: global rank, TP/DP coordinates and groups, device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    tp: int = 1
    dp: int = 1
    tp_rank: int = 0
    dp_rank: int = 0
    tp_group: Any = None
    dp_group: Any = None
    device: Any = None  # torch.device
    backend: str | None = None  # None: a single process, no process group

    @property
    def is_main(self) -> bool:
        """The rank that writes the spool, the checkpoint and the logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()


def resolve_backend(backend: str) -> str:
    import torch

    if backend not in BACKENDS:
        raise FalstudyError(f"unknown distributed backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl" and not torch.cuda.is_available():
        raise FalstudyError("backend nccl needs CUDA GPUs, and none is available here; use gloo (or auto)")
    return backend


def init_distributed(
    tp: int = 1,
    dp: int = 1,
    backend: str = "auto",
    allow_oversubscribe: bool | None = None,
    timeout_s: float = 600.0,
) -> DistContext:
    """Inside torchrun: one process group (gloo on CPU, NCCL on CUDA), TP and DP groups, device
    and thread count. Outside torchrun with tp*dp == 1: a single-process context (no groups)."""
    import torch
    import torch.distributed as dist

    from falstudy.parallel.dp import new_groups

    name = resolve_backend(backend)
    if not in_torchrun():
        if tp * dp != 1:
            raise FalstudyError(f"tp={tp} x dp={dp} needs {tp * dp} processes: launch with torchrun (maybe_relaunch does it)")
        device = torch.device("cuda" if name == "nccl" else "cpu")
        return DistContext(device=device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if world != tp * dp:
        raise FalstudyError(f"torchrun started {world} processes but tp x dp = {tp} x {dp} = {tp * dp}")
    if allow_oversubscribe is None:
        allow_oversubscribe = os.environ.get(OVERSUBSCRIBE_ENV) == "1"
    _check_cores(local_world, allow_oversubscribe)
    torch.set_num_threads(max(1, cpu_cores() // local_world))
    if name == "nccl":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(name, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s))
    tp_group, dp_group, tp_rank, dp_rank = new_groups(tp, dp)
    return DistContext(rank, world, local_rank, tp, dp, tp_rank, dp_rank, tp_group, dp_group, device, name)


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
