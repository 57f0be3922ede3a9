"""The registry of analyses: one figure each, with the caption the report prints under it.
Notebooks and ``falstudy report`` draw from this one list, so they always show the same figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from falstudy.report import downstream, motivation, parallel, variants

if TYPE_CHECKING:
    import pandas
    from matplotlib.figure import Figure

    from falstudy.store.readonly import Results


@dataclass(frozen=True)
class Analysis:
    key: str  # file stem of its PNG
    section: str  # a key of SECTIONS
    title: str
    caption: str
    make: Callable[["Results"], "Figure"]
    table: Callable[["Results"], "pandas.DataFrame"] | None = None


SECTIONS = {  # key: (heading, the notebook that goes deeper)
    "motivation": ("Motivation: what the MLP needs from attention", "notebooks/01_motivation.ipynb"),
    "variants": ("Variants: loss, spread and the sweep", "notebooks/02_variants.ipynb"),
    "parallel": ("Tensor parallelism: collectives and step time", "notebooks/03_parallel.ipynb"),
    "downstream": ("Downstream: held-out domains and minimal pairs", "notebooks/02_variants.ipynb"),
}

ANALYSES: list[Analysis] = [
    Analysis("cka", "motivation", "CKA of MHA outputs and MLP inputs",
             "Debiased linear CKA between layers, baseline and fal. The paper's finding: MHA outputs of different "
             "layers are dissimilar while MLP inputs stay similar across layers (the residual stream already carries "
             "earlier attention), so an MLP barely needs its own block's MHA output.",
             motivation.cka_figure),
    Analysis("grad_norm", "motivation", "Gradient magnitude per layer",
             "Loss gradient at each layer's attention output on validation batches: its norm (raw) and the "
             "scale-free attribution Σ|∂L/∂a · a| (the first-order loss change of removing a_i), log axes. The "
             "paper's finding: layer 0's (its block 1) is the largest. The raw norm is confounded by the small "
             "stream entering block 0; the verdicts test both.",
             motivation.grads_figure),
    Analysis("primacy", "motivation", "Primacy effect: removing one layer's attention",
             "Increase of the validation loss when a single layer's attention output is zeroed or replaced by its "
             "mean. The paper's finding: removing layer 0's attention hurts far more than any later layer's. On fal, "
             "a_0 also makes the substitute signal: 'stream only' keeps it (the baseline's intervention), "
             "'everywhere' removes it too.",
             motivation.primacy_figure),
    Analysis("bypass", "motivation", "Bypass and substitution at inference",
             "Loss increase when the MLP of one block (or of all blocks) reads LN(x) instead of its usual input "
             "(cut), or LN(x) plus layer 0's normalised attention output (FAL's substitute forms). The paper's "
             "finding: cutting costs less than removing attention, and a substitute signal is needed. Compare the "
             "conditions in 'layers ≥ 1', where all three rewrite the same MLPs.",
             motivation.bypass_figure),
    Analysis("loss_curves", "variants", "Loss curves by variant",
             "Training and validation loss over steps, mean over seeds with a min-to-max band.",
             variants.curves_figure),
    Analysis("final_loss", "variants", "Final validation loss and perplexity",
             "Final validation loss of every run (dots) and mean ± standard deviation over seeds per variant; the "
             "top axis reads the same numbers as perplexity. The table gives the spread, the difference to "
             "baseline and its seed-paired 95% interval and p-value (paired t).",
             variants.final_figure, variants.final_table),
    Analysis("importance", "variants", "Optuna parameter importance",
             "How much of each objective's variance each searched parameter explains (fANOVA over completed "
             "trials), from the study's Optuna journal.",
             variants.importance_figure),
    Analysis("pareto", "variants", "Pareto front",
             "Completed trials of a multi-objective study; the black line joins the trials no other trial beats "
             "on both objectives.",
             variants.pareto_figure),
    Analysis("sizing", "variants", "Sizing: loss against training compute",
             "Final validation loss of every run against its training compute, one line per model width (its best "
             "learning rate at each budget). Read at equal compute to choose a width for a budget "
             "(sweeps/sizing.yaml chose the default study's).",
             variants.sizing_figure),
    Analysis("collectives", "parallel", "All-reduces per training step",
             "Tensor-parallel all-reduces per step, forward (g) and backward (f): counted from the f/g placement "
             "of each variant's config and, where available, measured by the CommMeter (baseline blocks 2 + 2, "
             "parallel and fal blocks 1 + 1).",
             parallel.collectives_figure),
    Analysis("step_times", "parallel", "Measured step times",
             "Wall time per tensor-parallel training step split into compute (the same step with collectives "
             "switched off) and communication, with the cost model's prediction, and the ratio to baseline.",
             parallel.step_times_figure),
    Analysis("overlap", "parallel", "Exposed and hidden communication",
             "All-reduce time per tensor-parallel training step split into exposed (a rank waited for it) and "
             "hidden (in flight while the rank computed: the ladder wirings launch each forward all-reduce "
             "asynchronously and wait one module later), measured by the CommMeter, with the cost model's split.",
             parallel.overlap_figure),
    Analysis("cost_model", "parallel", "Cost-model projection by TP degree and interconnect",
             "Predicted step time of fal and parallel relative to baseline for GPT-2 shapes, by TP degree and "
             "interconnect. The saving grows with the TP degree and with communication's share of the step.",
             parallel.cost_model_figure),
    Analysis("heldout_bpb", "downstream", "Held-out domains: bits per byte",
             "Bits per byte (tokenizer-independent) on corpora the runs were not trained on: the King James and "
             "World English Bibles and FreeBSD's fortune files (falstudy eval, docs/eval.md). A wiring that only "
             "fits the training corpus better shows here as no gain. The table gives mean ± sd over seeds and the "
             "seed-paired difference to baseline (paired t).",
             downstream.heldout_figure, downstream.heldout_table),
    Analysis("pair_accuracy", "downstream", "Minimal pairs and multiple choice",
             "Accuracy on minimal pairs (the built-in word-order swaps from held-out text, a weak proxy, and any "
             "BLiMP-style file), multiple-choice files and lm-eval tasks. Chance is 0.5 for pairs; tiny models "
             "stay near it on anything beyond local word order.",
             downstream.accuracy_figure, downstream.accuracy_table),
]

BY_KEY = {a.key: a for a in ANALYSES}
