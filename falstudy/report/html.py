"""``make_report``: every analysis as a PNG plus one self-contained ``report.html`` (the figures
embedded as base64, so the page can be sent on its own) that shows them with their captions,
without Jupyter. An analysis whose data is missing gets the hint that says which sweep or command
produces it; one that fails for another reason gets its error, and the rest are still written.

The page is ``falstudy/report/template.py`` (Jinja2) over a list of ``Section``s; ``make_report``'s
``lead_sections`` go before the analyses (e.g. a verdicts section).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from falstudy.errors import FalstudyError
from falstudy.report.analyses import ANALYSES, SECTIONS, Analysis
from falstudy.store.readonly import MissingTable, Results

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
.meta { color: #666; font-size: 0.9em; }
.study { font-size: 0.95em; }
figure { margin: 1.2em 0 2em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.95em; color: #333; margin-top: 0.4em; }
.missing, .failed { padding: 0.6em 0.9em; border-radius: 4px; margin: 0.8em 0 1.6em; }
.missing { background: #fff8e1; border-left: 4px solid #f0b429; }
.failed { background: #fdecea; border-left: 4px solid #d64545; }
code { background: #f4f4f4; padding: 0 0.25em; border-radius: 3px; }
table.data { border-collapse: collapse; font-size: 0.9em; margin: 0.6em 0; }
table.data th, table.data td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
table.data th:first-child, table.data td:first-child { text-align: left; }
"""


@dataclass
class Report:
    out: Path
    html: Path
    figures: dict[str, Path] = field(default_factory=dict)  # analysis key -> PNG
    missing: dict[str, str] = field(default_factory=dict)  # analysis key -> hint
    failed: dict[str, str] = field(default_factory=dict)  # analysis key -> error


@dataclass
class Block:
    """One analysis on the page: a figure (PNG as base64, caption, optional table) or a note."""

    key: str
    title: str
    kind: str  # figure | missing | failed
    text: str = ""  # caption (figure) or the hint / error, as HTML
    image: str = ""  # base64 PNG
    table: str = ""  # HTML


@dataclass
class Section:
    key: str
    heading: str
    intro: str = ""  # HTML under the heading
    blocks: list[Block] = field(default_factory=list)
    html: str = ""  # free HTML after the blocks (a section that is not figures)


