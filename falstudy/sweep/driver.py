"""``falstudy sweep SPEC``: check the spec, open (or join) the study, queue the grid, start the
workers, show progress, and leave the trials table ingested next to the runs.

    run_sweep("sweeps/bypass.yaml", workers=2)          # the same from Python
    plan("sweeps/bypass.yaml")                           # what --dry-run prints

Nothing is created before the spec and the corpus check out: a bad spec leaves no folder, no
journal and no study behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from falstudy.errors import FalstudyError
from falstudy.sweep.spec import SweepSpec, cells, load_spec, param_type, run_config_data

Echo = Callable[[str], None]
RETRY = "FAIL (interrupted: --resume re-runs it)"
RETRY_DEAD = "RUNNING (worker gone: --resume re-runs it)"


@dataclass
class SweepReport:
    name: str
    group: Path
    storage: str
    counts: dict[str, int] = field(default_factory=dict)
    best: str | None = None
    workers_failed: list[str] = field(default_factory=list)  # why each failed worker ended
    interrupted: bool = False
    wall_s: float = 0.0
    incomplete: list[str] = field(default_factory=list)  # grid cells (run ids) with no finished trial
    finish_command: str | None = None  # the command that runs them

    @property
    def ok(self) -> bool:
        return not self.workers_failed and not self.interrupted and not self.incomplete


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def threads_per_trial(spec: SweepSpec, workers: int, *, joined: bool = False) -> int | None:
    """Torch threads per trial if this sweep's workers started now: this host's cores over every
    training falstudy runs here (``falstudy.hostbudget``: other sweeps and trainings, plus these
    ``workers`` unless ``joined``, i.e. already counted), unless the run config fixes it."""
    if (spec.run.get("train") or {}).get("threads"):
        return None
    from falstudy.hostbudget import live_slots

    return max(1, cpu_count() // max(1, live_slots() + (0 if joined else workers)))


def check_data(spec: SweepSpec, source: str) -> None:
    """Every corpus a trial would read must be prepared (else every trial would fail)."""
    from falstudy.config import RunConfig

    paths: dict[str, str] = {}
    configs = [run_config_data(spec, c.params, c.seed, None) for c in cells(spec)] if spec.is_grid else \
        [run_config_data(spec, {}, spec.seeds[0], None)]
    for data in configs:
        cfg = RunConfig.model_validate(data)
        paths.setdefault(cfg.data.path, "search.data.path" if "data.path" in spec.param_keys.values() else "run.data.path")
    for path, at in paths.items():
        if not (Path(path) / "meta.json").is_file():
            hint = "`falstudy data prepare`" if path == "data/shakespeare-byte" else "`falstudy data prepare --corpus ...`"
            raise FalstudyError(f"{source}: {at}: {path} is not a prepared corpus (no meta.json); run {hint} first")


# --------------------------------------------------------------------------- dry run


def plan(spec_path: str | Path, *, workers: int | None = None, storage: str | None = None,
         results_dir: str | None = None, echo: Echo = print) -> SweepSpec:
    """Print what the sweep would run (and, for an existing journal study, what is done)."""
    from falstudy.sweep.study import check_storage, describe_storage, is_postgres, results_group, storage_url

    spec = load_spec(spec_path, workers=workers)
    url = storage_url(spec, storage, results_dir)
    group = results_group(spec, results_dir)
    check_storage(url, made_later=group)
    states = _existing_states(spec, url)
    metrics = ", ".join(f"{o.metric} ({o.resolved_direction})" for o in spec.objectives)
    echo(f"sweep {spec.name}: {spec.description or ''}".rstrip(": "))
    echo(f"  results:    {group}/ (runs, sweep/trials-*.parquet, falstudy.duckdb)")
    where = "not checked in a dry run" if is_postgres(url) else ("exists" if states is not None else "new")
    echo(f"  storage:    {describe_storage(url)} ({where})")
    echo(f"  objectives: {metrics}")
    sampler = spec.sampler.kind + ("" if spec.is_grid else f" (seed {spec.sampler.seed})")
    echo(f"  sampler:    {sampler}; pruner: {spec.pruner.kind}")
    threads = threads_per_trial(spec, spec.workers)
    per_rank = f" ({max(1, threads // spec.backend.nproc)} per rank)" if threads and spec.backend.nproc > 1 else ""
    echo(f"  workers:    {spec.workers} on this host" + (f", {threads} torch thread(s) per trial{per_rank}" if threads else ""))
    backend = spec.backend
    echo(f"  backend:    {backend.kind}" + ("" if backend.kind == "local" else f" nproc={backend.nproc} tp={backend.tp} dp={backend.dp}"))
    if spec.probes:
        echo(f"  probes:     {', '.join(spec.probes.names)} ({spec.probes.tokens} tokens) after training")
    if spec.evals:
        e = spec.evals
        parts = [f"held-out bits/byte on {', '.join(e.heldout)}" if e.heldout else "",
                 f"pairs {', '.join(e.pairs)}" if e.pairs else "", f"choices {', '.join(e.choices)}" if e.choices else "",
                 f"lm-eval {', '.join(e.lm_eval)}" if e.lm_eval else ""]
        echo(f"  evals:      {'; '.join(p for p in parts if p)} after training (docs/eval.md)")
    limits = [f"n_trials={spec.n_trials}" if spec.n_trials else "", f"timeout={spec.timeout:g}s" if spec.timeout else "",
              f"trial_timeout={spec.trial_timeout:g}s" if spec.trial_timeout else ""]
    if any(limits):
        echo(f"  limits:     {' '.join(x for x in limits if x)}")
    echo(f"  fixed run:  {_flat(spec.run) or '(defaults)'}")
    if spec.is_grid:
        grid = cells(spec)
        dims = " x ".join(f"{len(set(str(c.params[n]) for c in grid))} {n}" for n in spec.search) or "1 cell"
        echo(f"  grid:       {dims} x {len(spec.seeds)} seed(s) = {len(grid)} trials")
        rows = [(str(c.index), c.run_id, *(str(c.params[n]) for n in spec.search), str(c.seed),
                 (states or {}).get(c.run_id, "would run")) for c in grid]
        _table(["#", "run_id", *spec.search, "seed", "status"], rows, echo)
        todo = sum(r[-1] in ("would run", "WAITING") for r in rows)
        retry = sum(r[-1] in (RETRY, RETRY_DEAD) for r in rows)
        echo(f"{todo} of {len(grid)} trials would run" + (f"; --resume would also re-run {retry}" if retry else ""))
    else:
        echo(f"  search ({spec.sampler.kind}, each point run with seeds {spec.seeds}):")
        rows = []
        for name, p in spec.search.items():
            kind = param_type(p)
            where = ", ".join(map(str, p.choices)) if kind == "categorical" else \
                f"[{p.low:g}, {p.high:g}]" + (" log" if p.log else "") + (f" step {p.step:g}" if p.step else "")
            rows.append((name, spec.param_keys[name], kind, where))
        _table(["param", "config field", "type", "values"], rows, echo)
        done = sum(1 for s in (states or {}).values() if s in ("COMPLETE", "PRUNED", "FAIL"))
        total = f"{spec.n_trials} points x {len(spec.seeds)} seed(s) = {spec.n_trials * len(spec.seeds)} trials" \
            if spec.n_trials else f"until timeout={spec.timeout:g}s"
        echo(f"{total}; {done} finished so far")
    return spec


def _existing_states(spec: SweepSpec, url: str) -> dict[str, str] | None:
    """run_id -> state of an existing journal study, read without creating anything."""
    from falstudy.sweep.study import by_run_id, is_postgres, retryable, settled

    if is_postgres(url) or not Path(url).is_file():
        return None
    import optuna

    from falstudy.sweep.study import make_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=spec.name, storage=make_storage(url))
    except KeyError:
        return None
    from falstudy.sweep.reap import STALE_AFTER_S, host_name, why_dead

    out, now = {}, time.time()
    for run_id, trials in by_run_id(study).items():
        last = max(trials, key=lambda t: t.number)
        state = last.state.name
        if state == "FAIL" and not settled(trials) and any(retryable(t) for t in trials):
            state = RETRY
        elif state == "RUNNING" and why_dead(last, host=host_name(), now=now, stale_after_s=STALE_AFTER_S):
            state = RETRY_DEAD
        out[run_id] = "WAITING" if state == "WAITING" else state  # queued: runs next
    return out


def _flat(data: dict, prefix: str = "") -> str:
    parts = []
    for k, v in data.items():
        if isinstance(v, dict):
            inner = _flat(v, f"{prefix}{k}.")
            if inner:
                parts.append(inner)
        else:
            parts.append(f"{prefix}{k}={v}")
    return " ".join(parts)


def _table(header: list[str], rows: list[tuple], echo: Echo) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in (header, *rows):
        echo("  " + "  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


# --------------------------------------------------------------------------- the sweep


def run_sweep(spec_path: str | Path, *, workers: int | None = None, storage: str | None = None,
              resume: bool = False, retry_failed: bool = False, results_dir: str | None = None,
              quiet: bool = False, echo: Echo = print) -> SweepReport:
    """Run (or join, or resume) the sweep of ``spec_path`` with ``workers`` local workers."""
    from falstudy.sweep import reap as R
    from falstudy.sweep.records import SWEEP_DIR, export_trials, ingest_quietly
    from falstudy.sweep.study import (check_storage, describe_storage, ensure_queue, open_study, results_group,
                                      storage_url, study_lock)

    t0 = time.time()
    spec_path = Path(spec_path)
    spec = load_spec(spec_path, workers=workers)
    check_data(spec, str(spec_path))
    ranks, cores = spec.workers * spec.backend.nproc, cpu_count()
    if spec.workers > 8 * cores:
        raise FalstudyError(f"{spec_path}: workers {spec.workers} on a host with {cores} cores; give at most {8 * cores} "
                            "(start more hosts on the same storage to go wider)")
    if spec.backend.nproc > 1 and ranks > cores:
        raise FalstudyError(f"{spec_path}: workers {spec.workers} x backend.nproc {spec.backend.nproc} = {ranks} ranks "
                            f"on this host, but it has {cores} cores; lower workers (--workers)")
    url = storage_url(spec, storage, results_dir)
    group = results_group(spec, results_dir)
    check_storage(url, made_later=group)

    # from here on things are created; a storage that fails to open leaves no folders behind
    made = [p for p in (group / SWEEP_DIR / "logs", *(group / SWEEP_DIR / "logs").parents) if not p.exists()]
    group.mkdir(parents=True, exist_ok=True)
    try:
        opened = open_study(spec, url)
    except BaseException:
        for folder in made:  # deepest first; only the empty ones we made
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    (group / SWEEP_DIR / "logs").mkdir(parents=True, exist_ok=True)
    study = opened.study
    report = SweepReport(spec.name, group, describe_storage(url))
    with study_lock(study, url):
        reaped = R.reap(study) if resume else []
        queue = ensure_queue(study, spec, resume=resume, retry_failed=retry_failed)
        dead = [] if resume else R.find_dead(study)
    notes = ([f"{queue.enqueued} new cells queued"] if spec.is_grid else []) + \
        ([f"{len(reaped)} dead trial(s) reaped"] if reaped else []) + \
        ([f"{queue.requeued} re-run(s) queued"] if queue.requeued else [])
    echo(f"sweep {spec.name}: {'created' if opened.created else 'joined'} study in {report.storage}; "
         f"{len(study.trials)} trials" + (f" ({', '.join(notes)})" if notes else ""))
    if dead or queue.retry_waiting:
        echo(f"note: {len(dead) + queue.retry_waiting} trial(s) were interrupted or lost their worker; "
             f"`falstudy sweep {spec_path} --resume` re-runs them")
    if reaped:
        export_trials(study, group, reaped)

    deadline = t0 + spec.timeout if spec.timeout else None
    from falstudy.hostbudget import Lease

    lease = Lease(spec.workers)  # this sweep's trainings count in every falstudy process's share
    try:
        return _run(spec, spec_path, url, storage, group, results_dir, deadline, study, report, t0, echo, quiet)
    finally:
        lease.release()


def _run(spec: SweepSpec, spec_path: Path, url: str, storage: str | None, group: Path, results_dir: str | None,
         deadline: float | None, study, report: SweepReport, t0: float, echo: Echo, quiet: bool) -> SweepReport:
    from falstudy.sweep.records import export_trials, ingest_quietly

    budget = threads_per_trial(spec, spec.workers, joined=True) is not None  # else the spec fixes train.threads
    procs = _start_workers(spec, spec_path, url, group, results_dir, budget=budget, deadline=deadline)
    expected = len(cells(spec)) if spec.is_grid else (spec.n_trials * len(spec.seeds) if spec.n_trials else None)
    if expected is not None:  # re-runs of reaped or interrupted trials are trials too
        expected += sum("rerun_of" in t.user_attrs for t in study.get_trials(deepcopy=False))

    from falstudy.sweep.progress import Progress

    stop = {"signals": 0}

    def on_signal(signum, frame):
        stop["signals"] += 1
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL if stop["signals"] > 1 else signal.SIGTERM)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with Progress(study, spec.directions, [o.metric for o in spec.objectives], expected=expected,
                      quiet=quiet, echo=echo) as progress:
            while any(p.poll() is None for p in procs):
                progress.poll()
                time.sleep(1.0)
            summary = progress.poll()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    report.interrupted = stop["signals"] > 0
    for i, p in enumerate(procs):
        if p.returncode != 0 and not report.interrupted:
            report.workers_failed.append(failed_worker_line(study, i, p.pid, p.returncode, p.log_path))

    export_trials(study, group)
    ingest_quietly(group)
    report.counts, report.best, report.wall_s = summary.counts, summary.best, time.time() - t0
    echo(f"sweep {spec.name}: {summary.line()} ({report.wall_s:.0f}s)")
    for line in report.workers_failed:
        echo(f"warning: {line}")
    running = summary.running
    if running and (report.workers_failed or report.interrupted):
        echo(f"note: {len(running)} trial(s) left RUNNING; `falstudy sweep {spec_path} --resume` re-runs them")
    if spec.is_grid and not (spec.timeout and time.time() > deadline):
        _report_incomplete(report, study, spec, spec_path, storage, results_dir, echo)
    echo(f"results: falstudy sql -r {group} \"SELECT * FROM trials JOIN runs USING (run_id)\"; "
         f"dashboard: optuna-dashboard {url if not url.startswith('postgresql') else '<storage URL>'}")
    return report


FINISHED = ("COMPLETE", "PRUNED")


def incomplete_cells(study, spec: SweepSpec) -> dict[str, tuple[str, str | None, bool]]:
    """run_id -> (state, error, retryable) of every grid cell with no COMPLETE or PRUNED trial."""
    from falstudy.sweep.reap import STALE_AFTER_S, host_name, why_dead
    from falstudy.sweep.study import by_run_id, retryable

    groups, host, now = by_run_id(study), host_name(), time.time()
    out = {}
    for cell in cells(spec):
        trials = groups.get(cell.run_id, [])
        if any(t.state.name in FINISHED for t in trials):
            continue
        last = max(trials, key=lambda t: t.number, default=None)
        if last is not None and last.state.name == "RUNNING" and \
                not why_dead(last, host=host, now=now, stale_after_s=STALE_AFTER_S):
            continue  # another sweep process (or host) is running it
        state = last.state.name if last else "no trial"
        out[cell.run_id] = (state, last.user_attrs.get("error") if last else None,
                            last is None or state != "FAIL" or retryable(last))
    return out


def _report_incomplete(report: SweepReport, study, spec: SweepSpec, spec_path: Path, storage: str | None,
                       results_dir: str | None, echo: Echo) -> None:
    """A grid is done when every cell has a finished trial: say which are not, and how to finish them."""
    import shlex

    missing = incomplete_cells(study, spec)
    if not missing:
        return
    final = [run_id for run_id, (_, _, retry) in missing.items() if not retry]
    cmd = ["falstudy", "sweep", str(spec_path), "--resume", *(["--retry-failed"] if final else []),
           *(["--storage", storage] if storage else []), *(["--results-dir", str(results_dir)] if results_dir else [])]
    report.incomplete, report.finish_command = list(missing), shlex.join(cmd)
    shown = [f"{run_id} ({state}{': ' + error.splitlines()[0][:120] if error else ''})"
             for run_id, (state, error, _) in list(missing.items())[:10]]
    more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
    echo(f"incomplete: {len(missing)} of {len(cells(spec))} grid cell(s) have no COMPLETE trial: {'; '.join(shown)}{more}")
    why = f" ({len(final)} failed on their own: re-running may fail the same way)" if final else ""
    echo(f"to finish the grid: {report.finish_command}{why}")


class _Worker(subprocess.Popen):
    log_path: Path


def _start_workers(spec: SweepSpec, spec_path: Path, url: str, group: Path, results_dir: str | None,
                   budget: bool, deadline: float | None) -> list[_Worker]:
    from falstudy.sweep.worker import die_with_parent

    procs = []
    for i in range(spec.workers):
        cmd = [sys.executable, "-m", "falstudy.sweep.worker", "--spec", str(spec_path.resolve()), "--storage", url]
        if results_dir:
            cmd += ["--results-dir", str(results_dir)]
        if budget:
            cmd += ["--budget"]
        if deadline:
            cmd += ["--deadline", f"{deadline:.3f}"]
        log_path = group / "sweep" / "logs" / f"worker-{socket.gethostname()}-{os.getpid()}-{i}.log"
        with open(log_path, "ab") as log:
            # workers die with this process (kill the command, kill the sweep); --resume recovers
            p = _Worker(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=lambda: die_with_parent(signal.SIGKILL),
                        env=dict(os.environ, PYTHONUNBUFFERED="1"))
        p.log_path = log_path
        procs.append(p)
    return procs


def failed_worker_line(study, index: int, pid: int, returncode: int, log_path: Path) -> str:
    """Why worker ``index`` ended, naming the trial it was running when it did (not the one it
    finished before), and what its log says after that trial's line."""
    from falstudy.sweep.reap import host_name

    how = f"killed by signal {signal.Signals(-returncode).name}" if returncode < 0 else f"exit code {returncode}"
    host = host_name()
    mine = [t for t in study.get_trials(deepcopy=False)
            if t.user_attrs.get("worker_pid") == pid and t.user_attrs.get("worker_host", host) == host]
    last = max(mine, key=lambda t: t.number, default=None)
    line = f"worker {index} (pid {pid}) ended with {how}"
    if last is not None and not last.state.is_finished():
        line += f" while running trial {last.number} ({last.user_attrs.get('run_id', '?')})"
    tail = _tail(log_path)
    return line + (f": {tail}" if tail else "")


_TRIAL_LINE = re.compile(r"^trial \d+ ")  # the worker's line per finished trial (worker.work)


def _tail(path: Path, lines: int = 2) -> str:
    """The last lines of a worker's log written after its last finished trial's line."""
    try:
        text = [x.strip() for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    done = [i for i, x in enumerate(text) if _TRIAL_LINE.match(x)]
    text = text[done[-1] + 1:] if done else text
    return " | ".join(text[-lines:])

