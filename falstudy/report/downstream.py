"""Downstream metrics per variant (the ``evals`` table, written by ``falstudy eval``): held-out
bits per byte and pair / choice accuracy, each run a dot, mean ± sd over seeds, and the
seed-paired difference to baseline with its 95% interval (paired t, ``falstudy.stats``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from falstudy.report.common import add_note, color, figure, order
from falstudy.store.readonly import MissingTable, Results

if TYPE_CHECKING:
    import pandas
    from matplotlib.figure import Figure

HINT = "run `falstudy eval RESULTS_DIR` (docs/eval.md), or a sweep with an evals: section"
# what each figure shows: (kinds, metrics)
HELDOUT = (("heldout",), ("bpb",))
ACCURACY = (("pairs", "choice", "lm_eval"), ("acc", "acc_norm"))


def eval_rows(res: Results, kinds=None, metrics=None) -> "pandas.DataFrame":
    """Evals rows at each run's latest evaluated step, with the run's variant and seed (completed
    runs only when the runs table is there)."""
    if not res.has("evals"):
        raise MissingTable("evals table", HINT)
    from falstudy.report.verdicts import SIZE_KEYS

    runs = "JOIN runs r ON r.run_id = e.run_id" if res.has("runs") else ""
    variant = "coalesce(r.variant, r.wiring, e.run_id)" if runs else "e.run_id"
    seed = "r.seed" if runs else "CAST(NULL AS BIGINT)"
    # runs pair on seed and learning rate within one size (shape and budget), as the verdicts do
    lr = "coalesce(r.lr, -1.0)" if runs else "-1.0"
    size = ("concat_ws('/', " + ", ".join(f"r.{k}" for k in SIZE_KEYS) + ")") if runs else "''"
    where = "WHERE r.status = 'completed'" if runs else ""
    df = res.sql(f"""
        WITH last AS (SELECT run_id, kind, task, metric, max(coalesce(step, -1)) AS s FROM evals
                      GROUP BY ALL)
        SELECT {variant} AS variant, {seed} AS seed, {lr} AS lr, {size} AS size, e.run_id, e.kind, e.task,
               e.metric, e.value, e.n, e.stderr
        FROM evals e JOIN last l ON e.run_id = l.run_id AND e.kind = l.kind AND e.task = l.task
             AND e.metric = l.metric AND coalesce(e.step, -1) = l.s {runs} {where}
        ORDER BY e.kind, e.task, variant, seed""")
    if kinds is not None:
        df = df[df["kind"].isin(kinds)]
    if metrics is not None:
        df = df[df["metric"].isin(metrics)]
    if df.empty:
        raise MissingTable(f"{'/'.join(kinds or ['evals'])} rows", HINT)
    return df


def summary_table(res: Results, kinds=None, metrics=None) -> "pandas.DataFrame":
    """Per task, metric, size and variant: runs, mean, sd, min, max; the difference to baseline
    over the pairs both have (same seed and learning rate; the difference of means where there is
    no pair) and its paired-t 95% interval and p-value."""
    import pandas as pd

    from falstudy import stats

    df = eval_rows(res, kinds, metrics)
    out = []
    for (kind, task, metric, size), sub in df.groupby(["kind", "task", "metric", "size"], sort=False):
        by_pair = sub.groupby(["variant", "seed", "lr"], dropna=False)["value"].mean()
        base = by_pair.get("baseline") if "baseline" in sub["variant"].values else None
        for variant in order(sub["variant"].unique()):
            vals = sub[sub["variant"] == variant]["value"]
            row = {"kind": kind, "task": task, "metric": metric, "size": size, "variant": variant,
                   "runs": len(vals), "mean": vals.mean(), "sd": vals.std() if len(vals) > 1 else 0.0,
                   "min": vals.min(), "max": vals.max()}
            if base is not None and variant != "baseline":
                mine = by_pair.get(variant)
                diffs = [mine[k] - base[k] for k in mine.index if k in base.index]
                row["vs_baseline"] = sum(diffs) / len(diffs) if diffs else row["mean"] - base.mean()
                row["pairs"] = len(diffs)
                if len(diffs) >= 2:
                    t = stats.paired_t(diffs)
                    row.update(vs_baseline_ci_lo=t.lo, vs_baseline_ci_hi=t.hi, vs_baseline_p=t.p)
            out.append(row)
    return pd.DataFrame(out)


def _figure(res: Results, what, xlabel: str, title: str, chance: float | None) -> "Figure":
    df = eval_rows(res, *what)
    panels = list(df.groupby(["task", "metric"], sort=False).groups)
    fig = figure(4.2 * min(len(panels), 3), 0.5 * df["variant"].nunique() + 2.0)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (task, metric) in zip(axes, panels):
        sub = df[(df["task"] == task) & (df["metric"] == metric)]
        shown = order(sub["variant"].unique())[::-1]
        for y, variant in enumerate(shown):
            vals = sub[sub["variant"] == variant]["value"]
            ax.scatter(vals, [y] * len(vals), color=color(variant), alpha=0.7, s=24, zorder=3, linewidths=0)
            ax.errorbar(vals.mean(), y, xerr=vals.std() if len(vals) > 1 else 0, fmt="D", color="black",
                        capsize=4, markersize=5, zorder=4)
        if chance is not None and (sub["kind"] == "pairs").all():  # a choice file's chance is 1/choices
            ax.axvline(chance, color="#999999", linestyle="--", linewidth=1)
        ax.set_yticks(range(len(shown)))
        ax.set_yticklabels(shown if ax is axes[0] else [])
        if ax is axes[0]:
            ax.set_ylabel("variant")
        ax.set_title(f"{task} ({metric})")
        ax.set_xlabel(xlabel)
    fig.suptitle(title)
    add_note(fig, "Dots: one run (seed); diamonds: mean ± sd over seeds. Word-order pairs are a weak proxy: local "
                  "character statistics tell many swaps apart, so above-chance accuracy says little about syntax.")
    return fig


def heldout_figure(res: Results) -> "Figure":
    return _figure(res, HELDOUT, "bits per byte; lower is better", "Held-out domains: bits per byte", None)


def heldout_table(res: Results) -> "pandas.DataFrame":
    return summary_table(res, *HELDOUT)


def accuracy_figure(res: Results) -> "Figure":
    return _figure(res, ACCURACY, "accuracy (dashed: chance for pairs)", "Minimal pairs and multiple choice", 0.5)


def accuracy_table(res: Results) -> "pandas.DataFrame":
    return summary_table(res, *ACCURACY)
