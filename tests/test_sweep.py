"""Sweeps end to end on a tiny model and corpus, through the command line: an exact grid under
4 workers, joining a finished study, failing trials, kill -9 of a worker and --resume, TPE with
pruning and repeated seeds, multi-objective values, probes, and the trials table in the store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
import yaml

import falstudy

TINY_MODEL = {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16}
TINY_TRAIN = {"steps": 5, "batch_size": 4, "lr": 3e-3, "warmup_steps": 1, "eval_interval": 5, "eval_batches": 1,
              "log_interval": 5, "checkpoint_interval": 5}


def write_spec(tmp: Path, corpus: Path, name: str = "s", train: dict | None = None, **fields) -> Path:
    spec = {"name": name, "results_dir": str(tmp / "results"), "workers": 1,
            "run": {"data": {"path": str(corpus)}, "model": dict(TINY_MODEL), "train": {**TINY_TRAIN, **(train or {})}},
            **fields}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def sweep(spec: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "falstudy.cli", "sweep", str(spec), "--quiet", *args],
                          capture_output=True, text=True, cwd=spec.parent, timeout=timeout)


def trials_of(spec: Path, name: str = "s") -> list[optuna.trial.FrozenTrial]:
    from falstudy.sweep.study import make_storage

    storage = make_storage(str(spec.parent / "results" / name / "optuna.journal"))
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def store(spec: Path, sql: str, name: str = "s"):
    return falstudy.query(spec.parent / "results" / name, sql)


def test_four_workers_run_each_cell_of_a_12_cell_grid_exactly_once(corpus, tmp_path):
    spec = write_spec(tmp_path, corpus, workers=4, seeds=[0, 1, 2],
                      search={"variant": ["baseline", "parallel", "fal", "no_attn"]})
    proc = sweep(spec)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = trials_of(spec)
    assert len(trials) == 12 and all(t.state.name == "COMPLETE" for t in trials)
    run_ids = sorted(t.user_attrs["run_id"] for t in trials)
    assert run_ids == sorted(f"{v}-s{s}" for v in ("baseline", "parallel", "fal", "no_attn") for s in (0, 1, 2))
    assert len({t.user_attrs["worker_pid"] for t in trials}) > 1  # the work was shared
    # the store: one trials row and one completed run per cell, joined on run_id
    joined = store(spec, "SELECT t.trial_number, t.state, t.params_json, t.values_json, t.host, t.pid, "
                         "t.duration_s, r.variant, r.seed, r.status, r.final_val_loss "
                         "FROM trials t JOIN runs r USING (run_id) ORDER BY t.trial_number")
    assert len(joined) == 12 and set(joined.status) == {"completed"} and set(joined.state) == {"COMPLETE"}
    assert all(json.loads(v)[0] == pytest.approx(loss) for v, loss in zip(joined.values_json, joined.final_val_loss))
    assert [json.loads(p)["variant"] for p in joined.params_json] == list(joined.variant)
    assert joined.duration_s.gt(0).all() and joined.pid.notna().all()

    # a second sweep on the same spec joins the study: nothing is queued or run again
    again = sweep(spec)
    assert again.returncode == 0, again.stderr
    assert "joined" in again.stdout and "0 new cells queued" in again.stdout
    assert len(trials_of(spec)) == 12
    assert len(store(spec, "SELECT * FROM trials")) == 12 and len(store(spec, "SELECT * FROM runs")) == 12


def test_diverging_and_crashing_trials_fail_with_their_error_and_the_sweep_goes_on(corpus, tmp_path):
    # lr=1e6 diverges; seq_len 64 > block_size 16 makes the trainer raise; probes run on the good run;
    # two objectives (loss, step time) make a multi-objective study
    spec = write_spec(tmp_path, corpus, workers=2, train={"steps": 10}, objectives=["val_loss", "step_ms"],
                      search={"train.lr": [3e-3, 1e6], "train.seq_len": [8, 64]},
                      probes={"names": ["logit_lens"], "tokens": 64, "batch_size": 2})
    proc = sweep(spec)
    # the grid lacks three cells: said, with the command that re-runs them, and exit code 3
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "incomplete: 3 of 4 grid cell(s) have no COMPLETE trial: " in proc.stdout
    assert f"to finish the grid: falstudy sweep {spec} --resume --retry-failed" in proc.stdout
    by_run = {t.user_attrs["run_id"]: t for t in trials_of(spec)}
    assert len(by_run) == 4
    good = by_run["lr0.003-seq_len8-s0"]
    assert good.state.name == "COMPLETE" and len(good.values) == 2 and good.values[1] > 0  # step_ms
    diverged = by_run["lr1000000.0-seq_len8-s0"]
    assert diverged.state.name == "FAIL" and "non-finite" in diverged.user_attrs["error"]
    crashed = by_run["lr0.003-seq_len64-s0"]
    assert crashed.state.name == "FAIL" and "exceeds model.block_size" in crashed.user_attrs["error"]
    rows = store(spec, "SELECT run_id, state, error FROM trials ORDER BY run_id")
    assert rows.set_index("run_id").loc["lr1000000.0-seq_len8-s0", "error"] == diverged.user_attrs["error"]
    # the probes ran after training, into the run's spool and the store
    probes = store(spec, "SELECT DISTINCT run_id, probe FROM probes")
    assert list(probes.itertuples(index=False, name=None)) == [("lr0.003-seq_len8-s0", "logit_lens")]


def _running_trial(group: Path) -> dict | None:
    """A RUNNING trial whose run has a checkpoint and is not finished (mid-trial)."""
    for path in sorted((group / "sweep").glob("trials-*.parquet")):
        row = pq.read_table(path).to_pylist()[0]
        run = group / "runs" / row["run_id"]
        if row["state"] == "RUNNING" and (run / "checkpoint.pt").exists() and (run / "runs.parquet").exists():
            if pq.read_table(run / "runs.parquet").to_pylist()[0]["status"] == "running":
                return row
    return None


def test_kill_9_of_a_worker_then_resume_reruns_its_trial_and_loses_or_duplicates_nothing(corpus, tmp_path):
    steps = 300
    spec = write_spec(tmp_path, corpus, workers=2, seeds=[0, 1, 2], search={"variant": ["fal"]},
                      train={"steps": steps, "eval_interval": 50, "log_interval": 25, "checkpoint_interval": 50})
    group = tmp_path / "results" / "s"
    driver = subprocess.Popen([sys.executable, "-m", "falstudy.cli", "sweep", str(spec), "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    victim, deadline = None, time.time() + 90
    while victim is None and time.time() < deadline and driver.poll() is None:
        victim = _running_trial(group) if (group / "sweep").is_dir() else None
        time.sleep(0.05)
    assert victim is not None, "no trial was caught mid-run"
    os.kill(victim["pid"], signal.SIGKILL)  # the worker; its trial process dies with it
    out, _ = driver.communicate(timeout=240)
    # a chunk the checkpoint covers: a resumed run keeps it, a run trained afresh would rewrite it
    kept = group / "runs" / victim["run_id"] / "metrics-000050.parquet"
    kept_stat = kept.stat()
    assert driver.returncode == 3, out  # a worker died: reported, not hidden
    assert "--resume" in out
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(victim["trial_pid"], 0)  # no orphan trial still writing into the run
    left = [t for t in trials_of(spec) if t.state.name == "RUNNING"]
    assert [t.user_attrs["run_id"] for t in left] == [victim["run_id"]]

    resumed = sweep(spec, "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "1 dead trial(s) reaped" in resumed.stdout
    trials = trials_of(spec)
    cells = {f"fal-s{s}" for s in (0, 1, 2)}
    complete = [t.user_attrs["run_id"] for t in trials if t.state.name == "COMPLETE"]
    assert sorted(complete) == sorted(cells)  # every cell once; completed cells never ran again
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and failed[0].number == victim["trial_number"] and failed[0].user_attrs["retry"]
    assert "is gone" in failed[0].user_attrs["error"]
    rerun = next(t for t in trials if t.user_attrs.get("rerun_of") == victim["trial_number"])
    assert rerun.user_attrs["run_id"] == victim["run_id"] and rerun.state.name == "COMPLETE"

    # the store: one row per trial, one run per cell, every metric once, no eval step missing
    assert sorted(store(spec, "SELECT trial_number FROM trials").trial_number) == sorted(t.number for t in trials)
    runs = store(spec, "SELECT run_id, status, final_step FROM runs")
    assert sorted(runs.run_id) == sorted(cells) and set(runs.status) == {"completed"} and set(runs.final_step) == {steps}
    dup = store(spec, "SELECT run_id, step, split, name, count(*) AS n FROM metrics GROUP BY ALL HAVING n > 1")
    assert dup.empty, dup
    evals = store(spec, "SELECT run_id, list(step ORDER BY step) AS steps FROM metrics "
                        "WHERE split = 'val' AND name = 'loss' GROUP BY run_id")
    assert all(list(s) == list(range(0, steps + 1, 50)) for s in evals.steps)
    # the killed run resumed from its checkpoint; it was not trained afresh
    assert (kept.stat().st_ino, kept.stat().st_mtime_ns) == (kept_stat.st_ino, kept_stat.st_mtime_ns)


def test_tpe_with_pruning_repeats_each_point_per_seed_and_keeps_n_trials_exact(corpus, tmp_path):
    spec = write_spec(tmp_path, corpus, workers=2, seeds=[0, 1], n_trials=2,
                      sampler={"kind": "tpe", "seed": 0, "n_startup_trials": 1},
                      pruner={"kind": "median", "n_startup_trials": 1},
                      train={"steps": 20, "eval_interval": 5, "checkpoint_interval": 0},
                      search={"lr": {"low": 1e-4, "high": 3e-2, "log": True}, "variant": ["baseline", "fal"]})
    proc = sweep(spec)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = trials_of(spec)
    assert len(trials) == 4  # 2 sampled points x 2 seeds
    sampled = [t for t in trials if t.user_attrs["kind"] == "sampled"]
    repeats = [t for t in trials if t.user_attrs["kind"] == "repeat"]
    assert len(sampled) == 2 and len(repeats) == 2
    for r in repeats:
        origin = trials[r.user_attrs["repeat_of"]]
        assert r.params == origin.params and r.user_attrs["seed"] == 1 and origin.user_attrs["seed"] == 0
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    # the eval loss was reported at each eval step (what the pruner decides on)
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert done and all(sorted(t.intermediate_values) == [5, 10, 15, 20] for t in done)
    # the budget is spent: running again starts nothing
    assert sweep(spec).returncode == 0 and len(trials_of(spec)) == 4


def test_torchrun_backend_trains_each_trial_tensor_parallel(corpus, tmp_path):
    """Trials under torchrun at TP=2: rank 0 reports to Optuna and the store, the runs record
    tp=2, both ranks' collectives reach the timings table, and the values are the runs' losses."""
    spec = write_spec(tmp_path, corpus, search={"variant": ["baseline", "fal"]},
                      backend={"kind": "torchrun", "nproc": 2, "tp": 2})
    proc = sweep(spec)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = trials_of(spec)
    assert len(trials) == 2 and all(t.state.name == "COMPLETE" for t in trials), [t.user_attrs for t in trials]
    runs = store(spec, "SELECT r.run_id, r.tp, r.dp, r.final_val_loss, t.values_json "
                       "FROM runs r JOIN trials t USING (run_id) ORDER BY r.run_id")
    assert list(runs.run_id) == ["baseline-s0", "fal-s0"] and set(runs.tp) == {2} and set(runs.dp) == {1}
    assert all(json.loads(v)[0] == pytest.approx(x) for v, x in zip(runs.values_json, runs.final_val_loss))
    timings = store(spec, "SELECT run_id, rank, sum(count) AS n FROM timings WHERE kind = 'all_reduce_fwd' "
                          "GROUP BY ALL ORDER BY ALL")
    # one layer, 5 steps: a baseline block all-reduces twice per forward, the fal source block too
    assert list(timings.itertuples(index=False, name=None)) == [
        ("baseline-s0", 0, 10), ("baseline-s0", 1, 10), ("fal-s0", 0, 10), ("fal-s0", 1, 10)]


def test_ctrl_c_names_the_sweep_and_the_command_that_continues_it(corpus, tmp_path):
    import shlex

    spec = write_spec(tmp_path, corpus, seeds=[0, 1], search={"variant": ["fal"]},
                      train={"steps": 100000, "checkpoint_interval": 50, "eval_interval": 50})
    group = tmp_path / "results" / "s"
    driver = subprocess.Popen([sys.executable, "-m", "falstudy.cli", "sweep", str(spec), "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.time() + 90
    while not list(group.glob("runs/*/checkpoint.pt")) and time.time() < deadline and driver.poll() is None:
        time.sleep(0.05)
    assert list(group.glob("runs/*/checkpoint.pt")), "no trial got going"
    driver.send_signal(signal.SIGINT)
    out, err = driver.communicate(timeout=120)
    assert driver.returncode == 130, out + err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"falstudy: interrupted sweep s ({group}); completed trials are kept; continue it with: ")
    assert shlex.split(line.split(" with: ", 1)[1]) == ["falstudy", "sweep", str(spec), "--quiet", "--resume"]
    # the dashboard names the objective by its metric
    from falstudy.sweep.study import make_storage

    study = optuna.load_study(study_name="s", storage=make_storage(str(group / "optuna.journal")))
    assert study.metric_names == ["val_loss"]
