"""``falstudy bench tp``: the TP=2 step-time benchmark with the cost model's predictions
(falstudy/parallel/bench.py). Registered by falstudy/cli.py with ``register(app)``, which also
adds ``falstudy bench gpu`` (falstudy/gpu/cli.py); the script ``bench/tp_step.py`` runs the same
command with ``typer.run(bench_tp)``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


class BenchShape(str, Enum):  # the keys of falstudy.parallel.bench.SHAPES (kept here: no torch import)
    comm_heavy = "comm-heavy"
    compute_heavy = "compute-heavy"


def bench_tp(
    rounds: Annotated[Optional[int], typer.Option(min=1, help="exactly this many rounds (overrides --min-rounds/--max-rounds); each refits the all-reduce cost and times every model")] = None,
    min_rounds: Annotated[int, typer.Option(min=1, help="rounds before the intervals are checked")] = 5,
    max_rounds: Annotated[int, typer.Option(min=1, help="stop here even if an interval is still wide (it says so)")] = 30,
    target: Annotated[float, typer.Option(min=0.0, help="stop once every ratio's and error's 95% interval is within +- this share of its median")] = 0.03,
    steps: Annotated[int, typer.Option(min=1, help="timed steps per model per round")] = 3,
    out: Annotated[Path, typer.Option(help="folder for tp_step.parquet and tp_projection.parquet")] = Path("results/bench"),
    shapes: Annotated[Optional[list[BenchShape]], typer.Option("--shape", help="a shape to time (repeatable; default: both)")] = None,
) -> None:
    """Step time of parallel, fal, ladder and fal_ladder vs baseline at TP=2 (re-executes under
    torchrun), measured and predicted side by side, with communication exposed and hidden;
    writes results/bench/*.parquet."""
    from falstudy.parallel.bench import run

    run(rounds=rounds, min_rounds=min_rounds, max_rounds=max_rounds, target=target, steps=steps, out=out,
        shapes=[s.value for s in shapes or BenchShape])


def register(app: typer.Typer) -> None:
    bench_app = typer.Typer(help="Benchmarks that print ratios measured side by side in one run.", no_args_is_help=True)
    app.add_typer(bench_app, name="bench")
    bench_app.command("tp")(bench_tp)
    from falstudy.gpu.cli import bench_gpu

    bench_app.command("gpu")(bench_gpu)
