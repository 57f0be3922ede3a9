"""Reaping: RUNNING trials whose worker is gone.

Optuna's journal storage has no heartbeat, so a worker killed with SIGKILL (or a host that
died) leaves its trial RUNNING forever. Every trial records the host, pid and process start
time of its worker, and the worker refreshes a ``heartbeat`` attribute while the trial runs.
A RUNNING trial is dead when
- its worker ran on this host and that process no longer exists (or the pid now belongs to
  another process, or is a zombie), or
- its worker ran elsewhere and its heartbeat is older than ``stale_after_s``, or
- it has no worker attributes at all (the worker died between ask and recording them) and
  started more than ``stale_after_s`` ago.
(The attributes: ``falstudy.sweep.contract.TrialAttrs``.) Reaping tells Optuna FAIL with the
reason and ``retry=True``; ``ensure_queue(resume=True)``
then enqueues the same run again, which resumes from the run's last checkpoint.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from falstudy.sweep.contract import TrialAttrs

if TYPE_CHECKING:
    import optuna

HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0


def host_name() -> str:
    return socket.gethostname()


def process_start(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return int(fields[19])  # field 22 of stat; fields[0] is field 3 (state)
    except (OSError, IndexError, ValueError):
        return None


def process_alive(pid: int, start: int | None = None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        if state in (b"Z", b"X"):  # a zombie has exited; its parent has not reaped it yet
            return False
    except (OSError, IndexError):
        pass
    if start is not None:
        now = process_start(pid)
        if now is not None and now != start:
            return False  # the pid was reused
    return True


def why_dead(t: "optuna.trial.FrozenTrial", *, host: str, now: float, stale_after_s: float) -> str | None:
    """Why a RUNNING trial is dead, or None if it may be alive."""
    ua = TrialAttrs.of(t)
    worker_host, pid = ua.worker_host, ua.worker_pid
    if worker_host is None or pid is None:
        started = t.datetime_start.timestamp() if t.datetime_start else now
        if now - started > stale_after_s:
            return f"no worker recorded and started {now - started:.0f}s ago"
        return None
    if worker_host == host:
        if not process_alive(int(pid), ua.worker_start):
            return f"its worker (pid {pid} on {host}) is gone"
        return None
    beat = float(ua.heartbeat or (t.datetime_start.timestamp() if t.datetime_start else now))
    if now - beat > stale_after_s:
        return f"its worker (pid {pid} on {worker_host}) has sent no heartbeat for {now - beat:.0f}s"
    return None


def find_dead(study: "optuna.Study", *, stale_after_s: float = STALE_AFTER_S) -> list[tuple["optuna.trial.FrozenTrial", str]]:
    from optuna.trial import TrialState

    host, now = host_name(), time.time()
    dead = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = why_dead(t, host=host, now=now, stale_after_s=stale_after_s)
        if reason:
            dead.append((t, reason))
    return dead


def reap(study: "optuna.Study", *, stale_after_s: float = STALE_AFTER_S) -> list[int]:
    """Tell every dead RUNNING trial FAIL (retryable). Call under ``study_lock``. Returns numbers."""
    from optuna.trial import TrialState

    reaped = []
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for t, reason in find_dead(study, stale_after_s=stale_after_s):
        storage = study._storage
        tid = t._trial_id
        try:
            storage.set_trial_user_attr(tid, "error", f"reaped at {stamp}: {reason}")
            storage.set_trial_user_attr(tid, "retry", True)
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        except Exception as err:  # finished meanwhile (a slow worker, not a dead one)
            from optuna.exceptions import UpdateFinishedTrialError

            if not isinstance(err, UpdateFinishedTrialError):
                raise
            continue
        reaped.append(t.number)
    return reaped
