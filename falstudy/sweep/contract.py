"""What the sweep's processes tell each other, written down once:

- ``TrialPayload``: worker -> trial process, a JSON file (``sweep/work/trial-NNNNN.json``) that
  ``python -m falstudy.sweep.trial`` reads;
- ``TrialResult``: trial process -> worker, the JSON file at ``payload.result_path``;
- ``TrialAttrs``: the user attributes every Optuna trial of a study carries. ``study.enqueue``
  sets the queued ones, the worker those of the trial it takes and runs, the reaper ``error``
  and ``retry``; ``records`` (the ``trials`` table), ``progress``, ``reap`` and ``driver`` read
  them. Studies written by an older falstudy may lack any of them (each defaults to None).
- ``SPEC_ATTR``: the study's own user attribute, what its trials measure
  (``SweepSpec.fingerprint``); a study joined later must match it.

Plain dataclasses: the values are read and written as they are, without conversion.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from falstudy.sweep.process import write_json

if TYPE_CHECKING:
    import optuna

SPEC_ATTR = "falstudy_spec"


@dataclass(frozen=True)
class TrialPayload:
    storage: str  # the study's storage: a journal file path or a postgresql:// URL
    study: str  # the study name (the spec's name)
    trial_number: int
    trial_id: int  # the storage's id of the trial, to report intermediate values to it
    config: dict[str, Any]  # the run's raw RunConfig (falstudy.sweep.schema.run_config_data)
    objectives: list[str]  # metric names (falstudy.sweep.schema.METRICS), in the study's order
    report: bool  # report each eval's validation loss to Optuna (single-objective studies)
    prune: bool  # stop the run as pruned when the pruner says so
    pruner: dict[str, Any]  # the spec's pruner (falstudy.sweep.schema.Pruner, dumped)
    result_path: str  # where the trial writes its TrialResult
    parent_pid: int  # the worker: a trial whose worker is gone before it starts does nothing
    probes: dict[str, Any] | None = None  # the spec's probes (schema.Probes, dumped), run after training
    evals: dict[str, Any] | None = None  # downstream evaluation after training (falstudy.eval's keyword arguments)

    def write(self, path: str | Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def read(cls, path: str | Path) -> "TrialPayload":
        return cls(**json.loads(Path(path).read_text()))


@dataclass
class TrialResult:
    status: str  # the run's: completed | pruned | diverged | failed | killed
    error: str | None = None  # why it did not complete
    run_id: str | None = None
    run_dir: str | None = None
    final_step: int | None = None
    values: list[float] | None = None  # the objective values (completed runs), in payload.objectives order
    reused: bool | None = None  # True: trained before its worker died; not trained again
    train_s: float | None = None  # seconds to train (and compute the objectives)
    probe_s: float | None = None  # seconds the probes took
    probe_error: str | None = None  # a probe failed; the run and its objectives stand

    def to_json(self) -> dict[str, Any]:
        """The fields that are set (the file and the trial's log line stay short)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def write(self, path: str | Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def read(cls, path: str | Path) -> "TrialResult":
        return cls(**json.loads(Path(path).read_text()))


@dataclass
class TrialAttrs:
    # what the trial runs (set when it is queued or sampled)
    kind: str | None = None  # grid | sampled | repeat (a sampled point run again with another seed)
    run_id: str | None = None  # the run it trains; a re-run of the trial keeps it (and resumes the run)
    seed: int | None = None  # the run's seed
    params: dict[str, Any] | None = None  # the parameters (also for WAITING trials, whose params Optuna hides)
    repeat_of: int | None = None  # kind repeat: the number of the sampled trial it repeats
    rerun_of: int | None = None  # the number of the trial it re-runs (interrupted, reaped, --retry-failed)
    # who runs it (set by the worker that takes it; reap.py checks they are alive)
    worker_host: str | None = None
    worker_pid: int | None = None
    worker_start: int | None = None  # the worker's process start, clock ticks since boot (tells a reused pid apart)
    heartbeat: float | None = None  # unix time, refreshed while it runs (reap.HEARTBEAT_S)
    trial_pid: int | None = None  # the trial subprocess
    slurm_task: str | None = None  # under Slurm: the array task that runs it (``<job>_<task>``)
    # how it ended (set by the worker from the TrialResult, or by the reaper)
    status: str | None = None  # the run's status (completed, pruned, diverged, failed, killed)
    error: str | None = None  # why it failed
    retry: bool | None = None  # True: --resume re-runs it (its worker died, or it was interrupted)
    probe_error: str | None = None  # a probe failed; the trial still counts

    @classmethod
    def of(cls, trial: "optuna.trial.FrozenTrial | optuna.Trial") -> "TrialAttrs":
        """The attributes a trial carries (others, if any, are left out)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in trial.user_attrs.items() if k in known})


ATTR_NAMES = frozenset(f.name for f in fields(TrialAttrs))


def _known(values: dict[str, Any]) -> dict[str, Any]:
    """``values``, if every name is a TrialAttrs field (a name that is not is a bug)."""
    unknown = set(values) - ATTR_NAMES
    if unknown:
        raise ValueError(f"not trial attributes (falstudy.sweep.contract.TrialAttrs): {sorted(unknown)}")
    return values


def set_attrs(trial: "optuna.Trial", values: dict[str, Any]) -> None:
    """Set user attributes of a running trial."""
    for key, value in _known(values).items():
        trial.set_user_attr(key, value)


def queued_attrs(params: dict[str, Any], **attrs: Any) -> dict[str, Any]:
    """The user attributes of a trial to enqueue."""
    return _known({"params": params, **attrs})
