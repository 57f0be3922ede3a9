"""The worker loop: take a trial (under the study lock) -> run it in a subprocess -> tell.

``python -m falstudy.sweep.worker --spec S --storage URL --results-dir D ...`` is what
``falstudy sweep`` starts N times; it can also be started by hand on another host.

A worker exits when the queue is empty (grid), the budget is spent (n_trials), the deadline
(timeout) has passed, or it is told to stop (SIGTERM/SIGINT: the running trial is interrupted,
told FAIL with retry=True, and --resume continues its run from the last checkpoint). A trial
killed by a signal from elsewhere (kill -9, the OOM killer, a dead torchrun rank) is retried the
same way; one that diverged, crashed or ran past trial_timeout is final (--retry-failed).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from falstudy.errors import FalstudyError
from falstudy.sweep import reap as R
from falstudy.sweep.contract import TrialAttrs, TrialPayload, TrialResult, set_attrs
from falstudy.sweep.process import die_with_parent
from falstudy.sweep.records import SWEEP_DIR, export_trials, ingest_quietly
from falstudy.sweep.slurm import task_attrs
from falstudy.sweep.spec import SweepSpec, grid_values, load_spec, param_type, run_config_data
from falstudy.sweep.study import enqueue, open_study, results_group, study_lock, trial_id

if TYPE_CHECKING:
    import optuna

@dataclass
class Stop:
    """Set by SIGTERM/SIGINT; checked between and during trials (no exception mid-write)."""

    requested: bool = False
    signum: int | None = None

    def install(self) -> None:
        def handler(signum, frame):
            self.requested, self.signum = True, signum

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


@dataclass
class WorkerConfig:
    spec: SweepSpec
    url: str
    group: Path  # results/<name>
    results_dir: str
    threads: int | None = None  # per trial; None: the host budget's share when each trial starts
    deadline: float | None = None  # unix time after which no trial starts
    stop: Stop = field(default_factory=Stop)
    budget: bool = False  # threads from falstudy.hostbudget.share() (unless the spec fixes train.threads)
    ingest: bool = True  # False under Slurm: one ingest at the end loads the shared spool

    def trial_threads(self) -> int | None:
        """Torch threads for the trial starting now (all its ranks together), or None to leave
        the spec's train.threads alone."""
        if self.budget and not (self.spec.run.get("train") or {}).get("threads"):
            from falstudy.hostbudget import share

            return share()
        return self.threads


# --------------------------------------------------------------------------- taking a trial


def suggest(trial: "optuna.Trial", spec: SweepSpec) -> dict[str, Any]:
    """Record every search dimension on the trial (fixed values for enqueued trials)."""
    params = {}
    for name, p in spec.search.items():
        kind = param_type(p)
        if spec.is_grid:
            params[name] = trial.suggest_categorical(name, grid_values(name, p))
        elif kind == "categorical":
            params[name] = trial.suggest_categorical(name, p.choices)
        elif kind == "int":
            params[name] = trial.suggest_int(name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            params[name] = trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)
    return params


def sampled_count(study: "optuna.Study") -> int:
    return sum(TrialAttrs.of(t).kind == "sampled" for t in study.get_trials(deepcopy=False))


def take_trial(study: "optuna.Study", cfg: WorkerConfig) -> "optuna.Trial | None":
    """The next trial for this worker, or None when there is nothing left to start. Under the
    study lock, so a queued trial goes to one worker and n_trials is never exceeded."""
    while True:
        with study_lock(study, cfg.url):
            taken = _take_locked(study, cfg)
        if taken != "again":
            return taken


def _take_locked(study: "optuna.Study", cfg: WorkerConfig):
    from optuna.trial import TrialState

    spec = cfg.spec
    if cfg.stop.requested or (cfg.deadline is not None and time.time() > cfg.deadline):
        return None
    if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if spec.is_grid:
            return None  # every cell is taken
        if spec.n_trials is not None and sampled_count(study) >= spec.n_trials:
            return None  # the budget is spent (repeats of sampled points are queued, not counted)
    trial = study.ask()  # pops the oldest WAITING trial, or samples a new one
    attrs = dict(trial.user_attrs)
    fresh = "kind" not in attrs
    try:
        params = suggest(trial, spec)
    except ValueError as err:  # a queued value the spec no longer allows
        set_attrs(trial, {"error": f"params do not fit the spec's search space any more: {err}"})
        study.tell(trial, state=TrialState.FAIL)
        return "again"
    if fresh:
        seed = spec.seeds[0]
        attrs = {"kind": "sampled", "seed": seed, "run_id": f"t{trial.number:04d}-s{seed}", "params": params}
        for other in spec.seeds[1:]:  # the same point with every other seed, run by any worker
            enqueue(study, params, kind="repeat", seed=other, run_id=f"t{trial.number:04d}-s{other}",
                    repeat_of=trial.number)
    mine = {"worker_host": R.host_name(), "worker_pid": os.getpid(), "worker_start": R.process_start(os.getpid()),
            "heartbeat": time.time(), **task_attrs()}
    set_attrs(trial, {**(attrs if fresh else {}), **mine})
    return trial


