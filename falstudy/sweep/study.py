"""Spec -> Optuna study: storage, sampler, pruner, the study lock, and the trial queue.

Facts of Optuna 5 this module is built around:
- Samplers and pruners are not stored with a study: every process builds the same, seeded.
- GridSampler repeats cells under parallel workers, so a grid is a queue: each cell is
  enqueued once (``enqueue_trial``) and workers pop them with ``ask``.
- Journal storage (one host) has no heartbeat: each trial records host/pid (reap.py).

Every change to the queue (enqueue, pop, sample a new trial) happens under a study-wide lock
(a file lock beside a journal file, a PostgreSQL advisory lock), so a grid is enqueued exactly once
however many ``falstudy sweep`` processes start at once, and ``n_trials`` is exact.

The user attributes of every trial (the contract between the modules of this package) and the
study's own ``SPEC_ATTR``: ``falstudy.sweep.contract``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from falstudy.errors import FalstudyError
from falstudy.store import layout
from falstudy.sweep.contract import SPEC_ATTR, TrialAttrs, queued_attrs
from falstudy.sweep.spec import Pruner, SweepSpec, cells

if TYPE_CHECKING:
    import optuna

JOURNAL_NAME = "optuna.journal"
# a journal's study lock is broken when its file has not been touched for this long; a live holder
# touches it every JOURNAL_LOCK_GRACE_S / 4, so only a dead holder's lock is ever broken
JOURNAL_LOCK_GRACE_S = 30


def results_group(spec: SweepSpec, results_dir: str | Path | None = None) -> Path:
    """``results/<name>/``: the runs, the sweep's trials table, the DuckDB store, the journal."""
    return layout.group_dir(results_dir or spec.results_dir, spec.name)


def storage_url(spec: SweepSpec, storage: str | None = None, results_dir: str | Path | None = None) -> str:
    """The storage to use: the CLI's, the spec's, or the default journal file."""
    url = storage or spec.storage
    if url is None:
        return str(results_group(spec, results_dir) / JOURNAL_NAME)
    return url


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgresql+"))


