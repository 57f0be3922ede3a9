"""A small results store for the report and notebook tests, made by the real writers.

``build_full(root)`` trains 2 variants x 2 seeds of a tiny GPT for real (``falstudy.train``, with
the trainer's gradient hook), runs the probes the figures read on each (``run_probes``), records
them as a 2-objective Optuna study in a journal file and exports its trials with the sweep's writer,
adds ``evals`` rows scored by falstudy.eval's Scorer on the trained models, adds two
tensor-parallel runs with ``timings`` rows shaped like ``CommMeter.rows()``, writes the
benchmark files of bench/tp_step.py beside the group, and ingests. About 10 s here.

``build_partial(root, full)`` copies only the runs and metrics spool files: a group with no
probes, trials, timings, journal or benchmark files. Both are cached per pytest session.

    root/full/results/fx/{runs/..., sweep/..., optuna.journal, falstudy.duckdb}
    root/full/results/bench/{tp_step,tp_projection}.parquet
    root/partial/results/partial/{runs/<id>/{runs,metrics-*}.parquet, falstudy.duckdb}
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

VARIANTS = ("baseline", "fal")
SEEDS = (0, 1)
LR = {0: 3e-3, 1: 1e-2}  # a second searched parameter, so importance has two to rank
MODEL = {"n_layer": 3, "n_head": 2, "n_embd": 16, "block_size": 16}
TRAIN = {"steps": 30, "batch_size": 4, "warmup_steps": 2, "eval_interval": 10, "eval_batches": 1,
         "log_interval": 5, "checkpoint_interval": 30, "grad_probe_every": 10, "threads": 1}
VOCAB = 48
PROBES = "cka,grads,attn_removal,bypass"  # what the figures read (linear and logit_lens take ~5 s a model)


def make_corpus(folder: Path) -> Path:
    """Tokens with a learnable bigram structure (next = 3 * prev + 1 + noise mod V)."""
    import numpy as np

    from falstudy.data.shards import write_split

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ids = np.empty(8000, dtype=np.int64)
    ids[0] = 0
    noise = rng.integers(0, 3, size=len(ids))
    for i in range(1, len(ids)):
        ids[i] = (3 * ids[i - 1] + 1 + noise[i]) % VOCAB
    n_train = write_split(folder, "train", ids[:6000], "uint16")
    n_val = write_split(folder, "val", ids[6000:], "uint16")
    (folder / "meta.json").write_text(json.dumps({"vocab_size": VOCAB, "dtype": "uint16", "n_train": n_train,
                                                  "n_val": n_val}))
    return folder


def _train_and_probe(results: Path, corpus: Path) -> dict[str, dict]:
    import falstudy
    from falstudy.probe import run_probes

    runs = {}
    for seed in SEEDS:
        for variant in VARIANTS:
            run_id = f"{variant}-s{seed}"
            config = {"name": "fx", "run_id": run_id, "results_dir": str(results), "variant": variant, "seed": seed,
                      "data": {"path": str(corpus)}, "model": dict(MODEL), "train": {**TRAIN, "lr": LR[seed]}}
            result = falstudy.train(config, quiet=True, ingest=False)
            assert result.status == "completed", result
            run_probes(result.run_dir, PROBES, tokens=128, batch_size=4, quiet=True)
            runs[run_id] = {"variant": variant, "seed": seed, "lr": LR[seed], "val_loss": result.final_val_loss,
                            "run_dir": result.run_dir}
    return runs


def _study(group: Path, runs: dict[str, dict]) -> None:
    """A 2-objective study (val_loss, step_ms) in the group's journal, and its trials table."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.storages.journal import JournalFileBackend

    from falstudy.sweep.records import export_trials

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(group / "optuna.journal")))
    study = optuna.create_study(study_name="fx", storage=storage, directions=["minimize", "minimize"])
    study.set_user_attr("falstudy_spec", {"objectives": [{"metric": "val_loss", "direction": None},
                                                         {"metric": "step_ms", "direction": "minimize"}]})
    dists = {"variant": CategoricalDistribution(list(VARIANTS)), "train.lr": FloatDistribution(1e-3, 3e-2, log=True)}
    for run_id, run in runs.items():
        step_ms = _median_step_ms(run["run_dir"])
        study.add_trial(optuna.trial.create_trial(
            params={"variant": run["variant"], "train.lr": run["lr"]}, distributions=dists,
            values=[run["val_loss"], step_ms],
            user_attrs={"run_id": run_id, "seed": run["seed"], "kind": "grid", "status": "completed",
                        "worker_host": "fixture", "worker_pid": 1}))
    study.add_trial(optuna.trial.create_trial(  # one failed trial, as sweeps have
        params={"variant": "fal", "train.lr": 3e-2}, distributions=dists, state=optuna.trial.TrialState.FAIL,
        user_attrs={"run_id": "fal-s9", "seed": 9, "kind": "grid", "error": "diverged at step 3"}))
    export_trials(study, group)


