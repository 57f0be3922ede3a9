"""``run_evals``: load a run's checkpoint and tokenizer, score the held-out domains, minimal pairs,
multiple-choice files and lm-eval tasks asked for, and return (and write) rows of the ``evals``
table (docs/store.md): run_id, step, kind, task, metric, value, n, stderr, extra_json.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from falstudy.errors import FalstudyError

from falstudy.eval.pairs import WORDSWAP

KINDS = ("heldout", "pairs", "choice", "lm_eval")


@dataclass
class Loaded:
    model: torch.nn.Module
    tokenizer: Any
    run_id: str
    step: int | None
    trained_on: str | None  # the corpus name in the tokenizer folder's meta.json
    run_dir: Path | None
    variant: str | None = None


@dataclass
class EvalResult:
    run_id: str
    variant: str | None
    rows: list[dict]
    notes: list[str]  # what was skipped for this run, and why


def load_run(source: str | Path, data: str | Path | None = None, device: str = "cpu") -> Loaded:
    """A run folder (holding checkpoint.pt) or a checkpoint file, with the tokenizer of ``data``
    (default: the run's ``data.path``)."""
    from falstudy.data.tokenizer import load_tokenizer
    from falstudy.models.checkpoint import load_checkpoint, read_checkpoint

    path = Path(source)
    ckpt = path / "checkpoint.pt" if path.is_dir() else path
    if not ckpt.is_file():
        raise FalstudyError(f"{path}: no checkpoint.pt; evaluate a trained run folder or a checkpoint file")
    model, cfg = load_checkpoint(path, map_location=device)
    step = read_checkpoint(ckpt, map_location="cpu").get("step")
    folder = Path(data) if data is not None else Path(cfg.data.path)
    if not (folder / "meta.json").is_file():
        raise FalstudyError(f"the run's tokenizer folder {folder} is not here (no meta.json): pass the corpus folder "
                            "it was trained on with --data (only its meta.json and tokenizer.json are read)")
    meta = json.loads((folder / "meta.json").read_text())
    run_id = cfg.run_id or (path.name if path.is_dir() else path.parent.name)
    return Loaded(model.eval(), load_tokenizer(folder), run_id, None if step is None else int(step),
                  meta.get("corpus"), path if path.is_dir() else None, cfg.variant or cfg.model.wiring)


def _row(loaded: Loaded, kind: str, task: str, metric: str, value: float, n: int, stderr: float | None = None,
         **extra: Any) -> dict:
    return {"run_id": loaded.run_id, "step": loaded.step, "kind": kind, "task": task, "metric": metric,
            "value": float(value), "n": int(n), "stderr": None if stderr is None else float(stderr),
            "extra_json": json.dumps(extra, sort_keys=True, default=str)}


def _pair_items(name: str, trained_on: str | None, n_pairs: int, seed: int) -> tuple[str, list[dict]] | str:
    """(task name, items) for a pair set, or the reason it is skipped for this run."""
    from falstudy.eval.heldout import domain_text, held_out_domains
    from falstudy.eval.pairs import read_pairs, wordswap_pairs

    if name.startswith(WORDSWAP):
        domain = name[len(WORDSWAP):]
        keep, skipped = held_out_domains([domain], trained_on)
        if not keep:
            return f"{name}: {skipped[0].split(': ', 1)[1]}"
        items = wordswap_pairs(domain_text(domain), n_pairs, seed)
        return (name, items) if items else f"{name}: {domain} has no sentence of 5 to 15 plain words to swap"
    return _task_name(name), read_pairs(name)


def _task_name(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).stem) or "items"


def check_sources(pairs: Iterable[str], choices: Iterable[str]) -> None:
    """Fail before any compute on a pair set or choice file that cannot be read."""
    from falstudy.data.sources import KNOWN_CORPORA
    from falstudy.eval.choice import read_choices
    from falstudy.eval.pairs import read_pairs

    for name in pairs:
        if name.startswith(WORDSWAP):
            if name[len(WORDSWAP):] not in KNOWN_CORPORA:
                raise FalstudyError(f"pair set {name!r}: no corpus {name[len(WORDSWAP):]!r}; "
                                    f"use wordswap-<{'|'.join(KNOWN_CORPORA)}> or a BLiMP-style JSONL file")
        else:
            read_pairs(name)
    for path in choices:
        read_choices(path)
    # a file's task name is its stem: two files of one kind with one stem would be stored as one task
    for kind, names in (("pair", [n for n in pairs if not n.startswith(WORDSWAP)]), ("choice", list(choices))):
        seen: dict[str, str] = {}
        for name in names:
            task = _task_name(name)
            if task in seen and Path(seen[task]).resolve() != Path(name).resolve():
                raise FalstudyError(f"{kind} files {seen[task]} and {name} would both be task {task!r}: rename one")
            seen[task] = name


