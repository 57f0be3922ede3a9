"""``falstudy sweep``: added to the typer app by ``register(app)`` (one line in falstudy/cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def interrupted_line(spec: Path, report) -> str:
    """One line: which sweep stopped, and the command that continues it (its own options kept)."""
    import shlex

    from falstudy.usage import invoked_args

    args = invoked_args() or ["sweep", str(spec)]
    args += [] if "--resume" in args else ["--resume"]
    what = f"sweep {report.name} ({report.group})" if report is not None else f"sweep {spec}"
    return f"falstudy: interrupted {what}; completed trials are kept; continue it with: falstudy {shlex.join(args)}"


def register(app: typer.Typer) -> None:
    @app.command()
    def sweep(
        spec: Annotated[Path, typer.Argument(help="a sweep spec YAML, e.g. sweeps/bypass.yaml")],
        workers: Annotated[Optional[int], typer.Option(help="worker processes on this host (default: the spec's workers)")] = None,
        storage: Annotated[Optional[str], typer.Option(help="journal file path or postgresql:// URL (default: the spec's, else results/<name>/optuna.journal)")] = None,
        resume: Annotated[bool, typer.Option("--resume", help="reap trials whose worker died and re-run them (and interrupted ones); completed cells never run again")] = False,
        retry_failed: Annotated[bool, typer.Option("--retry-failed", help="also re-run trials that failed (diverged, crashed)")] = False,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="print the grid or search space and what would run; create nothing")] = False,
        results_dir: Annotated[Optional[str], typer.Option(help="folder holding results/<name>/ (default: the spec's results_dir)")] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no live view; one line per finished trial")] = False,
        slurm: Annotated[Optional[int], typer.Option(help="submit a Slurm job array of N worker tasks instead (see the spec's slurm:)")] = None,
        wait: Annotated[bool, typer.Option("--wait", help="with --slurm: wait for the array, then ingest")] = False,
        status: Annotated[bool, typer.Option("--status", help="show the trials and the Slurm array's task states; run nothing")] = False,
    ) -> None:
        """Run an Optuna sweep: each trial trains one run in its own process; results go to
        results/<name>/ (runs, metrics, probes and the trials table, ingested into DuckDB).
        Run it again (on any host sharing the storage) to join the same study."""
        if workers is not None and workers < 1:
            from falstudy.errors import FalstudyError

            raise FalstudyError(f"--workers {workers}: give at least 1")
        if status or slurm is not None or wait:  # Slurm: falstudy/sweep/slurm.py
            from falstudy.sweep import slurm as S

            if status:
                return S.status(spec, storage=storage, results_dir=results_dir, echo=typer.echo)
            from falstudy.errors import FalstudyError

            if slurm is None:
                raise FalstudyError("--wait waits for a Slurm array: add --slurm N")
            if workers is not None:
                raise FalstudyError("--workers is for this host; with --slurm N each of the N array tasks runs one worker")
            raise typer.Exit(S.submit(spec, slurm, storage=storage, results_dir=results_dir, resume=resume,
                                      retry_failed=retry_failed, wait=wait, dry_run=dry_run, echo=typer.echo))
        from falstudy.sweep.driver import plan, run_sweep

        if dry_run:
            plan(spec, workers=workers, storage=storage, results_dir=results_dir, echo=typer.echo)
            return
        try:
            report = run_sweep(spec, workers=workers, storage=storage, resume=resume, retry_failed=retry_failed,
                               results_dir=results_dir, quiet=quiet, echo=typer.echo)
        except KeyboardInterrupt:  # before the workers started (after, the driver turns signals into a report)
            report = None
        if report is None or report.interrupted:
            typer.echo(interrupted_line(spec, report), err=True)
            raise typer.Exit(130)
        if not report.ok:
            raise typer.Exit(3)
