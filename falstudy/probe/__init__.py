"""Probes of trained models, built on nnsight interventions over the model's named sites.

    from falstudy.probe import run_probes
    df = run_probes("results/bypass/runs/<run_id>", probes="cka,attn_removal", tokens=8192)

Probes (see docs/probes.md): ``cka`` (debiased minibatch CKA between sites), ``grads``
(||dL/d MHA output|| and parameter gradient norms; ``GradientHook`` for the trainer),
``attn_removal`` (zero/mean ablation of MHA, single and cumulative), ``bypass`` (the MLP reads
LN(x) or a substitute instead of LN(x + a)), ``linear`` (scikit-learn linear probes),
``logit_lens``. Every probe returns rows of the ``probes`` table (rows.py).

Heavy imports (nnsight, sklearn) happen inside the functions that need them.
"""

from __future__ import annotations

_LAZY = {
    "run_probes": ("falstudy.probe.runner", "run_probes"),
    "PROBE_NAMES": ("falstudy.probe.runner", "PROBE_NAMES"),
    "CKAAccumulator": ("falstudy.probe.cka", "CKAAccumulator"),
    "cka": ("falstudy.probe.cka", "cka"),
    "cka_biased": ("falstudy.probe.cka", "cka_biased"),
    "cka_probe": ("falstudy.probe.cka", "cka_probe"),
    "gradient_norms": ("falstudy.probe.grads", "gradient_norms"),
    "GradientHook": ("falstudy.probe.grads", "GradientHook"),
    "attention_removal": ("falstudy.probe.ablate", "attention_removal"),
    "bypass_probe": ("falstudy.probe.bypass", "bypass_probe"),
    "linear_probe": ("falstudy.probe.linear", "linear_probe"),
    "logit_lens": ("falstudy.probe.lens", "logit_lens"),
    "parse_site": ("falstudy.probe.sites", "parse_site"),
    "Site": ("falstudy.probe.sites", "Site"),
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'falstudy.probe' has no attribute {name!r}")
