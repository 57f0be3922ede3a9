"""What every figure shares: variant order and colours, a figure factory, footnotes, seed
statistics, and the probe-row query.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot state), so the report renders
headless (Agg) and notebooks show them with ``display(fig)``.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Iterable

from falstudy.models.wiring import STUDY_ORDER
from falstudy.store.readonly import MissingTable, Results

if TYPE_CHECKING:
    import pandas
    from matplotlib.figure import Figure

# the study's wirings first, in the order the paper discusses them (the wiring's owner says it);
# anything else after
ORDER = list(STUDY_ORDER)


@functools.cache
def palette() -> list[str]:
    """seaborn's "deep" palette (10 colours) as hex: the study's variants take the first six."""
    import seaborn as sns

    return sns.color_palette("deep", 10).as_hex()


# the two variants the motivating analyses compare
FOCUS = ("baseline", "fal")

STYLE = {
    "figure.dpi": 100, "savefig.dpi": 130, "font.size": 10, "axes.titlesize": 11,
    "axes.labelsize": 10, "legend.fontsize": 9, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.3, "figure.titlesize": 12, "figure.titleweight": "bold",
}


def order(variants: Iterable[str]) -> list[str]:
    """Known variants in study order, then the rest alphabetically."""
    names = set(variants)
    return [v for v in ORDER if v in names] + sorted(names - set(ORDER))


def color(variant: str) -> str:
    """A variant's colour, the same in every figure: its place in ORDER, else a stable spare."""
    colours = palette()
    if variant in ORDER:
        return colours[ORDER.index(variant)]
    spare = colours[len(ORDER):]
    return spare[sum(map(ord, variant)) % len(spare)]


def pick(available: Iterable[str], wanted: Iterable[str] | None = FOCUS, most: int = 3) -> list[str]:
    """The wanted variants that exist; if none does, the first ``most`` available ones."""
    have = order(available)
    if wanted is None:
        return have
    chosen = [v for v in wanted if v in have]
    return chosen or have[:most]


def figure(width: float, height: float) -> "Figure":
    import matplotlib
    from matplotlib.figure import Figure

    matplotlib.rcParams.update(STYLE)
    return Figure(figsize=(width, height), layout="constrained")


def add_note(fig: "Figure", text: str) -> None:
    """A footnote in the figure (so a PNG carries it) and in ``fig.falstudy_notes`` (the HTML)."""
    import textwrap

    notes = getattr(fig, "falstudy_notes", [])
    notes.append(text)
    fig.falstudy_notes = notes
    chars = int(14 * fig.get_figwidth())  # what fits across the figure at 8 pt
    lines = [line for note in notes for part in note.split("\n") for line in textwrap.wrap(part, chars)]
    fig.supxlabel("\n".join(lines), fontsize=8, color="#555555", ha="left", x=0.01)


def seed_stats(df: "pandas.DataFrame", keys: list[str], value: str = "value") -> "pandas.DataFrame":
    """Mean, sample standard deviation (0 for one seed), min, max and count over runs."""
    g = df.groupby(keys, dropna=False)[value]
    out = g.agg(["mean", "std", "min", "max", "count"]).reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out


def seeds_text(n: Any) -> str:
    n = int(n)
    return f"{n} seed" + ("" if n == 1 else "s")


def probe_rows(res: Results, probe: str, metrics: Iterable[str] | None = None,
               sites: Iterable[str] | None = None, checkpoint_only: bool = False) -> "pandas.DataFrame":
    """Rows of one probe at each run's latest probed step, with the run's variant and seed.
    ``checkpoint_only``: leave out the trainer's hook rows before choosing the latest step.

    Raises ``MissingTable`` naming the command that produces them when there are none."""
    res.require("probes")
    clauses, params = ["probe = ?"], [probe]
    if checkpoint_only:
        clauses.append("coalesce(_file, '') NOT LIKE '%hook%'")
    for column, values in (("metric", metrics), ("site", sites)):
        if values is not None:
            values = list(values)
            clauses.append(f"{column} IN ({', '.join('?' * len(values))})")
            params += values
    runs = "LEFT JOIN runs r USING (run_id)" if res.has("runs") else ""
    variant = "coalesce(r.variant, r.wiring, p.run_id)" if runs else "p.run_id"
    seed = "r.seed" if runs else "CAST(NULL AS BIGINT)"
    sql = f"""
        WITH p AS (SELECT * FROM probes WHERE {' AND '.join(clauses)}),
        last AS (SELECT run_id, max(coalesce(step, -1)) AS last_step FROM p GROUP BY run_id)
        SELECT {variant} AS variant, {seed} AS seed, p.run_id, p.step, p.site, p.layer, p.layer_b,
               p.metric, p.value, p._file
        FROM p JOIN last USING (run_id) {runs}
        WHERE coalesce(p.step, -1) = last.last_step
        ORDER BY variant, p.run_id, p.site, p.layer, p.layer_b"""
    df = res.sql(sql, params)
    if df.empty:
        raise MissingTable(f"{probe} probe rows",
                           f"run `falstudy probe RUN --probes {probe}`, or a sweep whose probes include {probe} "
                           "(sweeps/bypass.yaml)")
    return df


def runs_table(res: Results) -> "pandas.DataFrame":
    """Runs with a variant label (``variant``, else ``wiring``, else the run id)."""
    res.require("runs")
    return res.sql("SELECT *, coalesce(variant, wiring, run_id) AS label FROM runs ORDER BY run_id")
