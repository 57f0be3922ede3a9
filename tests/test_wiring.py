"""The block plan (falstudy.models.wiring) is what the model is: its submodules, its edges, its
probe-only work, and the ladder residual's probe sites."""

import pytest
import torch

from falstudy.config import RunConfig
from falstudy.models import GPT, VARIANTS
from falstudy.models.gpt import Tap
from falstudy.models.wiring import PARALLEL_FORM, BlockPlan, block_plans
from falstudy.probe import sites as S

TINY = dict(n_layer=3, n_head=2, n_embd=16, block_size=8, vocab_size=37)
OPTIONAL = ("ln_1", "attn", "ln_2", "mlp", "dwa", "gate_1", "gate_2", "fal_norm", "fal_src", "fal_norm_in",
            "fal_gate", "fal_in")


def tiny(variant: str, **fields) -> GPT:
    torch.manual_seed(0)
    return GPT(RunConfig(variant=variant, model={**TINY, **fields}).model).eval()


def tokens() -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (2, TINY["block_size"]), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_block_has_every_optional_submodule_as_its_plan_says(variant):
    model = tiny(variant)
    for block, plan in zip(model.blocks, block_plans(model.config)):
        assert block.plan == plan == BlockPlan.of(model.config, plan.layer)
        taps = {"fal_src": plan.emits_src, "fal_in": plan.consumes_src}
        for name in OPTIONAL:
            want = taps[name] if name in taps else getattr(plan, name)
            assert (getattr(block, name) is not None) == bool(want), (plan.layer, name)


def _moves(model: GPT, src: str, dst: str) -> bool:
    """Does perturbing the output of module ``src`` change what module ``dst`` reads (or, for a
    stream site or ln_f, its value)?"""
    seen = []
    target = S.module_at(model, dst)
    keep = (target.register_forward_pre_hook(lambda m, i: seen.append(i[0].clone())) if dst.endswith(".mlp")
            else target.register_forward_hook(lambda m, i, o: seen.append(o.clone())))
    with torch.no_grad():
        model(tokens())
        bump = S.module_at(model, src).register_forward_hook(lambda m, i, o: o + torch.randn_like(o))
        model(tokens())
    bump.remove()
    keep.remove()
    return not torch.allclose(seen[0], seen[1])


@pytest.mark.parametrize("variant", ["baseline", "parallel", "fal", "fal_plus", "fal_ln_sum", "fal_first_block_fal",
                                     "ladder", "fal_ladder"])
def test_edges_into_each_mlp_are_its_real_inputs(variant):
    """Every sublayer -> MLP edge the plan names is a real dependency, and every sublayer of this
    or the previous block that the plan does not connect to the MLP leaves its input alone."""
    model = tiny(variant)
    for plan in model.plans[1:]:
        i = plan.layer
        for src in (f"blocks.{i}.attn", f"blocks.{i - 1}.attn", f"blocks.{i - 1}.mlp"):
            named = f"{src}->blocks.{i}.mlp" in plan.edges
            if named or src.endswith(f"{i}.attn"):  # older sublayers reach every MLP through the stream
                assert _moves(model, src, f"blocks.{i}.mlp") == named, (i, src, plan.edges)


def test_ladder_edges_name_the_late_adds():
    lad, fal = tiny("ladder").plans, tiny("fal_ladder").plans
    assert "blocks.0.mlp->blocks.1.mlp" in lad[1].edges and "blocks.1.attn->blocks.1.mlp" not in lad[1].edges
    assert "blocks.2.mlp->ln_f" in lad[2].edges
    assert "blocks.0.fal_src->blocks.2.mlp" in fal[2].edges  # a_1 -> MLP_j
    assert {"blocks.1.attn->blocks.2.resid_post", "blocks.1.mlp->blocks.2.resid_post"} <= set(fal[2].edges)
    model = tiny("fal_ladder")
    assert _moves(model, "blocks.1.mlp", "blocks.2.resid_post") and not _moves(model, "blocks.1.mlp", "blocks.1.resid_post")


