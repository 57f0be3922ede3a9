"""Each wiring against a hand-written computation of its equations (docs/study.md), plus the
structural claims: which MLPs depend on their own block's MHA, and parameter counts."""

import pytest
import torch
import torch.nn as nn

from falstudy.config import ModelConfig, RunConfig, format_validation_error
from falstudy.models import GPT, VARIANTS
from falstudy.models.gpt import apply_rope

TINY = dict(n_layer=3, n_head=2, n_embd=16, block_size=8, vocab_size=37)


def make(variant: str | None = None, **fields) -> GPT:
    torch.manual_seed(0)
    cfg = RunConfig(variant=variant, model={**TINY, **fields}).model
    model = GPT(cfg).eval()
    with torch.no_grad():  # make every norm and gate matter: random affine parameters
        for name, p in model.named_parameters():
            if "ln" in name or "norm" in name or "gate" in name or "dwa" in name:
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith("weight") else 0.0))
    return model


def reference_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """The variants' equations, written out directly over the model's own sublayers."""
    cfg, blocks = model.config, model.blocks
    T = idx.shape[1]
    x = model.wte(idx)
    rope = None
    if cfg.pos == "learned":
        x = x + model.wpe(torch.arange(T))
    else:
        rope = (model.rope_cos, model.rope_sin)
    sources = cfg.fal_source_layers
    last_source = max(sources)
    shared_nf = blocks[last_source].fal_norm if cfg.uses_fal_source else None
    attn_outs: dict[int, torch.Tensor] = {}
    post = cfg.norm_placement == "post"
    first_v: list[torch.Tensor] = []
    history = [x]

    def read(norm, t):  # what a sublayer reads: LN t (pre-LN) or t (post-LN)
        return t if post or norm is None else norm(t)

    def add(norm, t):  # a residual sum, normalised under post-LN
        return norm(t) if post else t

    def attention(b, n) -> torch.Tensor:
        """MHA written out, with the value residual v <- lambda v + (1 - lambda) v_first."""
        B, T, _ = n.shape
        q, k, v = (lin(n).view(B, T, cfg.n_head, cfg.head_dim).transpose(1, 2) for lin in (b.attn.q, b.attn.k, b.attn.v))
        if cfg.value_residual:
            if first_v:
                v = cfg.value_residual_lambda * v + (1 - cfg.value_residual_lambda) * first_v[0]
            else:
                first_v.append(v)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return b.attn.proj(y.transpose(1, 2).reshape(B, T, -1))

    def substitute(b) -> torch.Tensor:
        """N_f(a_src), or a_src itself for the ln_sum form, times the gate if any."""
        a_src = sum(attn_outs[k] for k in sources) / len(sources)
        norm = b.fal_norm_in if b.fal_norm_in is not None else shared_nf
        s = norm(a_src) if norm is not None else a_src
        return b.fal_gate * s if b.fal_gate is not None else s

    if cfg.residual == "ladder":
        return model.lm_head(model.ln_f(ladder_stream(model, x, attention, substitute, attn_outs)))

    for i, b in enumerate(blocks):
        role = model.roles[i]
        ln1, ln2 = b.ln_1, (b.ln_2 if b.ln_2 is not None else b.ln_1)
        g1 = b.gate_1 if b.gate_1 is not None else 1.0
        g2 = b.gate_2 if b.gate_2 is not None else 1.0
        if role == "no_attn":
            x = add(ln2, x + g2 * b.mlp(read(ln2, x)))
        else:
            a = attention(b, read(ln1, x))
            attn_outs[i] = a
        if role == "baseline":
            h = add(ln1, x + g1 * a)
            x = add(ln2, h + g2 * b.mlp(read(ln2, h)))
        elif role == "no_mlp":
            x = add(ln1, x + g1 * a)
        elif role == "parallel":
            x = add(ln1, x + g1 * (a + b.mlp(read(ln2, x))))
        elif role in ("fal", "fal_source"):
            s = substitute(b)
            form = cfg.fal_mlp_input
            m = b.mlp({"ln_plus_nf": read(ln2, x) + s, "ln_sum": read(ln2, x + s), "nf_only": s}[form])
            x = add(ln1, x + g1 * (a + m) if role == "fal" else x + g1 * a + g2 * m)
        elif role == "fal_plus":
            s = substitute(b)
            h = add(ln1, x + g1 * a)
            if cfg.fal_plus_form == "f1":  # h = x + MHA(LN x) + N_f(a_1); x' = h + MLP(LN h)
                h = h + s
                m = b.mlp(read(ln2, h))
            elif cfg.fal_plus_form == "f2":  # x' = h + MLP(LN(h + N_f(a_1)))
                m = b.mlp(read(ln2, h + s))
            else:  # f3: x' = h + MLP(LN h + N_f(a_1))
                m = b.mlp(read(ln2, h) + s)
            x = add(ln2, h + g2 * m)
        elif role != "no_attn":
            raise AssertionError(role)
        if cfg.dense_dwa:  # DenseFormer: x = sum_j alpha_ij X_j over the embedding and blocks 0..i
            history.append(x)
            x = sum(w * h for w, h in zip(b.dwa, history))
    return model.lm_head(model.ln_f(x))


