"""Gradient magnitudes: ||dL/d(MHA_i output)|| per layer and per-layer parameter gradient norms.

Activation gradients come from nnsight: the MHA-output handles are captured in forward order,
then ``with loss.backward():`` reads their ``.grad`` in reverse order. L is the model's mean
next-token loss on the batch. Metrics, averaged over batches:

    attn_out     grad_norm            ||dL/da_i||_F over the whole (B, T, d) batch
    attn_out     grad_norm_per_token  mean over tokens of ||d(sum of token losses)/da_i[b, t]||,
                                      i.e. B*T*||dL/da_i[b, t]||: comparable across batch shapes
    attn_out     grad_x_act           sum over tokens of |dL/da_i[b, t] · a_i[b, t]|: the first-order
                                      loss change from removing a_i at each position (nats). Unlike
                                      the norms it does not grow when a_i is small: a norm after a_i
                                      makes dL/da_i scale as 1/scale, so a layer whose input stream is
                                      small (layer 0) gets a large raw gradient for that reason alone
    resid_pre    rms                  root mean square of the stream entering block i (that scale)
    block_params grad_norm            ||dL/dθ|| over all parameters of block i
    attn_params  grad_norm            ... over block i's MHA parameters
    mlp_params   grad_norm            ... over block i's MLP parameters

Models are probed in eval mode (no dropout). ``GradientHook`` is the trainer's form: it works on a
private copy of the model so the trainer's gradients, mode and compiled graph are untouched.
"""

from __future__ import annotations

import copy
import math

import torch

from falstudy.probe import sites as S
from falstudy.probe.rows import row


def _param_norm(module) -> float:
    if module is None:
        return math.nan
    sq = [p.grad.double().square().sum() for p in module.parameters() if p.grad is not None]
    return float(torch.stack(sq).sum().sqrt()) if sq else math.nan


def _one_batch(model, nm, order, x, y) -> dict[tuple[str, int, str], float]:
    attn = S.layer_sites(model, "attn_out")
    streams = S.layer_sites(model, "resid_pre")
    visits = sorted(attn + streams, key=lambda s: order[(s.module_path, s.io)])  # nnsight reads in forward order
    for p in model.parameters():
        p.grad = None
    norms = None
    loss = None
    with nm.trace(x, y):
        handles = {s: S.module_at(nm, s.module_path).output for s in visits}
        rms = S._save([float(handles[s].detach().double().square().mean().sqrt()) for s in streams])
        loss = S._save(nm.output[1])
        norms = S._save([None] * len(attn))
        with loss.backward():
            for k in reversed(range(len(attn))):  # gradients arrive in reverse forward order
                a = handles[attn[k]]
                g = a.grad.detach().double()
                per_token = g.norm(dim=-1).mean() * (g.shape[0] * g.shape[1])
                x_act = (g * a.detach().double()).sum(dim=-1).abs().sum()
                norms[k] = (float(g.norm()), float(per_token), float(x_act))
    out: dict[tuple[str, int, str], float] = {}
    for s, (full, per_token, x_act) in zip(attn, norms):
        out[("attn_out", s.layer, "grad_norm")] = full
        out[("attn_out", s.layer, "grad_norm_per_token")] = per_token
        out[("attn_out", s.layer, "grad_x_act")] = x_act
    for s, value in zip(streams, rms):
        out[("resid_pre", s.layer, "rms")] = value
    for i, block in enumerate(model.blocks):
        out[("block_params", i, "grad_norm")] = _param_norm(block)
        if block.attn is not None:
            out[("attn_params", i, "grad_norm")] = _param_norm(block.attn)
        if block.mlp is not None:
            out[("mlp_params", i, "grad_norm")] = _param_norm(block.mlp)
    out[("loss", -1, "loss")] = float(loss.detach())
    for p in model.parameters():
        p.grad = None
    return out


def gradient_norms(model, batches, *, nm=None, progress=None, **extra) -> list[dict]:
    """Gradient-norm rows for ``model`` averaged over ``batches`` of (x, y)."""
    nm = nm if nm is not None else S.wrap(model)
    was_training = model.training
    model.eval()
    sums: dict[tuple[str, int, str], float] = {}
    n = 0
    order = S.forward_order(model)
    try:
        for x, y in batches:
            for key, v in _one_batch(model, nm, order, x, y).items():
                sums[key] = sums.get(key, 0.0) + v
            n += 1
            if progress:
                progress(1)
    finally:
        model.train(was_training)
    loss = sums.pop(("loss", -1, "loss"), math.nan) / max(n, 1)
    extra = dict(n_batches=n, loss=loss, **extra)
    return [row("grads", site, layer, metric, v / n, **extra) for (site, layer, metric), v in sums.items()]


class GradientHook:
    """The trainer's gradient probe: ``hook(model, step, x, y) -> rows`` on the training batch.

    Wire it as ``train(..., hooks=[(every, GradientHook())])``. Each call copies the current
    weights into a private eval-mode shadow model (made once, wrapped by nnsight once), so the
    caller's ``.grad``, train/eval mode and any torch.compile graph are left alone. Rows carry the
    step; ``run_id`` is None unless given here, for the caller to fill in.
    """

    def __init__(self, run_id: str | None = None):
        self.run_id = run_id
        self._shadow = None
        self._nm = None

    def __call__(self, model, step: int, x: torch.Tensor, y: torch.Tensor) -> list[dict]:
        live = S.unwrap(model)
        if self._shadow is None:
            self._shadow = copy.deepcopy(live).eval()
            self._nm = S.wrap(self._shadow)
        with torch.no_grad():
            self._shadow.load_state_dict(live.state_dict())
        rows = gradient_norms(self._shadow, [(x, y)], nm=self._nm)
        for r in rows:
            r["run_id"], r["step"] = self.run_id, step
        return rows