def _median_step_ms(run_dir: Path) -> float:
    import pandas as pd

    frames = [pd.read_parquet(p) for p in sorted(run_dir.glob("metrics-*.parquet"))]
    df = pd.concat(frames)
    return float(df[df["name"] == "step_ms"]["value"].median())


def _tp_runs(group: Path) -> None:
    """Two TP=2 runs with timings rows as CommMeter.rows() gives them (2 ranks, 2 intervals)."""
    import pyarrow.parquet as pq

    from falstudy.config import ModelConfig
    from falstudy.parallel.costmodel import allreduce_counts
    from falstudy.store import RunSpool

    template = pq.read_table(group / "runs" / "baseline-s0" / "runs.parquet").to_pylist()[0]
    for variant, step_s in (("baseline", 0.050), ("fal", 0.041)):
        run_id = f"{variant}-tp2-s0"
        config = json.loads(template["config_json"])
        config["model"]["wiring"] = variant
        counts = allreduce_counts(ModelConfig(**config["model"]))
        spool = RunSpool(group / "runs" / run_id)
        spool.write_table("runs", [{**template, "run_id": run_id, "variant": variant, "wiring": variant, "tp": 2,
                                    "dp": 1, "final_val_loss": None, "config_json": json.dumps(config)}])
        nbytes = 4 * TRAIN["batch_size"] * MODEL["block_size"] * MODEL["n_embd"]
        for step in (10, 20):
            rows = []
            for rank in (0, 1):
                comm = 0.0
                for kind, n in (("all_reduce_fwd", counts["fwd"]), ("all_reduce_bwd", counts["bwd"])):
                    seconds = 10 * n * 0.0015
                    comm += seconds
                    rows.append({"run_id": run_id, "step": step, "rank": rank, "kind": kind, "count": 10 * n,
                                 "bytes": 10 * n * nbytes, "seconds": seconds})
                    if variant == "fal":  # baseline's rows are as the meter wrote them before it split in flight/exposed
                        rows[-1].update(in_flight_seconds=seconds, exposed_seconds=seconds)
                total = 10 * (step_s + 0.002 * rank)
                rows.append({"run_id": run_id, "step": step, "rank": rank, "kind": "compute", "count": 10, "bytes": 0,
                             "seconds": max(total - comm, 0.0)})
                rows.append({"run_id": run_id, "step": step, "rank": rank, "kind": "step", "count": 10, "bytes": 0,
                             "seconds": total})
            spool.write_table("timings", rows, part=step)


def _evals(runs: dict[str, dict]) -> None:
    """evals rows as `falstudy eval` writes them, scored by its Scorer on the trained models: a
    held-out token stream with another rule (next = 5 * prev + 2 mod V; one token taken as one
    byte) and word-order-like pairs (a true stretch against one with two adjacent ids swapped)."""
    from types import SimpleNamespace

    import numpy as np

    from falstudy.eval.pairs import accuracy
    from falstudy.eval.score import Scorer
    from falstudy.models.checkpoint import load_checkpoint
    from falstudy.store import RunSpool

    rng = np.random.default_rng(1)
    streams = []
    for _ in range(8):
        ids = [int(rng.integers(VOCAB))]
        for _ in range(24):
            ids.append((5 * ids[-1] + 2) % VOCAB)
        streams.append(ids)
    for run_id, run in runs.items():
        model, _ = load_checkpoint(run["run_dir"])
        scorer = Scorer(model, SimpleNamespace(vocab_size=VOCAB, separator=""), batch_size=4)
        scores = scorer.score_ids([(s[:1], s[1:]) for s in streams])
        nll, n = -sum(x.logprob for x in scores), sum(x.n_tokens for x in scores)
        good = [(s[:1], s[1:9]) for s in streams]
        bad = [(s[:1], s[1:4] + [s[5], s[4]] + s[6:9]) for s in streams]
        lp = [x.logprob for x in scorer.score_ids(good + bad)]
        acc, se = accuracy([g >= b for g, b in zip(lp[:8], lp[8:])])
        base = {"run_id": run_id, "step": TRAIN["steps"], "n": len(streams), "extra_json": "{}"}
        spool = RunSpool(run["run_dir"])
        spool.write_table("evals", [{**base, "kind": "heldout", "task": "rule5", "metric": "bpb",
                                     "value": nll / np.log(2) / n, "stderr": None}], part="heldout-rule5")
        spool.write_table("evals", [{**base, "kind": "pairs", "task": "swaps", "metric": "acc", "value": acc,
                                     "stderr": se}], part="pairs-swaps")