def ladder_stream(model: GPT, x, attention, substitute, attn_outs) -> torch.Tensor:
    """Ladder residual (Zhang et al. 2025): modules k = 0..K-1 (a serial block's MHA then MLP; a
    fal block whole) with o_k = F_k(LN r_{k-1}) and r_k = r_{k-1} + o_{k-1}: each module reads the
    stream before the previous module's output is added. The final stream adds the last o."""
    cfg, modules = model.config, []
    for i, b in enumerate(model.blocks):
        if model.roles[i] == "ladder":
            modules += [lambda r, b=b, i=i: attn_outs.setdefault(i, attention(b, b.ln_1(r))),
                        lambda r, b=b: b.mlp(b.ln_2(r))]
        else:  # fal_ladder: o = MHA(LN r) + MLP(fal input), one module
            def fal(r, b=b):
                ln2, s = (b.ln_2 if b.ln_2 is not None else b.ln_1), substitute(b)
                m_in = {"ln_plus_nf": ln2(r) + s, "ln_sum": ln2(r + s), "nf_only": s}[cfg.fal_mlp_input]
                return attention(b, b.ln_1(r)) + b.mlp(m_in)
            modules.append(fal)
    r, o_prev = x, torch.zeros_like(x)
    for F in modules:
        o = F(r)  # reads r_{k-1}, which does not hold o_{k-1} yet
        r, o_prev = r + o_prev, o
    return r + o_prev


CASES = [(v, {}) for v in VARIANTS] + [
    ("fal", {"fal_source_layer": 1}),
    ("fal", {"fal_source_mean": 2}),
    ("fal_plus", {"fal_source_mean": 2, "fal_norm": "per_layer"}),
    ("fal", {"fal_gate": True, "fal_norm": "per_layer", "shared_ln": False}),
    ("fal_ln_sum", {"fal_gate": True}),
    ("fal_plus_f3", {"fal_gate": True}),
    ("no_attn", {"ablate_layers": [0, 2]}),
    ("no_mlp", {"ablate_layers": [1]}),
    ("fal", {"norm": "rmsnorm", "mlp": "swiglu", "pos": "rope", "bias": False}),
] + [  # the related wirings on every wiring they combine with
    (v, switch) for v in ("parallel", "fal", "fal_plus_f1", "fal_plus_f3", "fal_ln_sum", "fal_first_block_fal", "no_attn", "no_mlp")
    for switch in ({"norm_placement": "post"}, {"residual_gates": True}, {"value_residual": True}, {"dense_dwa": True})
] + [
    ("llama_fal", {"norm_placement": "post", "residual_gates": True, "value_residual": True, "dense_dwa": True}),
    ("no_attn", {"ablate_layers": [0], "value_residual": True}),  # the first values come from layer 1
] + [  # ladder residual with the switches it combines with
    ("ladder", {"value_residual": True}),
    ("ladder", {"norm": "rmsnorm", "mlp": "swiglu", "pos": "rope", "bias": False}),
    ("fal_ladder", {"fal_gate": True, "fal_norm": "per_layer", "shared_ln": False}),
    ("fal_ladder", {"fal_mlp_input": "ln_sum"}),
    ("fal_ladder", {"fal_mlp_input": "nf_only", "value_residual": True}),
    ("fal_ladder", {"fal_source_mean": 2}),
    ("fal_ladder", {"fal_source_layer": 1}),
]


