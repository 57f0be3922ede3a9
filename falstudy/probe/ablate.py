"""Attention removal: the loss when block i's MHA output is replaced, one layer at a time or
cumulatively (layers 0..i), with zeros or with its mean.

The mean ablation uses the mean MHA output over the tokens of a reference batch (position 0
excluded, as for CKA): one d-vector per layer, the same at every position. Interventions are
nnsight edits on the ``blocks.i.attn`` output; the model code is untouched.

Schemes: ``single`` (one layer at a time), ``cumulative`` (layers 0..i) and ``rest`` (every
layer but the first at once; reported at layer 1: the attention counterpart of the bypass
probe's ``bypass_rest``, so the two compare the same layers).

On models with a substitute signal (fal, fal_plus) a_0 is also what N_f(a_0) is made of, so
removing it removes two things. ``<mode>_stream`` removes a_i from the residual stream only and
keeps the substitute signal as the intact model made it (the ``fal_src`` site is restored): the
intervention that compares like for like with a baseline. ``<mode>`` removes it everywhere.

Rows: site ``attn_out``, ``layer`` = i, metrics ``<condition>.loss|delta_loss|ppl|delta_ppl``
with condition ``zero``, ``mean``, ``zero_cumulative``, ``mean_cumulative``, ``zero_rest``,
``mean_rest``, and on fal/fal_plus models ``zero_stream``, ``mean_stream``; the deltas are
against the intact model on the same batches.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch

from falstudy.errors import FalstudyError
from falstudy.probe import sites as S
from falstudy.probe.rows import ppl, row

MODES = ("zero", "mean")
SCHEMES = ("single", "cumulative", "rest")


def attention_means(model, ref: torch.Tensor, *, nm=None, exclude_first: bool = True) -> dict[int, torch.Tensor]:
    """Mean MHA output (d,) per layer over the tokens of a reference batch ``ref`` (B, T)."""
    nm = nm if nm is not None else S.wrap(model)
    attn = S.layer_sites(model, "attn_out")
    plan = S.make_plan(S.forward_order(model), attn)
    with torch.no_grad():
        env, _ = S.trace(nm, ref, None, plan)
    start = 1 if exclude_first and ref.shape[1] > 1 else 0
    return {s.layer: env[s][:, start:].mean(dim=(0, 1)) for s in attn}


def ablation_edits(layers: Iterable[int], mode: str, means: Mapping[int, torch.Tensor] | None = None) -> list[S.Edit]:
    """Edits that replace the MHA output of each listed layer with zeros or its mean."""
    if mode not in MODES:
        raise FalstudyError(f"unknown ablation mode {mode!r}; known: {', '.join(MODES)}")
    if mode == "mean" and means is None:
        raise ValueError("mean ablation needs the layer means (attention_means)")
    edits = []
    for i in layers:
        if mode == "zero":
            fn = lambda v, env: torch.zeros_like(v)  # noqa: E731
        else:
            fn = lambda v, env, m=means[i]: m.to(v.dtype).expand_as(v).clone()  # noqa: E731
        edits.append(S.Edit(S.Site("attn_out", i), fn))
    return edits


def attention_removal(
    model,
    batches,
    *,
    modes: Iterable[str] = MODES,
    schemes: Iterable[str] = SCHEMES,
    ref: torch.Tensor | None = None,
    nm=None,
    progress=None,
) -> list[dict]:
    """Δ loss and Δ perplexity of every attention-removal condition vs the intact model.
    ``ref`` (B, T) token ids for the mean ablation; default: the first batch's inputs."""
    batches = list(batches)
    modes, schemes = list(modes), list(schemes)
    for s in schemes:
        if s not in SCHEMES:
            raise FalstudyError(f"unknown ablation scheme {s!r}; known: {', '.join(SCHEMES)}")
    nm = nm if nm is not None else S.wrap(model)
    order = S.forward_order(model)
    layers = [s.layer for s in S.layer_sites(model, "attn_out")]
    if not layers:
        return []
    means = attention_means(model, batches[0][0] if ref is None else ref, nm=nm) if "mean" in modes else None

    # substitute-signal sites: restored to their intact values by the "stream only" conditions
    src_sites = S.layer_sites(model, "fal_src")
    sources = set(model.config.fal_source_layers) if src_sites else set()

    # (condition name, reported layer) -> (mode, layers ablated, restore the substitute signal?)
    conditions: dict[tuple[str, int], tuple[str, list[int], bool]] = {}
    for mode in modes:
        for scheme in schemes:
            if scheme == "rest":
                rest = [i for i in layers if i > 0]
                if rest and rest != layers:  # only where layer 0 has attention to leave alone
                    conditions[(f"{mode}_rest", rest[0])] = (mode, rest, False)
                continue
            for k, i in enumerate(layers):
                if scheme == "single":
                    conditions[(mode, i)] = (mode, [i], False)
                    if src_sites:
                        conditions[(f"{mode}_stream", i)] = (mode, [i], True)
                else:
                    conditions[(f"{mode}_cumulative", i)] = (mode, layers[: k + 1], False)

    totals = {key: 0.0 for key in conditions}
    intact = 0.0
    with torch.no_grad():
        for x, y in batches:
            env0, loss = S.trace(nm, x, y, S.make_plan(order, src_sites))
            intact += float(loss)
            done: dict[tuple, float] = {}  # identical conditions run once (cumulative at layer 0 == single)
            for key, (mode, abl, restore) in conditions.items():
                restore = restore and bool(sources & set(abl))  # elsewhere a_i does not feed N_f
                memo = (mode, tuple(abl), restore)
                if memo not in done:
                    edits = ablation_edits(abl, mode, means)
                    if restore:
                        edits += [S.Edit(s, lambda v, env, keep=env0[s]: keep) for s in src_sites]
                    done[memo] = float(S.trace(nm, x, y, S.make_plan(order, [], edits))[1])
                totals[key] += done[memo]
            if progress:
                progress(1)
    n = len(batches)
    base = intact / n
    rows = []
    for (name, i), total in totals.items():
        loss = total / n
        extra = dict(layers=conditions[(name, i)][1], intact_loss=base, n_batches=n, n_tokens=n * batches[0][0].numel())
        rows += [
            row("attn_removal", "attn_out", i, f"{name}.loss", loss, **extra),
            row("attn_removal", "attn_out", i, f"{name}.delta_loss", loss - base, **extra),
            row("attn_removal", "attn_out", i, f"{name}.ppl", ppl(loss), **extra),
            row("attn_removal", "attn_out", i, f"{name}.delta_ppl", ppl(loss) - ppl(base), **extra),
        ]
    return rows
