"""`falstudy bench gpu`: the device check, rehearsed on the CPU with --tiny (docs/gpu.md).

The end-to-end run happens in a child process in which duckdb, optuna and nnsight cannot be
imported, as on the GPU machine; torch.compile is off in --tiny (its numerics are
tests/test_train_compile.py's)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from falstudy.gpu import cases, checks

ROOT = Path(__file__).resolve().parent.parent
ABSENT_ON_DEVICE = ("duckdb", "optuna", "nnsight")


def _bench(*args: str) -> subprocess.CompletedProcess:
    """`falstudy bench gpu ARGS` with the packages the GPU machine lacks made unimportable."""
    code = (f"import sys\nfor m in {ABSENT_ON_DEVICE!r}: sys.modules[m] = None\n"
            "from falstudy.cli import main\nmain(sys.argv[1:])")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, "bench", "gpu", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=240)


@pytest.mark.slow
def test_tiny_run_end_to_end(corpus, tmp_path):
    out = tmp_path / "gpu"
    proc = _bench("--tiny", "--out", str(out), "--data", str(corpus), "--train-seconds", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["checks.parquet", "env.parquet", "summary.txt",
                                                     "throughput.parquet", "train.parquet"]

    tp = pd.read_parquet(out / "throughput.parquet")
    expected = {(s.name, v, m) for s in cases.TINY_SHAPES for v, m in cases.plan(s, ("eager", "streams"))}
    assert set(zip(tp["shape"], tp["variant"], tp["mode"])) == expected
    assert len(expected) == 2 * (4 + 2)  # four variants eager, parallel and fal with two streams
    assert set(tp["group"]) == {"eager"}  # --tiny: no compile group
    assert (tp["tokens_per_s"] > 0).all() and (tp["rounds"] == 2).all()
    fal = tp[(tp["variant"] == "fal") & (tp["mode"] == "eager")]
    assert fal["vs_baseline"].notna().all() and (fal["vs_baseline_lo"] <= fal["vs_baseline_hi"]).all()
    streams = tp[tp["mode"] == "streams"]
    assert streams["vs_eager"].notna().all()

    ck = pd.read_parquet(out / "checks.parquet")
    assert ck["passed"].all(), ck[~ck["passed"]].to_dict("records")
    assert sorted(ck["check"].unique()) == ["collectives", "first_loss", "loss_curve", "streams", "train"]
    assert set(ck[ck["check"] == "loss_curve"]["case"]) == {"cpu-fp32_vs_cpu-fp32", "cpu-bf16_vs_cpu-fp32"}
    assert set(ck[ck["check"] == "collectives"]["case"]) == {"gloo"}

    tr = pd.read_parquet(out / "train.parquet")
    val = tr[(tr["split"] == "val") & (tr["name"] == "loss")].sort_values("step")
    assert len(val) >= 2 and val["value"].iloc[-1] < val["value"].iloc[0]

    env = pd.read_parquet(out / "env.parquet").iloc[0]
    assert bool(env["tiny"]) and not bool(env["compile"])
    text = (out / "summary.txt").read_text()
    assert text in proc.stdout  # printed, and saved
    assert "checks: 12 of 12 passed" in text and "projection" in text
    assert len(text.splitlines()) <= 45  # one screen


def test_bench_imports_nothing_the_device_lacks():
    code = ("import sys\nimport falstudy.cli, falstudy.gpu.bench, falstudy.gpu.checks, falstudy.gpu.summary\n"
            "import runpy; runpy.run_path('bench/gpu.py', run_name='not_main')\n"
            f"print(sorted(m for m in {ABSENT_ON_DEVICE + ('pydantic_settings', 'sklearn')!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_full_size_needs_cuda_and_a_corpus(tmp_path, corpus):
    out = tmp_path / "gpu"
    proc = _bench("--device", "cpu", "--out", str(out), "--data", str(corpus))
    assert proc.returncode == 2 and "needs a CUDA device" in proc.stderr and "--tiny" in proc.stderr
    proc = _bench("--tiny", "--out", str(out), "--data", str(tmp_path / "missing"))
    assert proc.returncode == 2 and str(tmp_path / "missing") in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()  # nothing written before the inputs are checked


def test_streams_only_for_parallel_form_blocks():
    shape = cases.TINY_SHAPES[0]
    assert cases.plan(shape, ("streams",)) == [("parallel", "streams"), ("fal", "streams")]
    assert cases.plan(shape, ("eager", "compile"), ("baseline", "fal")) == [
        ("baseline", "eager"), ("fal", "eager"), ("baseline", "compile"), ("fal", "compile")]


def test_first_loss_check_catches_a_mode_that_computes_something_else():
    rows = [{"shape": "s", "variant": "fal", "mode": "eager", "first_loss": 5.50},
            {"shape": "s", "variant": "fal", "mode": "compile", "first_loss": 5.50 * (1 + 1e-6)},
            {"shape": "s", "variant": "fal", "mode": "streams", "first_loss": 5.60}]
    got = {r["case"]: r["passed"] for r in checks.first_losses(rows, rtol=1e-4)}
    assert got == {"s/fal/compile": True, "s/fal/streams": False}


def test_ratios_are_per_round_against_the_same_groups_baseline():
    shape = cases.TINY_SHAPES[0]

    class Fake:  # what rows() reads of a measured case
        def __init__(self, variant, mode, rates):
            self.shape, self.variant, self.mode, self.rates = shape, variant, mode, rates
            self.bf16, self.n_params, self.warmup_s, self.first_loss = False, 1, 0.5, 5.0
            self.resident_gb = self.step_peak_gb = float("nan")

    got = {(r["variant"], r["mode"]): r for r in cases.rows([
        Fake("baseline", "eager", [100.0, 200.0, 100.0]), Fake("fal", "eager", [110.0, 220.0, 110.0]),
        Fake("fal", "streams", [121.0, 242.0, 121.0])], "cpu")}
    assert got[("fal", "eager")]["vs_baseline"] == pytest.approx(1.1)
    assert got[("fal", "streams")]["vs_baseline"] == pytest.approx(1.21)  # streams vs eager baseline
    assert got[("fal", "streams")]["vs_eager"] == pytest.approx(1.1)
    assert "vs_baseline" not in got[("baseline", "eager")]
    assert got[("baseline", "eager")]["tokens_per_s"] == 100.0
