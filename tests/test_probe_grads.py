"""Gradient magnitudes through nnsight's backward, checked against plain autograd."""

import json
import math

import pytest
import torch

from falstudy.config import ModelConfig
from falstudy.models.gpt import GPT
from falstudy.probe.grads import GradientHook, gradient_norms

TINY = dict(n_layer=3, n_head=4, n_embd=32, block_size=16, vocab_size=48)


def tiny(wiring: str = "baseline", **fields) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(**{**TINY, "wiring": wiring, **fields})).eval()


def batches(n: int = 2, b: int = 4):
    g = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 48, (b, 16), generator=g), torch.randint(0, 48, (b, 16), generator=g)) for _ in range(n)]


def value(rows, site, layer, metric="grad_norm"):
    (v,) = [r["value"] for r in rows if r["site"] == site and r["layer"] == layer and r["metric"] == metric]
    return v


def autograd_reference(m: GPT, data) -> dict:
    """Mean over batches of ||dL/da_i||, and of the block-i parameter gradient norm."""
    out: dict = {}
    for x, y in data:
        acts = []
        hooks = [b.attn.register_forward_hook(lambda mod, i, o: acts.append(o)) for b in m.blocks]
        _, loss = m(x, y)
        for h in hooks:
            h.remove()
        params = [list(b.parameters()) for b in m.blocks]
        grads = torch.autograd.grad(loss, acts + [p for ps in params for p in ps])
        for i in range(len(m.blocks)):
            out[("a", i)] = out.get(("a", i), 0.0) + float(grads[i].norm()) / len(data)
        k = len(acts)
        for i, ps in enumerate(params):
            g = grads[k : k + len(ps)]
            k += len(ps)
            out[("p", i)] = out.get(("p", i), 0.0) + float(torch.sqrt(sum(t.square().sum() for t in g))) / len(data)
    return out


@pytest.mark.parametrize("wiring", ["baseline", "parallel", "fal"])
def test_gradient_norms_match_autograd_and_are_positive_finite(wiring):
    m, data = tiny(wiring), batches()
    rows = gradient_norms(m, data)
    ref = autograd_reference(m, data)
    for i in range(3):
        assert value(rows, "attn_out", i) == pytest.approx(ref[("a", i)], rel=1e-5)
        assert value(rows, "block_params", i) == pytest.approx(ref[("p", i)], rel=1e-5)
    for r in rows:
        assert math.isfinite(r["value"]) and r["value"] > 0, r
    assert all(p.grad is None for p in m.parameters())  # the probe leaves no gradients behind
    # per-token norm = B*T * mean over tokens of the token's gradient norm: larger, same order
    assert value(rows, "attn_out", 0, "grad_norm_per_token") > value(rows, "attn_out", 0)


def test_fal_source_layer_gets_the_largest_activation_gradient():
    # at init, a_0 feeds every later MLP of a fal model: its gradient collects all of them
    rows = gradient_norms(tiny("fal"), batches())
    first = value(rows, "attn_out", 0)
    assert all(first > value(rows, "attn_out", i) for i in (1, 2))


def test_blocks_without_attention_report_only_parameters():
    rows = gradient_norms(tiny("no_attn", ablate_layers=[1]), batches(1))
    assert sorted(r["layer"] for r in rows if r["site"] == "attn_out" and r["metric"] == "grad_norm") == [0, 2]
    # the stream still enters block 1 (its rms is reported), but nothing of attention
    assert {r["site"] for r in rows if r["layer"] == 1} == {"block_params", "mlp_params", "resid_pre"}


@pytest.mark.parametrize("wiring", ["baseline", "fal"])
def test_scale_free_attribution_and_stream_rms_match_autograd(wiring):
    m, data = tiny(wiring), batches()
    rows = gradient_norms(m, data)
    attribution, rms = [0.0] * 3, [0.0] * 3
    for x, y in data:
        acts, streams = [], []
        hooks = [b.attn.register_forward_hook(lambda mod, i, o: acts.append(o)) for b in m.blocks]
        hooks += [b.resid_pre.register_forward_hook(lambda mod, i, o: streams.append(o)) for b in m.blocks]
        _, loss = m(x, y)
        for h in hooks:
            h.remove()
        grads = torch.autograd.grad(loss, acts)
        for i in range(3):
            attribution[i] += float((grads[i] * acts[i].detach()).sum(-1).abs().sum()) / len(data)
            rms[i] += float(streams[i].detach().square().mean().sqrt()) / len(data)
    for i in range(3):
        assert value(rows, "attn_out", i, "grad_x_act") == pytest.approx(attribution[i], rel=1e-5)
        assert value(rows, "resid_pre", i, "rms") == pytest.approx(rms[i], rel=1e-5)
    # the stream entering block 0 (embeddings, std 0.02 at init) is far smaller than later ones
    assert value(rows, "resid_pre", 0, "rms") < value(rows, "resid_pre", 2, "rms")


def test_trainer_hook_leaves_the_training_state_alone():
    m = tiny().train()
    x, y = batches(1)[0]
    _, loss = m(x, y)
    loss.backward()
    before = {n: p.grad.clone() for n, p in m.named_parameters()}
    hook = GradientHook(run_id="r1")
    rows = hook(m, 7, x, y)
    assert m.training
    assert all(torch.equal(p.grad, before[n]) for n, p in m.named_parameters())
    assert rows and all(r["run_id"] == "r1" and r["step"] == 7 and r["probe"] == "grads" for r in rows)
    # the hook sees the live weights, not the ones it copied first
    with torch.no_grad():
        m.blocks[2].attn.proj.weight.mul_(3.0)
    again = hook(m, 8, x, y)
    assert value(again, "attn_params", 2) != value(rows, "attn_params", 2)
    assert json.loads(rows[0]["extra_json"])["n_batches"] == 1
