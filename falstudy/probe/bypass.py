"""Connection bypass and substitution at inference time.

Each intervention rewrites what block i's MLP reads (the ``blocks.i.mlp`` input), from values
read earlier in the same forward pass (``x_i`` = ``blocks.i.resid_pre`` output, ``a_0`` = the
first block's MHA output; the paper's a_1):

    bypass        MLP reads LN(x_i)                     the ``parallel`` wiring, no substitute
    ln_plus_norm  MLP reads LN(x_i) + N(a_0)            FAL's default form
    ln_sum        MLP reads LN(x_i + a_0)               FAL's ``ln_sum`` form

``LN`` is the block's own MLP norm (``ln_2``, or ``ln_1`` where MHA and MLP share one) with its
learned parameters, applied functionally (post-LN: the norm that makes the MLP's input, or
none where a parallel-form MLP reads x_i itself). ``N`` is a parameter-free normalisation of the
model's norm type: (a - mean(a)) / sqrt(var(a) + eps) over the feature axis for LayerNorm
models, a / rms(a) for RMSNorm models; no learned scale or shift, since a trained baseline has
none for this term. On a ``parallel`` model ``bypass`` reproduces exactly what the MLP already
reads, so it changes nothing.

Scope: one layer at a time (condition ``<kind>``, layer = i), all layers at once
(``<kind>_all``; layer = the first one), or, for ``bypass``, every layer but 0 at once
(``bypass_rest``, layer = 1). ``bypass`` covers every block with both MHA and MLP; the
substitutions start after block 0, which supplies a_0, so ``bypass_rest`` is the cut that
compares like for like with ``ln_plus_norm_all`` and ``ln_sum_all`` (the same MLPs rewritten).

Rows: site ``mlp`` with ``<cond>.loss|delta_loss|ppl|delta_ppl``; and, for every later layer j
>= the (first) intervened layer (``layer_b`` = j), sites ``mlp_in`` and ``resid_post`` with
``<cond>.cka`` (debiased CKA, intact vs intervened, at sampled positions) and ``<cond>.rel_l2``
(||intervened - intact||_F / ||intact||_F over all positions but 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from falstudy.errors import FalstudyError
from falstudy.probe import sites as S
from falstudy.probe.cka import CKAAccumulator, gram_stats
from falstudy.probe.rows import ppl, row

KINDS = ("bypass", "ln_plus_norm", "ln_sum")


@dataclass
class Intervention:
    name: str
    layers: list[int]
    edits: list[S.Edit]


def _edit(model, kind: str, i: int) -> S.Edit:
    norm = S.mlp_norm(model.blocks[i])
    like = norm if norm is not None else model.ln_f  # N's norm type when the MLP reads x itself
    x_i, a_0 = S.Site("resid_pre", i), S.Site("attn_out", 0)
    if kind == "bypass":
        return S.Edit(S.Site("mlp_in", i), lambda v, env: S.apply_norm(norm, env[x_i]), (x_i,))
    if kind == "ln_plus_norm":
        fn = lambda v, env: S.apply_norm(norm, env[x_i]) + S.plain_norm(env[a_0], like)  # noqa: E731
        return S.Edit(S.Site("mlp_in", i), fn, (x_i, a_0))
    if kind == "ln_sum":
        return S.Edit(S.Site("mlp_in", i), lambda v, env: S.apply_norm(norm, env[x_i] + env[a_0]), (x_i, a_0))
    raise FalstudyError(f"unknown bypass kind {kind!r}; known: {', '.join(KINDS)}")


SCOPES = ("single", "all", "rest")


def interventions(model, kinds=KINDS, scopes=SCOPES) -> list[Intervention]:
    both = [
        i for i, b in enumerate(model.blocks) if getattr(b, "attn", None) is not None and getattr(b, "mlp", None) is not None
    ]
    out = []
    for kind in kinds:
        if kind not in KINDS:
            raise FalstudyError(f"unknown bypass kind {kind!r}; known: {', '.join(KINDS)}")
        if kind == "bypass":
            layers = both
        elif getattr(model.blocks[0], "attn", None) is None:
            continue  # no a_0 to substitute
        else:
            layers = [i for i in both if i > 0]
        if "single" in scopes:
            out += [Intervention(kind, [i], [_edit(model, kind, i)]) for i in layers]
        if "all" in scopes and layers:
            out.append(Intervention(f"{kind}_all", layers, [_edit(model, kind, i) for i in layers]))
        rest = [i for i in layers if i > 0]
        if "rest" in scopes and rest and rest != layers:  # only where "all" includes layer 0
            out.append(Intervention(f"{kind}_rest", rest, [_edit(model, kind, i) for i in rest]))
    return out


@dataclass
class _Tally:
    """Running sums for one intervention over the batches."""

    iv: Intervention
    sites: list[S.Site]  # the compared sites from the (first) intervened layer on
    cka: CKAAccumulator
    loss: float = 0.0
    sq_diff: dict = field(default_factory=dict)  # site -> sum of squared differences to intact


def bypass_probe(
    model,
    batches,
    *,
    kinds=KINDS,
    scopes=SCOPES,
    positions_per_seq: int | None = 32,
    exclude_first: bool = True,
    seed: int = 0,
    nm=None,
    progress=None,
) -> list[dict]:
    nm = nm if nm is not None else S.wrap(model)
    order = S.forward_order(model)
    compared = [s for kind in ("mlp_in", "resid_post") for s in S.layer_sites(model, kind)]
    tallies = []
    for iv in interventions(model, kinds, scopes):
        sites = [s for s in compared if s.layer >= iv.layers[0]]
        acc = CKAAccumulator([(("intact", s), ("edit", s)) for s in sites])
        tallies.append(_Tally(iv, sites, acc, sq_diff={s: 0.0 for s in sites}))
    if not tallies:
        return []
    sq_ref = {s: 0.0 for s in compared}
    intact = 0.0
    gen = torch.Generator().manual_seed(seed)
    start = 1 if exclude_first else 0
    with torch.no_grad():
        for x, y in batches:
            idx = S.sample_positions(x.shape[0], x.shape[1], positions_per_seq, gen, exclude_first)
            env0, loss0 = S.trace(nm, x, y, S.make_plan(order, compared))
            intact += float(loss0)
            ref_stats = {s: gram_stats(S.gather(env0[s], idx)) for s in compared}  # shared by all
            for s in compared:
                sq_ref[s] += float(env0[s][:, start:].double().square().sum())
            for t in tallies:
                env, loss = S.trace(nm, x, y, S.make_plan(order, t.sites, t.iv.edits))
                t.loss += float(loss)
                feats = {("intact", s): ref_stats[s] for s in t.sites}
                feats.update({("edit", s): S.gather(env[s], idx) for s in t.sites})
                t.cka.update(feats)
                for s in t.sites:
                    t.sq_diff[s] += float((env[s] - env0[s])[:, start:].double().square().sum())
            if progress:
                progress(1)
    n = len(batches)
    base = intact / n
    rows = []
    for t in tallies:
        name, first, loss = t.iv.name, t.iv.layers[0], t.loss / n
        extra = dict(layers=t.iv.layers, intact_loss=base, n_batches=n)
        rows += [
            row("bypass", "mlp", first, f"{name}.loss", loss, **extra),
            row("bypass", "mlp", first, f"{name}.delta_loss", loss - base, **extra),
            row("bypass", "mlp", first, f"{name}.ppl", ppl(loss), **extra),
            row("bypass", "mlp", first, f"{name}.delta_ppl", ppl(loss) - ppl(base), **extra),
        ]
        cka = t.cka.result()
        extra["n_samples"] = t.cka.n_samples
        for s in t.sites:
            rel = (t.sq_diff[s] / sq_ref[s]) ** 0.5 if sq_ref[s] > 0 else float("nan")
            rows.append(row("bypass", s.kind, first, f"{name}.cka", cka[(("intact", s), ("edit", s))], layer_b=s.layer, **extra))
            rows.append(row("bypass", s.kind, first, f"{name}.rel_l2", rel, layer_b=s.layer, **extra))
    return rows