@pytest.mark.parametrize("variant", ["parallel", "fal", "fal_ladder"])
def test_parallel_form_resid_mid_is_computed_only_when_read(variant, monkeypatch):
    """The training path pays no x + a for the probe-only resid_mid; a hook still sees x + a."""
    calls = []
    forward = Tap.forward
    monkeypatch.setattr(Tap, "forward", lambda self, x: calls.append(self) or forward(self, x))
    model = tiny(variant)
    mids = [b.resid_mid for b in model.blocks if b.role in PARALLEL_FORM]
    assert mids
    with torch.no_grad():
        model(tokens())
    assert not any(c in mids for c in calls)
    seen = {}
    block = next(b for b in model.blocks if b.role in PARALLEL_FORM)
    hooks = [block.resid_mid.register_forward_hook(lambda m, i, o: seen.__setitem__("mid", o)),
             block.resid_pre.register_forward_hook(lambda m, i, o: seen.__setitem__("pre", o)),
             block.attn.register_forward_hook(lambda m, i, o: seen.__setitem__("attn", o))]
    with torch.no_grad():
        model(tokens())
    for h in hooks:
        h.remove()
    assert torch.equal(seen["mid"], seen["pre"] + seen["attn"])


@pytest.mark.parametrize("variant", ["ladder", "fal_ladder"])
def test_ladder_probe_sites(variant):
    """Every site is cached, and the values follow the ladder equation: block i's stream picks up
    the previous module's output one module late."""
    import falstudy

    model = tiny(variant)
    logits, cache = falstudy.run_with_cache(model, tokens())
    torch.testing.assert_close(logits, model(tokens())[0], rtol=0, atol=0)
    for i in range(TINY["n_layer"]):
        assert f"blocks.{i}.attn.output" in cache and f"blocks.{i}.resid_post.output" in cache
    c = lambda name: cache[name]  # noqa: E731
    for i in range(TINY["n_layer"] - 1):
        assert torch.equal(c(f"blocks.{i}.resid_post.output"), c(f"blocks.{i + 1}.resid_pre.output"))
    if variant == "ladder":  # h_1 = x_1 + m_0; the MLP reads LN2(h_1); x_2 = h_1 + a_1
        b1 = model.blocks[1]
        torch.testing.assert_close(c("blocks.1.resid_mid.output"), c("blocks.1.resid_pre.output") + c("blocks.0.mlp.output"))
        torch.testing.assert_close(c("blocks.1.mlp.input"), b1.ln_2(c("blocks.1.resid_mid.output")))
        torch.testing.assert_close(c("blocks.1.resid_post.output"), c("blocks.1.resid_mid.output") + c("blocks.1.attn.output"))
    else:  # x_2 = x_1 + a_1' + m_1' of block 1 ... added by block 2: resid_post_2 = resid_pre_2 + a_1 + m_1
        torch.testing.assert_close(c("blocks.2.resid_post.output"),
                                   c("blocks.2.resid_pre.output") + c("blocks.1.attn.output") + c("blocks.1.mlp.output"))
    final = c("blocks.2.resid_post.output") + c("blocks.2.mlp.output") + (c("blocks.2.attn.output") if variant == "fal_ladder" else 0)
    torch.testing.assert_close(c("ln_f.output"), model.ln_f(final))


def test_the_docs_embed_the_site_catalogue():
    from pathlib import Path

    from falstudy.models import SITES
    from falstudy.models.catalogue import CATALOGUE, markdown, readme_markdown

    root = Path(__file__).resolve().parents[1]
    assert markdown() in (root / "docs/probes.md").read_text(), \
        "docs/probes.md is out of date: paste falstudy.models.catalogue.markdown()"
    assert readme_markdown() in (root / "README.md").read_text(), \
        "README.md is out of date: paste falstudy.models.catalogue.readme_markdown()"
    assert list(SITES) == [s.name for s in CATALOGUE] and list(S.SITE_KINDS) == [s.kind for s in CATALOGUE]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_catalogued_module_is_on_every_block(variant):
    """Each site's module is an attribute of every block (None where the wiring has none), and
    each one present is called in a forward pass (forward_order sees it)."""
    from falstudy.models.catalogue import MODULES

    model = tiny(variant)
    order = S.forward_order(model)
    for i, block in enumerate(model.blocks):
        for mod in MODULES:
            assert hasattr(block, mod)
            if getattr(block, mod) is not None:
                assert (f"blocks.{i}.{mod}", "output") in order, (i, mod)
