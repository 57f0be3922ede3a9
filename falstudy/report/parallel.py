"""The systems side: tensor-parallel all-reduces per step, measured step times, communication
exposed and hidden behind compute, and the cost model's predictions by TP degree and interconnect.

Sources: the ``timings`` table (the CommMeter of tensor-parallel runs), the Parquet files of
``falstudy bench tp`` (``results/bench/tp_step.parquet`` and ``tp_projection.parquet``), and
``falstudy.parallel.costmodel`` itself (counts from each run's config; the projection when the
benchmark has not written it).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from falstudy.report.common import add_note, color, figure, order, runs_table
from falstudy.store.readonly import BENCH_HINTS, TABLE_HINTS, TP_BENCH, MissingTable, Results

if TYPE_CHECKING:
    import pandas
    from matplotlib.figure import Figure

TIMINGS_HINT = f"no timings table: {TABLE_HINTS['timings']}"
BENCH_HINT = f"no tp_step benchmark file: {BENCH_HINTS['tp_step']}"


# -- sources ---------------------------------------------------------------------------------
def timings_per_step(res: Results) -> "pandas.DataFrame":
    """Per run (slowest rank): steps, all-reduces per step by direction, step/comm/compute ms,
    and the all-reduce ms in flight and exposed per step (rows written before the meter told
    them apart count as synchronous: both = seconds)."""
    import pandas as pd

    res.require("timings")
    runs = "LEFT JOIN runs r USING (run_id)" if res.has("runs") else ""
    variant = "coalesce(r.variant, r.wiring, t.run_id)" if runs else "t.run_id"
    tp = "r.tp" if runs else "CAST(NULL AS BIGINT)"
    have = set(res.sql("SELECT * FROM timings LIMIT 0").columns)
    split = {c: f"coalesce(t.{c}, t.seconds)" if c in have else "t.seconds" for c in ("in_flight_seconds", "exposed_seconds")}
    df = res.sql(f"""
        SELECT t.run_id, {variant} AS variant, {tp} AS tp, t.rank, t.kind,
               sum(t.count) AS count, sum(t.seconds) AS seconds,
               sum({split["in_flight_seconds"]}) AS in_flight, sum({split["exposed_seconds"]}) AS exposed
        FROM timings t {runs} GROUP BY ALL""")
    if df.empty:
        raise MissingTable("timings rows", TABLE_HINTS["timings"])
    rows = []
    for (run_id, rank), g in df.groupby(["run_id", "rank"], dropna=False):
        kinds = g.set_index("kind")
        steps = float(kinds["count"].get("step", 0))
        if not steps:
            continue  # no step accounting in this interval: counts cannot be normalised
        reduces = [k for k in kinds.index if "all_reduce" in k]
        comm = float(kinds.loc[reduces, "seconds"].sum())
        step_s = float(kinds["seconds"].get("step", 0.0))
        tp = g["tp"].iloc[0]
        rows.append({
            "run_id": run_id, "variant": g["variant"].iloc[0], "rank": rank,
            "tp": int(tp) if pd.notna(tp) else int(df[df["run_id"] == run_id]["rank"].nunique()),
            "steps": steps, "fwd": kinds["count"].get("all_reduce_fwd", 0) / steps,
            "bwd": kinds["count"].get("all_reduce_bwd", 0) / steps,
            "step_ms": 1e3 * step_s / steps, "comm_ms": 1e3 * comm / steps,
            "compute_ms": 1e3 * float(kinds["seconds"].get("compute", step_s - comm)) / steps,
            "in_flight_ms": 1e3 * float(kinds.loc[reduces, "in_flight"].sum()) / steps,
            "exposed_ms": 1e3 * float(kinds.loc[reduces, "exposed"].sum()) / steps,
        })
    if not rows:
        raise MissingTable("step accounting in timings", "no `step` rows (the CommMeter's meter.step()) to divide by")
    per_rank = pd.DataFrame(rows)
    # a step lasts as long as its slowest rank
    return per_rank.sort_values("step_ms").groupby("run_id").tail(1).sort_values(["variant", "run_id"])


def counted(res: Results) -> "pandas.DataFrame":
    """All-reduces per training step by the model's f/g placement, for each variant's config."""
    import pandas as pd

    from falstudy.config import ModelConfig
    from falstudy.parallel.costmodel import allreduce_counts

    runs = runs_table(res)
    rows, seen = [], set()
    for run in runs.itertuples():
        try:
            model = json.loads(run.config_json)["model"]
            cfg = ModelConfig(**model)
        except Exception:  # an old or foreign config: nothing to count
            continue
        key = (run.label, cfg.n_layer)
        if key in seen:
            continue
        seen.add(key)
        c = allreduce_counts(cfg)
        rows.append({"variant": run.label, "n_layer": cfg.n_layer, "fwd": c["fwd"], "bwd": c["bwd"]})
    if not rows:
        raise MissingTable("model configs", "no run has a readable config_json to count collectives from")
    return pd.DataFrame(rows)


def collectives_data(res: Results) -> tuple["pandas.DataFrame", list[str]]:
    """Long table (source, variant, fwd, bwd) of counted and measured all-reduces per step,
    and notes on what is missing."""
    import pandas as pd

    parts, notes = [], []
    if res.has("runs"):
        c = counted(res)
        layers = "/".join(str(n) for n in sorted(c["n_layer"].unique()))
        parts.append(c.assign(source=f"counted: f/g placement (the runs' configs, L={layers})"))
    if res.has("timings"):
        t = timings_per_step(res)
        for tp, g in t.groupby("tp"):
            m = g.groupby("variant")[["fwd", "bwd"]].mean().reset_index()
            parts.append(m.assign(source=f"measured: timings table (TP={tp})"))
    else:
        notes.append(TIMINGS_HINT)
    if res.has_bench("tp_step"):
        b = res.bench("tp_step")
        b = b.groupby("wiring")[["allreduce_fwd", "allreduce_bwd", "tp", "n_layer"]].first().reset_index()
        for (tp, n_layer), g in b.groupby(["tp", "n_layer"]):
            parts.append(pd.DataFrame({"variant": g["wiring"], "fwd": g["allreduce_fwd"], "bwd": g["allreduce_bwd"],
                                       "source": f"measured: falstudy bench tp (TP={tp}, L={n_layer})"}))
    else:
        notes.append(BENCH_HINT)
    if not parts:
        raise MissingTable("collective counts", "no runs, no timings table and no tp_step benchmark: "
                           f"run a sweep (sweeps/bypass.yaml) and {TP_BENCH}")
    return pd.concat(parts, ignore_index=True)[["source", "variant", "fwd", "bwd"]], notes


def collectives_figure(res: Results) -> "Figure":
    import numpy as np

    data, notes = collectives_data(res)
    variants = order(data["variant"].unique())
    sources = list(dict.fromkeys(data["source"]))
    fig = figure(max(6.0, 1.3 * len(variants) * max(len(sources), 1) / 1.5 + 2.5), 4.6)
    ax = fig.subplots()
    width = 0.8 / len(sources)
    hatches = ["", "//", ".."]
    for k, source in enumerate(sources):
        sub = data[data["source"] == source].set_index("variant")
        xs = np.arange(len(variants)) - 0.4 + width * (k + 0.5)
        fwd = np.array([sub["fwd"].get(v, np.nan) for v in variants], dtype=float)
        bwd = np.array([sub["bwd"].get(v, np.nan) for v in variants], dtype=float)
        colors = [color(v) for v in variants]
        hatch = hatches[k % len(hatches)]
        ax.bar(xs, fwd, width * 0.9, color=colors, edgecolor="black", linewidth=0.6, hatch=hatch)
        ax.bar(xs, bwd, width * 0.9, bottom=fwd, color=colors, alpha=0.45, edgecolor="black", linewidth=0.6,
               hatch=hatch)
        for x, f, b in zip(xs, fwd, bwd):
            if np.isfinite(f):
                ax.text(x, f + b, f"{f:g}+{b:g}", ha="center", va="bottom", fontsize=8)
    from matplotlib.patches import Patch

    handles = [Patch(facecolor="white", edgecolor="black", hatch=hatches[k % len(hatches)], label=s)
               for k, s in enumerate(sources)]
    handles += [Patch(facecolor="#999999", edgecolor="black", label="forward (g) all-reduces: solid"),
                Patch(facecolor="#999999", alpha=0.45, edgecolor="black", label="backward (f) all-reduces: pale")]
    ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
    ax.set_xticks(range(len(variants)))
    ax.set_xticklabels(variants)
    ax.set_xlabel("variant")
    ax.set_ylabel("all-reduces per training step (count)")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title("Tensor-parallel all-reduces per training step (forward + backward)")
    ax.set_ylim(top=ax.get_ylim()[1] * 1.12)
    for note in notes:
        add_note(fig, note)
    return fig


# -- step times ------------------------------------------------------------------------------
def _bench_title(shape: str, r) -> str:
    """A panel title for one shape of the tp_step benchmark (``r``: one of its rows)."""
    return f"falstudy bench tp: '{shape}'\nTP={r['tp']}, L={r['n_layer']}, d={r['n_embd']}, T={r['seq_len']}, B={r['batch']}"


def step_times_data(res: Results) -> tuple[dict[str, "pandas.DataFrame"], list[str]]:
    """Panels of measured step times in ms: one per benchmark shape, one per TP degree of the
    timings table. Columns: variant, compute_ms, comm_ms, step_ms, predicted_ms (may be NaN)."""
    import numpy as np
    import pandas as pd

    panels: dict[str, pd.DataFrame] = {}
    notes: list[str] = []
    if res.has_bench("tp_step"):
        b = res.bench("tp_step")
        for shape, g in b.groupby("shape", sort=False):
            panels[_bench_title(shape, g.iloc[0])] = pd.DataFrame({
                "variant": g["wiring"], "step_ms": 1e3 * g["step_s"],
                "compute_ms": 1e3 * g["compute_only_s"],
                "comm_ms": 1e3 * (g["step_s"] - g["compute_only_s"]).clip(lower=0),
                "predicted_ms": 1e3 * g["predicted_s"] if "predicted_s" in g else np.nan})
    else:
        notes.append(BENCH_HINT)
    if res.has("timings"):
        t = timings_per_step(res)
        for tp, g in t.groupby("tp"):
            m = g.groupby("variant")[["step_ms", "compute_ms", "comm_ms"]].mean().reset_index()
            panels[f"timings table: TP={tp} runs\n(slowest rank, mean over runs)"] = m.assign(predicted_ms=np.nan)
    else:
        notes.append(TIMINGS_HINT)
    if not panels:
        raise MissingTable("measured step times", f"{TIMINGS_HINT}; {BENCH_HINT}")
    return panels, notes


def step_times_figure(res: Results) -> "Figure":
    import numpy as np

    panels, notes = step_times_data(res)
    fig = figure(4.8 * len(panels) + 0.4, 4.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, data) in zip(axes, panels.items()):
        variants = order(data["variant"])
        data = data.set_index("variant").loc[variants]
        xs = np.arange(len(variants))
        ax.bar(xs, data["compute_ms"], 0.6, color=[color(v) for v in variants], edgecolor="black", linewidth=0.6,
               label="compute")
        ax.bar(xs, data["comm_ms"], 0.6, bottom=data["compute_ms"], color=[color(v) for v in variants], alpha=0.4,
               edgecolor="black", linewidth=0.6, hatch="//", label="communication (in all-reduces)")
        if data["predicted_ms"].notna().any():
            ax.scatter(xs, data["predicted_ms"], marker="_", s=500, color="black", linewidths=2, zorder=3,
                       label="cost-model prediction")
        base = data["step_ms"].get("baseline")
        for x, v in zip(xs, variants):
            text = f"{data['step_ms'][v]:.1f} ms"
            if base and v != "baseline":
                text += f"\n{data['step_ms'][v] / base:.2f}× baseline"
            top = np.nanmax([data["step_ms"][v], data["predicted_ms"][v]])  # above the prediction's tick too
            ax.annotate(text, (x, top), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                        fontsize=8)
        ax.set_xticks(xs)
        ax.set_xticklabels(variants)
        ax.set_xlabel("variant (wiring)")
        ax.set_ylabel("time per training step (ms)")
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0, 1.25 * max(data["step_ms"].max(), np.nanmax(data["predicted_ms"].to_numpy(dtype=float),
                                                                    initial=0)))
    # below the first panel, where it hides no bar and no label
    axes[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, -0.16), ncol=2, frameon=False)
    fig.suptitle("Measured tensor-parallel step times: compute and communication")
    for note in notes:
        add_note(fig, note)
    return fig


# -- exposed and hidden communication -----------------------------------------------------------
def overlap_data(res: Results) -> tuple[dict[str, "pandas.DataFrame"], list[str]]:
    """Panels of all-reduce ms per step split into exposed (a rank waited) and hidden (in flight
    behind compute): one per benchmark shape (with the cost model's split), one per TP degree of
    the timings table. Columns: variant, exposed_ms, hidden_ms, predicted_exposed_ms,
    predicted_hidden_ms (NaN where there is no prediction)."""
    import numpy as np
    import pandas as pd

    panels: dict[str, pd.DataFrame] = {}
    notes: list[str] = []
    if res.has_bench("tp_step"):
        b = res.bench("tp_step")
        if {"comm_in_flight_s", "comm_exposed_s"} <= set(b.columns):
            for shape, g in b.groupby("shape", sort=False):
                pred = {"predicted_exposed_ms": 1e3 * g["predicted_exposed_s"], "predicted_hidden_ms": 1e3 * g["predicted_hidden_s"]} \
                    if {"predicted_exposed_s", "predicted_hidden_s"} <= set(g.columns) else {"predicted_exposed_ms": np.nan, "predicted_hidden_ms": np.nan}
                panels[_bench_title(shape, g.iloc[0])] = pd.DataFrame({
                           "variant": g["wiring"], "exposed_ms": 1e3 * g["comm_exposed_s"],
                           "hidden_ms": 1e3 * (g["comm_in_flight_s"] - g["comm_exposed_s"]).clip(lower=0), **pred})
        else:
            notes.append("the tp_step benchmark file predates in-flight/exposed accounting: rerun `falstudy bench tp`")
    else:
        notes.append(BENCH_HINT)
    if res.has("timings"):
        t = timings_per_step(res)
        for tp, g in t.groupby("tp"):
            m = g.groupby("variant")[["exposed_ms", "in_flight_ms"]].mean().reset_index()
            panels[f"timings table: TP={tp} runs\n(slowest rank, mean over runs)"] = pd.DataFrame({
                "variant": m["variant"], "exposed_ms": m["exposed_ms"],
                "hidden_ms": (m["in_flight_ms"] - m["exposed_ms"]).clip(lower=0),
                "predicted_exposed_ms": np.nan, "predicted_hidden_ms": np.nan})
    else:
        notes.append(TIMINGS_HINT)
    if not panels:
        raise MissingTable("in-flight and exposed communication", f"{TIMINGS_HINT}; {BENCH_HINT}")
    return panels, notes


def overlap_figure(res: Results) -> "Figure":
    import numpy as np

    panels, notes = overlap_data(res)
    fig = figure(4.8 * len(panels) + 0.4, 4.6)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, data) in zip(axes, panels.items()):
        variants = order(data["variant"])
        data = data.set_index("variant").loc[variants]
        xs = np.arange(len(variants))
        colors = [color(v) for v in variants]
        ax.bar(xs, data["exposed_ms"], 0.6, color=colors, edgecolor="black", linewidth=0.6, label="exposed (a rank waited)")
        ax.bar(xs, data["hidden_ms"], 0.6, bottom=data["exposed_ms"], color=colors, alpha=0.35, edgecolor="black",
               linewidth=0.6, hatch="//", label="hidden (in flight behind compute)")
        if data["predicted_exposed_ms"].notna().any():
            ax.scatter(xs, data["predicted_exposed_ms"], marker="_", s=500, color="black", linewidths=2, zorder=3,
                       label="cost model: exposed")
            ax.scatter(xs, data["predicted_exposed_ms"] + data["predicted_hidden_ms"], marker="_", s=500,
                       color="#777777", linewidths=2, zorder=3, label="cost model: in flight")
        for x, v in zip(xs, variants):
            total = data["exposed_ms"][v] + data["hidden_ms"][v]
            share = data["hidden_ms"][v] / total if total else 0.0
            ax.annotate(f"{share:.0%} hidden", (x, total), xytext=(0, 3), textcoords="offset points", ha="center",
                        va="bottom", fontsize=8)
        ax.set_xticks(xs)
        ax.set_xticklabels(variants)
        ax.set_xlabel("variant (wiring)")
        ax.set_ylabel("all-reduce time per training step (ms)")
        ax.set_title(title, fontsize=9)
        top = np.nanmax(np.r_[(data["exposed_ms"] + data["hidden_ms"]).to_numpy(dtype=float),
                              (data["predicted_exposed_ms"] + data["predicted_hidden_ms"]).to_numpy(dtype=float), 0.0])
        ax.set_ylim(0, 1.25 * top if top > 0 else 1.0)
    axes[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, -0.16), ncol=2, frameon=False)
    fig.suptitle("All-reduce time: exposed and hidden behind compute")
    for note in notes:
        add_note(fig, note)
    return fig


# -- cost model ------------------------------------------------------------------------------
def gpt2_projection() -> "pandas.DataFrame":
    """``overlap.wide_projection()`` as a DataFrame: the columns of ``falstudy bench tp``'s
    tp_projection.parquet (fal and parallel against baseline, and the ladder wirings with overlap)."""
    import pandas as pd

    from falstudy.parallel import overlap

    return pd.DataFrame(overlap.wide_projection())


def projection_data(res: Results) -> tuple["pandas.DataFrame", str]:
    """Predicted fal/baseline and parallel/baseline step time by shape, interconnect and TP
    degree: the benchmark's file if there is one, else computed here from the cost model."""
    if res.has_bench("tp_projection"):
        return res.bench("tp_projection"), f"from {res.bench_path('tp_projection')}"
    try:
        data = gpt2_projection()
    except Exception as err:  # the cost model's API moved: say so rather than fail the report
        raise MissingTable("cost-model projection", f"no tp_projection benchmark file and the cost model failed "
                           f"({type(err).__name__}: {err}); run {TP_BENCH}") from None
    return data, "computed by falstudy.parallel.costmodel (no tp_projection benchmark file)"


def cost_model_figure(res: Results) -> "Figure":
    data, source = projection_data(res)
    presets = list(dict.fromkeys(data["preset"]))
    fig = figure(4.6 * len(presets) + 0.6, 4.6)
    axes = fig.subplots(1, len(presets), squeeze=False, sharey=True)[0]
    shapes = list(dict.fromkeys(data["shape"]))
    projected = [(f"{w}_over_baseline", w) for w in ("fal", "parallel", "ladder", "fal_ladder") if f"{w}_over_baseline" in data]
    styles = {s: st for s, st in zip(shapes, [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D")] * 4)}
    names = {"pcie4": "PCIe 4.0 x16", "nvlink": "NVLink 3 (A100)", "infiniband": "HDR InfiniBand"}
    for ax, preset in zip(axes, presets):
        sub = data[data["preset"] == preset]
        for shape, g in sub.groupby("shape", sort=False):
            g = g.sort_values("tp")
            line, marker = styles[shape]
            for column, wiring in projected:
                ax.plot(g["tp"], g[column], linestyle=line, marker=marker, color=color(wiring), markersize=5)
                bad = g[~g["heads_divisible"].astype(bool)]
                ax.scatter(bad["tp"], bad[column], marker=marker, s=40, facecolors="white", edgecolors=color(wiring),
                           zorder=3)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(sub["tp"].unique()))
        ax.set_xticklabels([str(t) for t in sorted(sub["tp"].unique())])
        ax.set_xlabel("tensor-parallel degree (GPUs)")
        ax.set_title(f"{names.get(preset, preset)}")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=color(w), linewidth=2, label=w) for _, w in projected]
    handles += [Line2D([], [], color="#555555", linestyle=styles[s][0], marker=styles[s][1], label=s) for s in shapes]
    axes[0].set_ylabel("predicted step time / baseline's")
    axes[-1].legend(handles=handles, fontsize=8, loc="lower left")
    fig.suptitle(f"Cost model: step time of {', '.join(w for _, w in projected)} relative to baseline")
    add_note(fig, f"GPT-2 shapes, 8 × 1024 tokens per step, bf16, A100-class compute; {source}. "
                  "Hollow: n_head not divisible by TP.")
    return fig
