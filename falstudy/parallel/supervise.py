"""``falstudy train --tp/--dp``: run torchrun as a child, keep its report, say one line if a rank dies.

torchrun's own failure report (its traceback and the per-rank table, ~40 lines) and every rank's
stderr go to the run's log file ``results/<name>/runs/<run_id>/torchrun.log``; rank 0's stdout (the
run's summary line) still reaches the terminal. When a rank dies, the command prints one line:
which rank, its signal or exit code, the run id and the command that resumes it, and exits with
``EXIT_RANK_FAILED`` (3, as for any run that did not complete).
"""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

EXIT_RANK_FAILED = 3
LOG_NAME = "torchrun.log"


@dataclass
class RankFailure:
    rank: int | None
    exitcode: int | None
    signal: str | None  # e.g. SIGKILL, when the rank was killed by one

    def how(self) -> str:
        if self.signal:
            return f"killed by {self.signal}"
        if self.exitcode is not None:
            return f"exit code {self.exitcode}"
        return "failed"


_ROOT = re.compile(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)[^\n]*", re.S)
_ANY = re.compile(r"rank\s*:\s*(\d+)[^\n]*\n\s*exitcode\s*:\s*(-?\d+)[^\n]*")


def parse_report(text: str) -> RankFailure | None:
    """The first failed rank of torchrun's failure report (its "Root Cause" entry), or None."""
    match = _ROOT.search(text) or _ANY.search(text)
    if match is None:
        return None
    rank, code = int(match.group(1)), int(match.group(2))
    name = None
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
    return RankFailure(rank, code, name)


def resume_command(argv: Sequence[str], run_id: str) -> str:
    """``falstudy <the same arguments>`` with ``--run-id run_id`` (added if absent)."""
    args = list(argv)
    if not any(a == "--run-id" or a.startswith("--run-id=") for a in args):
        args += ["--run-id", run_id]
    return "falstudy " + shlex.join(args)


def run_torchrun(cmd: list[str], log_path: Path) -> tuple[int, bool]:
    """Run ``cmd`` (a torchrun command line) with its stderr into ``log_path``; return its exit
    code and whether this process was told to stop. SIGTERM and SIGINT to this process reach the
    child (the run then ends as killed)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    stopped = []
    with open(log_path, "ab") as log:
        sys.stdout.flush()
        proc = subprocess.Popen(cmd, stderr=log)

        def forward(signum, frame):
            stopped.append(signum)
            if proc.poll() is None:
                proc.send_signal(signum)

        old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            return proc.wait(), bool(stopped)
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)


def failure_line(log_path: Path, returncode: int, run_id: str, argv: Sequence[str]) -> str | None:
    """One line for a torchrun that ended with ``returncode`` != 0; None when only rank 0 ended
    with exit code 3 (the run diverged or failed and rank 0 has said so itself)."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        text = ""
    failure = parse_report(text)
    if failure is not None and failure.rank == 0 and failure.exitcode == EXIT_RANK_FAILED:
        return None
    who = f"rank {failure.rank} ({failure.how()})" if failure and failure.rank is not None else \
        f"torchrun (exit code {returncode})"
    return (f"{who} died in run {run_id}; torchrun's report is in {log_path}; "
            f"resume with `{resume_command(argv, run_id)}`")
