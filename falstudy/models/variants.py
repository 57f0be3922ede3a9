"""Named variants: presets of ModelConfig fields. A variant is data, never a new block class.

``RunConfig(variant="fal")`` applies the preset under the user's own ``model`` fields (the
user's values win); the resolved fields are what every run records.
"""

from __future__ import annotations

from typing import Any

from falstudy.errors import FalstudyError

LLAMA_BLOCK = {"norm": "rmsnorm", "mlp": "swiglu", "pos": "rope", "bias": False}

VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {"wiring": "baseline"},
    "parallel": {"wiring": "parallel"},
    "fal": {"wiring": "fal"},
    "fal_plus": {"wiring": "fal_plus", "fal_plus_form": "f2"},
    "fal_plus_f1": {"wiring": "fal_plus", "fal_plus_form": "f1"},
    "fal_plus_f3": {"wiring": "fal_plus", "fal_plus_form": "f3"},
    "fal_gated": {"wiring": "fal", "fal_gate": True},
    "fal_ln_sum": {"wiring": "fal", "fal_mlp_input": "ln_sum"},
    "fal_nf_only": {"wiring": "fal", "fal_mlp_input": "nf_only"},
    "fal_per_layer_norm": {"wiring": "fal", "fal_norm": "per_layer"},
    "fal_two_ln": {"wiring": "fal", "shared_ln": False},
    "fal_first_block_fal": {"wiring": "fal", "fal_first_block": "fal"},
    "no_attn": {"wiring": "no_attn"},
    "no_mlp": {"wiring": "no_mlp"},
    "llama": {"wiring": "baseline", **LLAMA_BLOCK},
    "llama_parallel": {"wiring": "parallel", **LLAMA_BLOCK},
    "llama_fal": {"wiring": "fal", **LLAMA_BLOCK},
    "llama_fal_plus": {"wiring": "fal_plus", **LLAMA_BLOCK},
    # related wirings (docs/study.md); each is a switch, so it combines with any wiring via --set
    # untied: with tied embeddings a post-LN GPT sat at the unigram loss here (the norm right after
    # the embedding scales the shared matrix's input-side gradient up ~1/std = 50x over the output side)
    "post_ln": {"wiring": "baseline", "norm_placement": "post", "tie_weights": False},
    "residual_gates": {"wiring": "baseline", "residual_gates": True},
    "value_residual": {"wiring": "baseline", "value_residual": True},
    "fal_value_residual": {"wiring": "fal", "value_residual": True},
    "denseformer": {"wiring": "baseline", "dense_dwa": True},
    # Ladder residual (docs/wiring.md): each module reads the stream before the previous module's output is added
    "ladder": {"wiring": "baseline", "residual": "ladder"},
    "fal_ladder": {"wiring": "fal", "residual": "ladder"},
}


def variant_fields(name: str) -> dict[str, Any]:
    try:
        return dict(VARIANTS[name])
    except KeyError:
        raise FalstudyError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}") from None
