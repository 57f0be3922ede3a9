"""What runs inside a trial's own process: ``python -m falstudy.sweep.trial PAYLOAD.json``.

The worker writes the payload (the resolved run config, the study to report to, the objectives,
the probes) and reads back ``result_path``: the run's status, the objective values, the error
(both files: ``falstudy.sweep.contract``).
Training reports the validation loss at every eval to Optuna (single-objective studies) and
stops as "pruned" when the pruner says so. A crash here fails one trial, never the sweep.

The process dies with its worker (PR_SET_PDEATHSIG, set by the worker before exec), so a
killed worker leaves no orphan still writing into a run that --resume will continue.

Under a torchrun backend every rank runs this module: all of them train, rank 0 alone talks to
Optuna, computes the objectives, runs the probes and writes the result; each rank dies with
torchrun, as torchrun dies with the worker.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

from falstudy.store.spool import RunSpool
from falstudy.sweep.contract import TrialPayload, TrialResult
from falstudy.sweep.process import die_with_parent, rank


def spool_metrics(run_dir: Path):
    """All metric rows of a run from its spool (covers runs resumed from a checkpoint)."""
    import pandas as pd
    import pyarrow.parquet as pq

    files = RunSpool(run_dir).chunks("metrics")
    if not files:
        return pd.DataFrame(columns=["step", "split", "name", "value"])
    return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)


def run_row(run_dir: Path) -> dict[str, Any] | None:
    import pyarrow.parquet as pq

    path = RunSpool(run_dir).path("runs")
    if not path.is_file():
        return None
    rows = pq.read_table(path).to_pylist()
    return rows[0] if rows else None


def objective_values(run_dir: Path, metrics: list[str]) -> tuple[list[float] | None, str | None]:
    """The objective values of a finished run, or (None, why not)."""
    df = spool_metrics(run_dir)

    def series(split: str, name: str):
        return df[(df["split"] == split) & (df["name"] == name)].sort_values("step")["value"]

    values = []
    for metric in metrics:
        if metric in ("val_loss", "best_val_loss"):
            s = series("val", "loss")
            v = (s.iloc[-1] if metric == "val_loss" else s.min()) if len(s) else None
        elif metric == "train_loss":
            s = series("train", "loss")
            v = s.iloc[-1] if len(s) else None
        else:  # step_ms, tokens_per_s: the median is robust to the intervals that hold an eval
            s = series("train", metric)
            v = s.median() if len(s) else None
        if v is None or not math.isfinite(float(v)):
            return None, f"objective {metric} is {'missing' if v is None else v} for this run"
        values.append(float(v))
    return values, None


def _pruning_callback(payload: TrialPayload):
    """on_eval for the trainer: report each eval's loss; True when the pruner says stop."""
    if not payload.report or rank() != 0:
        return None
    import optuna

    from falstudy.sweep.spec import Pruner
    from falstudy.sweep.study import build_pruner, make_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=payload.study, storage=make_storage(payload.storage),
                              sampler=optuna.samplers.RandomSampler(),
                              pruner=build_pruner(Pruner(**payload.pruner)))
    trial = optuna.Trial(study, payload.trial_id)
    prune = bool(payload.prune)

    def on_eval(step: int, val_loss: float) -> bool:
        if not math.isfinite(val_loss):
            return False  # the trainer stops it as diverged
        trial.report(val_loss, step)
        return prune and step > 0 and trial.should_prune()

    return on_eval


def lost_peer(err: BaseException) -> bool:
    """Under torchrun: did a collective fail because another rank went away?"""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not isinstance(err, RuntimeError):
        return False
    import torch.distributed as dist

    if isinstance(err, (getattr(dist, "DistNetworkError", ()), getattr(dist, "DistBackendError", ()))):
        return True
    text = str(err)
    return any(k in text for k in ("gloo", "NCCL", "nccl")) and \
        any(k in text for k in ("Connection reset", "Connection closed", "closed by peer", "Broken pipe", "timed out"))


