"""Loading a sweep spec and checking it as a whole: ``load_spec`` reads the YAML, pydantic checks
its structure (``falstudy.sweep.schema``), ``check`` its meaning. Every error is one line naming
the file and the YAML path of the field."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from falstudy.errors import FalstudyError
from falstudy.names import BadName, check_name
from falstudy.sweep.grid import int_like, cells, grid_count, param_type
from falstudy.sweep.schema import MAX_CELLS, SWEEP_OWNED, Param, Probes, SweepSpec, resolve_key, run_config_data


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
    if kind == "int" and not int_like(p) and not p.log:
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
    from falstudy.probe.runner import PROBE_NAMES

    for i, name in enumerate(probes.names):
        if name != "all" and name not in PROBE_NAMES:
            raise SpecError(f"probes.names.{i}", f"unknown probe {name!r}; known: {', '.join(PROBE_NAMES)}, all")
    for name in probes.options:
        if name not in PROBE_NAMES:
            raise SpecError(f"probes.options.{name}", f"unknown probe; known: {', '.join(PROBE_NAMES)}")
