"""The ``trials`` table: one Parquet file per Optuna trial under ``results/<name>/sweep/``,
rewritten when the trial's state changes, then ingested with the runs (SQL joins on run_id).
Its columns are the trial's state and its user attributes (``falstudy.sweep.contract.TrialAttrs``).

The study storage stays the source of truth; these files are its export. Exporting a trial
again writes nothing when its row has not changed, so the ingester has nothing to redo.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from falstudy.errors import FalstudyError
from falstudy.sweep.contract import TrialAttrs

if TYPE_CHECKING:
    import optuna

SWEEP_DIR = "sweep"


def trial_file(sweep_dir: Path, number: int) -> Path:
    return sweep_dir / f"trials-{number:05d}.parquet"


def _iso(dt: Any) -> str | None:
    return dt.astimezone().isoformat(timespec="seconds") if dt is not None else None


def _json(value: Any) -> str | None:
    if value is None:
        return None
    # NaN/inf are not JSON; a failed trial's values are None anyway
    return json.dumps(value, sort_keys=True, default=lambda v: None if isinstance(v, float) and not math.isfinite(v) else str(v))


def trial_row(study_name: str, t: "optuna.trial.FrozenTrial") -> dict[str, Any]:
    ua = TrialAttrs.of(t)
    duration = t.duration.total_seconds() if t.duration is not None else None
    return {
        "study": study_name,
        "trial_number": t.number,
        "run_id": ua.run_id,
        "state": t.state.name,
        "params_json": _json(t.params or ua.params or {}),
        "values_json": _json(t.values),
        "duration_s": duration,
        "error": ua.error,
        "host": ua.worker_host,
        "pid": ua.worker_pid,
        "datetime_start": _iso(t.datetime_start),
        "datetime_complete": _iso(t.datetime_complete),
        "kind": ua.kind,
        "seed": ua.seed,
        "status": ua.status,
        "trial_pid": ua.trial_pid,
        "rerun_of": ua.rerun_of,
        "retry": bool(ua.retry) if t.state.name == "FAIL" else None,
        "probe_error": ua.probe_error,
    }


def _unchanged(path: Path, row: dict[str, Any]) -> bool:
    if not path.is_file():
        return False
    import pyarrow.parquet as pq

    try:
        old = pq.read_table(path).to_pylist()
    except Exception:  # unreadable: rewrite it
        return False
    return len(old) == 1 and {k: old[0].get(k) for k in row} == row


def export_trials(study: "optuna.Study", group: Path, numbers: Iterable[int] | None = None) -> int:
    """Write the rows of ``numbers`` (default: every trial that has started). Returns files written."""
    from falstudy.store import write_parquet

    wanted = None if numbers is None else set(numbers)
    sweep_dir = group / SWEEP_DIR
    written = 0
    for t in study.get_trials(deepcopy=False):
        if t.state.name == "WAITING" or (wanted is not None and t.number not in wanted):
            continue
        row = trial_row(study.study_name, t)
        path = trial_file(sweep_dir, t.number)
        if not _unchanged(path, row):
            write_parquet(path, [row], table="trials")
            written += 1
    return written


def ingest_quietly(group: Path) -> dict[str, int]:
    """Ingest the results group; the spool keeps everything if the store is busy."""
    from falstudy.store import ingest

    try:
        return ingest(group)
    except FalstudyError as err:
        warnings.warn(f"results kept in the spool, not ingested ({err}); run `falstudy ingest {group}` later",
                      stacklevel=2)
        return {}