def run(payload: TrialPayload) -> TrialResult:
    from falstudy.errors import FalstudyError
    from falstudy.store import layout
    from falstudy.train import as_run_config
    from falstudy.train import train as train_run

    t0 = time.time()
    cfg = as_run_config(payload.config)
    run_dir = layout.run_dir_of(cfg)
    out = TrialResult(status="running", run_id=cfg.run_id, run_dir=str(run_dir))  # every return sets the status

    previous = run_row(run_dir)
    if previous and previous.get("status") == "completed" and previous.get("final_step") == cfg.train.steps:
        # trained before its worker died (e.g. during probes): never retrain a finished run
        status, error = "completed", None
        out.reused = True
    else:
        try:
            result = train_run(cfg, quiet=True, resume=True, ingest=False, on_eval=_pruning_callback(payload))
        except KeyboardInterrupt:
            return replace(out, status="killed", error="interrupted (SIGTERM/SIGINT)")
        except FalstudyError as err:
            return replace(out, status="failed", error=str(err))
        except Exception as err:
            if not lost_peer(err):
                raise
            # another rank died (killed, OOM): this one's collective failed; --resume re-runs it
            return replace(out, status="killed", error=f"lost a peer rank: {str(err).splitlines()[0][:300]}")
        status = result.status
        error = (run_row(run_dir) or {}).get("error") if status not in ("completed", "pruned") else None
    if rank() != 0:  # rank 0 reports for the trial
        return replace(out, status=status)
    out = replace(out, status=status, error=error, final_step=(run_row(run_dir) or {}).get("final_step"))
    if status != "completed":
        return out

    values, why = objective_values(run_dir, payload.objectives)
    if values is None:
        return replace(out, status="failed", error=why)
    out.values = values
    out.train_s = time.time() - t0

    probes = payload.probes
    if probes:
        t1 = time.time()
        try:
            from falstudy.probe import run_probes

            run_probes(run_dir, probes["names"], probes["tokens"], probes["batch_size"],
                       options=probes.get("options") or None, quiet=True)
        except KeyboardInterrupt:
            return replace(out, status="killed", error="interrupted during probes (SIGTERM/SIGINT)")
        except Exception as err:  # the run and its objectives stand; the probes are reported apart
            traceback.print_exc()
            out.probe_error = f"{type(err).__name__}: {err}".splitlines()[0]
        out.probe_s = time.time() - t1
    evals = payload.evals
    if evals:  # downstream evaluation (falstudy.eval); a failure is reported like a probe's
        try:
            from falstudy.eval import run_evals

            run_evals(run_dir, **evals)
        except KeyboardInterrupt:
            return replace(out, status="killed", error="interrupted during evals (SIGTERM/SIGINT)")
        except Exception as err:
            traceback.print_exc()
            out.probe_error = "; ".join(filter(None, [out.probe_error, f"evals: {type(err).__name__}: {err}".splitlines()[0]]))
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    payload = TrialPayload.read(args[0])
    if "RANK" in os.environ:  # under torchrun: its agent is the parent; follow it if it dies
        die_with_parent(signal.SIGTERM)
    elif payload.parent_pid and os.getppid() != payload.parent_pid:
        return 1  # the worker died before this process started: nobody would read the result

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        result = run(payload)
    except KeyboardInterrupt:
        result = TrialResult(status="killed", error="interrupted (SIGTERM/SIGINT)")
    except Exception as err:
        traceback.print_exc()
        result = TrialResult(status="failed", error=f"{type(err).__name__}: {err}".splitlines()[0])
    if rank() != 0:
        return 0  # rank 0 reports; a non-zero exit here would make torchrun stop it mid-report
    result.write(payload.result_path)
    print(json.dumps(result.to_json(), default=str), flush=True)
    return 0 if result.status in ("completed", "pruned") else 3


if __name__ == "__main__":
    sys.exit(main())
