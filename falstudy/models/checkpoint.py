"""Checkpoints: model + optimizer + RNG state + the resolved run config, in one file.

Loaded with ``weights_only=True`` (a pickle can run code): the file holds only tensors and
plain Python values. Written to a temp name and renamed, so a kill never leaves half a file.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from falstudy.atomic import atomic_write
from falstudy.config import ModelConfig, RunConfig, validate
from falstudy.errors import FalstudyError
from falstudy.models.gpt import GPT
from falstudy.store.layout import CHECKPOINT


def build_model(cfg: ModelConfig | RunConfig) -> GPT:
    return GPT(cfg.model if isinstance(cfg, RunConfig) else cfg)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    path = Path(path)
    with atomic_write(path) as fh:
        torch.save(state, fh)
    return path


def torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` and torch's warnings about odd files silenced
    (a corrupt file is reported by the caller, in one line)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location=map_location, weights_only=True)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():  # a run folder
        path = path / CHECKPOINT
    if not path.is_file():
        raise FalstudyError(f"checkpoint {path} not found (train a run first, or pass a run folder)")
    try:
        state = torch_load(path, map_location)
    except Exception as err:  # truncated, not a torch file, or holds arbitrary pickles
        raise FalstudyError(
            f"checkpoint {path} is corrupt or not a falstudy checkpoint ({type(err).__name__}); "
            "retrain the run or pass another file"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise FalstudyError(f"checkpoint {path} is not a falstudy checkpoint (no model/config entries)")
    return state


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[GPT, RunConfig]:
    """The trained model (eval mode) and the run config that produced it."""
    state = read_checkpoint(path, map_location)
    cfg = validate(RunConfig, state["config"], f"{path} (config)")
    model = GPT(cfg.model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise FalstudyError(f"checkpoint {path} does not match its config: {str(err).splitlines()[0]}") from None
    return model.to(map_location).eval(), cfg
