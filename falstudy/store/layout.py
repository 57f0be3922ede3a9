"""Where results live on disk, in one place (the trainer, the sweep and the CLI call it):

    <results_dir>/<name>/                    a results group: falstudy.duckdb, optuna.journal, sweep/
    <results_dir>/<name>/runs/<run_id>/      one run's spool folder (falstudy.store.spool names
                                             its files: runs.parquet, metrics-<step>.parquet, ...)
    <results_dir>/<name>/runs/<run_id>/checkpoint.pt

Nothing here touches the disk except ``find_run`` (which looks).
"""

from __future__ import annotations

from pathlib import Path

RUNS_DIR = "runs"  # the folder of a group that holds its runs
CHECKPOINT = "checkpoint.pt"  # a run's checkpoint, in its run folder


def group_dir(results_dir: str | Path, name: str) -> Path:
    """``<results_dir>/<name>/``: a results group."""
    return Path(results_dir) / name


def runs_dir(results_dir: str | Path, name: str) -> Path:
    """``<results_dir>/<name>/runs/``: where the group's run folders are."""
    return group_dir(results_dir, name) / RUNS_DIR


def run_dir(results_dir: str | Path, name: str, run_id: str) -> Path:
    """``<results_dir>/<name>/runs/<run_id>/``: one run's spool folder."""
    return runs_dir(results_dir, name) / run_id


def run_dir_of(cfg) -> Path:
    """The run folder of a RunConfig (its results_dir, name and run_id; run_id must be set)."""
    return run_dir(cfg.results_dir, cfg.name, cfg.run_id)


def is_run_dir(path: str | Path) -> bool:
    """Is ``path`` a folder laid out as ``<group>/runs/<run_id>``?"""
    path = Path(path)
    return path.is_dir() and path.parent.name == RUNS_DIR


def group_of(run_folder: str | Path) -> Path:
    """The results group a run folder belongs to (``<group>/runs/<run_id>`` -> ``<group>``)."""
    return Path(run_folder).parent.parent


def find_run(groups: list[Path], run_id: str) -> list[Path]:
    """The folders of run ``run_id`` in each of ``groups`` that has one."""
    return [g / RUNS_DIR / run_id for g in groups if (g / RUNS_DIR / run_id).is_dir()]
