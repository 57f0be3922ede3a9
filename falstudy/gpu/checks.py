"""Numerics and one-GPU checks; each returns rows ``check, case, metric, value, tolerance, passed``.

- ``loss_curves``: a small model trained a few AdamW steps on the CPU in fp32 (the reference)
  and on the device in fp32 and under bf16 autocast, from the same weights and batches; the
  curves must agree within each precision's tolerance (on a CPU-only machine the "device" is
  the CPU, so the bf16 tolerance is still exercised).
- ``stream_numerics``: parallel-form models with MHA and MLP on two streams against the same
  model run sequentially: equal loss and gradients.
- ``collectives``: ``init_distributed`` at world size 1 (NCCL on CUDA, gloo on CPU) as torchrun
  would start it, and the ``CommMeter`` timing all-reduces (CUDA events on a GPU).
- ``first_losses``: every mode of a variant (eager, streams, compile) at full size gave the same
  first-step loss.
"""

from __future__ import annotations

import math
import os
import socket
from typing import Any

import torch

from falstudy.gpu.cases import autocast_for, build_model

# relative tolerance on the loss per step: fp32 kernels differ in summation order only; bf16
# keeps 8 bits of mantissa (2^-8 ~ 0.4 % per rounding, and Adam carries the difference on)
FP32_RTOL = 1e-4
BF16_RTOL = 2e-2
STREAMS_RTOL = 1e-5
SMALL = dict(n_layer=2, n_embd=64, n_head=4, block_size=64, vocab_size=256)


def row(check: str, case: str, metric: str, value: float, tolerance: float | None, passed: bool | None,
        detail: str = "") -> dict[str, Any]:
    return {"check": check, "case": case, "metric": metric, "value": float(value),
            "tolerance": math.nan if tolerance is None else float(tolerance), "passed": passed, "detail": detail}


def train_curve(device: torch.device, bf16: bool, steps: int, variant: str = "fal", batch: int = 8,
                lr: float = 1e-3) -> list[float]:
    """Losses of ``steps`` AdamW steps of the small model; the same weights and batches anywhere."""
    model = build_model(variant, SMALL, device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(2)
    losses = []
    for _ in range(steps):
        x = torch.randint(0, SMALL["vocab_size"], (batch, SMALL["block_size"]), generator=g)
        # a learnable target (next token = current + 1) so the curve falls and differences show
        y = (x + 1) % SMALL["vocab_size"]
        with autocast_for(device, bf16):
            _, loss = model(x.to(device), y.to(device))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses


def loss_curves(device: torch.device, steps: int = 20) -> list[dict]:
    cpu = torch.device("cpu")
    ref = train_curve(cpu, False, steps)
    out = []
    # TF32 would turn the device's fp32 matmuls into ~10-bit ones: off for the fp32 comparison
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for label, bf16, rtol in (("fp32", False, FP32_RTOL), ("bf16", True, BF16_RTOL)):
            got = train_curve(device, bf16, steps)
            worst = max(abs(a - b) / abs(b) for a, b in zip(got, ref))
            ok = worst <= rtol and all(math.isfinite(a) for a in got)
            out.append(row("loss_curve", f"{device.type}-{label}_vs_cpu-fp32", "max_rel_diff", worst, rtol, ok,
                           f"{steps} steps; loss {ref[0]:.4f} -> {ref[-1]:.4f} (cpu fp32), {got[0]:.4f} -> {got[-1]:.4f}"))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return out


def _loss_and_grads(variant: str, device: torch.device, bf16: bool, streams: bool):
    from falstudy.parallel.concurrent import concurrent_branches

    model = build_model(variant, SMALL, device)
    n = concurrent_branches(model) if streams else 0
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, SMALL["vocab_size"], (8, SMALL["block_size"]), generator=g).to(device)
    with autocast_for(device, bf16):
        _, loss = model(x, x.roll(-1, dims=1))
    loss.backward()
    return float(loss.detach()), {k: p.grad.float() for k, p in model.named_parameters() if p.grad is not None}, n


