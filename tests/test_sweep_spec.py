"""Sweep specs without training: validation (one-line errors naming the YAML path, exit code 2,
nothing created), grid expansion, the dry run, the ready specs, the live view's summary, and
how dead trials are recognised."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
import yaml

from falstudy.errors import FalstudyError
from falstudy.sweep.spec import cells, load_spec, spec_from_dict

ROOT = Path(__file__).resolve().parent.parent
TINY = {"model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16}, "train": {"steps": 5}}


def base(**fields) -> dict:
    return {"name": "t", "run": TINY, "search": {"variant": ["baseline", "fal"]}, **fields}


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "falstudy.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


BAD_SPECS = {
    # case: (spec, the YAML path the message must name, a word of the message)
    "unknown field": (base(serch={"variant": ["fal"]}), "serch", "unknown field"),
    "unknown nested field": (base(run={"model": {"n_layers": 2}}), "run.model.n_layers", "unknown field"),
    "wrong type": (base(workers="two"), "workers", "integer"),
    "wrong type in run": (base(run={"train": {"lr": "fast"}}), "run.train.lr", "number"),
    "unknown variant": (base(search={"variant": ["baseline", "nope"]}), "search.variant", "unknown variant 'nope'"),
    "unknown fixed variant": (base(run={"variant": "nope"}), "run.variant", "unknown variant"),
    "pruner with two objectives": (base(objectives=["val_loss", "step_ms"], pruner="median"), "pruner", "multi-objective"),
    "empty grid": (base(search={"variant": []}), "search.variant", "empty"),
    "float range in a grid": (base(search={"lr": {"low": 1e-4, "high": 1e-2}}), "search.lr.step", "grid"),
    "bad range": (base(sampler="tpe", n_trials=3, search={"lr": {"low": 1e-2, "high": 1e-4}}), "search.lr.low", "above"),
    "impossible cell": (base(run={"variant": "fal", **TINY}, search={"fal_source_layer": [0, 1]}),
                        "search.fal_source_layer", "does not exist"),
    "not a field": (base(search={"wiring_x": ["a"]}), "search.wiring_x", "not a run config field"),
    "seed owned by the sweep": (base(run={"seed": 3}), "run.seed", "seeds:"),
    "sampler without budget": (base(sampler="tpe"), "n_trials", "needs n_trials"),
    "unknown probe": (base(probes=["cka", "nope"]), "probes.names.1", "unknown probe"),
    "tp not dividing the heads": (base(run={"model": {"n_head": 2}}, backend={"kind": "torchrun", "nproc": 3, "tp": 3}),
                                  "backend.tp", "does not divide model.n_head=2"),
    "nproc not tp x dp": (base(backend={"kind": "torchrun", "nproc": 2, "tp": 2, "dp": 2}), "backend.nproc", "tp x dp"),
    "tp on a local backend": (base(backend={"kind": "local", "tp": 2}), "backend.tp", "torchrun"),
    "parallel set in run": (base(run={"parallel": {"tp": 2}}), "run.parallel", "backend:"),
    "parallel searched": (base(search={"parallel.dp": [1, 2]}), "search.parallel.dp", "backend:"),
    "gradient hook under torchrun": (base(run={"train": {"grad_probe_every": 5}}, backend={"kind": "torchrun", "nproc": 2, "tp": 2}),
                                     "run.train.grad_probe_every", "one process"),
    "sqlite": (base(storage="sqlite:///x.db"), "storage", "not supported"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_names_the_yaml_path(case):
    spec, path, word = BAD_SPECS[case]
    with pytest.raises(FalstudyError) as err:
        spec_from_dict(spec, "sweeps/x.yaml")
    message = str(err.value)
    assert message.startswith(f"sweeps/x.yaml: {path}: "), message
    assert word in message and "\n" not in message


@pytest.mark.parametrize("case", ["unknown field", "wrong type", "unknown variant", "pruner with two objectives", "empty grid"])
def test_bad_spec_on_the_command_line_exits_2_and_creates_nothing(case, tmp_path):
    spec, path, word = BAD_SPECS[case]
    spec = {**spec, "results_dir": str(tmp_path / "results")}
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(spec))
    before = sorted(tmp_path.rglob("*"))
    proc = _cli("sweep", "x.yaml", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"falstudy: error: x.yaml: {path}: ") and word in lines[0]
    assert sorted(tmp_path.rglob("*")) == before  # no results folder, no journal, no study


def test_missing_corpus_is_refused_before_anything_is_created(tmp_path):
    spec = base(results_dir=str(tmp_path / "results"), run={**TINY, "data": {"path": str(tmp_path / "nodata")}})
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(spec))
    proc = _cli("sweep", "x.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and "run.data.path" in proc.stderr and "falstudy data prepare" in proc.stderr
    assert not (tmp_path / "results").exists()


def test_grid_cells_are_seed_major_with_stable_readable_run_ids():
    spec = spec_from_dict(base(seeds=2, search={"variant": ["baseline", "fal"], "lr": [1e-3, 3e-3]}))
    grid = cells(spec)
    assert len(grid) == 8
    assert [c.seed for c in grid] == [0] * 4 + [1] * 4
    assert grid[0].run_id == "baseline-lr0.001-s0" and grid[-1].run_id == "fal-lr0.003-s1"
    assert len({c.run_id for c in grid}) == 8
    assert spec.param_keys == {"variant": "variant", "lr": "train.lr"}
    # int and stepped float ranges enumerate; a list is categorical
    spec = spec_from_dict(base(search={"model.n_layer": {"low": 1, "high": 3}, "lr": {"low": 0.001, "high": 0.003, "step": 0.001}}))
    assert [(c.params["model.n_layer"], c.params["lr"]) for c in cells(spec)][:4] == [(1, 0.001), (1, 0.002), (1, 0.003), (2, 0.001)]


def test_shorthands_and_durations():
    spec = spec_from_dict(base(sampler="random", pruner="median", n_trials=4, objectives="best_val_loss",
                               timeout="15m", seeds=3, probes="cka,bypass"))
    assert spec.sampler.kind == "random" and spec.pruner.kind == "median"
    assert spec.timeout == 900 and spec.seeds == [0, 1, 2] and spec.probes.names == ["cka", "bypass"]
    assert spec.directions == ["minimize"]
    spec = spec_from_dict(base(objectives=["val_loss", "tokens_per_s"]))
    assert spec.directions == ["minimize", "maximize"] and spec.multi_objective


@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_ready_specs_are_valid(path):
    spec = load_spec(path)
    assert spec.name == path.stem
    if spec.multi_objective:
        assert spec.pruner.kind == "none"


@pytest.mark.parametrize("name", ["bypass", "bypass_large"])
def test_bypass_specs_are_the_five_wirings_times_five_seeds_with_the_verdicts_probes(name):
    spec = load_spec(ROOT / "sweeps" / f"{name}.yaml")
    assert [c.params["variant"] for c in cells(spec)][:5] == ["baseline", "parallel", "fal", "fal_plus", "no_attn"]
    assert len(cells(spec)) == 25 and spec.run["data"]["path"] == "data/shakespeare-byte"
    # every probe a verdict reads (falstudy/report/verdicts.py)
    assert spec.probes is not None and {"cka", "grads", "attn_removal", "bypass"} <= set(spec.probes.names)


def test_the_two_sizes_differ_only_in_width():
    small, large = (load_spec(ROOT / "sweeps" / f"{n}.yaml") for n in ("bypass", "bypass_large"))
    assert small.run["train"] == large.run["train"] and small.seeds == large.seeds
    assert {k: v for k, v in small.run["model"].items() if k != "n_embd"} == \
           {k: v for k, v in large.run["model"].items() if k != "n_embd"}
    assert large.run["model"]["n_embd"] > small.run["model"]["n_embd"]


def test_dry_run_prints_the_grid_and_creates_nothing(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    spec = base(results_dir=str(tmp_path / "results"), seeds=[0, 1], run={**TINY, "data": {"path": str(data)}})
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(spec))
    proc = _cli("sweep", "x.yaml", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "2 variant x 2 seed(s) = 4 trials" in out and "4 of 4 trials would run" in out
    for run_id in ("baseline-s0", "fal-s0", "baseline-s1", "fal-s1"):
        assert run_id in out
    assert not (tmp_path / "results").exists()


def test_dry_run_of_a_sampler_prints_the_space(tmp_path):
    spec = base(sampler={"kind": "tpe", "seed": 3}, n_trials=5, seeds=[0, 1],
                search={"variant": ["fal", "baseline"], "lr": {"low": 1e-4, "high": 1e-2, "log": True}})
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(spec))
    proc = _cli("sweep", "x.yaml", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "train.lr" in proc.stdout and "log" in proc.stdout and "5 points x 2 seed(s) = 10 trials" in proc.stdout


# --------------------------------------------------------------------------- live view


def _trial(number: int, state: str, values=None, **attrs) -> optuna.trial.FrozenTrial:
    start = datetime.now() - timedelta(seconds=30)
    t = optuna.trial.create_trial(
        state=optuna.trial.TrialState[state], values=values, user_attrs=attrs,
        intermediate_values={50: 3.0, 100: 2.5} if state == "RUNNING" else None)
    t.number, t.datetime_start = number, start
    return t


def test_summary_counts_states_and_finds_the_best():
    from falstudy.sweep.progress import summarize

    trials = [_trial(0, "COMPLETE", [2.5], run_id="a"), _trial(1, "COMPLETE", [2.1], run_id="b"),
              _trial(2, "FAIL", error="diverged"), _trial(3, "RUNNING", run_id="c", worker_host="h", worker_pid=7),
              _trial(4, "PRUNED", [3.0])]
    s = summarize(trials, ["minimize"], ["val_loss"], expected=6)
    assert s.counts == {"COMPLETE": 2, "FAIL": 1, "RUNNING": 1, "PRUNED": 1}
    assert s.finished == 4 and s.best == "val_loss=2.1 (b)"
    assert s.running[0]["run_id"] == "c" and s.running[0]["step"] == 100 and s.running[0]["value"] == 2.5
    assert "4/6 finished" in s.line() and "1 failed" in s.line()
    # maximising picks the other end; two objectives report the Pareto front
    assert summarize(trials, ["maximize"], ["val_loss"]).best.endswith("(a)")
    multi = [_trial(0, "COMPLETE", [2.0, 10.0]), _trial(1, "COMPLETE", [3.0, 5.0]), _trial(2, "COMPLETE", [3.5, 11.0])]
    assert summarize(multi, ["minimize", "minimize"], ["val_loss", "step_ms"]).best == "2 trial(s) on the Pareto front"


# --------------------------------------------------------------------------- reaping


def test_dead_and_live_workers_are_told_apart():
    from falstudy.sweep.reap import host_name, process_start, why_dead

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # this pid is gone now
    now = time.time()
    me = os.getpid()
    alive = _trial(0, "RUNNING", worker_host=host_name(), worker_pid=me, worker_start=process_start(me))
    dead = _trial(1, "RUNNING", worker_host=host_name(), worker_pid=proc.pid)
    reused = _trial(2, "RUNNING", worker_host=host_name(), worker_pid=me, worker_start=(process_start(me) or 0) + 1)
    remote_fresh = _trial(3, "RUNNING", worker_host="elsewhere", worker_pid=1, heartbeat=now - 10)
    remote_stale = _trial(4, "RUNNING", worker_host="elsewhere", worker_pid=1, heartbeat=now - 3600)
    assert why_dead(alive, host=host_name(), now=now, stale_after_s=600) is None
    assert "is gone" in why_dead(dead, host=host_name(), now=now, stale_after_s=600)
    assert "is gone" in why_dead(reused, host=host_name(), now=now, stale_after_s=600)
    assert why_dead(remote_fresh, host=host_name(), now=now, stale_after_s=600) is None
    assert "no heartbeat" in why_dead(remote_stale, host=host_name(), now=now, stale_after_s=600)


def test_more_trial_ranks_than_cores_is_refused_before_anything_is_created(tmp_path):
    from falstudy.parallel.launch import cpu_cores

    data = tmp_path / "data" / "c"
    data.mkdir(parents=True)
    (data / "meta.json").write_text("{}")  # only its presence is checked before the cores
    spec = {**base(backend={"kind": "torchrun", "nproc": 2, "tp": 2}, workers=cpu_cores()),
            "results_dir": str(tmp_path / "results")}
    spec["run"] = {**spec.get("run", {}), "data": {"path": str(data)}}
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(spec))
    proc = _cli("sweep", "x.yaml", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "cores; lower workers" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("stopped", [True, False])
def test_a_killed_trial_is_retried_whoever_stopped_it(stopped, tmp_path):
    """A trial the sweep interrupted resumes later; so does one killed by anything else (torchrun
    stopping rank 0 because another rank died), with its log's last lines as the error."""
    from falstudy.sweep.contract import TrialResult
    from falstudy.sweep.worker import outcome

    log = tmp_path / "trial.log"
    log.write_text("rank 1 exited with signal SIGKILL\n")
    out = outcome(TrialResult(status="killed", error="interrupted (SIGTERM/SIGINT)"), 0, log, stopped=stopped,
                  timed_out=None)
    assert out.state == "FAIL" and out.retry
    if not stopped:
        assert "did not send" in out.error and "SIGKILL" in out.error


