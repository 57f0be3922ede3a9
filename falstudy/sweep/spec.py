"""The sweep spec: a YAML file a user writes, validated by pydantic, then checked as a whole.

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
    backend: {kind: local}              # or {kind: torchrun, nproc: 2, tp: 2, dp: 1}

Structure is checked by pydantic (unknown fields, types); ``check`` then checks the meaning
(every grid cell and sampled bound makes a valid RunConfig, no pruner for a multi-objective
study, ...). Every error names the YAML path of the field, on one line.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from falstudy.errors import FalstudyError
from falstudy.eval.spec import Evals
from falstudy.names import BadName, check_name
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
MAX_CELLS = 10_000  # a grid larger than this is a typo, not a study (and slow to check)
# set by the sweep for every trial; a spec must not set them under run:
SWEEP_OWNED = ("name", "run_id", "results_dir", "seed", "parallel")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _kind_shorthand(value: Any) -> Any:
    """``sampler: tpe`` means ``sampler: {kind: tpe}``."""
    return {"kind": value} if isinstance(value, str) else value


class Objective(_Strict):
    metric: Literal["val_loss", "best_val_loss", "train_loss", "step_ms", "tokens_per_s"]
    direction: Literal["minimize", "maximize"] | None = None

    @property
    def resolved_direction(self) -> str:
        return self.direction or METRICS[self.metric]


class Sampler(_Strict):
    kind: Literal["grid", "tpe", "nsga2", "random"] = "grid"
    seed: int = 0
    n_startup_trials: int | None = Field(None, ge=0, description="tpe: random trials before TPE takes over")
    population_size: int | None = Field(None, ge=2, description="nsga2: individuals per generation")


class Pruner(_Strict):
    kind: Literal["none", "median", "hyperband"] = "none"
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


@dataclass(frozen=True)
class Cell:
    """One grid cell (params x seed): one trial, one run."""

    index: int
    params: dict[str, Any]
    seed: int
    run_id: str


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


def grid_values(name: str, p: Param) -> list[Any]:
    """The values a grid enumerates for one dimension (check() has refused the rest)."""
    if p.choices is not None:
        return list(p.choices)
    if p.type == "int" or (p.type is None and _int_like(p)):
        step = int(p.step or 1)
        return list(range(int(p.low), int(p.high) + 1, step))
    n = int(math.floor((p.high - p.low) / p.step + 1e-9)) + 1
    return [round(p.low + i * p.step, 12) for i in range(n)]


def grid_count(p: Param) -> int:
    """How many values ``grid_values`` gives, without making them (a range can be huge)."""
    if p.choices is not None:
        return len(p.choices)
    if p.type == "int" or (p.type is None and _int_like(p)):
        return max(0, (int(p.high) - int(p.low)) // int(p.step or 1) + 1)
    return max(0, int(math.floor((p.high - p.low) / p.step + 1e-9)) + 1)


def _int_like(p: Param) -> bool:
    return all(v is None or float(v).is_integer() for v in (p.low, p.high, p.step)) and not p.log


def param_type(p: Param) -> str:
    if p.type:
        return p.type
    if p.choices is not None:
        return "categorical"
    return "int" if _int_like(p) else "float"


def cells(spec: SweepSpec) -> list[Cell]:
    """Every grid cell, seed-major (all cells of the first seed first), with stable run ids."""
    names = list(spec.search)
    combos = list(itertools.product(*(grid_values(n, spec.search[n]) for n in names)))
    out: list[Cell] = []
    for seed in spec.seeds:
        for combo in combos:
            params = dict(zip(names, combo))
            out.append(Cell(len(out), params, seed, cell_run_id(params, seed)))
    ids = [c.run_id for c in out]
    if len(set(ids)) != len(ids):  # values that print alike: make them unique with a hash
        out = [Cell(c.index, c.params, c.seed, f"{c.run_id}-{_digest(c.params)}") for c in out]
    return out


def cell_run_id(params: dict[str, Any], seed: int) -> str:
    """A readable, stable run id: ``fal-s0``, ``fal-fal_source_layer2-s1``, ``baseline-lr0.003-s0``.
    Stable ids let a re-run cell resume its run, and a grid grow without renaming old runs."""
    parts = []
    for name, value in params.items():
        text = re.sub(r"[^A-Za-z0-9._+-]", "", str(value))
        short = name.rsplit(".", 1)[-1]
        parts.append(text if short == "variant" else f"{short}{text}")
    run_id = "-".join([*parts, f"s{seed}"])
    return run_id if len(run_id) <= 80 else f"{run_id[:70]}-{_digest(params)}-s{seed}"


def _digest(params: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:6]


# --------------------------------------------------------------------------- loading and checks


class SpecError(Exception):
    """A problem at one YAML path of the spec (turned into a FalstudyError by ``load_spec``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path, self.message = path, message


def load_spec(path: str | Path, **overrides: Any) -> SweepSpec:
    """Read, validate and check a spec file; ``overrides`` (e.g. workers=4) replace top-level
    fields before validation. Raises FalstudyError naming the file and the field."""
    from falstudy.config import load_yaml

    data = load_yaml(path)
    if not isinstance(data, dict):
        raise FalstudyError(f"{path}: expected a mapping of sweep fields (name, run, search, ...)")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return spec_from_dict(data, str(path))


def spec_from_dict(data: dict[str, Any], source: str = "spec") -> SweepSpec:
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as err:
        raise FalstudyError(_format(err, source)) from None
    try:
        check(spec)
    except SpecError as err:
        raise FalstudyError(f"{source}: {err}") from None
    return spec


def _format(err: ValidationError, source: str) -> str:
    from falstudy.config import format_validation_error

    return format_validation_error(err, source)


def _path_message(err: ValidationError, prefix: str = "") -> tuple[str, str]:
    """(YAML path, message) of a validation error, the path under ``prefix``."""
    path, _, message = _format(err, "x")[3:].partition(": ")
    if path == "<top level>":
        path = ""
    return ".".join(p for p in (prefix, path) if p) or "<top level>", message


def check(spec: SweepSpec) -> None:
    """Whole-spec checks; raises SpecError(yaml_path, message)."""
    from falstudy.config import RunConfig

    try:
        check_name(spec.name, "")
    except BadName as err:
        raise SpecError("name", f"{err} (it names results/<name>/)") from None
    for key in SWEEP_OWNED:
        if key in spec.run:
            what = "seeds:" if key == "seed" else "the spec's name:" if key == "name" else \
                "the spec's results_dir:" if key == "results_dir" else \
                "backend: {kind: torchrun, tp: N, dp: M}" if key == "parallel" else "the sweep (one per trial)"
            raise SpecError(f"run.{key}", f"set by the sweep; use {what}")
    _check_storage(spec.storage)

    # objectives and pruning
    metrics = [o.metric for o in spec.objectives]
    if len(set(metrics)) != len(metrics):
        raise SpecError("objectives", f"a metric is listed twice: {metrics}")
    if spec.multi_objective and spec.pruner.kind != "none":
        raise SpecError("pruner", f"{spec.pruner.kind!r} cannot be used with {len(spec.objectives)} objectives: "
                        "Optuna cannot prune multi-objective studies (Trial.report is not supported); set pruner: none")

    # sampler and budget
    if spec.is_grid and spec.n_trials is not None:
        raise SpecError("n_trials", "a grid runs every cell once; n_trials is for tpe, nsga2 and random "
                        "(use timeout to stop a grid early)")
    if not spec.is_grid and spec.n_trials is None and spec.timeout is None:
        raise SpecError("n_trials", f"sampler {spec.sampler.kind} needs n_trials, timeout or both")
    if not spec.is_grid and not spec.search:
        raise SpecError("search", f"sampler {spec.sampler.kind} needs a search space")
    if spec.sampler.n_startup_trials is not None and spec.sampler.kind != "tpe":
        raise SpecError("sampler.n_startup_trials", "only for kind: tpe")
    if spec.sampler.population_size is not None and spec.sampler.kind != "nsga2":
        raise SpecError("sampler.population_size", "only for kind: nsga2")
    if len(set(spec.seeds)) != len(spec.seeds):
        raise SpecError("seeds", f"a seed is listed twice: {spec.seeds}")

    # the fixed run
    try:
        RunConfig.model_validate(run_config_data(spec, {}, spec.seeds[0], None))
    except ValidationError as err:
        raise SpecError(*_path_message(err, "run")) from None

    # the search space
    for name, p in spec.search.items():
        _check_param(spec, name, p)
    if spec.is_grid:
        n_cells = math.prod(grid_count(p) for p in spec.search.values()) * len(spec.seeds)
        if n_cells > MAX_CELLS:
            raise SpecError("search", f"the grid has {n_cells} cells (values multiplied, times seeds), over {MAX_CELLS}; "
                            "search fewer values, or use sampler: tpe or random with n_trials")
        for cell in cells(spec):
            _check_config(spec, cell.params, "search")

    _check_backend(spec)
    if spec.probes is not None:
        _check_probes(spec.probes)


def _describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "no params"


def _check_config(spec: SweepSpec, params: dict[str, Any], at: str) -> None:
    """Raise at the searched field that makes ``params`` an invalid RunConfig (else at ``at``)."""
    from falstudy.config import RunConfig

    try:
        RunConfig.model_validate(run_config_data(spec, params, spec.seeds[0], None))
    except FalstudyError as err:  # set_dotted: a value where the run config has a section
        raise SpecError(at, str(err)) from None
    except ValidationError as err:
        path, message = _path_message(err)
        keys = spec.param_keys

        def related(name: str) -> bool:
            key = keys[name]
            return key == path or path.startswith(key + ".") or key.startswith(path + ".")

        name = next((n for n in params if related(n)), None)
        raise SpecError(f"search.{name}" if name else at,
                        f"{_describe(params)} gives an invalid run config: {path}: {message}") from None


def _check_param(spec: SweepSpec, name: str, p: Param) -> None:
    from falstudy.config import RunConfig, section_fields

    at = f"search.{name}"
    key = resolve_key(name)
    if key == "seed":
        raise SpecError(at, "list seeds under seeds:, not search:")
    if key.partition(".")[0] in SWEEP_OWNED:
        raise SpecError(at, "set by the sweep; it cannot be searched" +
                        (" (tp and dp come from backend:)" if key.startswith("parallel") else ""))
    section, _, field = key.partition(".")
    model_fields = RunConfig.model_fields
    known = section in model_fields and (
        not field or (isinstance(model_fields[section].annotation, type)
                      and issubclass(model_fields[section].annotation, BaseModel)
                      and field in model_fields[section].annotation.model_fields))
    if not known or field.count("."):
        raise SpecError(at, "not a run config field; use a dotted path such as model.n_layer or train.lr")
    if section_fields(key) is not None:
        raise SpecError(at, f"{key} is a section; search one of its fields, e.g. {key}.{section_fields(key)[0]}")
    if sum(resolve_key(n) == key for n in spec.search) > 1:
        raise SpecError(at, f"{key} is searched twice (under two names)")

    kind = param_type(p)
    if p.choices is not None:
        if p.low is not None or p.high is not None or p.step is not None or p.log:
            raise SpecError(at, "give either choices (a list) or low/high, not both")
        if kind != "categorical":
            raise SpecError(f"{at}.type", "choices make a categorical dimension; drop type or set type: categorical")
        if not p.choices:
            raise SpecError(at, "no values (an empty grid dimension); list at least one")
        for i, v in enumerate(p.choices):
            if not (v is None or isinstance(v, (bool, int, float, str))):
                raise SpecError(f"{at}.choices.{i}", f"values must be scalars (str, number, bool), got {type(v).__name__}")
        if len({json.dumps(v) for v in p.choices}) != len(p.choices):
            raise SpecError(at, f"a value is listed twice: {p.choices}")
        for v in p.choices:
            _check_config(spec, {name: v}, at)
        return
    if kind == "categorical":
        raise SpecError(f"{at}.choices", "a categorical dimension needs choices (a list)")
    for bound in ("low", "high"):
        if getattr(p, bound) is None:
            raise SpecError(f"{at}.{bound}", f"a {kind} range needs low and high (or a list of values)")
    if p.low > p.high:
        raise SpecError(f"{at}.low", f"low={p.low:g} is above high={p.high:g}")
    if p.log and p.low <= 0:
        raise SpecError(f"{at}.low", "a log range needs low > 0")
    if p.log and p.step is not None:
        raise SpecError(f"{at}.step", "step and log cannot be combined (Optuna)")
    if kind == "int" and not _int_like(p) and not p.log:
        raise SpecError(at, "an int range needs integer low, high and step")
    if spec.is_grid:
        if p.log:
            raise SpecError(f"{at}.log", "a grid cannot enumerate a log range; list the values instead")
        if kind == "float" and p.step is None:
            raise SpecError(f"{at}.step", "a grid needs a list of values or a step (a float range is continuous)")
        n = grid_count(p)
        if not n:
            raise SpecError(at, "no values (an empty grid dimension)")
        if n > MAX_CELLS:
            raise SpecError(at, f"{n} values, over the {MAX_CELLS} cells a grid may have; use a larger step")
        return
    for v in (p.low, p.high):  # both ends must make a valid run
        _check_config(spec, {name: int(v) if kind == "int" else v}, at)


def _check_storage(storage: str | None) -> None:
    if storage is None or "://" not in storage:
        return
    if not storage.startswith(("postgresql://", "postgresql+")):
        raise SpecError("storage", f"{storage.split('://')[0]}:// is not supported; use a journal file path "
                        "(one host) or a postgresql:// URL (many hosts); SQLite breaks under parallel workers")


def _check_backend(spec: SweepSpec) -> None:
    from falstudy.config import RunConfig
    from falstudy.parallel import check_tp
    from falstudy.train.loop import check_hooks

    backend = spec.backend
    if backend.kind == "local":
        for field in ("nproc", "tp", "dp"):
            if getattr(backend, field) != 1:
                raise SpecError(f"backend.{field}", f"{field} > 1 needs backend kind: torchrun")
        return
    if backend.nproc != backend.tp * backend.dp:
        raise SpecError("backend.nproc", f"nproc={backend.nproc} must equal tp x dp = {backend.tp * backend.dp}")
    # every run a trial could make must split over tp ranks (grids: every cell; else the fixed run)
    for cell in (cells(spec) if spec.is_grid else [None]):
        params = cell.params if cell else {}
        cfg = RunConfig.model_validate(run_config_data(spec, params, spec.seeds[0], None))
        for at, check in (("backend.tp", lambda: check_tp(cfg.model, backend.tp)),
                          ("run.train.grad_probe_every", lambda: check_hooks(cfg))):
            try:
                check()
            except FalstudyError as err:
                raise SpecError(at, f"{_describe(params)}: {err}") from None


def _check_probes(probes: Probes) -> None:
    if importlib.util.find_spec("falstudy.probe") is None:
        raise SpecError("probes", "the probe toolkit (falstudy.probe) is not in this checkout; remove probes: "
                        "or update falstudy")
    from falstudy.probe.runner import PROBE_NAMES

    for i, name in enumerate(probes.names):
        if name != "all" and name not in PROBE_NAMES:
            raise SpecError(f"probes.names.{i}", f"unknown probe {name!r}; known: {', '.join(PROBE_NAMES)}, all")
    for name in probes.options:
        if name not in PROBE_NAMES:
            raise SpecError(f"probes.options.{name}", f"unknown probe; known: {', '.join(PROBE_NAMES)}")
