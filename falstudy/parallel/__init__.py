"""Multi-process training: Megatron-style tensor parallelism (TP), data parallelism (DP), their
2-D layout, launching under torchrun, collective accounting, and a cost model.

    from falstudy.parallel import maybe_relaunch, init_distributed, parallelize, CommMeter

    maybe_relaunch(tp=2)                    # re-exec under torchrun unless already inside
    ctx = init_distributed(tp=2)            # gloo on CPU, NCCL on CUDA; TP and DP groups
    torch.manual_seed(seed); model = GPT(cfg).to(ctx.device)   # same seed on every rank
    meter = CommMeter()
    parallelize(model, ctx.tp_group, meter) # shards q/k/v/fc1(/fc_gate) by rows, proj/fc2 by columns

See docs/parallel.md. torch is imported lazily (the CLI imports this package cheaply).
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "CommMeter": "comm",
    "MegatronComm": "comm",
    "parallelize": "tp",
    "check_tp": "tp",
    "gather_state_dict": "tp",
    "load_full_state_dict": "tp",
    "gather_grads": "tp",
    "gather_optimizer_state_dict": "tp",
    "load_full_optimizer_state_dict": "tp",
    "clip_grad_norm_": "tp",
    "mesh_ranks": "dp",
    "new_groups": "dp",
    "shard_batch": "dp",
    "allreduce_grads": "dp",
    "wrap_ddp": "dp",
    "DistContext": "launch",
    "maybe_relaunch": "launch",
    "init_distributed": "launch",
    "torchrun_command": "launch",
    "cpu_cores": "launch",
    "shutdown": "launch",
    "concurrent_branches": "concurrent",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"falstudy.parallel.{_EXPORTS[name]}"), name)
    raise AttributeError(name)
