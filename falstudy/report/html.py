"""``make_report``: every analysis as a PNG plus one ``report.html`` that shows them with their
captions, without Jupyter. An analysis whose data is missing gets the hint that says which
sweep or command produces it; one that fails for another reason gets its error, and the rest
are still written.
"""

from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from falstudy.errors import FalstudyError
from falstudy.report.analyses import ANALYSES, SECTIONS, Analysis
from falstudy.store.readonly import MissingTable, Results

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
.meta { color: #666; font-size: 0.9em; }
figure { margin: 1.2em 0 2em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.95em; color: #333; margin-top: 0.4em; }
figcaption .notes { color: #666; font-size: 0.9em; }
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


def _code(text: str) -> str:
    """Escape, and show `backticked` commands as code."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _table_html(df: Any) -> str:
    return df.to_html(index=False, classes="data", border=0, float_format=lambda v: f"{v:.4f}", na_rep="")


def _render(analysis: Analysis, res: Results, out: Path, report: Report) -> str:
    head = f'<h3 id="{analysis.key}">{html.escape(analysis.title)}</h3>'
    png = out / f"{analysis.key}.png"
    png.unlink(missing_ok=True)  # a figure from an earlier report must not outlive its data
    try:
        fig = analysis.make(res)
        table = analysis.table(res) if analysis.table else None
    except MissingTable as err:
        report.missing[analysis.key] = str(err)
        return f'{head}\n<div class="missing">Not drawn: {_code(str(err))}</div>'
    except Exception as err:  # a bug or unreadable data: keep the rest of the report
        message = f"{type(err).__name__}: {err}".splitlines()[0]
        report.failed[analysis.key] = message
        return f'{head}\n<div class="failed">Failed: {html.escape(message)}</div>'
    fig.savefig(png, dpi=130, facecolor="white")
    report.figures[analysis.key] = png
    notes = getattr(fig, "falstudy_notes", [])
    note_html = f'<br><span class="notes">{_code(" ".join(notes))}</span>' if notes else ""
    body = (f'<figure>\n<img src="{png.name}" alt="{html.escape(analysis.title)}">\n'
            f"<figcaption>{_code(analysis.caption)}{note_html}</figcaption>\n</figure>")
    if table is not None:
        body += "\n" + _table_html(table)
    return f"{head}\n{body}"


VERDICT_COLUMNS = ["claim", "variant", "size", "effect", "ci_lo", "ci_hi", "unit", "test", "p", "n", "verdict",
                   "seeds_needed", "note"]


def _verdict_section(res: Results, report: Report) -> str:
    """The study's claims with their intervals and verdicts (falstudy.report.verdicts), first."""
    from falstudy.report import verdicts

    head = '<h2 id="verdicts">Verdicts: the claims of the study, tested</h2>'
    try:
        found = verdicts.compute([res.root])
    except FalstudyError as err:
        report.missing["verdicts"] = str(err)
        return f'{head}\n<div class="missing">No verdicts: {_code(str(err))}</div>'
    regime = "".join(f"<li>{html.escape(line)}</li>" for line in found.regime)
    untested = "".join(f"<li>{html.escape(line)}</li>" for line in found.missing)
    return (f"{head}\n<p>Each claim reduced to one number per seed and tested over seeds (paired t; Welch "
            "between sizes): <b>holds</b> / <b>does not hold</b> when the 95% interval lies on one side of zero, "
            "else <b>inconclusive at this scale</b>, with the seeds that would resolve the observed effect. Method: "
            "<code>docs/report.md</code>; the same table: <code>falstudy verdict</code>.</p>\n"
            f"<p class=\"meta\">Regime:</p><ul>{regime}</ul>\n" + _table_html(found.frame()[VERDICT_COLUMNS])
            + (f"\n<p class=\"meta\">Not tested:</p><ul>{untested}</ul>" if untested else ""))


def make_report(results_dir: str | Path, out: str | Path | None = None, *, bench_dir: str | Path | None = None,
                quiet: bool = True) -> Report:
    """Write ``<out>/<analysis>.png`` and ``<out>/report.html`` (``out`` default: ``<results>/report``).
    ``bench_dir``: where ``falstudy bench tp`` wrote its files (default: see ``Results``)."""
    import matplotlib

    matplotlib.use("Agg")  # headless; figures are plain Figure objects anyway
    res = Results(results_dir, bench_dir=bench_dir)
    if not res.tables():
        raise FalstudyError(f"{res.root}: no results here (no store, no spool files); "
                            "run `falstudy sweep sweeps/bypass.yaml` or pass results/<name>")
    out = Path(out) if out is not None else res.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out, out / "report.html")
    sections = [_verdict_section(res, report)]
    for key, (heading, notebook) in SECTIONS.items():
        blocks = []
        for analysis in (a for a in ANALYSES if a.section == key):
            blocks.append(_render(analysis, res, out, report))
            if not quiet:
                state = ("written" if analysis.key in report.figures else
                         "missing" if analysis.key in report.missing else "failed")
                print(f"{analysis.key}: {state}")
        sections.append(f'<h2 id="{key}">{html.escape(heading)}</h2>\n'
                        f'<p class="meta">Interactive version: <code>{notebook}</code></p>\n' + "\n".join(blocks))
    contents = "".join(f'<li><a href="#{a.key}">{html.escape(a.title)}</a>'
                       f'{"" if a.key in report.figures else " (not drawn)"}</li>' for a in ANALYSES)
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>falstudy report: {html.escape(res.root.name)}</title>
<style>{CSS}</style></head>
<body>
<h1>falstudy report: {html.escape(res.root.name)}</h1>
<p class="meta">{html.escape(res.describe())}<br>Written {when} by <code>falstudy report</code>;
{len(report.figures)} of {len(ANALYSES)} figures drawn.</p>
<ul>{contents}</ul>
{chr(10).join(sections)}
</body></html>
"""
    tmp = report.html.with_name(".report.html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(report.html)
    return report
