"""Sweeps as a Slurm job array, on a real one-node Slurm started here (tests/slurm_cluster.py:
munged, slurmctld and slurmd of Debian's `slurm-wlm`, which `make slurm` installs and CI runs).
A 6-cell grid with --slurm 2 --wait; scancel mid-sweep and --resume; a trial left RUNNING by a
node that died; torchrun inside a task; bad input refused before anything is submitted.
Skipped, with the reason, only where Slurm is not installed or the daemons cannot run as root
(under CI, where `make test` installs it, that fails instead)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml

import falstudy
import slurm_cluster  # tests/ is on sys.path
from falstudy.sweep.slurm import LIVE

TINY_MODEL = {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16}
TINY_TRAIN = {"steps": 5, "batch_size": 4, "lr": 3e-3, "warmup_steps": 1, "eval_interval": 5, "eval_batches": 1,
              "log_interval": 5, "checkpoint_interval": 5}
CELLS = {f"{v}-s{s}" for v in ("baseline", "fal") for s in (0, 1, 2)}


@pytest.fixture(scope="module")
def cluster():
    why = slurm_cluster.missing()
    if why and os.environ.get("CI"):  # CI runs `make test`, which installs Slurm: a skip would hide a broken set-up
        pytest.fail(f"Slurm is missing under CI: {why}")
    if why:
        pytest.skip(why)
    root = Path(tempfile.mkdtemp(prefix="falstudy-slurm-"))
    try:
        yield slurm_cluster.up(root)
    finally:
        slurm_cluster.down(root)
        shutil.rmtree(root, ignore_errors=True)


def write_spec(tmp: Path, corpus: Path, name: str, steps: int = 5, **fields) -> Path:
    spec = {"name": name, "results_dir": str(tmp / "results"), "seeds": [0, 1, 2],
            "run": {"data": {"path": str(corpus)}, "model": TINY_MODEL,
                    "train": {**TINY_TRAIN, "steps": steps, "checkpoint_interval": min(steps, 10)}},
            "search": {"variant": ["baseline", "fal"]}, **fields}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def sweep(cluster, spec: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "falstudy.cli", "sweep", str(spec), *args], capture_output=True,
                          text=True, cwd=spec.parent, env=env or cluster.env, timeout=400)


def study_of(spec: Path, name: str) -> optuna.Study:
    from falstudy.sweep.study import make_storage

    return optuna.load_study(study_name=name, storage=make_storage(str(spec.parent / "results" / name / "optuna.journal")))


def slurm_out(cluster, *cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, env=cluster.env, check=True).stdout


def completed_runs(spec: Path, name: str):
    return falstudy.query(spec.parent / "results" / name,
                          "SELECT run_id, r.status FROM trials t JOIN runs r USING (run_id) "
                          "WHERE t.state = 'COMPLETE' ORDER BY run_id")


def test_a_6_cell_grid_as_a_2_task_array_runs_each_cell_once(cluster, corpus, tmp_path):
    spec = write_spec(tmp_path, corpus, "grid")
    proc = sweep(cluster, spec, "--slurm", "2", "--wait")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "submitted job array" in proc.stdout
    trials = study_of(spec, "grid").get_trials()
    assert sorted(t.user_attrs["run_id"] for t in trials) == sorted(CELLS)  # each cell exactly once
    assert all(t.state.name == "COMPLETE" for t in trials)
    tasks = {t.user_attrs["slurm_task"] for t in trials}
    assert len(tasks) == 2 and len({t.split("_")[0] for t in tasks}) == 1, tasks  # both tasks of one array
    runs = completed_runs(spec, "grid")
    assert sorted(runs.run_id) == sorted(CELLS) and set(runs.status) == {"completed"}
    status = sweep(cluster, spec, "--status")
    assert status.returncode == 0, status.stderr
    assert sum(line.split()[1:2] == ["COMPLETED"] for line in status.stdout.splitlines()) == 2, status.stdout
    again = sweep(cluster, spec, "--slurm", "2")  # a finished grid submits nothing
    assert again.returncode == 0 and "nothing submitted" in again.stdout


def _wait_for(what, check, limit_s: float = 240):
    deadline = time.time() + limit_s  # a hang guard, not a timing assertion
    while not check():
        if time.time() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.5)


def test_scancel_mid_sweep_then_resume_runs_every_cell_once(cluster, corpus, tmp_path):
    # trials long enough (seconds of training) that the one seen running is still running at scancel
    spec = write_spec(tmp_path, corpus, "cancel", steps=1500)
    proc = sweep(cluster, spec, "--slurm", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = (tmp_path / "results" / "cancel" / "sweep" / "slurm" / "jobs.txt").read_text().split()[0]

    def mid_sweep() -> bool:
        states = [t.state.name for t in study_of(spec, "cancel").get_trials()]
        return "COMPLETE" in states and "RUNNING" in states
    _wait_for("a trial finished and another running", mid_sweep)
    subprocess.run(["scancel", job], env=cluster.env, check=True)
    _wait_for("the array to end", lambda: not slurm_out(cluster, "squeue", "-h", "-j", job, "-t",
                                                        ",".join(LIVE)).strip())
    before = study_of(spec, "cancel").get_trials()
    assert {t.state.name for t in before} - {"COMPLETE", "FAIL", "WAITING"} == set(), [t.state for t in before]
    interrupted = [t for t in before if t.state.name == "FAIL"]
    assert interrupted and all(t.user_attrs.get("retry") for t in interrupted)

    proc = sweep(cluster, spec, "--slurm", "2", "--resume", "--wait")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = study_of(spec, "cancel").get_trials()
    done = [t.user_attrs["run_id"] for t in trials if t.state.name == "COMPLETE"]
    assert sorted(done) == sorted(CELLS)  # every cell COMPLETE exactly once
    assert {t.user_attrs["run_id"] for t in interrupted} <= set(done)
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    runs = completed_runs(spec, "cancel")
    assert sorted(runs.run_id) == sorted(CELLS) and set(runs.status) == {"completed"}
    steps = falstudy.query(tmp_path / "results" / "cancel",
                           "SELECT run_id, step, split, name FROM metrics GROUP BY ALL HAVING count(*) > 1")
    assert len(steps) == 0  # a resumed run stores each step once


def test_a_trial_left_running_by_a_dead_node_is_reaped_on_resume(cluster, corpus, tmp_path):
    from falstudy.sweep.spec import load_spec
    from falstudy.sweep.study import ensure_queue, open_study

    spec = write_spec(tmp_path, corpus, "node", seeds=[0], search={"variant": ["baseline"]})
    loaded = load_spec(spec)
    (tmp_path / "results" / "node").mkdir(parents=True)
    study = open_study(loaded, str(tmp_path / "results" / "node" / "optuna.journal")).study
    ensure_queue(study, loaded)
    trial = study.ask()  # as a worker on another node would, with a fresh heartbeat
    for key, value in {"worker_host": "node-that-died", "worker_pid": 4242, "heartbeat": time.time(),
                       "slurm_task": "999999_0"}.items():
        trial.set_user_attr(key, value)
    proc = sweep(cluster, spec, "--slurm", "1", "--resume", "--wait")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = study_of(spec, "node").get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert "999999_0 is no longer running" in trials[0].user_attrs["error"]
    assert trials[1].user_attrs["rerun_of"] == 0


def test_a_torchrun_trial_runs_inside_one_task(cluster, corpus, tmp_path):
    spec = write_spec(tmp_path, corpus, "tp", seeds=[0], search={"variant": ["fal"]},
                      backend={"kind": "torchrun", "nproc": 2, "tp": 2}, slurm={"cpus_per_task": 2})
    proc = sweep(cluster, spec, "--slurm", "1", "--wait")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    df = falstudy.query(tmp_path / "results" / "tp", "SELECT run_id, status, tp FROM runs")
    assert list(df.run_id) == ["fal-s0"] and list(df.status) == ["completed"] and list(df.tp) == [2]


@pytest.mark.parametrize("case", ["no sbatch", "partition", "ranks"])
def test_bad_input_is_one_line_and_submits_nothing(cluster, corpus, tmp_path, case):
    fields = {"partition": {"slurm": {"partition": "gpu-nope"}},
              "ranks": {"backend": {"kind": "torchrun", "nproc": 2, "tp": 2}, "slurm": {"cpus_per_task": 1}}}
    spec = write_spec(tmp_path, corpus, "bad", **fields.get(case, {}))
    env = dict(cluster.env, PATH=str(tmp_path)) if case == "no sbatch" else cluster.env
    jobs_before = slurm_out(cluster, "squeue", "--states=all", "-h", "-o", "%i")
    proc = sweep(cluster, spec, "--slurm", "2", env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert {"no sbatch": "sbatch is not on PATH", "partition": "'gpu-nope' is not a partition of this cluster; it has debug",
            "ranks": "backend.nproc 2 ranks per task but slurm.cpus_per_task 1"}[case] in lines[0]
    assert not (tmp_path / "results").exists()
    assert slurm_out(cluster, "squeue", "--states=all", "-h", "-o", "%i") == jobs_before


def test_the_slurm_section_is_checked_and_written_into_the_script(tmp_path):
    from falstudy.errors import FalstudyError
    from falstudy.sweep.slurm import render
    from falstudy.sweep.spec import spec_from_dict

    base = {"name": "x", "search": {"variant": ["baseline"]}}
    with pytest.raises(FalstudyError, match="slurm.gpus"):
        spec_from_dict({**base, "slurm": {"gpus": 1}})  # unknown field: gpus_per_task
    with pytest.raises(FalstudyError, match="one line each"):
        spec_from_dict({**base, "slurm": {"sbatch": ["--account=a\nrm -rf /"]}})
    spec = spec_from_dict({**base, "slurm": {"partition": "gpu", "time": "1:00:00", "gpus_per_task": 1,
                                             "sbatch": ["--account=proj"], "setup": ["module load cuda"]}})
    script = render(spec, 4, tmp_path, ["python", "-m", "falstudy.sweep.worker", "--spec", "a b.yaml"])
    lines = script.splitlines()
    for line in ("#SBATCH --array=0-3", "#SBATCH --partition=gpu", "#SBATCH --time=1:00:00",
                 "#SBATCH --gpus-per-task=1", "#SBATCH --account=proj", "#SBATCH --cpus-per-task=1",
                 "module load cuda"):
        assert line in lines, script
    assert lines[-1] == "exec python -m falstudy.sweep.worker --spec 'a b.yaml' --storage \"$FALSTUDY_SWEEP_STORAGE\""
    assert lines.index("module load cuda") > max(i for i, x in enumerate(lines) if x.startswith("#SBATCH"))


def test_status_of_a_sweep_never_started_says_so(corpus, tmp_path):
    spec = write_spec(tmp_path, corpus, "fresh")
    proc = subprocess.run([sys.executable, "-m", "falstudy.cli", "sweep", str(spec), "--status"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "no study yet" in proc.stderr and "--slurm N" in proc.stderr, proc.stderr
    assert not (tmp_path / "results").exists()
