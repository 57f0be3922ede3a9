"""``falstudy bench gpu`` (registered under ``falstudy bench`` by falstudy/parallel/cli.py);
``bench/gpu.py`` runs the same command with ``typer.run(bench_gpu)``. No torch import here."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


class Variant(str, Enum):  # falstudy.gpu.cases.VARIANTS (kept here: no torch import)
    baseline = "baseline"
    parallel = "parallel"
    fal = "fal"
    fal_plus = "fal_plus"


def bench_gpu(
    tiny: Annotated[bool, typer.Option(help="tiny shapes and few steps: the CPU rehearsal of the device run (seconds)")] = False,
    out: Annotated[Path, typer.Option(help="folder for env/checks/throughput/train .parquet and summary.txt")] = Path("results/gpu"),
    device: Annotated[str, typer.Option(help="auto | cuda | cuda:N | cpu (cpu only with --tiny)")] = "auto",
    budget_s: Annotated[float, typer.Option(min=10.0, help="seconds for the whole bench; later sections shrink or are skipped to fit")] = 390.0,
    rounds: Annotated[Optional[int], typer.Option(min=1, help="timing rounds per group (default 5; --tiny 2)")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="timed steps per case per round (default 3; --tiny 1)")] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="time torch.compile'd models too (default: yes, but not with --tiny)")] = None,
    train_seconds: Annotated[Optional[float], typer.Option(min=0.0, help="length of the training run (default 120; --tiny 2)")] = None,
    data: Annotated[str, typer.Option(help="prepared corpus for the training run")] = "data/shakespeare-byte",
    variants: Annotated[Optional[list[Variant]], typer.Option("--variant", help="a variant to time (repeatable; baseline always; default all four)")] = None,
) -> None:
    """Training throughput, memory and numerics of the wirings on one GPU (eager, two streams,
    torch.compile), a training run, and the one-GPU NCCL checks; see docs/gpu.md."""
    from falstudy.gpu.bench import Options, run

    result = run(Options(out=out, tiny=tiny, device=device, budget_s=budget_s, rounds=rounds, steps=steps,
                         compile=compile, train_s=train_seconds, data=data,
                         variants=tuple(v.value for v in variants) if variants else Options.variants))
    if result["failed"]:
        typer.echo(f"falstudy bench gpu: {len(result['failed'])} check(s) failed: {', '.join(result['failed'])}", err=True)
        raise typer.Exit(1)