def sqlalchemy_url(url: str) -> str:
    """SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3; falstudy's ``postgres`` extra installs
    psycopg2. Use whichever driver is installed unless the URL names one."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def describe_storage(url: str) -> str:
    """For messages: a URL without its password."""
    if is_postgres(url):
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    return url


def check_storage(url: str, made_later: Path | None = None) -> None:
    """Refuse a storage that cannot work, creating nothing: a URL of another kind, or a journal
    path that is a folder, lies inside a file, or whose folder does not exist (``made_later``: a
    folder the sweep creates itself, the results group)."""
    if "://" in url and not is_postgres(url):
        raise FalstudyError(f"storage {url!r}: use a journal file path or a postgresql:// URL")
    if is_postgres(url):
        return
    path = Path(url)
    if path.is_dir():
        raise FalstudyError(f"storage {url}: is a folder; give a journal file path, e.g. {path / JOURNAL_NAME}")
    for parent in path.parents:  # the nearest one that exists must be a folder
        if parent.exists():
            if not parent.is_dir():
                raise FalstudyError(f"storage {url}: {parent} is a file, not a folder; give a journal file path "
                                    "in a folder")
            break
    if path.exists() and not path.is_file():
        raise FalstudyError(f"storage {url}: not a regular file")
    will_exist = made_later is not None and (path.parent == made_later or made_later in path.parent.parents)
    if not path.parent.is_dir() and not will_exist:
        raise FalstudyError(f"storage {url}: folder {path.parent} does not exist; create it or give another path")


def make_storage(url: str) -> "optuna.storages.BaseStorage":
    import optuna

    check_storage(url)
    if not is_postgres(url):
        path = Path(url)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    # several processes creating the schema of a fresh database at once can collide: retry
    last: Exception | None = None
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(sqlalchemy_url(url), engine_kwargs={"pool_pre_ping": True})
        except ImportError:
            raise FalstudyError(f"storage {describe_storage(url)}: no PostgreSQL driver; "
                                "pip install -e '.[postgres]' (psycopg2-binary)") from None
        except Exception as err:  # sqlalchemy errors: a race, or a server that is not there
            last = err
            time.sleep(0.5 + attempt)
    raise FalstudyError(f"storage {describe_storage(url)}: cannot connect: {str(last).splitlines()[0]}")


def build_sampler(spec: SweepSpec) -> "optuna.samplers.BaseSampler":
    """The same seeded sampler in every process (samplers are not stored)."""
    import optuna

    s = spec.sampler
    if s.kind == "tpe":
        kwargs = {} if s.n_startup_trials is None else {"n_startup_trials": s.n_startup_trials}
        return optuna.samplers.TPESampler(seed=s.seed, **kwargs)
    if s.kind == "nsga2":
        kwargs = {} if s.population_size is None else {"population_size": s.population_size}
        return optuna.samplers.NSGAIISampler(seed=s.seed, **kwargs)
    # random, and grid: grid cells are enqueued with fixed params, so nothing is sampled
    return optuna.samplers.RandomSampler(seed=s.seed)


def build_pruner(spec: SweepSpec | Pruner) -> "optuna.pruners.BasePruner":
    import optuna

    p = spec.pruner if isinstance(spec, SweepSpec) else spec
    if p.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps,
                                           interval_steps=p.interval_steps)
    if p.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    return optuna.pruners.NopPruner()


@dataclass
class Opened:
    study: "optuna.Study"
    url: str
    created: bool


def open_study(spec: SweepSpec, url: str, *, create: bool = True) -> Opened:
    """Create the study, or join the existing one of the same name (checking it was made from
    the same run config and objectives)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(url)
    kwargs = dict(study_name=spec.name, storage=storage, sampler=build_sampler(spec), pruner=build_pruner(spec))
    created = False
    try:
        study = optuna.load_study(**kwargs)
    except KeyError:  # no such study
        if not create:
            raise FalstudyError(f"no study {spec.name!r} in {describe_storage(url)}") from None
        try:
            study = optuna.create_study(directions=spec.directions, **kwargs)
            study.set_user_attr(SPEC_ATTR, spec.fingerprint())
            # optuna-dashboard then says "val_loss", not "Objective 0" (experimental in Optuna 5: say nothing)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([o.metric for o in spec.objectives])
            created = True
        except optuna.exceptions.DuplicatedStudyError:  # another process won the race
            study = optuna.load_study(**kwargs)
    if not created:
        _check_same_study(study, spec, url)
    return Opened(study, url, created)


def _check_same_study(study: "optuna.Study", spec: SweepSpec, url: str) -> None:
    where = f"study {spec.name!r} in {describe_storage(url)}"
    directions = [d.name.lower() for d in study.directions]
    if directions != spec.directions:
        raise FalstudyError(f"{where} has directions {directions}, the spec {spec.directions}; "
                            "rename the sweep (name:) or delete the study")
    old = study.user_attrs.get(SPEC_ATTR)
    if old is None:  # its creator has not written it yet (or it was not made by falstudy)
        return
    new = json.loads(json.dumps(spec.fingerprint()))
    diff = _first_difference(old, new)
    if diff is not None:
        raise FalstudyError(f"{where} was made from another spec ({diff}); its trials would not be comparable: "
                            "rename the sweep (name:) or delete the study")


def _first_difference(old: Any, new: Any, path: str = "") -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in old:
                return f"{sub} added: {new[key]!r}"
            if key not in new:
                return f"{sub} removed (was {old[key]!r})"
            found = _first_difference(old[key], new[key], sub)
            if found:
                return found
        return None
    return None if old == new else f"{path}: {old!r} -> {new!r}"


# --------------------------------------------------------------------------- the study lock


@contextlib.contextmanager
def study_lock(study: "optuna.Study", url: str, timeout_s: float = 300.0) -> Iterator[None]:
    """Serialise queue changes of one study across processes and hosts. A PostgreSQL advisory lock
    is released by the server when its holder dies; a journal's lock file is broken by a waiter
    once it has gone JOURNAL_LOCK_GRACE_S untouched (its holder died)."""
    if is_postgres(url):
        with _pg_lock(study, url, timeout_s):
            yield
        return
    with _journal_lock(Path(url).with_name(f".{Path(url).name}.sweep")):
        yield