@pytest.mark.parametrize("variant,fields", CASES, ids=[f"{v}-{'-'.join(f)}" for v, f in CASES])
def test_forward_matches_the_equations(variant, fields):
    model = make(variant, **fields)
    idx = torch.randint(0, TINY["vocab_size"], (2, TINY["block_size"]))
    with torch.no_grad():
        logits, _ = model(idx)
        expected = reference_logits(model, idx)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_roles_follow_the_source_layer():
    assert make("fal").roles == ["baseline", "fal", "fal"]
    assert make("fal", fal_source_layer=1).roles == ["baseline", "baseline", "fal"]
    assert make("fal_first_block_fal").roles == ["fal_source", "fal", "fal"]
    assert make("no_attn", ablate_layers=[1]).roles == ["baseline", "no_attn", "baseline"]


def _mlp_output_moves_with_own_attention(model: GPT, layer: int) -> bool:
    """Perturb block ``layer``'s MHA output; does the same block's MLP output change?"""
    idx = torch.randint(0, TINY["vocab_size"], (2, TINY["block_size"]))
    seen = []
    keep = model.blocks[layer].mlp.register_forward_hook(lambda m, i, o: seen.append(o.clone()))
    with torch.no_grad():
        model(idx)
        bump = model.blocks[layer].attn.register_forward_hook(lambda m, i, o: o + 10 * torch.randn_like(o))
        model(idx)
    bump.remove()
    keep.remove()
    return not torch.allclose(seen[0], seen[1])


@pytest.mark.parametrize("variant", ["parallel", "fal", "fal_gated", "fal_nf_only", "llama_fal"])
def test_bypassed_mlp_ignores_its_own_attention(variant):
    model = make(variant)
    for layer in range(1, TINY["n_layer"]):
        assert not _mlp_output_moves_with_own_attention(model, layer)


@pytest.mark.parametrize("variant", ["baseline", "fal_plus", "fal_plus_f1", "fal_plus_f3", "fal_ln_sum"])
def test_connected_mlp_reads_its_own_attention(variant):
    model = make(variant)
    if variant == "fal_ln_sum":  # LN(x + a_1): only the source block's MLP sees attention
        assert _mlp_output_moves_with_own_attention(model, 0)
        assert not _mlp_output_moves_with_own_attention(model, 1)
        return
    for layer in range(TINY["n_layer"]):
        assert _mlp_output_moves_with_own_attention(model, layer)


def test_fal_mlps_read_the_first_attention():
    model = make("fal")
    idx = torch.randint(0, TINY["vocab_size"], (2, TINY["block_size"]))
    seen = []
    hook = model.blocks[2].mlp.register_forward_hook(lambda m, i, o: seen.append(o.clone()))
    with torch.no_grad():
        model(idx)
        bump = model.blocks[0].attn.register_forward_hook(lambda m, i, o: o + torch.randn_like(o))
        model(idx)
    bump.remove()
    hook.remove()
    assert not torch.allclose(seen[0], seen[1])


def _non_norm_params(model: GPT) -> int:
    norms = {id(p) for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.RMSNorm)) for p in m.parameters()}
    return sum(p.numel() for n, p in model.named_parameters() if id(p) not in norms and "gate" not in n)


@pytest.mark.parametrize("variant", ["parallel", "fal", "fal_plus", "fal_plus_f1", "fal_gated", "fal_two_ln", "fal_per_layer_norm"])
def test_parameter_counts_match_baseline_up_to_norms(variant):
    base, other = make("baseline"), make(variant)
    assert _non_norm_params(other) == _non_norm_params(base)
    d, L = TINY["n_embd"], TINY["n_layer"]
    norm_params = 2 * d  # weight + bias
    extra = other.num_params() - base.num_params()
    expected = {
        "parallel": -L * norm_params,  # one shared LN per block instead of two
        "fal": -(L - 1) * norm_params + norm_params,  # shared LN in blocks 1.., plus N_f
        "fal_plus": norm_params,
        "fal_plus_f1": norm_params,
        "fal_gated": -(L - 1) * norm_params + norm_params + (L - 1),  # one scalar gate per block
        "fal_two_ln": norm_params,
        "fal_per_layer_norm": -(L - 1) * norm_params + (L - 1) * norm_params,
    }[variant]
    assert extra == expected


def test_no_attn_and_no_mlp_remove_sublayers():
    assert make("no_attn").blocks[1].attn is None
    assert make("no_mlp").blocks[1].mlp is None
    assert make("no_attn", ablate_layers=[1]).blocks[0].attn is not None