@pytest.mark.parametrize("returncode, timed_out, retry", [(-9, None, True), (-9, 5.0, False), (1, None, False)])
def test_a_trial_process_that_died_is_retried_unless_it_timed_out_or_exited(returncode, timed_out, retry, tmp_path):
    from falstudy.sweep.worker import outcome

    out = outcome(None, returncode, tmp_path / "none.log", stopped=False, timed_out=timed_out)
    assert out.state == "FAIL" and bool(out.retry) == retry


TORCHRUN_SUMMARY = """[rank0]: KeyboardInterrupt
======================================================
falstudy/sweep/trial.py FAILED
------------------------------------------------------
Failures:
[1]:
  time      : 2025-12-01_21:48:56
  host      : h
  rank      : 0 (local_rank: 0)
  exitcode  : -2 (pid: 23357)  (SIGINT)
------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2025-12-01_21:48:56
  host      : h
  rank      : 1 (local_rank: 1)
  exitcode  : {code} (pid: 23358)  ({what})
======================================================
"""


@pytest.mark.parametrize("code, what, retry", [(-9, "SIGKILL", True), (1, "see the traceback", False)])
def test_a_torchrun_trial_is_retried_when_a_rank_was_killed_not_when_one_raised(code, what, retry, tmp_path):
    from falstudy.sweep.worker import outcome

    log = tmp_path / "trial.log"
    log.write_text(TORCHRUN_SUMMARY.format(code=code, what=what))
    out = outcome(None, 1, log, stopped=False, timed_out=None)
    assert out.state == "FAIL" and bool(out.retry) == retry
    assert ("rank 1 by SIGKILL" in out.error) == retry