@contextlib.contextmanager
def _journal_lock(path: Path) -> Iterator[None]:
    """Optuna's O_EXCL lock file, not flock: flock is not safe on every NFS mount (the journal on a
    cluster's shared folder). Optuna breaks a lock whose file's mtime has not moved for the grace
    period, so while held a thread touches it: a slow holder keeps it, a dead one loses it."""
    import threading

    from optuna.storages.journal import JournalFileOpenLock

    lock = JournalFileOpenLock(str(path), grace_period=JOURNAL_LOCK_GRACE_S)
    lock.acquire()
    held = threading.Event()

    def keep_alive() -> None:
        while not held.wait(JOURNAL_LOCK_GRACE_S / 4):
            with contextlib.suppress(OSError):
                os.utime(lock._lock_file)

    toucher = threading.Thread(target=keep_alive, name="falstudy-study-lock", daemon=True)
    toucher.start()
    try:
        yield
    finally:
        held.set()
        toucher.join()
        lock.release()


@contextlib.contextmanager
def _pg_lock(study: "optuna.Study", url: str, timeout_s: float) -> Iterator[None]:
    from sqlalchemy import text

    engine = getattr(study._storage, "engine", None) or getattr(getattr(study._storage, "_backend", None), "engine")
    key = int.from_bytes(hashlib.sha1(f"falstudy-sweep:{study.study_name}".encode()).digest()[:8], "big", signed=True)
    with engine.connect() as conn:
        conn.execute(text(f"SET lock_timeout = {int(timeout_s * 1000)}"))  # SET takes no bind parameters
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})


# --------------------------------------------------------------------------- the queue


LIVE_STATES = ("WAITING", "RUNNING", "COMPLETE", "PRUNED")


def retryable(trial: "optuna.trial.FrozenTrial", retry_failed: bool = False) -> bool:
    return trial.state.name == "FAIL" and (bool(TrialAttrs.of(trial).retry) or retry_failed)


def settled(trials: list["optuna.trial.FrozenTrial"], retry_failed: bool = False) -> bool:
    """A run is settled (not to be queued again) if one of its trials is waiting, running or
    done, or failed for a reason a re-run would repeat (diverged, crashed)."""
    return any(t.state.name in LIVE_STATES or (t.state.name == "FAIL" and not retryable(t, retry_failed))
               for t in trials)


def by_run_id(study: "optuna.Study") -> dict[str, list["optuna.trial.FrozenTrial"]]:
    groups: dict[str, list] = defaultdict(list)
    for t in study.get_trials(deepcopy=False):
        groups[t.user_attrs.get("run_id", f"#{t.number}")].append(t)
    return groups


@dataclass
class QueueReport:
    enqueued: int = 0  # new grid cells
    requeued: int = 0  # re-runs of interrupted or reaped trials
    retry_waiting: int = 0  # re-runs left for --resume


def ensure_queue(study: "optuna.Study", spec: SweepSpec, *, resume: bool = False,
                 retry_failed: bool = False) -> QueueReport:
    """Enqueue every grid cell that has no trial yet; with ``resume``, also re-enqueue runs whose
    trials all failed in a retryable way (their worker died, they were interrupted), or all
    failed at all with ``retry_failed``. Call under ``study_lock``. Idempotent."""
    report = QueueReport()
    groups = by_run_id(study)
    if spec.is_grid:
        for cell in cells(spec):
            if not groups.get(cell.run_id):
                enqueue(study, cell.params, kind="grid", run_id=cell.run_id, seed=cell.seed)
                report.enqueued += 1
    for run_id, trials in groups.items():
        if run_id.startswith("#") or settled(trials, retry_failed):
            continue
        if not (resume or retry_failed):
            report.retry_waiting += 1
            continue
        last = max(trials, key=lambda t: t.number)
        attrs = last.user_attrs
        enqueue(study, attrs.get("params", last.params), kind=attrs.get("kind", "sampled"), run_id=run_id,
                seed=attrs.get("seed", spec.seeds[0]), rerun_of=last.number)
        report.requeued += 1
    return report


def enqueue(study: "optuna.Study", params: dict[str, Any], **attrs: Any) -> None:
    study.enqueue_trial(params, user_attrs=queued_attrs(params, **attrs))


def trial_id(study: "optuna.Study", number: int) -> int:
    storage = study._storage
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)
