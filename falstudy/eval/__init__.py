"""Downstream evaluation of trained models (docs/eval.md): bits per byte on held-out domains,
minimal pairs and multiple choice from JSONL, and an lm-evaluation-harness adapter
(``falstudy.eval.lmeval``, the optional extra ``.[eval]``). Rows go to the ``evals`` table.

Nothing heavy is imported here: the sweep spec imports ``falstudy.eval.spec`` without torch."""

from __future__ import annotations

from typing import Any

__all__ = ["run_evals", "Scorer"]


def __getattr__(name: str) -> Any:
    if name == "run_evals":
        from falstudy.eval.runner import run_evals

        return run_evals
    if name == "Scorer":
        from falstudy.eval.score import Scorer

        return Scorer
    raise AttributeError(name)