# --------------------------------------------------------------------------- running a trial


@dataclass
class Outcome:
    state: str  # COMPLETE | PRUNED | FAIL
    values: list[float] | None = None
    status: str | None = None
    error: str | None = None
    retry: bool = False
    probe_error: str | None = None


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return " | ".join(text[-lines:])


_RANK_EXIT = re.compile(r"rank\s*:\s*(\d+).*?\n\s*exitcode\s*:\s*(-?\d+)", re.S)


def _rank_killed(log: Path) -> str | None:
    """From torchrun's failure summary at the end of the log: "killed: rank R by SIGX, ...", if
    every failed rank died by a signal; None if one raised (exitcode > 0: a re-run would too)."""
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, log.stat().st_size - 65536))
            text = fh.read().decode(errors="replace")
    except OSError:
        return None
    found = _RANK_EXIT.findall(text[text.rfind("Failures:"):] if "Failures:" in text else "")
    if not found or any(int(code) >= 0 for _, code in found):
        return None

    def name(sig: str) -> str:
        try:
            return signal.Signals(int(sig)).name
        except ValueError:
            return f"signal {sig}"

    return "killed: " + ", ".join(f"rank {rank} by {name(code[1:])}" for rank, code in found)


def outcome(result: TrialResult | None, returncode: int | None, log: Path, *, stopped: bool,
            timed_out: float | None) -> Outcome:
    """What to tell Optuna, from the trial's result file (or its absence)."""
    if result is None:
        if returncode is not None and returncode < 0:
            why = f"trial process killed by signal {signal.Signals(-returncode).name}"
        else:
            why = f"trial process exited with code {returncode} and no result"
        if timed_out is not None and not stopped:
            why += f" after trial_timeout of {timed_out:g}s"
        tail = _log_tail(log)
        # killed from outside (kill -9, the OOM killer, its worker dying): nothing a re-run would
        # repeat, so --resume re-runs it from its checkpoint; a trial_timeout stop is final
        killed = returncode is not None and returncode < 0 and timed_out is None
        rank = None if killed or timed_out is not None else _rank_killed(log)
        if rank:  # torchrun stopped the other ranks when this one died
            why, killed = f"{why} ({rank}; --resume re-runs it)", True
        return Outcome("FAIL", error=f"{why}{': ' + tail if tail else ''}"[:2000], retry=stopped or killed)
    status = result.status
    if status == "completed":
        return Outcome("COMPLETE", values=result.values, status=status, probe_error=result.probe_error)
    if status == "pruned":
        return Outcome("PRUNED", status=status)
    error = result.error or status
    if status == "killed" and timed_out is not None and not stopped:
        return Outcome("FAIL", status=status, error=f"trial_timeout of {timed_out:g}s exceeded; stopped")
    if status == "killed" and not stopped:  # e.g. torchrun stopping rank 0 after another rank died
        tail = _log_tail(log)
        what = error if error and error.startswith("lost a peer rank") else "stopped by a signal the sweep did not send"
        why = f"{what} (--resume re-runs it)" + (f": {tail}" if tail else "")
        return Outcome("FAIL", status=status, error=why[:2000], retry=True)
    # interrupted trials resume later; diverged and crashed ones would do it again
    return Outcome("FAIL", status=status, error=str(error)[:2000], retry=status == "killed")


def trial_command(payload_path: Path, backend: Any = None) -> list[str]:
    """The subprocess of one trial: one Python process, or torchrun with tp x dp of them (each
    rank runs the same trial module; rank 0 reports)."""
    argv = ["-m", "falstudy.sweep.trial", str(payload_path)]
    if backend is not None and backend.kind == "torchrun":
        from falstudy.parallel import torchrun_command

        return torchrun_command(backend.tp, backend.dp, argv=argv)
    return [sys.executable, *argv]