def test_a_collective_failing_because_a_peer_died_counts_as_killed(monkeypatch):
    from falstudy.sweep.trial import lost_peer

    reset = RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:918: Connection reset by peer.")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert lost_peer(reset) and not lost_peer(RuntimeError("shape mismatch")) and not lost_peer(ValueError("gloo"))
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not lost_peer(reset)


def test_the_trial_contract_round_trips_and_names_every_attribute(tmp_path):
    """Payload and result survive their JSON files as they were; a trial attribute that is not in
    the contract is refused before it reaches the study; the metric and sampler types are the names."""
    import typing

    from falstudy.sweep.contract import TrialAttrs, TrialPayload, TrialResult, queued_attrs, set_attrs
    from falstudy.sweep.schema import METRICS, SAMPLERS, MetricName, SamplerKind

    payload = TrialPayload(storage="j.journal", study="s", trial_number=3, trial_id=7, config={"seed": 1},
                           objectives=["val_loss"], report=True, prune=False, pruner={"kind": "none"},
                           result_path=str(tmp_path / "r.json"), parent_pid=42)
    payload.write(tmp_path / "p.json")
    assert TrialPayload.read(tmp_path / "p.json") == payload
    result = TrialResult(status="completed", run_id="r", values=[1.5])
    result.write(payload.result_path)
    assert TrialResult.read(payload.result_path) == result
    assert result.to_json() == {"status": "completed", "run_id": "r", "values": [1.5]}

    study = optuna.create_study()
    trial = study.ask()
    set_attrs(trial, {"run_id": "r", "seed": 0})
    with pytest.raises(ValueError, match="runid"):
        set_attrs(trial, {"runid": "r"})
    with pytest.raises(ValueError, match="sed"):
        queued_attrs({}, sed=1)
    assert TrialAttrs.of(trial) == TrialAttrs(run_id="r", seed=0)
    assert typing.get_args(MetricName) == tuple(METRICS) and typing.get_args(SamplerKind) == SAMPLERS


def test_the_journal_study_lock_outlives_its_grace_period_while_held_and_breaks_a_dead_holders(tmp_path, monkeypatch):
    import threading

    from falstudy.sweep import study as S

    monkeypatch.setattr(S, "JOURNAL_LOCK_GRACE_S", 2.0)  # the holder below keeps it 3 grace periods
    path = tmp_path / ".optuna.journal.sweep"
    order, inside = [], threading.Event()

    def slow_holder():
        with S._journal_lock(path):
            order.append("a in")
            inside.set()
            time.sleep(6.0)
            order.append("a out")

    holder = threading.Thread(target=slow_holder)
    holder.start()
    inside.wait()
    with S._journal_lock(path):  # waits for a, though a held it past the grace period
        order.append("b in")
    holder.join()
    assert order == ["a in", "a out", "b in"]
    lock_file = Path(f"{path}.lock")
    assert not lock_file.exists()
    lock_file.touch()  # what a holder killed with -9 leaves: a lock file nobody touches
    with S._journal_lock(path):
        order.append("c in")
    assert order[-1] == "c in" and not lock_file.exists()
