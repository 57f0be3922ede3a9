"""The probe sites, as data: one catalogue that the model's ``SITES``, the probes' site kinds
and the tables in README.md and docs/probes.md all come from (tests/test_wiring.py checks that
the docs embed ``markdown()`` and ``readme_markdown()`` verbatim).

A site's name is its module path plus ``.input`` / ``.output``, TransformerLens-style
(``blocks.3.attn.output``); ``kind`` is the short name that probe rows store in their ``site``
column (``attn_out``). Print the tables with
``python -c "from falstudy.models.catalogue import markdown; print(markdown(), end='')"``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SiteSpec:
    kind: str  # the short name in probe rows
    module: str  # the module under blocks.{i} (or at the top for ln_f)
    io: str  # "input" | "output": which side of the module holds the value
    meaning: str  # what it holds, in the study's notation (docs/study.md)
    by_wiring: str = ""  # how the value differs by wiring

    @property
    def per_block(self) -> bool:
        return self.module != "ln_f"

    @property
    def name(self) -> str:
        """The module path with ``{i}`` for the block index, plus the side."""
        path = f"blocks.{{i}}.{self.module}" if self.per_block else self.module
        return f"{path}.{self.io}"


CATALOGUE: tuple[SiteSpec, ...] = (
    SiteSpec("resid_pre", "resid_pre", "output", "residual stream entering block i, x_i",
             "ladder: without the previous module's output, which is added one module late"),
    SiteSpec("ln_1", "ln_1", "output", "LN(x_i), the attention's input",
             "post-LN: LN(x_i + a_i), the norm after attention's add"),
    SiteSpec("attn_out", "attn", "output", "MHA output a_i (after the output projection)",
             "absent in no_attn blocks"),
    SiteSpec("ln_2", "ln_2", "output", "the MLP's own norm output",
             "absent where MHA and MLP share one LN (parallel-form blocks by default)"),
    SiteSpec("resid_mid", "resid_mid", "output", "the stream between the sublayers: x_i + a_i (the paper's h)",
             "ladder: x_i + m_{i-1}, the stream the MLP reads; parallel forms compute it only when read"),
    SiteSpec("mlp_in", "mlp", "input", "what the MLP reads",
             "LN(x + a) baseline, LN(x) parallel, LN(x) + N_f(a_1) fal, LN(x + m_{i-1}) ladder ..."),
    SiteSpec("mlp_out", "mlp", "output", "MLP output m_i", "absent in no_mlp blocks"),
    SiteSpec("resid_post", "resid_post", "output", "block output x_{i+1}",
             "DenseFormer: the depth-weighted stream; ladder: without this block's last pending output"),
    SiteSpec("fal_src", "fal_src", "output", "the substitute signal s = N_f(a_1), at its (last) source block",
             "fal, fal_plus and fal_ladder only"),
    SiteSpec("fal_in", "fal_in", "output", "the substitute term block i's MLP (or stream) receives",
             "per-block N_f and gate applied"),
    SiteSpec("ln_f", "ln_f", "output", "final norm before the unembedding; its layer is n_layer",
             "ladder: reads the stream with the last module's output added"),
)

MODULES: tuple[str, ...] = tuple(dict.fromkeys(s.module for s in CATALOGUE if s.per_block))


def markdown(detail: bool = True) -> str:
    """The site table of docs/probes.md; without ``detail`` (the by-wiring column), README.md's."""
    head = ["site", "kind", "value"] + (["by wiring"] if detail else [])
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in CATALOGUE:
        cells = [f"`{s.name}`", f"`{s.kind}`", s.meaning] + ([s.by_wiring] if detail else [])
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def readme_markdown() -> str:
    return markdown(detail=False)
