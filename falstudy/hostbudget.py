"""One host's cores, shared by every falstudy process that trains on it.

Each sweep (for its workers) and each single-process ``falstudy train`` holds a **lease**: a small
file ``<pid>-<start>-<token>.json`` saying how many trainings it runs at once (``slots``), in a host-level
folder (``$FALSTUDY_HOST_DIR``, default ``/tmp/falstudy-<uid>/leases``). A training asks
``share()`` for its threads when it starts: ``max(1, cores // live slots)``. So two sweeps of one
worker each on 2 cores train with 1 thread per trial, not 2 each; when one ends, the other's next
trial gets both cores. Leases of dead processes (a pid gone, or reused) are ignored and removed;
the folder's ``.lock`` (a filelock) makes reading and writing them one step.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from pathlib import Path

ENV_DIR = "FALSTUDY_HOST_DIR"


def lease_dir() -> Path:
    folder = os.environ.get(ENV_DIR) or os.path.join(tempfile.gettempdir(), f"falstudy-{os.getuid()}", "leases")
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cores() -> int:
    """Cores this process may run on (its affinity mask)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _lock(folder: Path):
    from filelock import FileLock

    return FileLock(str(folder / ".lock"), timeout=30)


def _live(folder: Path) -> dict[Path, int]:
    """Lease file -> slots of the live leases (dead ones removed). Call under the lock."""
    from falstudy.sweep.reap import process_alive

    live = {}
    for path in folder.glob("*.json"):
        try:
            data = json.loads(path.read_text())
            pid, start, slots = int(data["pid"]), data.get("start"), int(data["slots"])
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if process_alive(pid, start):
            live[path] = max(1, slots)
        else:
            path.unlink(missing_ok=True)
    return live


class Lease:
    """This process runs ``slots`` trainings at once; ``release()`` (or the end of a ``with``,
    or the process's death) gives them back."""

    def __init__(self, slots: int = 1, pid: int | None = None) -> None:
        from falstudy.sweep.reap import process_start

        self.pid = pid or os.getpid()
        self.folder = lease_dir()
        self.path = self.folder / f"{self.pid}-{process_start(self.pid)}-{secrets.token_hex(3)}.json"
        with _lock(self.folder):
            self.path.write_text(json.dumps({"pid": self.pid, "start": process_start(self.pid), "slots": slots}))

    def release(self) -> None:
        with _lock(self.folder):
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def live_slots() -> int:
    folder = lease_dir()
    with _lock(folder):
        return sum(_live(folder).values())


def share(n_cores: int | None = None) -> int:
    """Threads for one training starting now: this host's cores over the live slots."""
    return max(1, (n_cores or cores()) // max(1, live_slots()))
