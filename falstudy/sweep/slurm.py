"""``falstudy sweep SPEC --slurm N``: the sweep as one Slurm job array of N worker tasks.

    falstudy sweep sweeps/x.yaml --slurm 4 [--wait]      # queue the grid once, submit, (wait, ingest)
    falstudy sweep sweeps/x.yaml --status                # trials, and the state of every array task
    falstudy sweep sweeps/x.yaml --slurm 4 --resume      # after scancel or a dead node

Each array task runs the ordinary worker loop (``python -m falstudy.sweep.worker``) against the
one study; a ``backend: torchrun`` trial runs torchrun inside its task. The tasks write runs to
the results folder's spool (per-run folders, atomic renames) and do not ingest: the results
folder is on a filesystem every node shares, and one ingest (``--wait``, or ``falstudy ingest``)
loads it. The batch script is generated from a Jinja2 template (no submitit: its pickled
callables and own folder layout add a dependency, and sbatch's own one-line errors are clearer).

Files under ``results/<name>/sweep/slurm/``: ``spec.yaml`` (the spec the tasks read, copied when
submitted), ``sweep.sbatch`` (the script), ``jobs.txt`` (one line per submitted array) and
``task-<job>_<task>.log`` (each task's worker log).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from falstudy.errors import FalstudyError

Echo = Callable[[str], None]
SLURM_DIR = "slurm"
STORAGE_ENV = "FALSTUDY_SWEEP_STORAGE"  # the storage reaches the tasks by sbatch's --export, not on disk
LIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING")


class SlurmSettings(BaseModel):
    """The spec's ``slurm:`` section: what each array task asks Slurm for."""

    model_config = ConfigDict(extra="forbid")
    partition: str | None = Field(None, description="default: the cluster's default partition")
    time: str | None = Field(None, description="per task, in sbatch's format, e.g. 4:00:00")
    cpus_per_task: int | None = Field(None, ge=1, description="default: backend.nproc (one core per rank)")
    gpus_per_task: int = Field(0, ge=0)
    mem: str | None = Field(None, description="e.g. 16G")
    sbatch: list[str] = Field(default_factory=list, description="extra #SBATCH lines, e.g. --account=proj")
    setup: list[str] = Field(default_factory=list, description="shell lines run before the worker (module load ...)")

    @field_validator("partition", "time", "mem", "sbatch", "setup")
    @classmethod
    def _one_line(cls, value):
        for item in [value] if isinstance(value, str) else value or []:
            if "\n" in item or "\r" in item:
                raise ValueError(f"{item!r}: one line each (no newline)")
        return value


SCRIPT = """#!/bin/bash
# written by `falstudy sweep --slurm`; {{ storage_env }} comes from the submitting shell (sbatch --export)
#SBATCH --job-name={{ job_name }}
#SBATCH --array=0-{{ tasks - 1 }}
#SBATCH --ntasks=1
#SBATCH --cpus-per-task={{ cpus }}
#SBATCH --output={{ folder }}/task-%A_%a.log
{% if s.partition %}#SBATCH --partition={{ s.partition }}
{% endif %}{% if s.time %}#SBATCH --time={{ s.time }}
{% endif %}{% if s.mem %}#SBATCH --mem={{ s.mem }}
{% endif %}{% if s.gpus_per_task %}#SBATCH --gpus-per-task={{ s.gpus_per_task }}
{% endif %}{% for line in s.sbatch %}#SBATCH {{ line }}
{% endfor %}set -eu
{% for line in s.setup %}{{ line }}
{% endfor %}exec {{ command }} --storage "${{ storage_env }}"
"""


def task_attrs() -> dict[str, str]:
    """The trial attribute naming the array task that runs it (``<job>_<task>``), inside a task."""
    job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return {"slurm_task": f"{job}_{task}"} if job and task else {}


def cpus(spec) -> int:
    s = spec.slurm or SlurmSettings()
    return s.cpus_per_task or spec.backend.nproc


