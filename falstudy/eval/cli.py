"""``falstudy eval RUN_OR_GROUP``: downstream evaluation of trained runs (docs/eval.md).
Registered by falstudy/cli.py with ``register(app)``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from falstudy.errors import FalstudyError


def _targets(target: str, results: Path | None) -> tuple[list[Path], Path | None]:
    """(run folders or checkpoint files to evaluate, the results group to ingest or None)."""
    path = Path(target)
    if path.is_dir() and (path / "runs").is_dir() and results is None:  # a results group
        runs = sorted(p for p in (path / "runs").iterdir() if (p / "checkpoint.pt").is_file())
        if not runs:
            raise FalstudyError(f"{path}: no run under runs/ has a checkpoint.pt; train runs first")
        return runs, path
    from falstudy.cli import _probe_source  # a run folder, checkpoint file or run id

    source = _probe_source(target, results)
    group = source.parent.parent if source.is_dir() and source.parent.name == "runs" else None
    return [source], group


def _split(values: list[str]) -> list[str]:
    out = [v.strip() for text in values for v in text.split(",") if v.strip()]
    return [] if out == ["none"] else out


def summary(results: list) -> "pandas.DataFrame":  # noqa: F821
    """Mean ± sd over runs of each variant, task and metric (sd over seeds), in the study's order."""
    import pandas as pd

    from falstudy.eval.runner import KINDS

    rows = [{"variant": r.variant, **row} for r in results for row in r.rows]
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    df = df[df["metric"].isin(["bpb", "acc", "acc_norm"]) | (df["kind"] == "lm_eval")]
    from falstudy.report.common import order

    out = (df.groupby(["kind", "task", "metric", "variant"], sort=False)["value"]
           .agg(mean="mean", sd="std", runs="count").reset_index())
    keys = {"_k": out["kind"].map({k: i for i, k in enumerate(KINDS)}),
            "_t": out["task"].map({t: i for i, t in enumerate(dict.fromkeys(out["task"]))}),
            "_v": out["variant"].map({v: i for i, v in enumerate(order(out["variant"].unique()))})}
    return out.assign(**keys).sort_values(list(keys), kind="stable").drop(columns=list(keys)).reset_index(drop=True)


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_(
        target: Annotated[str, typer.Argument(help="a results group (results/<name>: every run with a checkpoint), a run folder, a checkpoint file, or a run id")],
        results: Annotated[Optional[Path], typer.Option("--results", "-r", help="results group to look a run id up in")] = None,
        heldout: Annotated[list[str], typer.Option(help="held-out domains, comma-separated (none: skip); the run's own corpus is left out")] = ["kjv,web,fortunes"],
        pairs: Annotated[list[str], typer.Option(help="minimal-pair sets: wordswap-<corpus> (built here) or a BLiMP-style JSONL file (repeatable; none: skip)")] = ["wordswap-web"],
        choices: Annotated[list[str], typer.Option(help="multiple-choice JSONL file (context, choices, gold); repeatable")] = [],
        lm_eval: Annotated[Optional[str], typer.Option("--lm-eval", help="lm-eval task names, comma-separated (needs the .[eval] extra)")] = None,
        include_path: Annotated[Optional[Path], typer.Option("--include-path", help="folder of local lm-eval task YAMLs")] = None,
        limit: Annotated[Optional[int], typer.Option(min=1, help="lm-eval: at most this many items per task")] = None,
        n_bytes: Annotated[int, typer.Option("--bytes", min=1, help="text scored per held-out domain (bytes)")] = 65536,
        window: Annotated[int, typer.Option(min=16, help="characters per scored window of held-out text")] = 512,
        n_pairs: Annotated[int, typer.Option(min=1, help="pairs built per wordswap set")] = 500,
        batch_size: Annotated[int, typer.Option(min=1, help="windows per forward")] = 32,
        data: Annotated[Optional[Path], typer.Option(help="the corpus folder the runs were trained on (its tokenizer)", show_default="the run's data.path")] = None,
        device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N")] = "cpu",
        no_write: Annotated[bool, typer.Option("--no-write", help="print only; write nothing to the runs' spools")] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress on stderr")] = False,
    ) -> None:
        """Score trained runs downstream: bits per byte on held-out domains, minimal-pair and
        multiple-choice accuracy, lm-eval tasks; writes the evals table and prints mean ± sd per variant."""
        from falstudy.eval.runner import check_sources, run_evals
        from falstudy.probe.runner import resolve_device

        if include_path is not None and not include_path.is_dir():
            raise FalstudyError(f"--include-path {include_path}: no such folder of task YAMLs")
        tasks = _split([lm_eval]) if lm_eval else []
        if tasks:
            import falstudy.eval.lmeval  # noqa: F401  (without the extra: one line with the install hint)
        held, pair_sets = _split(heldout), _split(pairs)
        check_sources(pair_sets, choices)  # bad files fail before any checkpoint is loaded
        if data is not None and not (data / "meta.json").is_file():
            raise FalstudyError(f"--data {data}: not a prepared corpus folder (no meta.json)")
        resolve_device(device)
        runs, group = _targets(target, results)
        done = []
        for i, run in enumerate(runs, start=1):
            say = None if quiet else (lambda line, i=i: typer.echo(f"[{i}/{len(runs)}] {line}", err=True))
            res = run_evals(run, heldout=held, pairs=pair_sets, choices=choices, lm_eval=tasks,
                            include_path=None if include_path is None else str(include_path), limit=limit,
                            n_bytes=n_bytes, window=window, n_pairs=n_pairs, batch_size=batch_size, data=data,
                            device=device, write=not no_write, progress=say, quiet=quiet)
            done.append(res)
        for note in dict.fromkeys(n for r in done for n in r.notes):
            typer.echo(f"skipped {note}", err=True)
        table = summary(done)
        if len(table):
            from falstudy.textout import print_table

            print_table(table, 1000, echo=typer.echo)
        n_rows = sum(len(r.rows) for r in done)
        if no_write:
            where = "not written (--no-write)"
        elif group is None:  # run_evals writes into a run folder's spool, a checkpoint file has none
            where = (f"written to {runs[0]}/evals-*.parquet (not in a results group: not ingested)"
                     if runs[0].is_dir() and n_rows else "not written (not a run folder)")
        else:
            from falstudy.store import ingest

            ingest(group)
            where = f"written to each run's evals-*.parquet; query: falstudy sql -r {group} \"SELECT * FROM evals\""
        typer.echo(f"{len(done)} run(s), {n_rows} rows; {where}")
