"""Models: one GPT with wiring switches (gpt.py), each block's plan (wiring.py), the probe sites
(catalogue.py), named presets (variants.py), checkpoints."""

from falstudy.models.variants import VARIANTS, variant_fields

__all__ = ["GPT", "SITES", "VARIANTS", "variant_fields", "build_model", "load_checkpoint"]


def __getattr__(name: str):  # torch is imported only when a model is needed
    if name in ("GPT", "SITES"):
        from falstudy.models import gpt

        return getattr(gpt, name)
    if name in ("BlockPlan", "block_plans", "block_roles"):  # the wiring's plan: plain data, no torch
        from falstudy.models import wiring

        return getattr(wiring, name)
    if name in ("build_model", "load_checkpoint", "save_checkpoint"):
        from falstudy.models import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(name)
