"""The sweep spec, one name for its three parts (imported from here as before):

- ``falstudy.sweep.schema``: the YAML format as pydantic models (``SweepSpec`` and its sections),
  the metric, sampler and pruner names, and how a spec becomes one trial's RunConfig;
- ``falstudy.sweep.grid``: grid enumeration (``cells``, ``cell_run_id``);
- ``falstudy.sweep.checks``: ``load_spec``/``spec_from_dict`` and the whole-spec ``check``.
"""

from __future__ import annotations

from falstudy.sweep.checks import SpecError, check, load_spec, spec_from_dict
from falstudy.sweep.grid import Cell, cell_run_id, cells, grid_count, grid_values, param_type
from falstudy.sweep.schema import (
    MAX_CELLS,
    METRICS,
    PRUNERS,
    SAMPLERS,
    SWEEP_OWNED,
    Backend,
    Objective,
    Param,
    Probes,
    Pruner,
    Sampler,
    SweepSpec,
    resolve_key,
    run_config_data,
)

__all__ = [
    "MAX_CELLS", "METRICS", "PRUNERS", "SAMPLERS", "SWEEP_OWNED", "Backend", "Cell", "Objective", "Param",
    "Probes", "Pruner", "Sampler", "SpecError", "SweepSpec", "cell_run_id", "cells", "check", "grid_count",
    "grid_values", "load_spec", "param_type", "resolve_key", "run_config_data", "spec_from_dict",
]