def run_trial(study: "optuna.Study", trial: "optuna.Trial", cfg: WorkerConfig) -> Outcome:
    from optuna.exceptions import UpdateFinishedTrialError

    spec, number = cfg.spec, trial.number
    attrs = TrialAttrs.of(trial)
    run_id, seed, params = attrs.run_id, attrs.seed, attrs.params
    work = cfg.group / SWEEP_DIR / "work"
    work.mkdir(parents=True, exist_ok=True)
    config = run_config_data(spec, params, seed, run_id, cfg.results_dir)
    total = cfg.trial_threads()  # asked per trial: other falstudy processes may have started or ended
    threads = max(1, total // spec.backend.nproc) if total else None  # per rank
    if threads and "threads" not in config.get("train", {}):
        config.setdefault("train", {})["threads"] = threads
    stem = f"trial-{number:05d}"
    result_path, log_path = work / f"{stem}.result.json", work / f"{stem}.log"
    result_path.unlink(missing_ok=True)
    payload = TrialPayload(
        storage=cfg.url, study=spec.name, trial_number=number, trial_id=trial_id(study, number),
        config=config, objectives=[o.metric for o in spec.objectives],
        report=not spec.multi_objective, prune=spec.pruner.kind != "none",
        pruner=spec.pruner.model_dump(), result_path=str(result_path), parent_pid=os.getpid(),
        probes=spec.probes.model_dump() if spec.probes else None,
        evals=spec.evals.kwargs() if spec.evals else None,
    )
    payload.write(work / f"{stem}.json")

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    started = time.monotonic()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(trial_command(work / f"{stem}.json", spec.backend), stdout=log, stderr=subprocess.STDOUT,
                                env=env, preexec_fn=die_with_parent)
    set_attrs(trial, {"trial_pid": proc.pid})
    export_trials(study, cfg.group, [number])  # the RUNNING row: who runs it, where
    stopped, timed_out, last_beat = False, None, time.monotonic()
    while True:
        try:
            proc.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if cfg.stop.requested and not stopped:
            stopped = True
            proc.send_signal(signal.SIGTERM)  # the trainer flushes and exits as "killed"
            kill_at = now + 30
        elif spec.trial_timeout and now - started > spec.trial_timeout and timed_out is None and not stopped:
            timed_out = spec.trial_timeout
            proc.send_signal(signal.SIGTERM)
            kill_at = now + 30
        if (stopped or timed_out) and now > kill_at:
            proc.kill()
        if now - last_beat > R.HEARTBEAT_S:
            last_beat = now
            with contextlib.suppress(UpdateFinishedTrialError):  # reaped by another host meanwhile
                set_attrs(trial, {"heartbeat": time.time()})

    result = TrialResult.read(result_path) if result_path.is_file() else None
    # a stop (SIGTERM/Ctrl-C to the sweep) may reach the trial before this loop sees it
    out = outcome(result, proc.returncode, log_path, stopped=stopped or cfg.stop.requested, timed_out=timed_out)
    _tell(study, trial, out)
    export_trials(study, cfg.group, [number])
    if cfg.ingest:
        ingest_quietly(cfg.group)
    return out


def _tell(study: "optuna.Study", trial: "optuna.Trial", out: Outcome) -> None:
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    extra = {"status": out.status, "error": out.error, "retry": out.retry or None, "probe_error": out.probe_error}
    state = TrialState[out.state]
    try:
        set_attrs(trial, {key: value for key, value in extra.items() if value is not None})
        study.tell(trial, out.values if state == TrialState.COMPLETE else None, state=state, skip_if_finished=True)
    except UpdateFinishedTrialError:
        # reaped as dead (a stale heartbeat) while it ran; its re-run resumes the same run
        warnings.warn(f"trial {trial.number} was reaped before it finished; its result stays in the run's spool")


def work(cfg: WorkerConfig, *, echo=None) -> int:
    """The loop. Returns the number of trials this worker ran."""
    opened = open_study(cfg.spec, cfg.url, create=False)
    study, n = opened.study, 0
    while not cfg.stop.requested:
        trial = take_trial(study, cfg)
        if trial is None:
            break
        out = run_trial(study, trial, cfg)
        n += 1
        if echo:
            echo(f"trial {trial.number} {TrialAttrs.of(trial).run_id}: {out.state}"
                 + (f" {out.values}" if out.values else "") + (f" ({out.error})" if out.error else ""))
    return n


def main(
    spec: Annotated[Path, typer.Option(help="the sweep spec YAML")],
    storage: Annotated[Optional[str], typer.Option(help="journal file path or postgresql:// URL (default: the spec's)")] = None,
    results_dir: Annotated[Optional[str], typer.Option(help="folder holding results/<name>/ (default: the spec's)")] = None,
    threads: Annotated[Optional[int], typer.Option(min=1, help="torch threads per trial")] = None,
    budget: Annotated[bool, typer.Option("--budget", help="threads per trial from the host budget")] = False,
    deadline: Annotated[Optional[float], typer.Option(help="Unix time after which no new trial starts")] = None,
    no_ingest: Annotated[bool, typer.Option("--no-ingest", help="leave runs in the spool (a Slurm task)")] = False,
) -> None:
    """One sweep worker: take trials of the study and run each in its own process until none is left."""
    stop = Stop()
    stop.install()
    try:
        loaded = load_spec(spec)
        from falstudy.sweep.study import storage_url

        url = storage_url(loaded, storage, results_dir)
        cfg = WorkerConfig(loaded, url, results_group(loaded, results_dir), results_dir or loaded.results_dir,
                           threads, deadline, stop, budget=budget, ingest=not no_ingest)
        work(cfg, echo=lambda line: print(line, flush=True))
    except FalstudyError as err:
        print(f"falstudy: error: {err}", file=sys.stderr, flush=True)
        raise typer.Exit(2) from None
    raise typer.Exit(128 + stop.signum if stop.signum else 0)


if __name__ == "__main__":
    typer.run(main)
