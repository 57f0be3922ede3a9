"""Comparing trained variants: loss curves with seed bands, the final validation loss and
perplexity with their spread, and for sweeps Optuna's parameter importance and Pareto front.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from falstudy.report.common import add_note, color, figure, order, palette, runs_table, seed_stats, seeds_text
from falstudy.store.readonly import MissingTable, Results

if TYPE_CHECKING:
    import optuna
    import pandas
    from matplotlib.figure import Figure

JOURNAL = "optuna.journal"
SPEC_ATTR = "falstudy_spec"  # the study's user attribute holding the sweep's objectives
UNITS = {"val_loss": "nats/token", "best_val_loss": "nats/token", "train_loss": "nats/token", "step_ms": "ms",
         "tokens_per_s": "tokens/s"}


def _completed(runs: "pandas.DataFrame") -> tuple["pandas.DataFrame", str]:
    done = runs[runs["status"] == "completed"]
    if len(done):
        left = len(runs) - len(done)
        return done, (f"{left} run(s) not completed (running, pruned, diverged, failed or killed) left out." if left else "")
    return runs, "No run has completed: showing every run, whatever its status."


# -- loss curves -----------------------------------------------------------------------------
def curves_data(res: Results) -> "pandas.DataFrame":
    """Per variant, split and step: mean, min and max of the loss over runs (seeds)."""
    res.require("runs", "metrics")
    df = res.sql("""
        SELECT coalesce(r.variant, r.wiring, r.run_id) AS variant, r.status, r.seed, m.run_id, m.step, m.split, m.value
        FROM metrics m JOIN runs r USING (run_id)
        WHERE m.name = 'loss' AND m.split IN ('train', 'val') AND isfinite(m.value)
        ORDER BY variant, m.run_id, m.split, m.step""")
    if df.empty:
        raise MissingTable("loss curves", "no 'loss' rows in metrics for any run; train with eval_interval > 0")
    done = df[df["status"] == "completed"]
    df = done if len(done) else df
    return seed_stats(df, ["variant", "split", "step"])


def curves_figure(res: Results) -> "Figure":
    data = curves_data(res)
    splits = [s for s in ("train", "val") if s in set(data["split"])]
    fig = figure(5.2 * len(splits) + 0.4, 4.4)
    axes = fig.subplots(1, len(splits), squeeze=False)[0]
    titles = {"train": "Training loss (logged batches)", "val": "Validation loss"}
    for ax, split in zip(axes, splits):
        sub = data[data["split"] == split]
        for variant in order(sub["variant"].unique()):
            v = sub[sub["variant"] == variant].sort_values("step")
            n = int(v["seeds"].max())
            ax.plot(v["step"], v["mean"], color=color(variant), label=f"{variant} ({seeds_text(n)})", linewidth=1.6)
            if n > 1:
                ax.fill_between(v["step"], v["min"], v["max"], color=color(variant), alpha=0.2, linewidth=0)
        # zoom past the first steps, where every model starts at ~ln(vocab) and squeezes the rest
        late = sub[sub["step"] >= 0.15 * sub["step"].max()]
        if len(late):
            low, high = late["min"].min(), late["max"].max()
            pad = 0.08 * (high - low or 1.0)
            ax.set_ylim(low - pad, high + pad)
        ax.set_xlim(0, data["step"].max())  # both panels on one step scale
        ax.set_xlabel("training step")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(titles[split])
    axes[-1].legend(title="variant")
    fig.suptitle("Loss curves by variant: mean over seeds, band = min to max")
    first = data[data["step"] == data["step"].min()]["mean"].max()
    add_note(fig, f"The y range fits the steps after the first 15%; earlier losses (up to {first:.2f} nats/token "
                  "at the first logged step) run off the top.")
    return fig


# -- final validation loss -------------------------------------------------------------------
def final_data(res: Results) -> tuple["pandas.DataFrame", str]:
    runs = runs_table(res)
    runs = runs[runs["final_val_loss"].notna()]
    if runs.empty:
        raise MissingTable("final validation loss", "no run has a final_val_loss yet (runs still going, or no eval)")
    runs, note = _completed(runs)
    return runs[["label", "run_id", "seed", "final_val_loss"]].rename(columns={"label": "variant"}), note


def final_table(res: Results) -> "pandas.DataFrame":
    """Per variant: runs, mean/sd/min/max final validation loss, mean and sd of perplexity
    (exp of each run's loss), the mean difference to baseline and, over the seeds both have,
    its paired-t 95% interval and p-value (``pairs``: how many). Sorted best first."""
    import numpy as np

    runs, _ = final_data(res)
    runs = runs.assign(ppl=np.exp(runs["final_val_loss"]))
    g = runs.groupby("variant")
    table = g["final_val_loss"].agg(runs="count", val_loss_mean="mean", val_loss_sd="std", val_loss_min="min",
                                    val_loss_max="max")
    table["ppl_mean"] = g["ppl"].mean()
    table["ppl_sd"] = g["ppl"].std()
    table[["val_loss_sd", "ppl_sd"]] = table[["val_loss_sd", "ppl_sd"]].fillna(0.0)
    if "baseline" in table.index:
        table["vs_baseline"] = table["val_loss_mean"] - table.loc["baseline", "val_loss_mean"]
        table = table.join(_paired_vs_baseline(runs), how="left")
    return table.sort_values("val_loss_mean").reset_index()


def _paired_vs_baseline(runs: "pandas.DataFrame") -> "pandas.DataFrame":
    """Seed-paired difference to baseline per variant: its 95% interval, p-value and pair count."""
    import pandas as pd

    from falstudy import stats

    if "seed" not in runs:
        return pd.DataFrame(columns=["pairs", "vs_baseline_ci_lo", "vs_baseline_ci_hi", "vs_baseline_p"])
    by_seed = runs.groupby(["variant", "seed"])["final_val_loss"].mean()  # a rerun seed counts once
    base = by_seed.get("baseline", pd.Series(dtype=float))
    out = {}
    for variant in runs["variant"].unique():
        mine = by_seed.get(variant, pd.Series(dtype=float))
        diffs = [mine[s] - base[s] for s in mine.index if s in base.index]
        if variant == "baseline" or len(diffs) < 2:
            out[variant] = {"pairs": len(diffs) if variant != "baseline" else 0}
            continue
        t = stats.paired_t(diffs)
        out[variant] = {"pairs": len(diffs), "vs_baseline_ci_lo": t.lo, "vs_baseline_ci_hi": t.hi, "vs_baseline_p": t.p}
    return pd.DataFrame.from_dict(out, orient="index")


def final_figure(res: Results) -> "Figure":
    import numpy as np

    runs, note = final_data(res)
    table = final_table(res)
    shown = list(table["variant"])[::-1]  # best at the top
    fig = figure(7.6, 0.55 * len(shown) + 2.2)
    ax = fig.subplots()
    for y, variant in enumerate(shown):
        row = table[table["variant"] == variant].iloc[0]
        dots = runs[runs["variant"] == variant]["final_val_loss"]
        ax.scatter(dots, [y] * len(dots), color=color(variant), alpha=0.7, s=26, zorder=3, linewidths=0)
        ax.errorbar(row["val_loss_mean"], y, xerr=row["val_loss_sd"], fmt="D", color="black", capsize=4, zorder=4,
                    markersize=5)
    rows = [table[table["variant"] == v].iloc[0] for v in shown]
    ax.set_yticks(range(len(shown)))
    ax.set_yticklabels([f"{v} (n={int(r['runs'])})" for v, r in zip(shown, rows)])
    ax.set_ylabel("variant (n = completed runs)")
    ax.set_ylim(-0.6, len(shown) - 0.4)
    right = ax.twinx()  # the numbers as tick labels on the right, where the layout leaves room for them
    right.set_ylim(ax.get_ylim())
    right.set_yticks(range(len(shown)))
    right.set_yticklabels([f"{r['val_loss_mean']:.3f} ± {r['val_loss_sd']:.3f}   ppl {r['ppl_mean']:.2f}" for r in rows],
                          fontsize=9)
    right.tick_params(length=0)
    right.grid(False)
    right.set_ylabel("mean ± sd (nats/token), mean perplexity", rotation=270, labelpad=14)
    low = min(runs["final_val_loss"].min(), (table["val_loss_mean"] - table["val_loss_sd"]).min())
    high = max(runs["final_val_loss"].max(), (table["val_loss_mean"] + table["val_loss_sd"]).max())
    pad = 0.08 * ((high - low) or 0.05)
    ax.set_xlim(low - pad, high + pad)
    ax.set_xlabel("final validation loss (nats/token); lower is better")
    top = ax.secondary_xaxis("top", functions=(np.exp, lambda p: np.log(np.maximum(p, 1e-12))))
    top.set_xlabel("perplexity")
    from matplotlib.lines import Line2D

    ax.legend(handles=[Line2D([], [], marker="o", linestyle="", color="#777777", label="one run (seed)"),
                       Line2D([], [], marker="D", linestyle="-", color="black", markersize=5, label="mean ± sd")],
              loc="best", fontsize=8)
    fig.suptitle("Final validation loss by variant: seeds (dots), mean ± sd (diamond)")
    if note:
        add_note(fig, note)
    return fig


# -- Optuna: importance and Pareto front ------------------------------------------------------
@dataclass
class StudyInfo:
    name: str
    trials: "pandas.DataFrame"  # the trials table rows of this study, with the run's variant
    objectives: list[str]  # names (the spec's metrics) or "objective 1", ...
    directions: list[str]  # minimize | maximize
    storage: Path | None  # the journal file, if there is one
    known: bool  # names and directions come from the study itself


def study_info(res: Results, study: str | None = None) -> StudyInfo:
    """The sweep's trials and, when its journal is in the results group, its objectives."""
    res.require("trials")
    trials = res.table("trials")
    if res.has("runs"):
        labels = runs_table(res)[["run_id", "label"]]
        trials = trials.merge(labels, on="run_id", how="left")
    else:
        trials["label"] = None
    names = list(dict.fromkeys(trials["study"]))
    name = study or (res.root.name if res.root.name in names else names[0])
    if name not in names:
        raise MissingTable(f"study {name!r}", f"the trials table has {', '.join(names)}")
    trials = trials[trials["study"] == name].copy()
    params = [json.loads(p) if isinstance(p, str) else {} for p in trials["params_json"]]
    trials["params"] = params
    trials["variant"] = [lab if isinstance(lab, str) else p.get("variant", "?") for lab, p in zip(trials["label"], params)]
    trials["values"] = [json.loads(v) if isinstance(v, str) else None for v in trials["values_json"]]
    width = max((len(v) for v in trials["values"] if v), default=1)
    objectives, directions, known = [f"objective {i + 1}" for i in range(width)], ["minimize"] * width, False
    journal = res.root / JOURNAL
    if journal.is_file():
        loaded = load_study(journal, name)
        spec = loaded.user_attrs.get(SPEC_ATTR) or {}
        objectives = [o.get("metric", f"objective {i + 1}") for i, o in enumerate(spec.get("objectives", []))] or objectives
        directions = [d.name.lower() for d in loaded.directions]
        known = True
    return StudyInfo(name, trials, objectives, directions, journal if journal.is_file() else None, known)


def _import_optuna() -> Any:
    import warnings

    with warnings.catch_warnings():  # tqdm's "IProgress not found" in notebooks without ipywidgets
        warnings.filterwarnings("ignore", message="IProgress not found")
        import optuna
    return optuna


def load_study(journal: Path, name: str) -> "optuna.Study":
    """Open a journal-file study for reading (Optuna only locks the file to write)."""
    optuna = _import_optuna()
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise MissingTable(f"study {name!r} in {journal}", "the journal holds other studies") from None


def importance_data(res: Results, study: str | None = None) -> "pandas.DataFrame":
    """Parameter importance (fANOVA) per objective."""
    import pandas as pd

    optuna = _import_optuna()

    info = study_info(res, study)
    if info.storage is None:
        raise MissingTable("Optuna study storage",
                           f"parameter importance needs the study itself and {res.root / JOURNAL} is not there "
                           "(a PostgreSQL study? load it with optuna.load_study and call "
                           "optuna.importance.get_param_importances)")
    loaded = load_study(info.storage, info.name)
    complete = [t for t in loaded.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(complete) < 2:
        raise MissingTable("parameter importance", f"{len(complete)} completed trial(s); importance needs at least 2")
    searched = sorted({p for t in complete for p in t.params})
    if len(searched) < 2:  # fANOVA's shares sum to 1: a lone parameter gets 1.0 whatever the data
        raise MissingTable("second searched parameter",
                           f"only {', '.join(searched) or 'no parameter'} was searched, so its importance is 1 by "
                           "construction; search two or more parameters (a `search:` with two keys) to rank them")
    rows = []
    for i, objective in enumerate(info.objectives):
        target = (lambda t, i=i: t.values[i]) if len(loaded.directions) > 1 else None
        # fANOVA (a variance decomposition over a random forest), seeded: the same numbers every time
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        try:
            scores = optuna.importance.get_param_importances(loaded, evaluator=evaluator, target=target)
        except (RuntimeError, ValueError) as err:  # e.g. no parameter varies
            raise MissingTable("parameter importance", f"Optuna cannot compute it: {err}") from None
        rows += [{"objective": objective, "param": p, "importance": s} for p, s in scores.items()]
    return pd.DataFrame(rows)


def importance_figure(res: Results, study: str | None = None) -> "Figure":
    data = importance_data(res, study)
    objectives = list(dict.fromkeys(data["objective"]))
    n_params = data["param"].nunique()
    fig = figure(4.6 * len(objectives) + 0.6, 0.5 * n_params + 2.2)
    axes = fig.subplots(1, len(objectives), squeeze=False)[0]
    for ax, objective in zip(axes, objectives):
        sub = data[data["objective"] == objective].sort_values("importance")
        ax.barh(sub["param"], sub["importance"], height=0.5, color=palette()[0])
        for y, value in enumerate(sub["importance"]):
            ax.text(value, y, f" {value:.2f}", va="center", fontsize=9)
        ax.set_xlim(0, 1.15)
        ax.set_ylim(-0.75, len(sub) - 0.25)  # a lone bar stays a bar, not a block
        ax.set_xlabel("importance (share of the objective's variance, fANOVA)")
        ax.set_title(f"objective: {objective}")
    axes[0].set_ylabel("searched parameter")
    fig.suptitle("Optuna parameter importance")
    return fig


def pareto_front(points: list[tuple[float, float]], directions: list[str]) -> list[int]:
    """Indices of the non-dominated points (two objectives)."""
    sign = [1.0 if d == "minimize" else -1.0 for d in directions[:2]]
    front = []
    for i, (a, b) in enumerate(points):
        pa, pb = sign[0] * a, sign[1] * b
        dominated = any(sign[0] * x <= pa and sign[1] * y <= pb and (sign[0] * x < pa or sign[1] * y < pb)
                        for j, (x, y) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def pareto_data(res: Results, study: str | None = None) -> tuple["pandas.DataFrame", StudyInfo]:
    info = study_info(res, study)
    done = info.trials[(info.trials["state"] == "COMPLETE") & info.trials["values"].notna()].copy()
    done = done[[len(v) >= 2 and all(isinstance(x, (int, float)) and math.isfinite(x) for x in v[:2])
                 for v in done["values"]]]
    if done.empty:
        raise MissingTable("Pareto front", "this is a single-objective study (or none of its trials completed); a "
                           "front needs two objectives, e.g. `falstudy sweep sweeps/pareto.yaml` (val loss vs step time)")
    done["x"] = [v[0] for v in done["values"]]
    done["y"] = [v[1] for v in done["values"]]
    front = pareto_front(list(zip(done["x"], done["y"])), info.directions)
    done["on_front"] = [i in set(front) for i in range(len(done))]
    return done, info


def _short_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in params.items() if k != "variant")


def pareto_figure(res: Results, study: str | None = None) -> "Figure":
    data, info = pareto_data(res, study)
    fig = figure(7.4, 5.0)
    ax = fig.subplots()
    for variant in order(data["variant"].unique()):
        sub = data[data["variant"] == variant]
        ax.scatter(sub["x"], sub["y"], color=color(variant), label=variant, s=36, alpha=0.8, linewidths=0)
    front = data[data["on_front"]].sort_values("x")
    ax.plot(front["x"], front["y"], drawstyle="steps-post", color="black", linewidth=1, label="Pareto front")
    ax.scatter(front["x"], front["y"], facecolors="none", edgecolors="black", s=90, linewidths=1.2)
    for row in front.itertuples():
        text = _short_params(row.params)
        if text:
            ax.annotate(text, (row.x, row.y), xytext=(5, 5), textcoords="offset points", fontsize=8)
    names = [f"{o} ({UNITS[o]})" if o in UNITS else o for o in info.objectives]
    arrows = {"minimize": "lower is better", "maximize": "higher is better"}
    ax.set_xlabel(f"{names[0]}; {arrows[info.directions[0]]}")
    ax.set_ylabel(f"{names[1]}; {arrows[info.directions[1]]}")
    ax.set_title(f"Pareto front of study {info.name!r}: {len(front)} of {len(data)} completed trials")
    ax.legend(title="variant", fontsize=8)
    if not info.known:
        add_note(fig, f"No {JOURNAL} here: objective names unknown, both assumed minimised.")
    if len(info.objectives) > 2:
        add_note(fig, "Only the first two objectives are drawn.")
    return fig


# -- sizing: loss against training compute ---------------------------------------------------------
def sizing_data(res: Results) -> "pandas.DataFrame":
    """Completed runs with their training compute: FLOPs ≈ 6 (N + L·T·d) per token (N: parameters
    without embeddings; L·T·d: attention scores, Kaplan et al. 2020) times the tokens trained."""
    runs, _ = _completed(runs_table(res))
    runs = runs.dropna(subset=["final_val_loss", "n_params", "n_layer", "n_embd", "seq_len", "steps", "batch_size"])
    if runs["n_embd"].nunique() < 2 or runs["steps"].nunique() < 2:
        raise MissingTable("sizing runs", "the loss-vs-compute figure needs runs at 2+ widths and 2+ step counts "
                                          "(sweeps/sizing.yaml)")
    runs = runs.assign(tokens=runs["steps"] * runs["batch_size"] * runs["seq_len"])
    per_token = 6 * (runs["n_params"] + runs["n_layer"] * runs["seq_len"] * runs["n_embd"])
    return runs.assign(flops=per_token * runs["tokens"])


def sizing_figure(res: Results) -> "Figure":
    data = sizing_data(res)
    fig = figure(7.4, 4.6)
    ax = fig.subplots()
    markers = dict(zip(sorted(data["lr"].unique()), "osD^v<>"))
    widths = sorted(data["n_embd"].unique())
    by_width = dict(zip(widths, palette()))
    for width in widths:
        sub = data[data["n_embd"] == width]
        best = sub.loc[sub.groupby("steps")["final_val_loss"].idxmin()].sort_values("flops")
        ax.plot(best["flops"], best["final_val_loss"], color=by_width[width], linewidth=1.6,
                label=f"d = {int(width)} ({sub['n_params'].iloc[0] / 1e6:.2f}M), best lr per budget")
        for lr, m in markers.items():
            pts = sub[sub["lr"] == lr]
            ax.scatter(pts["flops"], pts["final_val_loss"], marker=m, color=by_width[width], s=30, alpha=0.75,
                       linewidths=0)
    for lr, m in markers.items():
        ax.scatter([], [], marker=m, color="#555555", label=f"lr {lr:g}")
    ax.set_xscale("log")
    ax.set_xlabel("training compute (FLOPs, ≈ 6 (N + L·T·d) × tokens; log scale)")
    ax.set_ylabel("final validation loss (nats/token)")
    ax.legend(fontsize=8)
    ax.set_title(f"Loss against training compute ({seeds_text(data['seed'].nunique())}, one run per point)")
    fig.suptitle("Sizing: which width and budget reach the learning regime")
    add_note(fig, "Each point a completed run; lines join each width's best learning rate at each step count. "
                  "Points at equal compute compare widths at a fixed budget; compute is not wall-clock time on a CPU, "
                  "where small widths run fewer FLOPs per second (docs/sweeps.md).")
    return fig
