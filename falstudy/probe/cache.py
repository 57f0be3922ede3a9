"""``run_with_cache``: one forward pass that returns the logits and the activations at named
sites, TransformerLens-style (``cache["blocks.0.attn.output"]``), read through nnsight.

    logits, cache = falstudy.run_with_cache(model, tokens)                  # every site
    logits, cache = falstudy.run_with_cache(model, tokens, ["blocks.0.attn", "blocks.3.mlp.input"])

Names are module paths with ``.input`` / ``.output`` (falstudy.models.SITES; ``kind@layer``
works too, e.g. ``attn_out@0``). A site the wiring lacks (``attn`` of a no_attn block) is left
out of the default set and refused when named.
"""

from __future__ import annotations

from typing import Iterable

import torch

from falstudy.probe import sites as S


def run_with_cache(model, tokens: torch.Tensor, names: Iterable[str] | None = None
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(logits, {site name: activation}) for ``tokens`` (B, T) or (T,), without gradients."""
    model = S.unwrap(model)
    idx = tokens if tokens.dim() == 2 else tokens.unsqueeze(0)
    n_layer = len(model.blocks)
    if names is None:
        wanted = [s for kind in S.SITE_KINDS if kind != "ln_f" for s in S.layer_sites(model, kind)]
        wanted.append(S.Site("ln_f", n_layer))
    else:
        wanted = [S.parse_site(name, n_layer) for name in names]
    plan = S.make_plan(S.forward_order(model), wanted)
    nm = S.wrap(model)
    was_training = model.training
    model.eval()  # no dropout in what is cached; the caller's mode is restored below
    try:
        return _trace(nm, idx, plan, wanted)
    finally:
        model.train(was_training)


def _trace(nm, idx, plan, wanted):
    with torch.no_grad():
        with nm.trace(idx):
            env = S._save({})
            for site, path, io, _ in plan.steps:
                envoy = S.module_at(nm, path)
                env[site] = (envoy.output if io == "output" else envoy.input).detach()
            logits = S._save(nm.output[0])
    return logits, {site.name: env[site] for site in wanted}
