"""The one prepared GPU check: ``falstudy bench gpu`` (falstudy/gpu/bench.py) as a script.

    python bench/gpu.py [--tiny] [--out results/gpu] [--budget-s 390] [--no-compile]

See docs/gpu.md for the device command that runs it.
"""

import typer

from falstudy.gpu.cli import bench_gpu

if __name__ == "__main__":
    typer.run(bench_gpu)