def _bench(folder: Path) -> None:
    """bench/tp_step.py's two files, with its columns (measurements made up, projection real)."""
    from falstudy.report.parallel import gpt2_projection
    from falstudy.store import write_parquet

    rows = []
    for shape, (d, t, b, base_ms) in {"comm-heavy": (64, 32, 2, 47.0), "compute-heavy": (384, 128, 4, 273.0)}.items():
        for wiring, ratio, (fwd, bwd) in (("baseline", 1.0, (8, 8)), ("parallel", 0.7, (4, 4)), ("fal", 0.85, (5, 6)),
                                          ("ladder", 0.9, (8, 8))):
            step = base_ms * ratio / 1e3
            hidden = 0.1 * step if wiring == "ladder" else 0.0  # ladder: a forward all-reduce behind compute
            rows.append({"shape": shape, "wiring": wiring, "tp": 2, "batch": b, "n_layer": 4, "n_embd": d, "seq_len": t,
                         "step_s": step, "compute_only_s": 0.6 * step, "comm_share": 0.4, "allreduce_fwd": fwd,
                         "allreduce_bwd": bwd, "bytes_per_allreduce": b * t * d * 4, "predicted_s": 0.9 * step,
                         "predicted_comm_s": 0.3 * step, "alpha_s": 1.6e-3, "beta_s_per_byte": 1.2e-9, "rounds": 8,
                         "steps_per_round": 3, "ratio_measured": ratio, "ratio_predicted": ratio,
                         "prediction_error": -0.1, "comm_in_flight_s": 0.4 * step + hidden, "comm_exposed_s": 0.4 * step,
                         "predicted_exposed_s": 0.3 * step, "predicted_hidden_s": hidden})
    write_parquet(folder / "tp_step.parquet", rows, table="tp_step")
    write_parquet(folder / "tp_projection.parquet", gpt2_projection(), table="tp_projection")


def build_full(root: Path) -> Path:
    """The complete fixture group; returns ``root/results/fx``."""
    from falstudy.store import ingest

    results = root / "results"
    corpus = make_corpus(root / "corpus")
    runs = _train_and_probe(results, corpus)
    group = results / "fx"
    _study(group, runs)
    _evals(runs)
    _tp_runs(group)
    _bench(results / "bench")
    ingest(group)
    return group


def build_partial(root: Path, full: Path) -> Path:
    """Runs and metrics only (no probes, trials, timings, journal or benchmark files)."""
    from falstudy.store import ingest

    group = root / "results" / "partial"
    for src in (full / "runs" / f"{v}-s{s}" for s in SEEDS for v in VARIANTS):
        # with the folder's manifest: the ingester loads only files listed there
        for path in [src / "runs.parquet", *sorted(src.glob("metrics-*.parquet")), src / ".manifest.json"]:
            dest = group / "runs" / src.name / path.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
    ingest(group)
    return group


def stores(tmp_path_factory) -> tuple[Path, Path]:
    """(full, partial), built once per pytest session (both test files share them)."""
    base = tmp_path_factory.getbasetemp() / "falstudy_report_fixture"
    full, partial = base / "full" / "results" / "fx", base / "partial" / "results" / "partial"
    if not (full / "falstudy.duckdb").is_file():
        shutil.rmtree(base, ignore_errors=True)
        build_full(base / "full")
    if not (partial / "falstudy.duckdb").is_file():
        build_partial(base / "partial", full)
    return full, partial