@pytest.mark.parametrize(
    "fields,needle",
    [
        ({"n_embd": 30, "n_head": 4}, "model: n_embd=30 is not divisible by n_head=4"),
        ({"wiring": "falx"}, "model.wiring: Input should be"),
        ({"fal_source_layer": 5, "wiring": "fal"}, "source layer 5 does not exist"),
        ({"ablate_layers": [9]}, "ablate_layers has layer 9"),
        ({"n_layers": 4}, "model.n_layers: unknown field"),
        ({"residual": "ladder", "wiring": "parallel"}, "residual='ladder' works on the baseline and fal wirings"),
        ({"residual": "ladder", "norm_placement": "post"}, "does not combine with norm_placement='post'"),
    ],
)
def test_bad_model_configs_name_the_field(fields, needle):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        RunConfig(model={**TINY, **fields})
    assert needle in format_validation_error(err.value, "run.yaml")


def test_unknown_variant_lists_the_known_ones():
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        RunConfig(variant="fall")
    line = format_validation_error(err.value, "run.yaml")
    assert line.startswith("run.yaml: variant: unknown variant 'fall'") and "fal_plus" in line


def test_user_fields_win_over_the_variant_preset():
    cfg = RunConfig(variant="llama_fal", model={"norm": "layernorm"})
    assert cfg.model.wiring == "fal" and cfg.model.norm == "layernorm" and cfg.model.mlp == "swiglu"


def test_model_config_defaults_are_gpt2_like():
    cfg = ModelConfig()
    assert (cfg.wiring, cfg.norm, cfg.mlp, cfg.pos, cfg.fal_plus_form) == ("baseline", "layernorm", "gelu", "learned", "f2")


class CountingComm:
    """Megatron's f and g as identities that count: g in the forward pass, f in the backward."""

    def __init__(self):
        self.fwd = self.bwd = 0
        counter = self

        class F(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x.view_as(x)

            @staticmethod
            def backward(ctx, grad):
                counter.bwd += 1
                return grad

        self._f = F

    def f(self, x):
        return self._f.apply(x)

    def g(self, x):
        self.fwd += 1
        return x

    def g_start(self, x):  # ladder blocks: a g waited for one module later
        from falstudy.models.gpt import Ready

        return Ready(self.g(x))


COUNT_CASES = [(v, {}) for v in VARIANTS] + [
    (v, {"norm_placement": "post", "shared_ln": shared}) for v in ("parallel", "fal", "fal_plus", "fal_first_block_fal")
    for shared in (True, False)
] + [("fal_gated", {"norm_placement": "post"}), ("fal_ln_sum", {"norm_placement": "post", "shared_ln": False})]


@pytest.mark.parametrize("variant,fields", COUNT_CASES, ids=[f"{v}-{'-'.join(map(str, f.values()))}" for v, f in COUNT_CASES])
def test_allreduce_counts_match_the_collective_points_the_model_calls(variant, fields):
    """The cost model's all-reduces per training step (the figures docs/parallel.md and the report
    show) equal the f/g calls of one forward and backward: what tensor parallelism would reduce."""
    from falstudy.parallel.costmodel import allreduce_counts

    model = make(variant, **fields).train()
    comm = CountingComm()
    for block in model.blocks:
        block.comm = comm
    idx = torch.randint(0, TINY["vocab_size"], (2, TINY["block_size"]))
    model(idx, idx)[1].backward()
    want = allreduce_counts(model.config)
    assert (comm.fwd, comm.bwd) == (want["fwd"], want["bwd"])


def test_denseformer_stream_is_what_the_sites_and_the_final_norm_see():
    """With trained (non-identity) depth weights, resid_post of block i is the averaged stream:
    it is the next block's resid_pre and, for the last block, what ln_f reads."""
    model = make("denseformer")
    seen = {}
    hooks = [model.blocks[i].resid_post.register_forward_hook(lambda m, i_, o, i=i: seen.__setitem__(("post", i), o))
             for i in range(TINY["n_layer"])]
    hooks += [model.blocks[i].resid_pre.register_forward_hook(lambda m, i_, o, i=i: seen.__setitem__(("pre", i), o))
              for i in range(TINY["n_layer"])]
    hooks.append(model.ln_f.register_forward_hook(lambda m, i_, o: seen.__setitem__("ln_f", i_[0])))
    with torch.no_grad():
        model(torch.randint(0, TINY["vocab_size"], (2, TINY["block_size"])))
    for h in hooks:
        h.remove()
    assert not torch.equal(model.blocks[1].dwa, torch.tensor([0.0, 0.0, 1.0]))  # make() perturbed them
    for i in range(TINY["n_layer"] - 1):
        assert torch.equal(seen[("post", i)], seen[("pre", i + 1)])
    assert torch.equal(seen[("post", TINY["n_layer"] - 1)], seen["ln_f"])
