"""The named variants, re-exported: they live in ``falstudy.variants`` (beside the config they
fill in, which reads them while it validates)."""

from falstudy.variants import LLAMA_BLOCK, VARIANTS, variant_fields

__all__ = ["LLAMA_BLOCK", "VARIANTS", "variant_fields"]