def _code(text: str) -> str:
    """Escape, and show `backticked` commands as code."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _table_html(df: Any) -> str:
    return df.to_html(index=False, classes="data", border=0, float_format=lambda v: f"{v:.4f}", na_rep="")


def _render(analysis: Analysis, res: Results, out: Path, report: Report) -> Block:
    png = out / f"{analysis.key}.png"
    png.unlink(missing_ok=True)  # a figure from an earlier report must not outlive its data
    block = Block(analysis.key, analysis.title, "figure")
    try:
        fig = analysis.make(res)
        table = analysis.table(res) if analysis.table else None
    except MissingTable as err:
        report.missing[analysis.key] = str(err)
        block.kind, block.text = "missing", _code(str(err))
        return block
    except Exception as err:  # a bug or unreadable data: keep the rest of the report
        message = f"{type(err).__name__}: {err}".splitlines()[0]
        report.failed[analysis.key] = message
        block.kind, block.text = "failed", html.escape(message)
        return block
    fig.savefig(png, dpi=130, facecolor="white")
    report.figures[analysis.key] = png
    # the figure's footnotes are drawn in the PNG itself; the caption does not repeat them
    block.text = _code(analysis.caption)
    block.image = base64.b64encode(png.read_bytes()).decode("ascii")
    block.table = _table_html(table) if table is not None else ""
    return block


def study_header(res: Results) -> list[str]:
    """What the results are of: model shapes, steps, seeds, corpus and code commit (from ``runs``)."""
    if not res.has("runs"):
        return []
    runs = res.table("runs")

    def values(col: str) -> list[str]:
        if col not in runs:
            return []
        return [str(v) for v in sorted(runs[col].dropna().unique().tolist())]

    shapes = sorted({f"{int(r.n_layer)} layers x {int(r.n_embd)} ({int(r.n_head)} heads)"
                     for r in runs.dropna(subset=["n_layer", "n_embd", "n_head"]).itertuples()})
    commits = sorted({f"{c[:10]}{' (uncommitted changes)' if d else ''}"
                      for c, d in zip(runs.get("git_commit", []), runs.get("git_dirty", [False] * len(runs))) if c})
    lines = [
        f"{len(runs)} run(s): {', '.join(values('variant')) or '?'}",
        f"model: {', '.join(shapes) or '?'}",
        f"steps: {', '.join(values('steps')) or '?'}; seeds: {', '.join(values('seed')) or '?'}",
        f"corpus: {', '.join(values('data_path')) or '?'}",
        f"code: git {', '.join(commits) or 'unknown'}",
    ]
    return lines


VERDICT_COLUMNS = ["claim", "variant", "size", "effect", "ci_lo", "ci_hi", "unit", "test", "p", "n", "verdict",
                   "seeds_needed", "note"]


def _verdict_section(res: Results, report: Report) -> Section:
    """The study's claims with their intervals and verdicts (falstudy.report.verdicts), first."""
    from falstudy.report import verdicts

    section = Section("verdicts", "Verdicts: the claims of the study, tested")
    try:
        found = verdicts.compute([res.root])
    except FalstudyError as err:
        report.missing["verdicts"] = str(err)
        section.html = f'<div class="missing">No verdicts: {_code(str(err))}</div>'
        return section
    section.intro = ("Each claim reduced to one number per seed and tested over seeds (paired t; Welch between "
                     "sizes): <b>holds</b> / <b>does not hold</b> when the 95% interval lies on one side of zero, else "
                     "<b>inconclusive at this scale</b>, with the seeds that would resolve the observed effect. Method: "
                     "<code>docs/report.md</code>; the same table: <code>falstudy verdict</code>.")
    regime = "".join(f"<li>{html.escape(line)}</li>" for line in found.regime)
    untested = "".join(f"<li>{html.escape(line)}</li>" for line in found.missing)
    section.html = (f'<p class="meta">Regime:</p><ul>{regime}</ul>\n' + _table_html(found.frame()[VERDICT_COLUMNS])
                    + (f'\n<p class="meta">Not tested:</p><ul>{untested}</ul>' if untested else ""))
    return section


def make_report(results_dir: str | Path, out: str | Path | None = None, *, bench_dir: str | Path | None = None,
                quiet: bool = True, progress: Callable[[str], None] | None = None,
                lead_sections: list[Section] = ()) -> Report:
    """Write ``<out>/<analysis>.png`` and ``<out>/report.html`` (``out`` default: ``<results>/report``).
    ``bench_dir``: where ``falstudy bench tp`` wrote its files (default: see ``Results``).
    ``progress``: called with one line per analysis as it starts (``quiet=False``: print)."""
    import matplotlib

    from falstudy.atomic import atomic_write
    from falstudy.report.template import render_page

    matplotlib.use("Agg")  # headless; figures are plain Figure objects anyway
    if progress is None and not quiet:
        progress = print
    res = Results(results_dir, bench_dir=bench_dir)
    if not res.tables():
        raise FalstudyError(f"{res.root}: no results here (no store, no spool files); "
                            "run `falstudy sweep sweeps/bypass.yaml` or pass results/<name>")
    out = Path(out) if out is not None else res.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out, out / "report.html")
    sections = [_verdict_section(res, report), *lead_sections]
    for key, (heading, notebook) in SECTIONS.items():
        section = Section(key, heading, f"Interactive version: <code>{html.escape(notebook)}</code>")
        for analysis in (a for a in ANALYSES if a.section == key):
            if progress:
                progress(f"report: {analysis.key} ({ANALYSES.index(analysis) + 1}/{len(ANALYSES)})")
            section.blocks.append(_render(analysis, res, out, report))
        sections.append(section)
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = render_page(
        title=f"falstudy report: {res.root.name}", css=CSS, header=study_header(res), source=res.describe(),
        when=when, drawn=len(report.figures), total=len(ANALYSES), sections=sections,
    )
    with atomic_write(report.html, "w") as fh:
        fh.write(page)
    return report
