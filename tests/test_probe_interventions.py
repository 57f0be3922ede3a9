"""Attention removal and connection bypass: the edits do what their equations say."""

import json

import pytest
import torch
import torch.nn.functional as F

from falstudy.config import ModelConfig
from falstudy.models.gpt import GPT
from falstudy.probe import sites as S
from falstudy.probe.ablate import ablation_edits, attention_means, attention_removal
from falstudy.probe.bypass import bypass_probe

TINY = dict(n_layer=3, n_head=4, n_embd=32, block_size=16, vocab_size=48)


def tiny(wiring: str = "baseline", perturb: bool = True, **fields) -> GPT:
    """Random weights large enough that every sublayer visibly matters."""
    torch.manual_seed(0)
    m = GPT(ModelConfig(**{**TINY, "wiring": wiring, **fields})).eval()
    if perturb:
        with torch.no_grad():
            for name, p in m.named_parameters():
                if p.dim() >= 2:
                    p.normal_(0, 0.3)
                else:
                    p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
    return m


def batches(n: int = 2, b: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 48, (b, 16), generator=g), torch.randint(0, 48, (b, 16), generator=g)) for _ in range(n)]


def pick(rows, metric, layer=None, site=None, layer_b=None):
    out = [
        r["value"]
        for r in rows
        if r["metric"] == metric
        and (layer is None or r["layer"] == layer)
        and (site is None or r["site"] == site)
        and (layer_b is None or r["layer_b"] == layer_b)
    ]
    assert len(out) == 1, (metric, layer, site, layer_b, len(out))
    return out[0]


# --- attention removal ------------------------------------------------------------------------


@pytest.mark.parametrize("wiring", ["baseline", "parallel", "fal"])
@pytest.mark.parametrize("layer", [0, 1, 2])
def test_zero_ablation_changes_activations_only_from_its_layer_on(wiring, layer):
    m = tiny(wiring)
    nm, order = S.wrap(m), S.forward_order(m)
    x, _ = batches(1)[0]
    sites = [S.Site(k, i) for i in range(3) for k in ("resid_pre", "resid_mid", "resid_post")]
    with torch.no_grad():
        intact, _ = S.trace(nm, x, None, S.make_plan(order, sites))
        ablated, _ = S.trace(nm, x, None, S.make_plan(order, sites, ablation_edits([layer], "zero")))
    for s in sites:
        same = torch.equal(intact[s], ablated[s])
        changed_expected = s.layer > layer or (s.layer == layer and s.kind != "resid_pre")
        assert same != changed_expected, f"{s} {'unchanged' if same else 'changed'} after ablating layer {layer}"


def test_mean_ablation_writes_the_reference_mean_at_every_position():
    m = tiny()
    nm, order = S.wrap(m), S.forward_order(m)
    ref = batches(1, seed=5)[0][0]
    means = attention_means(m, ref, nm=nm)
    with torch.no_grad():
        plain, _ = S.trace(nm, ref, None, S.make_plan(order, [S.Site("attn_out", 1)]))
        env, _ = S.trace(nm, batches(1)[0][0], None, S.make_plan(order, [], ablation_edits([1], "mean", means)))
    assert torch.allclose(means[1], plain[S.Site("attn_out", 1)][:, 1:].mean((0, 1)))
    got = env[S.Site("attn_out", 1)]
    assert torch.equal(got, means[1].expand_as(got))


def test_attention_removal_rows_and_cumulative_consistency():
    m = tiny()
    rows = attention_removal(m, batches())
    assert {r["site"] for r in rows} == {"attn_out"}
    # modes x (single and cumulative at 3 layers, rest once) x (loss, delta_loss, ppl, delta_ppl)
    assert len(rows) == 2 * (2 * 3 + 1) * 4
    # cumulative removal of layers 0..0 is single removal of layer 0
    assert pick(rows, "zero_cumulative.loss", 0) == pick(rows, "zero.loss", 0)
    # removing attention everywhere hurts these weights more than nothing
    assert pick(rows, "zero_cumulative.delta_loss", 2) != 0
    last = next(r for r in rows if r["metric"] == "mean_cumulative.loss" and r["layer"] == 2)
    assert json.loads(last["extra_json"])["layers"] == [0, 1, 2]
    # by hand: zero attention of layer 1 in a baseline model
    x, y = batches()[0]
    with torch.no_grad():
        h = m.wte(x) + m.wpe(torch.arange(16))
        for i, b in enumerate(m.blocks):
            if i == 1:
                h = h + b.mlp(b.ln_2(h))
            else:
                h, _ = b(h)
        manual = F.cross_entropy(m.lm_head(m.ln_f(h)).flatten(0, 1), y.flatten())
    one = attention_removal(m, [(x, y)], modes=["zero"], schemes=["single"])
    assert pick(one, "zero.loss", 1) == pytest.approx(float(manual), abs=1e-5)


