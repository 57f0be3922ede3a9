"""The sweep spec's schema: the YAML a user writes, as pydantic models (structure and types only).

    name: bypass                        # study name and results group: results/bypass/
    objectives: [val_loss]              # or [val_loss, step_ms] for a multi-objective study
    sampler: grid                       # grid | tpe | nsga2 | random, or {kind: tpe, seed: 0}
    pruner: none                        # none | median | hyperband, or {kind: median, ...}
    seeds: [0, 1, 2]                    # every cell (grid) or sampled point is run once per seed
    workers: 2
    run: {model: {...}, train: {...}, data: {...}}     # the fixed part of every run
    search:                             # keys are RunConfig fields (dotted) or unique short names
      variant: [baseline, fal]          # a list = categorical
      train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}
    probes: [cka, bypass]               # run after training (falstudy.probe.run_probes)
    evals: [kjv, web, fortunes]         # then downstream evaluation (falstudy.eval.spec.Evals)
    slurm: {partition: gpu}             # what each array task of --slurm N asks for (falstudy.sweep.slurm)
    backend: {kind: local}              # or {kind: torchrun, nproc: 2, tp: 2, dp: 1}

Structure is checked here by pydantic (unknown fields, types); ``falstudy.sweep.checks`` then
checks the meaning (every grid cell and sampled bound makes a valid RunConfig, no pruner for a
multi-objective study, ...); ``falstudy.sweep.grid`` enumerates a grid. Every error names the
YAML path of the field, on one line.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from falstudy.eval.spec import Evals
from falstudy.sweep.slurm import SlurmSettings

# what a trial can report to Optuna, and which way is better by default
METRICS: dict[str, str] = {
    "val_loss": "minimize",  # validation loss at the last eval
    "best_val_loss": "minimize",  # lowest validation loss of any eval
    "train_loss": "minimize",  # training loss at the last log step
    "step_ms": "minimize",  # median milliseconds per training step
    "tokens_per_s": "maximize",  # median training throughput
}
SAMPLERS = ("grid", "tpe", "nsga2", "random")
PRUNERS = ("none", "median", "hyperband")
# the field types, made from the names above (Literal[("a", "b")] is Literal["a", "b"])
MetricName = Literal[tuple(METRICS)]  # type: ignore[valid-type]
SamplerKind = Literal[SAMPLERS]  # type: ignore[valid-type]
PrunerKind = Literal[PRUNERS]  # type: ignore[valid-type]
MAX_CELLS = 10_000  # a grid larger than this is a typo, not a study (and slow to check)
# set by the sweep for every trial; a spec must not set them under run:
SWEEP_OWNED = ("name", "run_id", "results_dir", "seed", "parallel")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _kind_shorthand(value: Any) -> Any:
    """``sampler: tpe`` means ``sampler: {kind: tpe}``."""
    return {"kind": value} if isinstance(value, str) else value


class Objective(_Strict):
    metric: MetricName
    direction: Literal["minimize", "maximize"] | None = None

    @property
    def resolved_direction(self) -> str:
        return self.direction or METRICS[self.metric]


class Sampler(_Strict):
    kind: SamplerKind = "grid"
    seed: int = 0
    n_startup_trials: int | None = Field(None, ge=0, description="tpe: random trials before TPE takes over")
    population_size: int | None = Field(None, ge=2, description="nsga2: individuals per generation")


class Pruner(_Strict):
    kind: PrunerKind = "none"
    n_startup_trials: int = Field(5, ge=0, description="median: trials before pruning starts")
    n_warmup_steps: int = Field(0, ge=0, description="median: steps before a trial can be pruned")
    interval_steps: int = Field(1, ge=1, description="median: prune check every N reported steps")
    min_resource: int = Field(1, ge=1, description="hyperband: smallest step budget")
    reduction_factor: int = Field(3, ge=2, description="hyperband: eta")


class Param(_Strict):
    """One search dimension: ``choices`` (categorical), or ``low``/``high`` (int or float)."""

    type: Literal["categorical", "int", "float"] | None = None  # inferred when left out
    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = Field(None, gt=0)
    log: bool = False


class Backend(_Strict):
    kind: Literal["local", "torchrun"] = "local"
    nproc: int = Field(1, ge=1, description="torchrun: processes per trial")
    tp: int = Field(1, ge=1, description="tensor-parallel degree")
    dp: int = Field(1, ge=1, description="data-parallel degree")


class Probes(_Strict):
    names: list[str] = Field(min_length=1)
    tokens: int = Field(8192, ge=1, description="token positions per probe pass")
    batch_size: int = Field(8, ge=1)
    options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-probe keyword arguments")


class SweepSpec(_Strict):
    name: str
    description: str | None = None
    storage: str | None = Field(None, description="journal file path or postgresql:// URL (default: results/<name>/optuna.journal)")
    results_dir: str = "results"
    objectives: list[Objective] = Field(default_factory=lambda: [Objective(metric="val_loss")], min_length=1)
    sampler: Sampler = Sampler()
    pruner: Pruner = Pruner()
    n_trials: int | None = Field(None, ge=1, description="sampled points (each run once per seed); not for grids")
    timeout: float | None = Field(None, gt=0, description="seconds (or '90s', '15m', '2h'): no new trial starts after it")
    trial_timeout: float | None = Field(None, gt=0, description="seconds one trial may take before it is stopped (FAIL)")
    workers: int = Field(1, ge=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    run: dict[str, Any] = Field(default_factory=dict)
    search: dict[str, Param] = Field(default_factory=dict)
    backend: Backend = Backend()
    probes: Probes | None = None
    evals: Evals | None = Field(None, description="downstream evaluation after training (falstudy.eval.spec)")
    slurm: SlurmSettings | None = None  # falstudy sweep --slurm N: what each array task asks for

    @field_validator("objectives", mode="before")
    @classmethod
    def _objectives(cls, value: Any) -> Any:
        if isinstance(value, (str, dict)):
            value = [value]
        if isinstance(value, list):
            return [{"metric": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("sampler", "pruner", "backend", mode="before")
    @classmethod
    def _kinds(cls, value: Any) -> Any:
        return _kind_shorthand(value)

    @field_validator("search", mode="before")
    @classmethod
    def _search(cls, value: Any) -> Any:
        if isinstance(value, dict):  # a list is a categorical dimension
            return {k: {"choices": v} if isinstance(v, list) else v for k, v in value.items()}
        return value

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            if value > MAX_CELLS:
                raise ValueError(f"{value} seeds is over the {MAX_CELLS} runs a sweep may queue")
            return list(range(value))
        return value

    @field_validator("probes", mode="before")
    @classmethod
    def _probes(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [p.strip() for p in value.split(",")]
        return {"names": value} if isinstance(value, list) else value

    @field_validator("timeout", "trial_timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if isinstance(value, str):
            m = re.fullmatch(r"\s*([0-9.]+)\s*(s|m|h)?\s*", value)
            if not m:
                raise ValueError(f"a duration is seconds or a number with s, m or h (e.g. 15m), got {value!r}")
            return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
        return value

    # --- derived
    @property
    def directions(self) -> list[str]:
        return [o.resolved_direction for o in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def is_grid(self) -> bool:
        return self.sampler.kind == "grid"

    @property
    def param_keys(self) -> dict[str, str]:
        """Search name (as written, the Optuna parameter name) -> dotted RunConfig path."""
        return {name: resolve_key(name) for name in self.search}

    def fingerprint(self) -> dict[str, Any]:
        """What a trial measures; a study joined later must have been made with the same."""
        return {"run": self.run, "objectives": [o.model_dump() for o in self.objectives],
                "backend": self.backend.model_dump()}


# --------------------------------------------------------------------------- keys and configs


def resolve_key(name: str) -> str:
    """``train.lr`` stays; ``lr`` -> ``train.lr`` when exactly one section has that field."""
    from falstudy.config import RunConfig

    if "." in name or name in RunConfig.model_fields:
        return name
    owners = [section for section, field in RunConfig.model_fields.items()
              if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
              and name in field.annotation.model_fields]
    if len(owners) == 1:
        return f"{owners[0]}.{name}"
    return name  # reported by check(): not a RunConfig field


def run_config_data(spec: SweepSpec, params: dict[str, Any], seed: int, run_id: str | None,
                    results_dir: str | None = None) -> dict[str, Any]:
    """The raw RunConfig dict of one trial: the fixed run, the params, the sweep-owned fields."""
    from falstudy.config import set_dotted

    data = json.loads(json.dumps(spec.run))  # a deep copy
    keys = spec.param_keys
    for name, value in params.items():
        set_dotted(data, keys.get(name, name), value)
    data.update(name=spec.name, seed=seed, results_dir=results_dir or spec.results_dir)
    if spec.backend.kind == "torchrun":
        data["parallel"] = {"tp": spec.backend.tp, "dp": spec.backend.dp}
    if run_id is not None:
        data["run_id"] = run_id
    data.setdefault("tags", {})["sweep"] = spec.name
    return data
