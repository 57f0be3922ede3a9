"""Small helpers of the sweep's processes, shared by the worker and the trial it starts (so
neither imports the other): dying with the parent, atomic JSON files, the torchrun rank."""

from __future__ import annotations

import ctypes
import json
import os
import signal
from pathlib import Path
from typing import Any

from falstudy.atomic import atomic_write

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Linux: deliver ``sig`` to this process when its parent dies (used before exec)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: trial.py also checks its parent pid when it starts


def write_json(path: str | Path, data: Any) -> None:
    """Atomically (a reader never sees half a file)."""
    with atomic_write(path, "w") as fh:
        fh.write(json.dumps(data, default=str))


def rank() -> int:
    """Global rank under torchrun, 0 for a plain process."""
    return int(os.environ.get("RANK", "0"))
