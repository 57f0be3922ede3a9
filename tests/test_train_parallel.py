"""The trainer under tensor and data parallelism, end to end through ``falstudy train --tp/--dp``
(which re-executes itself under torchrun): the same losses as one process, the timings table,
checkpoints that move between layouts, and bad input refused before any process starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import falstudy
from falstudy.parallel.costmodel import allreduce_counts
from falstudy.parallel.launch import cpu_cores

FALSTUDY = [sys.executable, "-m", "falstudy"]
TINY = {"model.n_layer": 3, "model.n_head": 4, "model.n_embd": 32, "model.block_size": 32}
TRAIN = {"train.batch_size": 4, "train.eval_interval": 5, "train.eval_batches": 2, "train.log_interval": 5,
         "train.checkpoint_interval": 5, "train.warmup_steps": 2, "train.lr": 3e-3}
TIMEOUT = 240


def train_cli(corpus: Path, results: Path, *args: str, **overrides) -> subprocess.CompletedProcess:
    sets = {**TINY, **TRAIN, "results_dir": str(results), "data.path": str(corpus), **overrides}
    argv = [*FALSTUDY, "train", "-q", *args]
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, env=env)


def curve(results: Path, name: str, split: str) -> dict[int, float]:
    df = falstudy.query(results / name, f"SELECT step, value FROM metrics WHERE split = '{split}' AND name = 'loss'")
    return dict(zip(df.step, df.value))


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.mark.parametrize("variant", ["baseline", "fal", "ladder", "fal_ladder"])
def test_tp2_trains_like_one_process_and_counts_its_all_reduces(corpus, tmp_path, variant):
    steps = 10
    ok(train_cli(corpus, tmp_path, "--variant", variant, "--steps", str(steps), name="one"))
    out = ok(train_cli(corpus, tmp_path, "--variant", variant, "--steps", str(steps), "--tp", "2", name="tp"))
    assert out.stdout.count("completed at step 10") == 1  # rank 0 alone reports

    one, tp = curve(tmp_path, "one", "val"), curve(tmp_path, "tp", "val")
    assert sorted(tp) == [0, 5, 10]
    for step in one:
        assert tp[step] == pytest.approx(one[step], abs=1e-4)

    run = falstudy.query(tmp_path / "tp", "SELECT tp, dp, status, n_params FROM runs").iloc[0]
    assert (run.tp, run.dp, run.status) == (2, 1, "completed")
    assert run.n_params == falstudy.query(tmp_path / "one", "SELECT n_params FROM runs").n_params[0]

    t = falstudy.query(tmp_path / "tp", "SELECT rank, kind, sum(count) AS n, sum(bytes) AS b, sum(seconds) AS s "
                                        "FROM timings GROUP BY rank, kind")
    counts = {(r.rank, r.kind): r.n for r in t.itertuples()}
    cfg = falstudy.load_checkpoint(next((tmp_path / "tp" / "runs").iterdir()))[1]
    want = allreduce_counts(cfg.model)  # forward and backward all-reduces per training step
    for rank in (0, 1):
        assert counts[(rank, "all_reduce_fwd")] == want["fwd"] * steps
        assert counts[(rank, "all_reduce_bwd")] == want["bwd"] * steps
        assert counts[(rank, "norm_all_reduce")] == steps  # gradient clipping's one small all-reduce
        assert counts[(rank, "step")] == steps  # evaluation's collectives are not counted
    step_s = t[t.kind == "step"].s.to_numpy()
    comm_s = t[t.kind.str.contains("all_reduce")].groupby("rank").s.sum().to_numpy()
    assert ((comm_s > 0) & (comm_s < step_s)).all()
    # the timings table tells hidden from exposed: only the ladder's forward all-reduces run behind compute
    hidden = falstudy.query(tmp_path / "tp", "SELECT kind, sum(in_flight_seconds - exposed_seconds) AS h, "
                                             "sum(exposed_seconds) AS e, sum(seconds) AS s FROM timings "
                                             "WHERE kind LIKE '%all_reduce%' GROUP BY kind").set_index("kind")
    assert (hidden.e == hidden.s).all()
    assert hidden.h.get("all_reduce_bwd") == 0 and hidden.h.get("norm_all_reduce") == 0
    assert (hidden.h["all_reduce_fwd"] > 0) == ("ladder" in variant)


def test_dp2_equals_one_process_with_the_doubled_batch(corpus, tmp_path):
    ok(train_cli(corpus, tmp_path, "--variant", "parallel", "--steps", "10", name="one",
                 **{"train.batch_size": 8}))
    ok(train_cli(corpus, tmp_path, "--variant", "parallel", "--steps", "10", "--dp", "2", name="dp"))
    for split in ("train", "val"):
        one, dp = curve(tmp_path, "one", split), curve(tmp_path, "dp", split)
        assert sorted(one) == sorted(dp)
        for step in one:
            assert dp[step] == pytest.approx(one[step], abs=1e-4)
    kinds = falstudy.query(tmp_path / "dp", "SELECT kind, sum(count) AS n FROM timings WHERE rank = 1 GROUP BY kind")
    assert dict(zip(kinds.kind, kinds.n))["dp_all_reduce"] == 10  # one flat gradient all-reduce per step


def test_a_tp_checkpoint_resumes_in_one_process(corpus, tmp_path):
    """Train 5 steps at TP=2, continue the same run in one process to step 10: the losses of an
    uninterrupted one-process run, and a store that holds each step once. (A constant learning
    rate after warm-up, so stopping at 5 of 10 steps is the schedule of a run of 10.)"""
    flat = {"train.min_lr_ratio": 1.0}
    ok(train_cli(corpus, tmp_path, "--variant", "fal_plus", "--steps", "10", name="one", **flat))
    ok(train_cli(corpus, tmp_path, "--variant", "fal_plus", "--steps", "5", "--tp", "2", "--run-id", "r1",
                 name="mixed", **flat))
    ok(train_cli(corpus, tmp_path, "--variant", "fal_plus", "--steps", "10", "--run-id", "r1", name="mixed", **flat))
    one, mixed = curve(tmp_path, "one", "val"), curve(tmp_path, "mixed", "val")
    assert sorted(mixed) == [0, 5, 10]
    assert mixed[10] == pytest.approx(one[10], abs=1e-4)
    rows = falstudy.query(tmp_path / "mixed", "SELECT count(*) AS n, count(DISTINCT (step, split, name)) AS d FROM metrics")
    assert rows.n[0] == rows.d[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tp", "3"], "does not divide model.n_head=4"),
        (["--tp", "2", "--dp", str(cpu_cores())], "--allow-oversubscribe"),  # 2 ranks per core
        (["--tp", "2", "--backend", "mpi"], "parallel.backend"),
        (["--tp", "2", "--backend", "nccl"], "nccl"),
        (["--tp", "2", "--set", "train.grad_probe_every=2"], "one process"),
        (["--tp", "2", "--data", "/no/such/corpus"], "not found"),
    ],
)
def test_bad_parallel_settings_exit_2_before_any_process_starts(corpus, tmp_path, args, message):
    proc = train_cli(corpus, tmp_path, "--variant", "fal", "--steps", "2", *args, name="bad")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "bad").exists()


def test_bench_tp_measures_and_predicts_side_by_side(tmp_path):
    """``falstudy bench tp`` relaunches itself on 2 ranks, prints the table and writes the Parquet
    files the notebooks plot (one tiny round: a smoke test, not a timing)."""
    import pandas as pd

    proc = subprocess.run([*FALSTUDY, "bench", "tp", "--rounds", "1", "--steps", "1", "--shape", "comm-heavy",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "/base meas" in proc.stdout and "projection" in proc.stdout
    steps = pd.read_parquet(tmp_path / "tp_step.parquet").set_index("wiring")
    assert list(steps.index) == ["baseline", "parallel", "fal", "ladder", "fal_ladder"]
    assert (steps.step_s > 0).all() and (steps.predicted_s > 0).all()
    # 4 layers: baseline 2+2 per block, parallel 1+1; fal's source block 2+2, later ones 1+1, +1 for N_f(a_1);
    # the ladder forms pay what their plain forms pay
    assert (steps.allreduce_fwd.to_dict(), steps.allreduce_bwd.to_dict()) == (
        {"baseline": 8, "parallel": 4, "fal": 5, "ladder": 8, "fal_ladder": 5},
        {"baseline": 8, "parallel": 4, "fal": 6, "ladder": 8, "fal_ladder": 6})
    ladders = steps.loc[["ladder", "fal_ladder"]]  # forward all-reduces in flight behind compute
    assert (ladders.comm_in_flight_s > ladders.comm_exposed_s).all() and (ladders.predicted_hidden_s > 0).all()
    assert "ladder" in proc.stdout and "fal_ladder/base" in proc.stdout
    # synchronous wirings hide nothing: in flight = exposed, measured and predicted
    sync = steps.loc[["baseline", "parallel", "fal"]]
    assert (sync.comm_exposed_s > 0).all() and (sync.comm_in_flight_s == sync.comm_exposed_s).all()
    assert (sync.predicted_hidden_s.abs() < 1e-12).all()
    projection = pd.read_parquet(tmp_path / "tp_projection.parquet")
    assert set(projection.tp) == {2, 4, 8} and set(projection.preset) == {"pcie4", "nvlink"}
    assert (projection.fal_over_baseline < 1).all()


def test_two_hosts_meet_at_a_rendezvous_endpoint(corpus, tmp_path):
    """The many-hosts launch (--nnodes 2 --rdzv-endpoint), played by two processes on this host:
    each starts one rank, they meet through the c10d rendezvous and train one TP=2 model."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["--variant", "fal", "--steps", "5", "--tp", "2", "--nnodes", "2", "--rdzv-endpoint", f"127.0.0.1:{port}",
            "--run-id", "hosts"]
    sets = {**TINY, **TRAIN, "results_dir": str(tmp_path), "data.path": str(corpus), "name": "two"}
    argv = [*FALSTUDY, "train", "-q", *args] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    hosts = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [h.communicate(timeout=TIMEOUT) for h in hosts]
    assert [h.returncode for h in hosts] == [0, 0], [err[-3000:] for _, err in outs]
    assert sum("hosts: completed at step 5" in out for out, _ in outs) == 1  # global rank 0 only
    ok(train_cli(corpus, tmp_path, "--variant", "fal", "--steps", "5", name="one"))
    two, one = curve(tmp_path, "two", "val"), curve(tmp_path, "one", "val")
    assert two[5] == pytest.approx(one[5], abs=1e-4)
    assert set(falstudy.query(tmp_path / "two", "SELECT DISTINCT rank FROM timings")["rank"]) == {0, 1}


def test_gloo_on_a_cuda_device_is_refused_not_quietly_run_on_cpu():
    import torch

    from falstudy.config import ParallelConfig
    from falstudy.errors import FalstudyError
    from falstudy.train.layout import make_layout

    with pytest.raises(FalstudyError, match="gloo trains on CPU"):
        make_layout(ParallelConfig(tp=2, backend="gloo"), torch.device("cuda"))
    with pytest.raises(FalstudyError, match="nccl needs train.device=cuda"):
        make_layout(ParallelConfig(tp=2, backend="nccl"), torch.device("cpu"))
