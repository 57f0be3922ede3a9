"""Tensor-parallel step time of fal and parallel against baseline at TP=2, measured side by side,
with the cost model's predictions: ``falstudy bench tp`` (falstudy/parallel/bench.py) as a script.

    python bench/tp_step.py [--rounds 8 --steps 3] [--out results/bench]
"""

import typer

from falstudy.parallel.cli import bench_tp

if __name__ == "__main__":
    typer.run(bench_tp)
