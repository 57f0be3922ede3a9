"""Faults during a sweep, each followed by one ``--resume``: kill -9 of a trial process, of the
sweep command, of one torchrun rank mid-step, and two sweep commands on one spec at once. After
each, every grid cell has exactly one COMPLETE trial, no trial is left RUNNING, the store holds
every metric once per (run, step, split, name), and every run finished. (kill -9 of a worker is
tests/test_sweep.py::test_kill_9_of_a_worker_then_resume_reruns_its_trial_and_loses_or_duplicates_nothing.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_sweep import _running_trial, store, sweep, trials_of, write_spec  # noqa: E402  (tests/ is on sys.path)

pytestmark = pytest.mark.slow
STEPS = 150
SLOW_TRAIN = {"steps": STEPS, "eval_interval": 50, "log_interval": 25, "checkpoint_interval": 50}


def start(spec: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "falstudy.cli", "sweep", str(spec), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=spec.parent)


def catch_mid_run(group: Path, driver: subprocess.Popen) -> dict:
    """The trials row of a trial caught after its first checkpoint and before it ends."""
    victim, deadline = None, time.time() + 120
    while victim is None and time.time() < deadline and driver.poll() is None:
        victim = _running_trial(group) if (group / "sweep").is_dir() else None
        time.sleep(0.05)
    assert victim is not None, "no trial was caught mid-run"
    return victim


def wait_gone(pid: int) -> None:
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} outlived its parent")


def assert_grid_complete_once(spec: Path, run_ids: set[str]) -> None:
    trials = trials_of(spec)
    complete = sorted(t.user_attrs["run_id"] for t in trials if t.state.name == "COMPLETE")
    assert complete == sorted(run_ids), [(t.number, t.state.name, t.user_attrs.get("error")) for t in trials]
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    runs = store(spec, "SELECT run_id, status, final_step FROM runs")
    assert sorted(runs.run_id) == sorted(run_ids) and set(runs.status) == {"completed"} and set(runs.final_step) == {STEPS}
    dup = store(spec, "SELECT run_id, step, split, name, count(*) AS n FROM metrics GROUP BY ALL HAVING n > 1")
    assert dup.empty, dup
    evals = store(spec, "SELECT run_id, list(step ORDER BY step) AS steps FROM metrics "
                        "WHERE split = 'val' AND name = 'loss' GROUP BY run_id")
    assert len(evals) == len(run_ids) and all(list(s) == list(range(0, STEPS + 1, 50)) for s in evals.steps)


def test_kill_9_of_a_trial_process_then_one_resume_completes_the_grid(corpus, tmp_path):
    spec = write_spec(tmp_path, corpus, workers=1, search={"variant": ["baseline", "fal"]}, train=SLOW_TRAIN)
    driver = start(spec)
    victim = catch_mid_run(tmp_path / "results" / "s", driver)
    os.kill(victim["trial_pid"], signal.SIGKILL)  # the worker lives on and takes the next cell
    out, _ = driver.communicate(timeout=300)
    assert driver.returncode == 3, out
    assert f"incomplete: 1 of 2 grid cell(s) have no COMPLETE trial: {victim['run_id']} (FAIL: trial process killed by signal SIGKILL" in out
    assert f"to finish the grid: falstudy sweep {spec} --resume\n" in out

    resumed = sweep(spec, "--resume", timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "1 re-run(s) queued" in resumed.stdout
    assert_grid_complete_once(spec, {"baseline-s0", "fal-s0"})


def test_kill_9_of_the_sweep_command_then_one_resume_completes_the_grid(corpus, tmp_path):
    spec = write_spec(tmp_path, corpus, workers=2, seeds=[0, 1], search={"variant": ["baseline", "fal"]}, train=SLOW_TRAIN)
    driver = start(spec)
    victim = catch_mid_run(tmp_path / "results" / "s", driver)
    driver.kill()
    driver.communicate(timeout=60)
    wait_gone(victim["pid"])  # its workers die with it, and their trials with them
    wait_gone(victim["trial_pid"])
    assert [t.user_attrs["run_id"] for t in trials_of(spec) if t.state.name == "RUNNING"]

    resumed = sweep(spec, "--resume", timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "dead trial(s) reaped" in resumed.stdout
    assert_grid_complete_once(spec, {f"{v}-s{s}" for v in ("baseline", "fal") for s in (0, 1)})


def _rank_pids(torchrun_pid: int) -> dict[int, int]:
    """RANK -> pid of the processes torchrun started."""
    ranks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        rank = next((int(e[5:]) for e in env if e.startswith(b"RANK=")), None)
        if ppid == torchrun_pid and rank is not None:
            ranks[rank] = int(entry.name)
    return ranks


def test_kill_9_of_one_torchrun_rank_mid_step_then_one_resume_completes_the_grid(corpus, tmp_path):
    spec = write_spec(tmp_path, corpus, workers=1, search={"variant": ["baseline"]}, train=SLOW_TRAIN,
                      backend={"kind": "torchrun", "nproc": 2, "tp": 2})
    driver = start(spec)
    victim = catch_mid_run(tmp_path / "results" / "s", driver)
    ranks = _rank_pids(victim["trial_pid"])
    assert sorted(ranks) == [0, 1], ranks
    # rank 0's collective then fails, or torchrun stops it: either way the trial is retryable
    os.kill(ranks[1], signal.SIGKILL)
    out, _ = driver.communicate(timeout=300)
    assert driver.returncode == 3, out
    assert "incomplete: 1 of 1 grid cell(s)" in out and f"falstudy sweep {spec} --resume\n" in out

    resumed = sweep(spec, "--resume", timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_grid_complete_once(spec, {"baseline-s0"})


def test_two_sweep_commands_on_one_spec_run_each_cell_once(corpus, tmp_path):
    spec = write_spec(tmp_path, corpus, workers=1, search={"variant": ["baseline", "parallel", "fal"]},
                      train={**SLOW_TRAIN, "steps": STEPS})
    first, second = start(spec), start(spec)
    outs = [p.communicate(timeout=400)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outs
    assert len(trials_of(spec)) == 3  # the grid was queued once, each cell taken once
    assert_grid_complete_once(spec, {"baseline-s0", "parallel-s0", "fal-s0"})
