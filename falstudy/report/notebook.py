"""Helpers for the analysis notebooks: draw one analysis, or print why it cannot be drawn.

    from falstudy.report.notebook import show, show_table
    show("cka", res)                 # the same figure as `falstudy report`, or the hint
    show_table("final_loss", res)
"""

from __future__ import annotations

from typing import Any, Callable

from falstudy.report.analyses import BY_KEY
from falstudy.store.readonly import MissingTable, Results


def _display(obj: Any) -> None:
    try:
        from IPython.display import display
    except ImportError:  # plain Python: print tables, leave figures to the caller
        print(obj)
        return
    display(obj)


def _show(make: Callable[..., Any], res: Results, missing: str, kwargs: dict[str, Any]) -> None:
    """Display ``make(res)``; if its data is missing, print ``missing`` and the hint."""
    try:
        obj = make(res, **kwargs)
    except MissingTable as err:
        print(f"{missing} {err}")
        return
    _display(obj)


def show(what: str | Callable[..., Any], res: Results, **kwargs: Any) -> None:
    """Draw analysis ``what`` (a key of ``falstudy.report.analyses.BY_KEY`` or a figure
    function); if its data is missing, print the hint instead of raising."""
    make = BY_KEY[what].make if isinstance(what, str) else what
    title = BY_KEY[what].title if isinstance(what, str) else getattr(what, "__name__", "figure")
    _show(make, res, f"{title}: not drawn.", kwargs)


def show_table(what: str | Callable[..., Any], res: Results, **kwargs: Any) -> None:
    """Display an analysis' table (or any DataFrame function of ``res``); print the hint if its
    data is missing. Returns nothing, so a notebook cell does not show the table twice: call
    the function itself for the DataFrame."""
    make = BY_KEY[what].table if isinstance(what, str) else what
    if make is None:
        raise KeyError(f"analysis {what!r} has no table")
    _show(make, res, "not available.", kwargs)
