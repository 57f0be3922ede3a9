"""The wiring's one owner: each block's role and every per-block decision, as data.

``BlockPlan.of(cfg, layer)`` says, for one block, which sublayers and norms exist, which norm the
MLP reads, where the substitute signal ``s = N_f(a_src)`` is made and consumed, where each of
Megatron's ``f`` and ``g`` stands, which updates are gated, and the block's named edges. The model
(``Block``) is built from it and branches on it; the TP cost model counts its ``f``/``g``; the
concurrency switch, the probes' norm lookup and the report's order read it too. Plain data (no
torch), so the cost model and the report can import it cheaply.

A new wiring is one entry in ``FORMS`` (and the roles that use it in ``block_roles``), one
method on ``Block`` under its equation, and one equation test (docs/wiring.md walks through it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from falstudy.config import WIRINGS, ModelConfig

Role = Literal["baseline", "parallel", "fal", "fal_source", "fal_plus", "no_attn", "no_mlp", "ladder", "fal_ladder"]
ROLES: tuple[str, ...] = Role.__args__  # type: ignore[attr-defined]

# How each role's block computes: the Block method it runs (``Block._<form>``).
#   serial    h = x + a(LN1 x);  x' = h + m(LN2 h)                 (baseline; fal_plus adds s)
#   parallel  x' = x + g(a + m), MHA and MLP read the same x      (parallel, fal)
#   source    the fal-form source block: its MLP reads its own s  (fal_first_block="fal")
#   no_attn / no_mlp: one sublayer
#   ladder / ladder_parallel: serial / parallel whose outputs are added one module later
FORMS: dict[str, str] = {
    "baseline": "serial", "fal_plus": "serial", "parallel": "parallel", "fal": "parallel",
    "fal_source": "source", "no_attn": "no_attn", "no_mlp": "no_mlp",
    "ladder": "ladder", "fal_ladder": "ladder_parallel",
}
# MHA and MLP read the same input, so one g serves both and they may run concurrently
PARALLEL_FORM = frozenset(r for r, form in FORMS.items() if form in ("parallel", "ladder_parallel"))
SERIAL_FORM = frozenset(r for r, form in FORMS.items() if form in ("serial", "ladder"))
CONSUMERS = frozenset({"fal", "fal_source", "fal_plus", "fal_ladder"})  # roles whose MLP reads s
# the study's wirings in the order the paper discusses them (the report's order and colours)
STUDY_ORDER: tuple[str, ...] = WIRINGS


def block_roles(cfg: ModelConfig) -> list[str]:
    """The role of each block: baseline | parallel | fal | fal_source | fal_plus | no_attn | no_mlp
    | ladder | fal_ladder (``residual="ladder"``: the serial blocks become ladder, fal ones fal_ladder)."""
    L = cfg.n_layer
    if cfg.wiring in ("no_attn", "no_mlp"):
        ablated = set(range(L) if cfg.ablate_layers is None else cfg.ablate_layers)
        roles = [cfg.wiring if i in ablated else "baseline" for i in range(L)]
    elif cfg.wiring in ("baseline", "parallel"):
        roles = [cfg.wiring] * L
    else:
        last = max(cfg.fal_source_layers)
        roles = ["baseline"] * (last + 1) + [cfg.wiring] * (L - last - 1)
        if cfg.wiring == "fal" and cfg.fal_first_block == "fal":
            roles[last] = "fal_source"
    if cfg.residual == "ladder":  # config validation allows it on baseline and fal only
        roles = [{"baseline": "ladder", "fal": "fal_ladder"}[r] for r in roles]
    return roles


@dataclass(frozen=True)
class BlockPlan:
    """Every decision about one block. Names in ``f`` / ``g`` say which tensor the operator
    stands on: ``attn_in`` (the MHA's normed input), ``mlp_in`` (the MLP's own normed input),
    ``src_in`` (the substitute term at this consumer); ``attn``, ``mlp`` or ``attn+mlp`` (the
    partial sums leaving the row-parallel linears)."""

    layer: int
    role: str
    form: str  # the Block method: see FORMS
    attn: bool  # sublayers that exist
    mlp: bool
    ln_1: bool  # the MHA's norm (a parallel block's shared norm; post-LN: the norm after the first add)
    ln_2: bool  # the MLP's own norm
    mlp_norm: str | None  # the norm whose output the MLP reads: "ln_1" | "ln_2" | None (the stream itself)
    post: bool  # post-LN: sublayers read the stream; each residual add is normalised
    parallel_form: bool  # MHA and MLP independent: one g for both, may run concurrently
    ladder: bool  # the block's output is added to the stream one module later (g_start / wait)
    gate_1: bool  # a learned scalar on the attention update (a parallel block's single update)
    gate_2: bool  # ... on the MLP update, where it is added on its own
    dwa: bool  # DenseFormer depth weights after the block
    # the substitute signal s
    source_weight: float  # this block's share of the source sum (0: not a source)
    emits_src: bool  # the last source block: makes s from the sum
    consumes_src: bool
    fal_norm: bool  # the shared N_f, at the emitting block
    fal_norm_in: bool  # a per-block N_f, at each consumer
    fal_gate: bool  # a zero-initialised scalar on s, at each consumer
    mlp_input: str | None  # consumers: fal_mlp_input (fal forms) or fal_plus_form (fal_plus)
    f_at_source: bool  # one f on s for the whole stack (each consumer's gradient adds locally)
    f_at_consumer: bool  # one f per consumer (per-block N_f or gate: s differs by block)
    stack_f: int  # 1 if this block's f on s is paid (there are consumers), else 0
    # Megatron's operators in this block (the stack's f on s excluded: ``stack_f``)
    f: tuple[str, ...]
    g: tuple[str, ...]
    edges: tuple[str, ...]  # named data paths into this block's modules: "<from module>-><to module>"

    @property
    def collectives(self) -> tuple[int, int]:
        """All-reduces of one training step in this block: (forward = g, backward = f)."""
        return len(self.g), len(self.f)

    @classmethod
    def of(cls, cfg: ModelConfig, layer: int) -> "BlockPlan":
        return block_plans(cfg)[layer]


def block_plans(cfg: ModelConfig) -> list[BlockPlan]:
    roles = block_roles(cfg)
    sources = cfg.fal_source_layers if cfg.uses_fal_source else []
    any_consumer = any(r in CONSUMERS for r in roles)
    return [_plan(cfg, i, role, roles, sources, any_consumer) for i, role in enumerate(roles)]


def _plan(cfg: ModelConfig, i: int, role: str, roles: list[str], sources: list[int], any_consumer: bool) -> BlockPlan:
    form = FORMS[role]
    parallel_form = role in PARALLEL_FORM or role == "fal_source"  # fal_source shares the LN too
    attn, mlp = role != "no_attn", role != "no_mlp"
    post = cfg.norm_placement == "post"
    fal_forms = cfg.wiring == "fal"
    ln_sum = fal_forms and cfg.fal_mlp_input == "ln_sum"
    # parallel-form blocks share one LN between MHA and MLP unless shared_ln=False; post-LN: one add, one norm
    ln_2 = mlp and not (parallel_form and cfg.shared_ln and attn) and not (post and parallel_form)
    if post:
        mlp_norm = "ln_1" if role in SERIAL_FORM else None
    else:
        mlp_norm = "ln_2" if ln_2 else "ln_1"

    emits = bool(sources) and i == max(sources)
    consumes = role in CONSUMERS
    uses_nf = cfg.uses_fal_source and not ln_sum
    feeds_linear = (fal_forms and not ln_sum) or (cfg.wiring == "fal_plus" and cfg.fal_plus_form == "f3")
    per_block = cfg.fal_norm == "per_layer" or cfg.fal_gate
    f_at_source = emits and feeds_linear and not per_block
    f_at_consumer = consumes and feeds_linear and per_block
    mlp_input = (cfg.fal_mlp_input if fal_forms else cfg.fal_plus_form) if consumes else None

    # where f and g stand (Block's code calls comm.f / comm.g at exactly these tensors)
    f: list[str] = ["attn_in"] if attn else []
    if role in SERIAL_FORM or role == "no_attn":
        f.append("mlp_in")
    elif role in ("parallel", "fal", "fal_source", "fal_ladder"):
        if (mlp_input == "ln_sum") or (mlp_input in (None, "ln_plus_nf") and ln_2):
            f.append("mlp_in")  # the MLP's own norm (or LN(x + s)); else it reuses the MHA's f'd input
    if f_at_consumer:
        f.append("src_in")
    if role in PARALLEL_FORM:
        g = ["attn+mlp"]
    else:
        g = (["attn"] if attn else []) + (["mlp"] if mlp else [])

    return BlockPlan(
        layer=i, role=role, form=form, attn=attn, mlp=mlp, ln_1=attn, ln_2=ln_2, mlp_norm=mlp_norm,
        post=post, parallel_form=role in PARALLEL_FORM, ladder=form.startswith("ladder"),
        gate_1=cfg.residual_gates and attn,
        gate_2=cfg.residual_gates and mlp and role not in PARALLEL_FORM,
        dwa=cfg.dense_dwa,
        source_weight=1.0 / len(sources) if i in sources else 0.0, emits_src=emits, consumes_src=consumes,
        fal_norm=emits and uses_nf and cfg.fal_norm == "shared",
        fal_norm_in=consumes and uses_nf and cfg.fal_norm == "per_layer",
        fal_gate=consumes and cfg.fal_gate, mlp_input=mlp_input,
        f_at_source=f_at_source, f_at_consumer=f_at_consumer, stack_f=int(f_at_source and any_consumer),
        f=tuple(f), g=tuple(g), edges=_edges(i, role, roles, sources, mlp_input),
    )


def _edges(i: int, role: str, roles: list[str], sources: list[int], mlp_input: str | None) -> tuple[str, ...]:
    """Whose output reaches block i's MHA, MLP and output stream, by module path ("a->b"). The
    stream's pass-through (resid_pre -> resid_post) is left implicit."""
    b, prev, last = f"blocks.{i}", f"blocks.{i - 1}", i == len(roles) - 1
    late = FORMS[role].startswith("ladder")
    edges = []
    if role != "no_attn":
        edges.append(f"{b}.resid_pre->{b}.attn")
    if role != "no_mlp":
        if not (role in CONSUMERS and mlp_input == "nf_only"):
            edges.append(f"{b}.resid_pre->{b}.mlp")
        if role in ("baseline", "fal_plus"):
            edges.append(f"{b}.attn->{b}.mlp")  # the MHA->MLP connection FAL bypasses
        if role == "ladder" and i > 0:
            edges.append(f"{prev}.mlp->{b}.mlp")  # the previous MLP's output, added just before this MLP
        if role in CONSUMERS:
            edges.append(f"blocks.{max(sources)}.fal_src->{b}.mlp")  # a_src -> MLP_i
    if late and i > 0:  # the previous module's output reaches the stream one module late
        edges += [f"{prev}.{m}->{b}.resid_post" for m in (("mlp",) if roles[i - 1] == "ladder" else ("attn", "mlp"))]
    out = "ln_f" if late and last else f"{b}.resid_post"
    if role != "no_attn":
        # a ladder MHA's output is added within its block (after the MLP reads the stream)
        edges.append(f"{b}.attn->{b}.resid_post" if role == "ladder" else f"{b}.attn->{out}")
    if role != "no_mlp" and not (role == "ladder" and not last):
        edges.append(f"{b}.mlp->{out}")  # a ladder MLP's output reaches the next block's stream instead
    if i in sources:
        edges.append(f"{b}.attn->blocks.{max(sources)}.fal_src")
    return tuple(edges)
