"""Grid enumeration: the values of each search dimension, the cells (params x seed) and their
stable run ids. The spec has been checked (``falstudy.sweep.checks``) before a grid is made."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from falstudy.sweep.schema import Param, SweepSpec


@dataclass(frozen=True)
class Cell:
    """One grid cell (params x seed): one trial, one run."""

    index: int
    params: dict[str, Any]
    seed: int
    run_id: str


def grid_values(name: str, p: Param) -> list[Any]:
    """The values a grid enumerates for one dimension (check() has refused the rest)."""
    if p.choices is not None:
        return list(p.choices)
    if p.type == "int" or (p.type is None and int_like(p)):
        step = int(p.step or 1)
        return list(range(int(p.low), int(p.high) + 1, step))
    n = int(math.floor((p.high - p.low) / p.step + 1e-9)) + 1
    return [round(p.low + i * p.step, 12) for i in range(n)]


def grid_count(p: Param) -> int:
    """How many values ``grid_values`` gives, without making them (a range can be huge)."""
    if p.choices is not None:
        return len(p.choices)
    if p.type == "int" or (p.type is None and int_like(p)):
        return max(0, (int(p.high) - int(p.low)) // int(p.step or 1) + 1)
    return max(0, int(math.floor((p.high - p.low) / p.step + 1e-9)) + 1)


def int_like(p: Param) -> bool:
    return all(v is None or float(v).is_integer() for v in (p.low, p.high, p.step)) and not p.log


def param_type(p: Param) -> str:
    if p.type:
        return p.type
    if p.choices is not None:
        return "categorical"
    return "int" if int_like(p) else "float"


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
