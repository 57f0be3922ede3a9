"""Training: ``falstudy.train.train(config, **overrides)`` runs one run into the results store."""

from falstudy.train.loop import RunResult, as_run_config, train

__all__ = ["RunResult", "as_run_config", "train"]
