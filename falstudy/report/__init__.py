"""Figures of the FAL study, shared by the notebooks and ``falstudy report``.

    from falstudy.store.readonly import Results
    from falstudy.report import ANALYSES, make_report
    res = Results("results/bypass")
    fig = ANALYSES[0].make(res)                       # a matplotlib Figure (CKA heatmaps)
    make_report("results/bypass")                     # results/bypass/report/{*.png,report.html}

Modules: ``motivation`` (probes: CKA, gradients, attention removal, bypass), ``variants``
(loss curves, final loss, Optuna importance and Pareto front), ``parallel`` (collectives, step
times, cost model), ``analyses`` (the registry), ``html`` (the writer), ``notebook`` (``show``).
A figure whose data is missing raises ``falstudy.store.readonly.MissingTable`` with the command
that produces it. matplotlib, pandas and optuna load inside the functions.
"""

from falstudy.report.analyses import ANALYSES, BY_KEY, SECTIONS, Analysis
from falstudy.report.html import Report, make_report

__all__ = ["ANALYSES", "Analysis", "BY_KEY", "Report", "SECTIONS", "make_report"]
