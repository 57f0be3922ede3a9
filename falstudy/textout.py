"""Stored values on the terminal, as they are.

No markup language sits between a value and the screen: ``[bold]``, ``[/x]`` and ``:x:`` print
as those characters. Control characters (newlines, tabs, ANSI escapes) would redraw or break the
table, so a cell shows them as Python escapes (``\\n``, ``\\t``, ``\\x1b``); ``--csv`` and
``--json`` print the bytes exactly.
"""

from __future__ import annotations

import unicodedata
from typing import Any, Callable


def cell(value: Any) -> str:
    """One value as table text: NULL for missing, 6 significant digits for floats, control
    characters escaped, everything else verbatim."""
    import pandas as pd

    if value is None or value is pd.NA or value is pd.NaT:
        return "NULL"
    if isinstance(value, float):  # NULL in a DOUBLE column reaches pandas as NaN: "nan"
        return f"{value:.6g}"
    return escape_controls(str(value))


def escape_controls(text: str) -> str:
    """``text`` with every non-printable character (C0 and C1 controls, DEL, line separators,
    format characters) as its Python escape."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 0 if unicodedata.combining(c) else 1 for c in text)


def format_table(header: list[str], rows: list[list[str]], right: list[bool]) -> list[str]:
    """Columns padded to their widest cell (numbers right-aligned), a rule under the header."""
    header = [escape_controls(h) for h in header]
    widths = [max([_width(h)] + [_width(r[i]) for r in rows]) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        parts = []
        for text, w, r in zip(cells, widths, right):
            pad = " " * (w - _width(text))
            parts.append(pad + text if r else text + pad)
        return "  ".join(parts).rstrip()

    return [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]


def print_table(df: Any, max_rows: int, echo: Callable[[str], None] = print) -> None:
    """A DataFrame as a plain text table (the first ``max_rows`` rows)."""
    right = [df[c].dtype.kind in "iuf" for c in df.columns]
    rows = [[cell(v) for v in row] for row in df.head(max_rows).itertuples(index=False)]
    for text in format_table([str(c) for c in df.columns], rows, right):
        echo(text)
    if len(df) > max_rows:
        echo(f"... {len(df) - max_rows} more rows (use --max-rows, --csv or --json)")
