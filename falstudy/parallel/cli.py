"""``falstudy bench tp``: the TP=2 step-time benchmark with the cost model's predictions
(falstudy/parallel/bench.py). Registered by falstudy/cli.py with ``register(app)``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    bench_app = typer.Typer(help="Benchmarks that print ratios measured side by side in one run.", no_args_is_help=True)
    app.add_typer(bench_app, name="bench")

    passthrough = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}

    @bench_app.command("tp", context_settings=passthrough)
    def bench_tp(ctx: typer.Context) -> None:
        """Step time of fal and parallel vs baseline at TP=2 (re-executes under torchrun), measured and
        predicted side by side; writes results/bench/*.parquet. `falstudy bench tp --help` lists options."""
        from falstudy.parallel.bench import main

        main(ctx.args)
