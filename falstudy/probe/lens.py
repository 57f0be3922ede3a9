"""Logit lens: decode each residual-stream site with the model's own final norm and unembedding
(``ln_f`` then ``lm_head``, trained parameters) and score the next-token loss there.

Rows: sites ``resid_pre``, ``resid_mid``, ``resid_post`` per layer, metrics ``loss`` (mean
cross-entropy over all positions, as the model's own loss) and ``accuracy`` (top-1). The last
block's ``resid_post`` reproduces the model's loss.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

from falstudy.probe import sites as S
from falstudy.probe.rows import row

LENS_SITES = ("resid_pre", "resid_mid", "resid_post")


def logit_lens(model, batches, *, sites: Iterable[str] = LENS_SITES, nm=None, progress=None) -> list[dict]:
    kinds = S.check_kinds(sites, "logit-lens site")
    nm = nm if nm is not None else S.wrap(model)
    capture = [s for kind in kinds for s in S.layer_sites(model, kind)]
    plan = S.make_plan(S.forward_order(model), capture)
    loss_sum = {s: 0.0 for s in capture}
    hits = {s: 0 for s in capture}
    model_loss, n_tokens, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in batches:
            env, loss = S.trace(nm, x, y, plan)
            model_loss += float(loss)
            n_tokens += y.numel()
            n += 1
            for s in capture:  # decode outside the trace: plain module calls are safe here
                logits = model.lm_head(model.ln_f(env[s])).float().flatten(0, 1)
                loss_sum[s] += float(F.cross_entropy(logits, y.flatten()))
                hits[s] += int((logits.argmax(-1) == y.flatten()).sum())
            if progress:
                progress(1)
    extra = dict(model_loss=model_loss / max(n, 1), n_tokens=n_tokens)
    rows = []
    for s in capture:
        rows.append(row("logit_lens", s.kind, s.layer, "loss", loss_sum[s] / n, **extra))
        rows.append(row("logit_lens", s.kind, s.layer, "accuracy", hits[s] / n_tokens, **extra))
    return rows
