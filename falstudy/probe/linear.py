"""Linear probes: how linearly decodable is a property from a site's activations, per layer.

For each site kind and layer, an L2-regularised multinomial logistic regression (scikit-learn,
features standardised) is fit on tokens of the training sequences and scored on tokens of
held-out sequences (split by sequence, so no context is shared). Tasks:

    token        the current input token         top-K most frequent classes in the train split
    next_token   the token to predict            top-K most frequent classes in the train split
    position     the position bucket             ``n_buckets`` equal-width buckets of [0, T)

Tokens whose label is outside the top K are dropped for that task (GPT-2's vocabulary has 50k
classes; a probe over all of them says more about sample size than about the representation).
Rows: ``site`` = kind, ``layer``, metrics ``<task>.accuracy`` and ``<task>.majority`` (the
accuracy of always guessing the train split's most frequent class: the floor to beat).
"""

from __future__ import annotations

import warnings
from typing import Iterable

import numpy as np
import torch

from falstudy.errors import FalstudyError
from falstudy.probe import sites as S
from falstudy.probe.rows import row

TASKS = ("token", "next_token", "position")
LINEAR_SITES = ("attn_out", "mlp_in", "resid_post")
MIN_TRAIN = 20


def _fit_score(xtr, ytr, xte, yte, C: float, max_iter: int) -> tuple[float, bool]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(xtr, ytr)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return float(clf.score(xte, yte)), converged


def linear_probe(
    model,
    batches,
    *,
    sites: Iterable[str] = LINEAR_SITES,
    tasks: Iterable[str] = TASKS,
    top_k: int = 32,
    n_buckets: int = 8,
    positions_per_seq: int | None = 32,
    exclude_first: bool = True,
    test_fraction: float = 0.25,
    C: float = 1.0,
    max_iter: int = 200,
    seed: int = 0,
    nm=None,
    progress=None,
) -> list[dict]:
    kinds = S.check_kinds(sites, "linear-probe site")
    tasks = list(tasks)
    for t in tasks:
        if t not in TASKS:
            raise FalstudyError(f"unknown linear-probe task {t!r}; known: {', '.join(TASKS)}")
    nm = nm if nm is not None else S.wrap(model)
    capture = [s for kind in kinds for s in S.layer_sites(model, kind)]
    plan = S.make_plan(S.forward_order(model), capture)
    gen = torch.Generator().manual_seed(seed)
    feats: dict[S.Site, list[np.ndarray]] = {s: [] for s in capture}
    labels: dict[str, list[np.ndarray]] = {t: [] for t in TASKS}
    seq_ids: list[np.ndarray] = []
    n_seq = 0
    with torch.no_grad():
        for x, y in batches:
            B, T = x.shape
            env, _ = S.trace(nm, x, None, plan)
            rows_, cols = S.sample_positions(B, T, positions_per_seq, gen, exclude_first)
            for s in capture:
                feats[s].append(S.gather(env[s], (rows_, cols)).float().cpu().numpy())
            labels["token"].append(x.cpu()[rows_, cols].numpy())
            labels["next_token"].append(y.cpu()[rows_, cols].numpy())
            labels["position"].append((cols * n_buckets // T).numpy())
            seq_ids.append((rows_ + n_seq).numpy())
            n_seq += B
            if progress:
                progress(1)
    if n_seq < 2:
        raise FalstudyError(f"linear probes need at least 2 sequences to hold some out, got {n_seq}; raise tokens")
    seq = np.concatenate(seq_ids)
    held_out = np.random.default_rng(seed).permutation(n_seq)[: max(1, round(n_seq * test_fraction))]
    test = np.isin(seq, held_out)
    X = {s: np.concatenate(v) for s, v in feats.items()}
    out = []
    for task in tasks:
        lab = np.concatenate(labels[task])
        keep = np.ones_like(test)
        if task != "position":  # top-K frequent classes of the train split
            classes, counts = np.unique(lab[~test], return_counts=True)
            keep = np.isin(lab, classes[np.argsort(-counts, kind="stable")[:top_k]])
        tr, te = keep & ~test, keep & test
        if tr.sum() < MIN_TRAIN or te.sum() == 0 or len(np.unique(lab[tr])) < 2:
            raise FalstudyError(
                f"linear probe {task!r}: {int(tr.sum())} train / {int(te.sum())} test tokens with 2+ classes "
                f"are too few (need {MIN_TRAIN}+ train); raise tokens or positions_per_seq"
            )
        vals, counts = np.unique(lab[tr], return_counts=True)
        majority = float((lab[te] == vals[counts.argmax()]).mean())
        extra = dict(n_train=int(tr.sum()), n_test=int(te.sum()), n_classes=int(len(vals)), C=C)
        for s in capture:
            acc, converged = _fit_score(X[s][tr], lab[tr], X[s][te], lab[te], C, max_iter)
            out.append(row("linear", s.kind, s.layer, f"{task}.accuracy", acc, converged=converged, **extra))
            out.append(row("linear", s.kind, s.layer, f"{task}.majority", majority, **extra))
    return out