def _slurm(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise FalstudyError(f"{cmd[0]} is not on PATH: run this on a Slurm login node") from None
    if check and done.returncode != 0:
        err = (done.stderr or done.stdout).strip().splitlines()
        raise FalstudyError(f"{shlex.join(cmd)} failed: {err[-1] if err else f'exit code {done.returncode}'}")
    return done


def check_slurm(spec, source: str, tasks: int) -> None:
    """Everything that would make the submission fail or the tasks useless, before anything exists."""
    s = spec.slurm or SlurmSettings()
    if tasks < 1:
        raise FalstudyError(f"--slurm {tasks}: give at least 1 array task")
    if shutil.which("sbatch") is None:
        raise FalstudyError("sbatch is not on PATH: run --slurm on a Slurm login node (or load its module)")
    n, c = spec.backend.nproc, cpus(spec)
    if n > c:
        raise FalstudyError(f"{source}: backend.nproc {n} ranks per task but slurm.cpus_per_task {c}; "
                            f"give cpus_per_task >= {n}")
    if s.gpus_per_task and n > s.gpus_per_task:
        raise FalstudyError(f"{source}: backend.nproc {n} ranks per task but slurm.gpus_per_task {s.gpus_per_task}; "
                            "one GPU per rank")
    if s.partition:
        found = _slurm("scontrol", "show", "partition", s.partition, "-o", check=False)
        if found.returncode != 0 or s.partition not in found.stdout:
            names = _slurm("sinfo", "-h", "-o", "%R", check=False).stdout.split()
            raise FalstudyError(f"{source}: slurm.partition {s.partition!r} is not a partition of this cluster"
                                + (f"; it has {', '.join(sorted(set(names)))}" if names else ""))


def render(spec, tasks: int, folder: Path, command: list[str]) -> str:
    import jinja2

    template = jinja2.Environment(keep_trailing_newline=True, autoescape=False).from_string(SCRIPT)
    return template.render(s=spec.slurm or SlurmSettings(), tasks=tasks, cpus=cpus(spec), folder=folder,
                           job_name=f"falstudy-{spec.name}", command=shlex.join(command), storage_env=STORAGE_ENV)


# --------------------------------------------------------------------------- task states


def jobs(group: Path) -> list[str]:
    """Array job ids this sweep submitted, oldest first."""
    path = group / "sweep" / SLURM_DIR / "jobs.txt"
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def task_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """``<job>_<task>`` (or ``<job>_[0-3]`` while pending) -> (state, node), from slurmctld (squeue)
    and, for tasks it has forgotten, accounting (sacct) where the cluster has it."""
    if not job_ids:
        return {}
    out: dict[str, tuple[str, str]] = {}
    done = _slurm("squeue", "--states=all", "-h", "-j", ",".join(job_ids), "-o", "%i|%T|%N", check=False)
    for line in done.stdout.splitlines():
        task, state, node = (line.split("|") + ["", ""])[:3]
        out[task] = (state, node)
    known = {t.split("_")[0] for t in out}
    rest = [j for j in job_ids if j not in known]
    if rest:
        acct = _slurm("sacct", "-X", "-n", "-P", "-j", ",".join(rest), "-o", "JobID,State,NodeList", check=False)
        for line in acct.stdout.splitlines() if acct.returncode == 0 else []:
            task, state, node = (line.split("|") + ["", ""])[:3]
            out[task] = (state.split()[0] if state else "?", node)
    return out


def live_tasks() -> set[str]:
    """Every array task Slurm has pending or running now (the whole queue: a resume may come from
    another login node than the submission)."""
    done = _slurm("squeue", "-h", "-t", ",".join(LIVE), "-o", "%i")
    return set(done.stdout.split())


def reap_tasks(study) -> list[int]:
    """Tell FAIL (retryable) every RUNNING trial whose array task Slurm no longer runs (cancelled
    with SIGKILL, a node that died): the worker could not tell it itself. Call under study_lock."""
    from optuna.trial import TrialState

    alive, reaped = live_tasks(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        task = t.user_attrs.get("slurm_task")
        if task is None or task in alive:
            continue
        study._storage.set_trial_user_attr(t._trial_id, "error", f"its Slurm task {task} is no longer running")
        study._storage.set_trial_user_attr(t._trial_id, "retry", True)
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        reaped.append(t.number)
    return reaped


# --------------------------------------------------------------------------- submit


def submit(spec_path: str | Path, tasks: int, *, storage: str | None = None, results_dir: str | None = None,
           resume: bool = False, retry_failed: bool = False, wait: bool = False, dry_run: bool = False,
           echo: Echo = print) -> int:
    """Queue the study, submit the array; with ``wait``, wait for it and ingest. Returns the exit code."""
    from falstudy.sweep import reap as R
    from falstudy.sweep.driver import check_data
    from falstudy.sweep.records import SWEEP_DIR, export_trials
    from falstudy.sweep.spec import load_spec
    from falstudy.sweep.study import check_storage, describe_storage, ensure_queue, open_study, results_group, \
        storage_url, study_lock

    spec_path = Path(spec_path)
    spec = load_spec(spec_path)
    check_data(spec, str(spec_path))
    check_slurm(spec, str(spec_path), tasks)
    url = storage_url(spec, storage, results_dir)
    group = results_group(spec, results_dir).resolve()
    if not url.startswith("postgresql"):
        url = str(Path(url).resolve())  # the tasks start in other folders, on other nodes
    check_storage(url, made_later=group)
    folder = group / SWEEP_DIR / SLURM_DIR
    command = [sys.executable, "-m", "falstudy.sweep.worker", "--spec", str(folder / "spec.yaml"),
               "--results-dir", str(group.parent), "--threads", str(cpus(spec)), "--no-ingest"]
    if spec.timeout:  # as for local workers: no trial starts later than timeout after this command
        command += ["--deadline", f"{time.time() + spec.timeout:.0f}"]
    script = render(spec, tasks, folder, command)
    if dry_run:
        echo(script.rstrip())
        return 0

    made = [p for p in (folder, *folder.parents) if not p.exists()]
    group.mkdir(parents=True, exist_ok=True)  # the journal's folder
    try:
        opened = open_study(spec, url)
    except BaseException:  # a storage that fails to open leaves no folders behind
        for path in made:  # deepest first; only the empty ones made here
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    folder.mkdir(parents=True, exist_ok=True)
    study = opened.study
    with study_lock(study, url):
        reaped = (reap_tasks(study) + R.reap(study)) if resume else []
        queue = ensure_queue(study, spec, resume=resume, retry_failed=retry_failed)
    if reaped:
        export_trials(study, group, reaped)
    from optuna.trial import TrialState

    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    echo(f"sweep {spec.name}: {'created' if opened.created else 'joined'} study in {describe_storage(url)}; "
         f"{len(study.trials)} trials ({waiting} queued" + (f", {len(reaped)} dead reaped" if reaped else "") + ")")
    if queue.retry_waiting:
        echo(f"note: {queue.retry_waiting} trial(s) were interrupted; add --resume to re-run them")
    if spec.is_grid and not waiting:
        echo("nothing to run: every grid cell has a trial; nothing submitted")
        return 0

    shutil.copyfile(spec_path, folder / "spec.yaml")
    (folder / "sweep.sbatch").write_text(script)
    done = subprocess.run(["sbatch", "--parsable", str(folder / "sweep.sbatch")], capture_output=True, text=True,
                          env={**os.environ, STORAGE_ENV: url}, cwd=Path.cwd(), timeout=120)
    if done.returncode != 0:
        err = (done.stderr or done.stdout).strip().splitlines()
        raise FalstudyError(f"sbatch refused the job: {err[-1] if err else done.returncode} ({folder / 'sweep.sbatch'})")
    job = done.stdout.strip().split(";")[0]
    with open(folder / "jobs.txt", "a") as fh:
        fh.write(f"{job} {tasks} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
    echo(f"submitted job array {job} ({tasks} task(s), {cpus(spec)} cpu(s) each); follow it with: "
         f"squeue -j {job}; falstudy sweep {spec_path} --status; logs: {folder}/task-{job}_*.log")
    if not wait:
        echo(f"when it ends: falstudy ingest {group}")
        return 0
    return wait_and_ingest(spec, study, group, job, spec_path, echo)


def wait_and_ingest(spec, study, group: Path, job: str, spec_path: Path, echo: Echo) -> int:
    from falstudy.store import ingest
    from falstudy.sweep.driver import incomplete_cells
    from falstudy.sweep.progress import Progress
    from falstudy.sweep.records import export_trials

    metrics = [o.metric for o in spec.objectives]
    try:
        with Progress(study, spec.directions, metrics, quiet=True, echo=echo) as progress:
            while any(state in LIVE for state, _ in task_states([job]).values()):
                progress.poll()
                time.sleep(2.0)
            summary = progress.poll()
    except KeyboardInterrupt:
        echo(f"stopped waiting; array {job} goes on: falstudy sweep {spec_path} --status; "
             f"when it ends: falstudy ingest {group}")
        return 130
    export_trials(study, group)
    ingest(group)
    echo(f"sweep {spec.name}: {summary.line()}")
    failed = {t: s for t, (s, _) in task_states([job]).items() if s != "COMPLETED"}
    for task, state in failed.items():
        echo(f"warning: array task {task} ended {state}; see {group}/sweep/{SLURM_DIR}/task-{task}.log")
    missing = incomplete_cells(study, spec) if spec.is_grid else {}
    if missing:
        echo(f"incomplete: {len(missing)} grid cell(s) without a finished trial ({', '.join(list(missing)[:10])}); "
             f"continue with: falstudy sweep {spec_path} --slurm N --resume")
    echo(f"results: falstudy sql -r {group} \"SELECT * FROM trials JOIN runs USING (run_id)\"")
    return 3 if failed or missing else 0


# --------------------------------------------------------------------------- status


def status(spec_path: str | Path, *, storage: str | None = None, results_dir: str | None = None,
           echo: Echo = print) -> None:
    """Print the trials of the study (per grid cell: state and the task that ran it) and the state
    of every array task this sweep submitted. Creates nothing."""
    from falstudy.sweep.driver import RETRY, _table
    from falstudy.sweep.progress import summarize
    from falstudy.sweep.spec import cells, load_spec
    from falstudy.sweep.study import by_run_id, check_storage, describe_storage, is_postgres, open_study, \
        results_group, retryable, storage_url

    spec = load_spec(spec_path)
    url = storage_url(spec, storage, results_dir)
    group = results_group(spec, results_dir)
    if not is_postgres(url) and not Path(url).is_file():
        raise FalstudyError(f"no study yet: {url} does not exist; start it with: falstudy sweep {spec_path} --slurm N")
    check_storage(url)
    study = open_study(spec, url, create=False).study
    trials = study.get_trials(deepcopy=False)
    echo(f"sweep {spec.name} in {describe_storage(url)}: "
         f"{summarize(trials, spec.directions, [o.metric for o in spec.objectives]).line()}")
    groups = by_run_id(study)
    run_ids = [c.run_id for c in cells(spec)] if spec.is_grid else sorted(groups)
    rows = []
    for run_id in run_ids:
        last = max(groups.get(run_id, []), key=lambda t: t.number, default=None)
        state = (RETRY if retryable(last) else last.state.name) if last else "no trial"
        rows.append((run_id, state, str(len(groups.get(run_id, []))),
                     (last.user_attrs.get("slurm_task") or last.user_attrs.get("worker_host") or "-") if last else "-"))
    _table(["run_id", "state", "trials", "ran in"], rows, echo)
    ids = jobs(group)
    if not ids:
        echo("no Slurm array submitted for this sweep")
        return
    states = task_states(ids)
    echo(f"Slurm array(s) {', '.join(ids)}:")
    rows = [(task, state, node or "-") for task, (state, node) in sorted(states.items())]
    rows += [(j, "unknown (slurmctld forgot it; no accounting)", "-") for j in ids
             if not any(t.split("_")[0] == j for t in states)]
    _table(["task", "state", "node"], rows, echo)
