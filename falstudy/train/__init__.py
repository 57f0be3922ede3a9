"""Training: ``falstudy.train(config, **overrides)`` runs one run into the results store."""

import sys
import types

from falstudy.train.loop import RunResult, as_run_config, train

__all__ = ["RunResult", "as_run_config", "train"]


class _CallableModule(types.ModuleType):
    """Importing this subpackage makes ``falstudy.train`` the module, not the function that the
    top-level API promises; letting the module be called keeps ``falstudy.train(...)`` working."""

    def __call__(self, *args, **kwargs) -> RunResult:
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