def loss_of(m, data, block_fn) -> float:
    """Mean loss of a forward pass written by hand: ``block_fn(i, block, h, src) -> (h, src)``."""
    total = 0.0
    with torch.no_grad():
        for x, y in data:
            h, src = m.wte(x) + m.wpe(torch.arange(16)), None
            for i, b in enumerate(m.blocks):
                h, src = block_fn(i, b, h, src)
            total += float(F.cross_entropy(m.lm_head(m.ln_f(h)).flatten(0, 1), y.flatten()))
    return total / len(data)


def test_rest_removes_every_attention_but_the_first_at_once():
    m = tiny()
    data = batches()
    rows = attention_removal(m, data, modes=["zero"], schemes=["rest"])
    assert {r["metric"] for r in rows} == {f"zero_rest.{k}" for k in ("loss", "delta_loss", "ppl", "delta_ppl")}
    assert json.loads(rows[0]["extra_json"])["layers"] == [1, 2] and rows[0]["layer"] == 1

    def no_later_attention(i, b, h, src):
        return (b(h)[0] if i == 0 else h + b.mlp(b.ln_2(h))), src

    assert pick(rows, "zero_rest.loss", 1) == pytest.approx(loss_of(m, data, no_later_attention), abs=1e-5)


def test_stream_only_removal_on_fal_keeps_the_substitute_signal():
    """On fal, zeroing a_0 also zeroes N_f(a_0); ``zero_stream`` removes a_0 from the stream only."""
    m = tiny("fal")
    data = batches()
    rows = attention_removal(m, data, modes=["zero"], schemes=["single"])
    assert pick(rows, "zero_stream.loss", 0) != pytest.approx(pick(rows, "zero.loss", 0), abs=1e-4)
    # a later layer's attention does not feed N_f: both conditions are the same intervention
    assert pick(rows, "zero_stream.loss", 1) == pick(rows, "zero.loss", 1)

    def stream_only(i, b, h, src):
        if i == 0:  # block 0 is baseline-form: its MLP reads LN2(x) once a_0 leaves the stream
            a = b.attn(b.ln_1(h))
            return h + b.mlp(b.ln_2(h)), b._make_src(a)
        return b(h, src)

    assert pick(rows, "zero_stream.loss", 0) == pytest.approx(loss_of(m, data, stream_only), abs=1e-5)
    assert not any(r["metric"].startswith("zero_stream") for r in attention_removal(tiny(), batches(1)))


def test_attention_removal_skips_blocks_without_attention():
    rows = attention_removal(tiny("no_attn", ablate_layers=[1]), batches(1), modes=["zero"], schemes=["single"])
    assert sorted({r["layer"] for r in rows}) == [0, 2]
    assert attention_removal(tiny("no_attn"), batches(1)) == []


# --- bypass and substitution ------------------------------------------------------------------


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_bypass_on_parallel_changes_nothing(placement):
    rows = bypass_probe(tiny("parallel", norm_placement=placement), batches(), kinds=["bypass"])
    for layer in (0, 1, 2):
        assert pick(rows, "bypass.delta_loss", layer) == pytest.approx(0.0, abs=1e-6)
    assert pick(rows, "bypass_all.delta_loss", 0) == pytest.approx(0.0, abs=1e-6)
    sims = [r for r in rows if r["metric"].endswith((".cka", ".rel_l2"))]
    assert sims and all(
        r["value"] == pytest.approx(1.0 if r["metric"].endswith("cka") else 0.0, abs=1e-6) for r in sims
    )


def test_bypass_on_baseline_changes_the_loss_and_matches_the_equation():
    m = tiny("baseline")
    data = batches()
    rows = bypass_probe(m, data, kinds=["bypass"])
    assert all(abs(pick(rows, "bypass.delta_loss", i)) > 1e-4 for i in range(3))
    # the MLP input at the intervened layer itself moves, and everything after it
    assert pick(rows, "bypass.rel_l2", 1, "mlp_in", 1) > 0.01
    assert pick(rows, "bypass.rel_l2", 1, "resid_post", 2) > 0.01
    assert not any(r["layer_b"] == 0 and r["layer"] == 1 for r in rows)  # only later layers compared
    # by hand: block 1's MLP reads LN2(x_1) instead of LN2(x_1 + a_1)
    cut = lambda b, h: h + b.attn(b.ln_1(h)) + b.mlp(b.ln_2(h))  # noqa: E731
    assert pick(rows, "bypass.loss", 1) == pytest.approx(loss_with_block(m, data, 1, cut), abs=1e-5)


