"""Site names, forward order per wiring, and the one-trace read/edit engine against plain torch."""

import pytest
import torch

from falstudy.config import ModelConfig
from falstudy.errors import FalstudyError
from falstudy.models.gpt import GPT
from falstudy.probe import sites as S

TINY = dict(n_layer=3, n_head=4, n_embd=32, block_size=16, vocab_size=48)


def tiny(wiring: str = "baseline", **fields) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(**{**TINY, "wiring": wiring, **fields})).eval()


@pytest.mark.parametrize(
    "text,site",
    [
        ("blocks.2.attn", S.Site("attn_out", 2)),
        ("blocks.2.attn.output", S.Site("attn_out", 2)),
        ("blocks.0.mlp.input", S.Site("mlp_in", 0)),
        ("blocks.1.mlp.output", S.Site("mlp_out", 1)),
        ("blocks.1.resid_mid", S.Site("resid_mid", 1)),
        ("mlp_in@2", S.Site("mlp_in", 2)),
        ("ln_f", S.Site("ln_f", 3)),
    ],
)
def test_parse_site(text, site):
    assert S.parse_site(text, n_layer=3) == site


@pytest.mark.parametrize(
    "text,msg",
    [
        ("blocks.1.mlp", "ambiguous"),
        ("blocks.1.attention", "unknown site"),
        ("blocks.7.attn", "layer 7 does not exist"),
        ("attn_out@x", "unknown site"),
        ("nonsense", "unknown site"),
    ],
)
def test_bad_site_names_are_user_errors(text, msg):
    with pytest.raises(FalstudyError, match=msg):
        S.parse_site(text, n_layer=3)


def test_forward_order_follows_the_wiring():
    base = S.forward_order(tiny("baseline"))
    par = S.forward_order(tiny("parallel"))
    # baseline computes resid_mid (x + a) before its MLP runs; parallel runs the MLP first
    assert base[("blocks.1.resid_mid", "output")] < base[("blocks.1.mlp", "input")]
    assert par[("blocks.1.mlp", "input")] < par[("blocks.1.resid_mid", "output")]
    assert ("blocks.0.attn", "output") not in S.forward_order(tiny("no_attn"))


def test_absent_sites_are_skipped_and_refused_when_named():
    m = tiny("no_attn", ablate_layers=[1])
    assert [s.layer for s in S.layer_sites(m, "attn_out")] == [0, 2]
    with pytest.raises(FalstudyError, match="do not exist"):
        S.make_plan(S.forward_order(m), [S.Site("attn_out", 1)])


@pytest.mark.parametrize("wiring", ["baseline", "parallel", "fal"])
def test_trace_reads_the_same_values_as_torch_hooks(wiring):
    m = tiny(wiring)
    x = torch.randint(0, 48, (2, 16))
    y = torch.randint(0, 48, (2, 16))
    want: dict = {}
    hooks = [
        m.blocks[1].attn.register_forward_hook(lambda mod, i, o: want.__setitem__("attn", o)),
        m.blocks[1].mlp.register_forward_pre_hook(lambda mod, i: want.__setitem__("mlp_in", i[0])),
        m.blocks[2].resid_mid.register_forward_hook(lambda mod, i, o: want.__setitem__("mid", o)),
    ]
    with torch.no_grad():
        _, loss = m(x, y)
    for h in hooks:
        h.remove()
    sites = [S.Site("resid_mid", 2), S.Site("mlp_in", 1), S.Site("attn_out", 1)]  # any order
    with torch.no_grad():
        env, got_loss = S.trace(S.wrap(m), x, y, S.make_plan(S.forward_order(m), sites))
    assert torch.equal(env[S.Site("attn_out", 1)], want["attn"])
    assert torch.equal(env[S.Site("mlp_in", 1)], want["mlp_in"])
    assert torch.equal(env[S.Site("resid_mid", 2)], want["mid"])
    assert float(got_loss) == pytest.approx(float(loss), abs=1e-6)


def test_sample_positions_skip_position_zero_and_stay_within_each_sequence():
    rows, cols = S.sample_positions(4, 10, 3, torch.Generator().manual_seed(0))
    assert rows.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert cols.min() >= 1 and cols.max() <= 9
    for b in range(4):
        assert len(set(cols[rows == b].tolist())) == 3  # distinct positions per sequence
    rows, cols = S.sample_positions(2, 5, None, torch.Generator(), exclude_first=False)
    assert cols.tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