def run_evals(
    source: str | Path,
    *,
    heldout: Iterable[str] = (),
    pairs: Iterable[str] = (),
    choices: Iterable[str] = (),
    lm_eval: Iterable[str] = (),
    include_path: str | None = None,
    limit: int | None = None,
    n_bytes: int = 65536,
    window: int = 512,
    n_pairs: int = 500,
    seed: int = 0,
    batch_size: int = 32,
    data: str | Path | None = None,
    device: str = "cpu",
    write: bool = True,
    progress: Callable[[str], None] | None = None,
    quiet: bool = True,
) -> EvalResult:
    """The rows of the evals table for one run, and notes on what was skipped. Rows are written to the run folder's
    spool as ``evals-<kind>-<task>[-step<N>].parquet`` (a rerun replaces them) when ``write``."""
    from tqdm.auto import tqdm

    from falstudy.eval import heldout as H
    from falstudy.eval.choice import read_choices, score_choices
    from falstudy.eval.pairs import score_pairs
    from falstudy.eval.score import Scorer

    heldout, pairs, choices, lm_eval = list(heldout), list(pairs), list(choices), list(lm_eval)
    check_sources(pairs, choices)
    loaded = load_run(source, data, device)
    scorer = Scorer(loaded.model, loaded.tokenizer, batch_size, device)
    domains, notes = H.held_out_domains(heldout, loaded.trained_on)
    jobs: list[tuple[str, str, Any]] = [("heldout", d, None) for d in domains]
    for name in pairs:
        got = _pair_items(name, loaded.trained_on, n_pairs, seed)
        if isinstance(got, str):
            notes.append(got)
        else:
            jobs.append(("pairs", got[0], got[1]))
    jobs += [("choice", _task_name(p), read_choices(p)) for p in choices]
    rows: list[dict] = []
    by_part: dict[str, list[dict]] = {}
    bar = tqdm(total=len(jobs) + (1 if lm_eval else 0), disable=quiet, desc=loaded.run_id, unit="task", leave=False)
    try:
        for kind, task, items in jobs:
            bar.set_postfix_str(task)
            if kind == "heldout":
                got = H.bits_per_byte(scorer, H.windows(H.domain_text(task), n_bytes, window))
                new = [_row(loaded, kind, task, "bpb", got["bpb"], got["n"], got["stderr"], bytes=got["bytes"],
                            tokens=got["tokens"], window=window),
                       _row(loaded, kind, task, "loss", got["loss"], got["n"], unit="nats/token"),
                       _row(loaded, kind, task, "bytes_per_token", got["bytes_per_token"], got["n"])]
            elif kind == "pairs":
                got = score_pairs(scorer, items)
                new = [_row(loaded, kind, task, "acc", got["acc"], got["n"], got["stderr"], chance=0.5)]
            else:
                got = score_choices(scorer, items)
                chance = sum(1 / len(it["choices"]) for it in items) / len(items)
                new = [_row(loaded, kind, task, "acc", got["acc"], got["n"], got["acc_stderr"], chance=chance),
                       _row(loaded, kind, task, "acc_norm", got["acc_norm"], got["n"], got["acc_norm_stderr"],
                            chance=chance)]
            by_part.setdefault(f"{kind}-{task}", []).extend(new)
            rows += new
            bar.update(1)
        if lm_eval:
            from falstudy.eval.lmeval import run_tasks

            bar.set_postfix_str("lm-eval")
            for r in run_tasks(scorer, lm_eval, include_path=include_path, limit=limit):
                new = _row(loaded, "lm_eval", r["task"], r["metric"], r["value"], r["n"], r["stderr"],
                           filter=r["filter"])
                by_part.setdefault(f"lm_eval-{_task_name(r['task'])}", []).append(new)
                rows.append(new)
            bar.update(1)
    finally:
        bar.close()
    if write and loaded.run_dir is not None and rows:
        from falstudy.store import RunSpool

        spool = RunSpool(loaded.run_dir)
        for part, part_rows in by_part.items():
            spool.write_table("evals", part_rows, part=part if loaded.step is None else f"{part}-step{loaded.step:06d}")
    if progress is not None:
        progress(summary_line(loaded.run_id, rows))
    return EvalResult(loaded.run_id, loaded.variant, rows, notes)


def summary_line(run_id: str, rows: list[dict]) -> str:
    shown = [f"{r['task']} {r['value']:.3f} {r['metric']}" for r in rows if r["metric"] in ("bpb", "acc")]
    return f"{run_id}: " + (", ".join(shown) or "no rows")