def loss_with_block(m, data, layer: int, block_fn) -> float:
    """Mean loss with block ``layer`` replaced by ``block_fn(block, h)`` (written by hand)."""
    total = 0.0
    with torch.no_grad():
        for x, y in data:
            h = m.wte(x) + m.wpe(torch.arange(16))
            for i, b in enumerate(m.blocks):
                h = block_fn(b, h) if i == layer else b(h)[0]
            total += float(F.cross_entropy(m.lm_head(m.ln_f(h)).flatten(0, 1), y.flatten()))
    return total / len(data)


def test_bypass_on_a_post_ln_baseline_cuts_attention_out_of_the_mlp_input():
    """Post-LN: block 1's MLP reads LN1(x_1) instead of LN1(x_1 + a_1); the stream keeps a_1."""
    m = tiny("baseline", norm_placement="post")
    data = batches()
    rows = bypass_probe(m, data, kinds=["bypass"], scopes=("single",))
    cut = lambda b, h: b.ln_2(b.ln_1(h + b.attn(h)) + b.mlp(b.ln_1(h)))  # noqa: E731
    assert pick(rows, "bypass.loss", 1) == pytest.approx(loss_with_block(m, data, 1, cut), abs=1e-5)


def test_substitutions_follow_their_equations():
    m = tiny("baseline")
    x, y = batches(1)[0]
    rows = bypass_probe(m, [(x, y)], kinds=["ln_plus_norm", "ln_sum"], scopes=["single"])
    with torch.no_grad():
        h = m.wte(x) + m.wpe(torch.arange(16))
        a0 = m.blocks[0].attn(m.blocks[0].ln_1(h))
        out = {}
        for kind in ("ln_plus_norm", "ln_sum"):
            z = h
            for i, b in enumerate(m.blocks):
                if i == 2:
                    a = b.attn(b.ln_1(z))
                    mlp_in = b.ln_2(z) + F.layer_norm(a0, (32,)) if kind == "ln_plus_norm" else b.ln_2(z + a0)
                    z = z + a + b.mlp(mlp_in)
                else:
                    z, _ = b(z)
            out[kind] = float(F.cross_entropy(m.lm_head(m.ln_f(z)).flatten(0, 1), y.flatten()))
    assert pick(rows, "ln_plus_norm.loss", 2) == pytest.approx(out["ln_plus_norm"], abs=1e-5)
    assert pick(rows, "ln_sum.loss", 2) == pytest.approx(out["ln_sum"], abs=1e-5)
    assert not any(r["layer"] == 0 for r in rows)  # block 0 supplies a_0: never substituted


def test_bypass_rest_cuts_the_same_mlps_the_substitutes_rewrite():
    m = tiny("baseline")
    data = batches()
    rows = bypass_probe(m, data, kinds=["bypass", "ln_sum"], scopes=["all", "rest"])
    assert json.loads(next(r for r in rows if r["metric"] == "bypass_rest.loss")["extra_json"])["layers"] == [1, 2]
    assert json.loads(next(r for r in rows if r["metric"] == "ln_sum_all.loss")["extra_json"])["layers"] == [1, 2]
    assert json.loads(next(r for r in rows if r["metric"] == "bypass_all.loss")["extra_json"])["layers"] == [0, 1, 2]
    assert not any(r["metric"].startswith("ln_sum_rest") for r in rows)  # "all" already starts at layer 1

    def cut_later(i, b, h, src):
        return (b(h)[0] if i == 0 else h + b.attn(b.ln_1(h)) + b.mlp(b.ln_2(h))), src

    assert pick(rows, "bypass_rest.loss", 1) == pytest.approx(loss_of(m, data, cut_later), abs=1e-5)


def test_fal_model_already_reads_ln_plus_plain_norm_of_a0():
    # a fresh fal model's N_f is a LayerNorm with unit scale and zero shift: the parameter-free N
    rows = bypass_probe(tiny("fal", perturb=False), batches(), kinds=["ln_plus_norm"])
    assert pick(rows, "ln_plus_norm_all.delta_loss", 1) == pytest.approx(0.0, abs=1e-6)


def test_bypass_skips_what_a_wiring_lacks():
    assert bypass_probe(tiny("no_attn"), batches(1)) == []
    rows = bypass_probe(tiny("no_mlp", ablate_layers=[2]), batches(1), kinds=["bypass"], scopes=["single"])
    assert sorted({r["layer"] for r in rows if r["site"] == "mlp"}) == [0, 1]
    assert not any(r["site"] == "mlp_in" and r["layer_b"] == 2 for r in rows)
