"""Sweeps: a YAML spec -> an Optuna study whose trials each train one run in a subprocess.

    from falstudy.sweep import load_spec, run_sweep, plan
    spec = load_spec("sweeps/bypass.yaml")       # validated; FalstudyError names the bad field
    plan("sweeps/bypass.yaml")                   # what `falstudy sweep --dry-run` prints
    report = run_sweep("sweeps/bypass.yaml", workers=2)

Modules: spec (the YAML format: schema, grid and checks, re-exported), study (storage, sampler, pruner, lock, queue), worker (ask ->
run -> tell), trial (inside the trial subprocess), contract (what those two pass each other,
and the trials' user attributes), process (helpers they share), reap (dead RUNNING trials),
records (the ``trials`` table), progress (live view), driver (the command), cli (``register(app)``).
Nothing heavy is imported here; optuna loads inside the functions that use it.
"""

from __future__ import annotations

_LAZY = {
    "SweepSpec": ("falstudy.sweep.spec", "SweepSpec"),
    "load_spec": ("falstudy.sweep.spec", "load_spec"),
    "spec_from_dict": ("falstudy.sweep.spec", "spec_from_dict"),
    "cells": ("falstudy.sweep.spec", "cells"),
    "run_sweep": ("falstudy.sweep.driver", "run_sweep"),
    "plan": ("falstudy.sweep.driver", "plan"),
    "open_study": ("falstudy.sweep.study", "open_study"),
    "storage_url": ("falstudy.sweep.study", "storage_url"),
    "reap": ("falstudy.sweep.reap", "reap"),
    "export_trials": ("falstudy.sweep.records", "export_trials"),
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'falstudy.sweep' has no attribute {name!r}")
