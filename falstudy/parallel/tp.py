"""The tensor-parallel plan: shard a GPT in place, Megatron style, and undo it for checkpoints.

    column-parallel (output rows split; q/k/v by heads):  attn.q, attn.k, attn.v, mlp.fc1, mlp.fc_gate
    row-parallel (input columns split):                    attn.proj, mlp.fc2
    replicated:                                            embeddings, norms, FAL gates, lm_head

A row-parallel bias is kept on TP rank 0 only (the others drop it), so the partial sums add it
exactly once and its gradient is the full one. The model code stays single-device: it already
calls ``comm.f`` / ``comm.g`` where Megatron needs them; ``parallelize`` only swaps ``comm``.

Every rank must build the same model (same seed) before ``parallelize``; it checks that with one
broadcast of a parameter fingerprint. Build the optimizer after ``parallelize`` (the sharded
weights are new Parameters).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from falstudy.errors import FalstudyError
from falstudy.parallel.comm import NORM, CommMeter, MegatronComm, all_reduce, group_size_rank

COLUMN = ("attn.q", "attn.k", "attn.v", "mlp.fc1", "mlp.fc_gate")
ROW = ("attn.proj", "mlp.fc2")


@dataclass
class TPPlan:
    """What ``parallelize`` did; stored on the model as ``model.tp_plan``."""

    group: Any
    tp: int
    rank: int  # rank within the TP group
    meter: CommMeter | None
    sharded: dict[str, int] = field(default_factory=dict)  # parameter name -> split dim
    rank0_only: set[str] = field(default_factory=set)  # row-parallel biases (on TP rank 0)
    full_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


def check_tp(cfg, tp: int) -> None:
    """Refuse a TP degree that does not split heads and MLP width evenly."""
    if tp < 1:
        raise FalstudyError(f"tensor-parallel degree tp={tp} must be >= 1")
    if cfg.n_head % tp:
        ok = [d for d in range(1, cfg.n_head + 1) if cfg.n_head % d == 0]
        raise FalstudyError(f"tp={tp} does not divide model.n_head={cfg.n_head}; use tp in {ok}")
    width = cfg.mlp_hidden
    if width % tp:
        raise FalstudyError(f"tp={tp} does not divide the MLP width {width} (model.mlp_ratio x n_embd); change tp or mlp_ratio")


def _fingerprint(model: nn.Module) -> torch.Tensor:
    return torch.stack([p.detach().double().sum() for p in model.parameters()]).cpu()


def _check_identical(model: nn.Module, group: Any) -> None:
    """Every rank compares its parameters' fingerprint with TP rank 0's; all raise together."""
    dev = _device(model)
    mine = _fingerprint(model).to(dev)
    ref = mine.clone()
    dist.broadcast(ref, src=_global_rank0(group), group=group)
    bad = torch.tensor([0.0 if torch.allclose(mine, ref, rtol=0, atol=1e-9) else 1.0], device=dev)
    dist.all_reduce(bad, group=group)
    if bad.item():
        raise FalstudyError(
            "the model differs between TP ranks; build it with the same seed on every rank "
            "(torch.manual_seed(seed) right before GPT(cfg)) and parallelize before training"
        )


def _global_rank0(group: Any) -> int:
    return 0 if group is None else dist.get_global_rank(group, 0)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _shard_linear(lin: nn.Linear, kind: str, tp: int, rank: int) -> None:
    with torch.no_grad():
        if kind == "col":
            lin.weight = nn.Parameter(lin.weight.chunk(tp, 0)[rank].clone())
            if lin.bias is not None:
                lin.bias = nn.Parameter(lin.bias.chunk(tp, 0)[rank].clone())
            lin.out_features //= tp
        else:
            lin.weight = nn.Parameter(lin.weight.chunk(tp, 1)[rank].clone())
            if lin.bias is not None and rank != 0:
                lin.bias = None  # added once, by rank 0
            lin.in_features //= tp


def parallelize(model: nn.Module, group: Any = None, meter: CommMeter | None = None) -> nn.Module:
    """Shard ``model`` (a falstudy GPT built identically on every rank) over ``group``; in place.

    Every block gets a ``MegatronComm`` tagged ``blocks.<i>`` (metered by ``meter`` if given)."""
    if getattr(model, "tp_plan", None) is not None:
        raise FalstudyError("this model is already tensor-parallel")
    tp, rank = group_size_rank(group)
    check_tp(model.config, tp)
    plan = TPPlan(group=group, tp=tp, rank=rank, meter=meter)
    if tp > 1:
        _check_identical(model, group)
    base = MegatronComm(group, meter)
    for i, block in enumerate(model.blocks):
        for sub in ("attn", "mlp"):
            parent = getattr(block, sub)
            if parent is None:
                continue
            for name, lin in parent.named_children():
                path = f"{sub}.{name}"
                if not isinstance(lin, nn.Linear) or (path not in COLUMN and path not in ROW):
                    continue
                kind = "col" if path in COLUMN else "row"
                prefix = f"blocks.{i}.{path}"
                plan.full_shapes[f"{prefix}.weight"] = tuple(lin.weight.shape)
                plan.sharded[f"{prefix}.weight"] = 0 if kind == "col" else 1
                if lin.bias is not None:
                    plan.full_shapes[f"{prefix}.bias"] = tuple(lin.bias.shape)
                    if kind == "col":
                        plan.sharded[f"{prefix}.bias"] = 0
                    else:
                        plan.rank0_only.add(f"{prefix}.bias")
                if tp > 1:
                    _shard_linear(lin, kind, tp, rank)
        block.comm = base.tagged(f"blocks.{i}")
    model.tp_plan = plan
    return model


def plan_of(model: nn.Module) -> TPPlan:
    plan = getattr(model, "tp_plan", None)
    if plan is None:
        raise FalstudyError("the model is not tensor-parallel; call falstudy.parallel.parallelize(model, group) first")
    return plan


# -- gathering and sharding full tensors ---------------------------------------------------
def _gather_dim(t: torch.Tensor, dim: int, plan: TPPlan) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(plan.tp)]
    dist.all_gather(parts, t.contiguous(), group=plan.group)
    return torch.cat(parts, dim=dim)


def _gather_named(plan: TPPlan, local: dict[str, torch.Tensor], order: list[str],
                  cpu: bool = False) -> dict[str, torch.Tensor] | None:
    """Full tensors on TP rank 0 (None elsewhere). ``order`` lists the sharded names present
    on every rank, in the same order everywhere (every rank takes part in each gather). With
    ``cpu``, each full tensor moves to the CPU as soon as it is gathered, so the device never
    holds more than one of them."""
    out: dict[str, torch.Tensor] = {}
    for name in order:
        full = _gather_dim(local[name], plan.sharded[name], plan) if plan.tp > 1 else local[name]
        if plan.rank == 0:
            out[name] = full.cpu() if cpu else full
    if plan.rank != 0:
        return None
    # rank 0 holds every other tensor whole; keep the single-process key order
    return {k: out[k] if k in out else (v.cpu() if cpu else v) for k, v in local.items()}


def gather_state_dict(model: nn.Module, cpu: bool = True) -> dict[str, torch.Tensor] | None:
    """The full single-process ``state_dict`` on TP rank 0 (None on the other ranks).

    Collective: every TP rank must call it. Under DP, every DP replica may call it too (each
    TP group gathers its own copy); write the one of global rank 0."""
    plan = plan_of(model)
    local = {k: v.detach() for k, v in model.state_dict().items()}
    return _gather_named(plan, local, [k for k in local if k in plan.sharded], cpu=cpu)


def gather_grads(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """Full gradients by parameter name on TP rank 0 (None elsewhere); missing grads skipped."""
    plan = plan_of(model)
    local = {k: p.grad.detach() for k, p in model.named_parameters() if p.grad is not None}
    return _gather_named(plan, local, [k for k in local if k in plan.sharded])


def _shard_full(plan: TPPlan, name: str, full: torch.Tensor) -> torch.Tensor:
    if name in plan.sharded and plan.tp > 1:
        return full.chunk(plan.tp, plan.sharded[name])[plan.rank].contiguous()
    return full


def load_full_state_dict(model: nn.Module, full_sd: dict[str, torch.Tensor] | None, src: int | None = None) -> nn.Module:
    """Load a single-process ``state_dict`` into a tensor-parallel model (each rank takes its shard).

    By default every rank passes the full dict (each read the checkpoint file). With ``src`` (a
    global rank), only that rank needs it; it is broadcast to the others of the TP group."""
    plan = plan_of(model)
    if src is not None and plan.tp > 1:
        box = [full_sd]
        dist.broadcast_object_list(box, src=src, group=plan.group)
        full_sd = box[0]
    if full_sd is None:
        raise FalstudyError("load_full_state_dict: no state dict on this rank (pass src= to broadcast one)")
    own = model.state_dict()
    local: dict[str, torch.Tensor] = {}
    for name, value in full_sd.items():
        if name in plan.rank0_only and plan.rank != 0:
            continue
        if name in own:
            want = plan.full_shapes.get(name)
            if want is not None and tuple(value.shape) != want:
                raise FalstudyError(f"checkpoint tensor {name} has shape {tuple(value.shape)}, the model wants {want}")
            local[name] = _shard_full(plan, name, value)
        else:
            local[name] = value  # unexpected keys: let load_state_dict name them
    try:
        model.load_state_dict(local)
    except RuntimeError as err:
        raise FalstudyError(f"state dict does not match the model: {str(err).splitlines()[0]}") from None
    return model


# -- optimizer state (AdamW moments are shaped like their parameters) ----------------------
def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the optimizer's parameters in state-dict index order."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def gather_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict | None:
    """The single-process ``optimizer.state_dict()`` on TP rank 0 (None elsewhere).

    Assumes the optimizer lists parameters in the model's order (as the trainer's does): TP rank 0
    holds every parameter, so its indices are the single-process ones."""
    plan = plan_of(model)
    names = _param_names(model, optimizer)
    osd = optimizer.state_dict()
    by_name = {n: dict(osd["state"].get(i, {})) for i, n in enumerate(names)}  # copies: the live state stays
    order = [n for n in names if n in plan.sharded]
    for n in order:
        for key in sorted(by_name[n]):
            value = by_name[n][key]
            if isinstance(value, torch.Tensor) and value.dim() > 0 and plan.tp > 1:
                full = _gather_dim(value, plan.sharded[n], plan)
                if plan.rank == 0:
                    by_name[n][key] = full.cpu()  # one full moment at a time on the device
    if plan.rank != 0:
        return None
    return {"state": {i: by_name[n] for i, n in enumerate(names) if by_name[n]}, "param_groups": osd["param_groups"]}


def load_full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer, full_osd: dict) -> None:
    """Load a single-process optimizer state (every rank passes it) into a TP model's optimizer."""
    plan = plan_of(model)
    names_box = [_param_names(model, optimizer) if plan.rank == 0 else None]
    if plan.tp > 1:  # TP rank 0's order is the single-process order
        dist.broadcast_object_list(names_box, src=_global_rank0(plan.group), group=plan.group)
    full_index = {n: i for i, n in enumerate(names_box[0])}
    local = optimizer.state_dict()
    state = {}
    for i, name in enumerate(_param_names(model, optimizer)):
        full = full_osd["state"].get(full_index[name])
        if full is None:
            continue
        state[i] = {k: _shard_full(plan, name, v) if isinstance(v, torch.Tensor) and v.dim() > 0 else v
                    for k, v in full.items()}
    groups = [{**fg, "params": lg["params"]} for fg, lg in zip(full_osd["param_groups"], local["param_groups"])]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# -- gradient norm -------------------------------------------------------------------------
def clip_grad_norm_(model: nn.Module, max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for a TP model: the norm of the full gradient.

    Sharded (and rank-0-only) gradients are summed over the TP group with one all-reduce;
    replicated ones are identical on every rank and counted once. Returns the total norm."""
    plan = plan_of(model)
    grads_split, grads_repl = [], []
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        (grads_split if name in plan.sharded or name in plan.rank0_only else grads_repl).append(p.grad)
    dev = _device(model)

    def sq(gs: list[torch.Tensor]) -> torch.Tensor:
        return sum((g.detach().float().pow(2).sum() for g in gs), torch.zeros((), device=dev))

    split = sq(grads_split)
    if plan.tp > 1:
        split = all_reduce(split.reshape(1), plan.group, plan.meter, NORM).reshape(())
    total = (split + sq(grads_repl)).sqrt()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads_split + grads_repl:
        g.mul_(coef.to(g.dtype))
    return total