def stream_numerics(device: torch.device, bf16: bool) -> list[dict]:
    out = []
    for variant in ("parallel", "fal"):
        loss_seq, grads_seq, _ = _loss_and_grads(variant, device, bf16, streams=False)
        loss_par, grads_par, n = _loss_and_grads(variant, device, bf16, streams=True)
        worst = max(((grads_par[k] - g).norm() / g.norm().clamp_min(1e-12)).item() for k, g in grads_seq.items())
        loss_diff = abs(loss_par - loss_seq) / abs(loss_seq)
        ok = n > 0 and loss_diff <= STREAMS_RTOL and worst <= STREAMS_RTOL and grads_par.keys() == grads_seq.keys()
        out.append(row("streams", variant, "max_rel_diff", max(loss_diff, worst), STREAMS_RTOL, ok,
                       f"{n} blocks on two streams; loss {loss_seq:.6f} vs {loss_par:.6f}; worst gradient (relative norm)"))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def collectives(device: torch.device) -> list[dict]:
    """World size 1 through falstudy's own launcher code path (the environment torchrun sets),
    then metered all-reduces of 4 KB .. 64 MB."""
    from falstudy.parallel.comm import DP, CommMeter, all_reduce
    from falstudy.parallel.launch import init_distributed, shutdown

    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    saved_env = {k: os.environ.get(k) for k in env}
    threads = torch.get_num_threads()  # init_distributed sets one rank's share of the cores
    os.environ.update(env)
    out = []
    try:
        ctx = init_distributed(1, 1, "nccl" if device.type == "cuda" else "gloo", timeout_s=120)
        out.append(row("collectives", ctx.backend, "world_size", ctx.world, None, ctx.world == 1 and ctx.distributed,
                       f"init_distributed on {ctx.device}"))
        meter = CommMeter()
        sizes = [1 << 10, 1 << 16, 1 << 20, 1 << 24]  # floats: 4 KB .. 64 MB
        exact = True
        for n in sizes:
            t = torch.arange(n, dtype=torch.float32, device=ctx.device)
            for _ in range(3):
                all_reduce(t, None, meter, DP)
            exact &= bool(torch.equal(t, torch.arange(n, dtype=torch.float32, device=ctx.device)))
        totals = meter.totals()[DP]
        calls, seconds = totals["count"], totals["seconds"]
        out.append(row("collectives", ctx.backend, "all_reduce_sum_exact", float(exact), None, exact,
                       "a sum over one rank returns its input"))
        timer = "CUDA events" if device.type == "cuda" else "perf_counter"
        out.append(row("collectives", ctx.backend, "metered_seconds", seconds, None,
                       calls == 3 * len(sizes) and seconds > 0 and math.isfinite(seconds),
                       f"{calls} all-reduces of {sizes[0] * 4 // 1024} KB..{sizes[-1] * 4 >> 20} MB timed by {timer}; "
                       f"{totals['bytes'] / 1e6:.0f} MB payload"))
    finally:
        shutdown()
        torch.set_num_threads(threads)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return out


def first_losses(throughput: list[dict], rtol: float) -> list[dict]:
    """Every mode of a (shape, variant) started from the same weights and batch: same loss."""
    out = []
    groups: dict[tuple[str, str], dict[str, float]] = {}
    for r in throughput:
        groups.setdefault((r["shape"], r["variant"]), {})[r["mode"]] = r["first_loss"]
    for (shape, variant), losses in sorted(groups.items()):
        if len(losses) < 2 or "eager" not in losses:
            continue
        ref = losses["eager"]
        for mode, loss in losses.items():
            if mode == "eager":
                continue
            diff = abs(loss - ref) / abs(ref)
            out.append(row("first_loss", f"{shape}/{variant}/{mode}", "rel_diff_vs_eager", diff, rtol,
                           diff <= rtol, f"{loss:.5f} vs eager {ref:.5f}"))
    return out
