"""``falstudy report RESULTS_DIR [--out DIR]``: the notebooks' figures as PNGs and one HTML page,
for machines without Jupyter; ``falstudy verdict RESULTS_DIR...``: each claim of the study with
its interval, test and verdict. Registered by falstudy/cli.py with ``register(app)``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from falstudy.errors import FalstudyError


def register(app: typer.Typer) -> None:
    @app.command()
    def report(
        results: Annotated[Path, typer.Argument(help="a results group, e.g. results/bypass")],
        out: Annotated[Optional[Path], typer.Option(help="output folder (default: RESULTS/report)")] = None,
        bench: Annotated[Optional[Path], typer.Option(help="folder of benchmark Parquet files (default: $FALSTUDY_BENCH, RESULTS/bench or RESULTS/../bench)")] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="only the final line (no progress on stderr)")] = False,
    ) -> None:
        """Write every analysis figure (PNG) and report.html; missing data gets a hint, not a traceback."""
        from falstudy.report import make_report

        if not results.is_dir():
            raise FalstudyError(f"{results}: no such results folder; pass results/<name> (a sweep or train --name)")
        # one line per analysis on stderr while it works (the figures take tens of seconds)
        progress = None if quiet else (lambda line: typer.echo(line, err=True))
        done = make_report(results, out, bench_dir=bench, progress=progress)
        if not quiet:
            for key, hint in done.missing.items():
                typer.echo(f"{key}: not drawn: {hint}")
            for key, error in done.failed.items():
                typer.echo(f"{key}: FAILED: {error}", err=True)
        typer.echo(f"{done.html}: {len(done.figures)} figure(s), {len(done.missing)} missing data, "
                   f"{len(done.failed)} failed")
        if done.failed:
            raise typer.Exit(1)

    @app.command()
    def verdict(
        results: Annotated[list[Path], typer.Argument(help="one or more results groups, e.g. results/bypass (several: e.g. one per model size)")],
        write: Annotated[bool, typer.Option("--write/--no-write", help="store the rows as the verdicts table of the first group")] = True,
        csv: Annotated[bool, typer.Option("--csv", help="print the rows as CSV instead of the table")] = False,
    ) -> None:
        """Each claim of the study the results can test: effect, 95% interval, test, p, seeds and a verdict
        (holds / does not hold / inconclusive at this scale). Method: docs/report.md."""
        from falstudy.report import verdicts

        for folder in results:
            if not folder.is_dir():
                raise FalstudyError(f"{folder}: no such results folder; pass results/<name> (a sweep or train --name)")
        report = verdicts.compute(results)
        if write:
            verdicts.write(report, results[0])
        if csv:
            typer.echo(report.frame().to_csv(index=False), nl=False)
        else:
            typer.echo(verdicts.text_table(report))
