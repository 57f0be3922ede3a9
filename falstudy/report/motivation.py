"""The paper's motivating analyses from the ``probes`` table (docs/probes.md): CKA heatmaps,
gradient magnitude per layer, attention removal (the primacy effect), and bypassing or
substituting the MHA→MLP connection at inference. Baseline and fal side by side by default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from falstudy.report.common import (FOCUS, add_note, color, figure, order, palette, pick, probe_rows, seed_stats,
                                    seeds_text)
from falstudy.store.readonly import Results

if TYPE_CHECKING:
    import pandas
    from matplotlib.figure import Figure

CKA_FAMILIES = {  # site pair: (title, row axis, column axis)
    "attn_out|attn_out": ("MHA output vs MHA output", "MHA output of layer i", "MHA output of layer j"),
    "mlp_in|mlp_in": ("MLP input vs MLP input", "MLP input of layer i", "MLP input of layer j"),
    "attn_out|mlp_in": ("MHA output vs MLP input", "MHA output of layer i", "MLP input of layer j"),
}
BYPASS_CONDITIONS = {  # condition: legend label
    "bypass": "cut: MLP reads LN(x_i)",
    "ln_plus_norm": "substitute: LN(x_i) + N(a_0)",
    "ln_sum": "substitute: LN(x_i + a_0)",
}
LOSS_UNIT = "nats/token"


# -- CKA -------------------------------------------------------------------------------------
def cka_data(res: Results, variants: Iterable[str] | None = FOCUS) -> "pandas.DataFrame":
    """Mean CKA over seeds per (variant, site pair, layer, layer_b)."""
    df = probe_rows(res, "cka", metrics=["cka"], sites=list(CKA_FAMILIES))
    df = df[df["variant"].isin(pick(df["variant"], variants))]
    return seed_stats(df, ["variant", "site", "layer", "layer_b"])


def cka_figure(res: Results, variants: Iterable[str] | None = FOCUS) -> "Figure":
    """Rows: variants; columns: the three site-pair families; cells: mean debiased CKA."""
    import numpy as np

    data = cka_data(res, variants)
    shown = order(data["variant"].unique())
    families = [f for f in CKA_FAMILIES if f in set(data["site"])]
    n_layer = int(max(data["layer"].max(), data["layer_b"].max())) + 1
    fig = figure(3.4 * len(families) + 1.2, 3.1 * len(shown) + 0.6)
    axes = np.atleast_2d(fig.subplots(len(shown), len(families), squeeze=False))
    image = None
    for r, variant in enumerate(shown):
        for c, family in enumerate(families):
            ax = axes[r, c]
            sub = data[(data["variant"] == variant) & (data["site"] == family)]
            grid = np.full((n_layer, n_layer), np.nan)
            for row in sub.itertuples():
                grid[int(row.layer), int(row.layer_b)] = row.mean
            image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", origin="upper")
            ax.grid(False)
            title, ylabel, xlabel = CKA_FAMILIES[family]
            n = int(sub["seeds"].max()) if len(sub) else 0
            ax.set_title(f"{variant}: {title}\n({seeds_text(n)})" if n else f"{variant}: {title}\n(no rows)")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.set_xticks(range(n_layer))
            ax.set_yticks(range(n_layer))
            spread = np.full((n_layer, n_layer), np.nan)
            for row in sub.itertuples():
                spread[int(row.layer), int(row.layer_b)] = row.std
            if n_layer <= 8:  # numbers stay legible up to 8 x 8
                for (i, j), value in np.ndenumerate(grid):
                    if np.isfinite(value):
                        sd = f"\n±{spread[i, j]:.2f}" if n > 1 and np.isfinite(spread[i, j]) else ""
                        ax.text(j, i, f"{value:.2f}{sd}", ha="center", va="center", fontsize=7 if sd else 8,
                                color="black" if value > 0.6 else "white")
    bar = fig.colorbar(image, ax=axes, shrink=0.8)
    bar.set_label("debiased linear CKA (0 = unrelated, 1 = same up to rotation and scale)")
    fig.suptitle("Representational similarity (CKA) of MHA outputs and MLP inputs, layer × layer")
    add_note(fig, "Layers are 0-based (layer 0 = the paper's block 1). Position 0 excluded; cells: mean ±1 sd "
                  "over seeds.")
    return fig


# -- gradients -------------------------------------------------------------------------------
GRAD_PANELS = {  # metric: (panel title, y label)
    "raw": ("Raw: ‖∂L/∂a_i‖", "‖∂L/∂a_i‖ (nats per unit of activation)"),
    "grad_x_act": ("Scale-free: Σ|∂L/∂a_i · a_i|", "Σ over tokens |∂L/∂a_i · a_i| (nats)"),
}


def grads_data(res: Results, variants: Iterable[str] | None = FOCUS) -> "pandas.DataFrame":
    """Per variant, layer and measure (``raw``: ‖∂L/∂a_i‖, per token when recorded;
    ``grad_x_act``: the scale-free attribution) at each run's latest probe, over seeds."""
    df = probe_rows(res, "grads", metrics=["grad_norm_per_token", "grad_norm", "grad_x_act"], sites=["attn_out"])
    raw = "grad_norm_per_token" if (df["metric"] == "grad_norm_per_token").any() else "grad_norm"
    df = df[df["metric"].isin([raw, "grad_x_act"])].copy()
    probed = df[~df["_file"].fillna("").str.contains("hook")]  # the checkpoint probe, not the trainer's hook
    df = probed if len(probed) else df
    df = df[df["variant"].isin(pick(df["variant"], variants))]
    df["measure"] = df["metric"].where(df["metric"] == "grad_x_act", "raw")
    out = seed_stats(df, ["variant", "measure", "layer"])
    out["metric"] = [raw if m == "raw" else m for m in out["measure"]]
    out["source"] = "checkpoint" if len(probed) else "hook"  # the caption says which
    return out


def grads_training_data(res: Results, metric: str, variants: Iterable[str] | None = FOCUS) -> "pandas.DataFrame":
    """The trainer's gradient hook (``train.grad_probe_every``): per variant, layer and step,
    the mean over seeds. Empty when no run had the hook on."""
    runs = "LEFT JOIN runs r USING (run_id)" if res.has("runs") else ""
    variant = "coalesce(r.variant, r.wiring, p.run_id)" if runs else "p.run_id"
    df = res.sql(f"""SELECT {variant} AS variant, p.run_id, p.step, p.layer, p.value FROM probes p {runs}
                     WHERE p.probe = 'grads' AND p.site = 'attn_out' AND p.metric = ? AND p._file LIKE '%hook%'""",
                 [metric])
    df = df[df["variant"].isin(pick(df["variant"], variants))] if len(df) else df
    if df.empty or df["step"].nunique() < 2:
        return df.iloc[0:0]
    return seed_stats(df, ["variant", "layer", "step"])


def grads_figure(res: Results, variants: Iterable[str] | None = FOCUS) -> "Figure":
    data = grads_data(res, variants)
    raw_metric = data[data["measure"] == "raw"]["metric"].iloc[0]
    measures = [m for m in GRAD_PANELS if m in set(data["measure"])]
    training = grads_training_data(res, raw_metric, variants)
    panels = len(measures) + (0 if training.empty else 1)
    fig = figure(5.2 * panels + 0.6, 4.3)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    unit = "mean per token" if raw_metric == "grad_norm_per_token" else "whole batch"
    for ax, measure in zip(axes, measures):
        sub_all = data[data["measure"] == measure]
        for variant in order(sub_all["variant"].unique()):
            sub = sub_all[sub_all["variant"] == variant].sort_values("layer")
            # a log axis keeps the later layers readable beside layer 0; error bars clipped at the floor
            low = (sub["mean"] - sub["std"]).clip(lower=sub["mean"] * 0.05)
            ax.errorbar(sub["layer"], sub["mean"], yerr=[sub["mean"] - low, sub["std"]], marker="o", capsize=3,
                        color=color(variant), label=f"{variant} ({seeds_text(sub['seeds'].max())})")
        ax.set_yscale("log")
        ax.set_xticks(sorted(sub_all["layer"].unique()))
        ax.set_xlabel("layer i (0-based)")
        title, ylabel = GRAD_PANELS[measure]
        ax.set_title(title + (f", {unit}" if measure == "raw" else ""))
        ax.set_ylabel(ylabel + " (log scale)")
        ax.legend(title="variant")
    if not training.empty:
        from matplotlib.lines import Line2D

        ax = axes[-1]
        markers = "osd^v<>p*h"
        layers = sorted(training["layer"].unique())
        for variant in order(training["variant"].unique()):
            for layer in layers:
                sub = training[(training["variant"] == variant) & (training["layer"] == layer)].sort_values("step")
                ax.plot(sub["step"], sub["mean"], color=color(variant), marker=markers[int(layer) % len(markers)],
                        linewidth=2.2 if layer == 0 else 1.0, markersize=4)
        handles = [Line2D([], [], color=color(v), label=v) for v in order(training["variant"].unique())]
        handles += [Line2D([], [], color="#555555", marker=markers[int(i) % len(markers)], linewidth=2.2 if i == 0 else 1.0,
                           label=f"layer {int(i)}") for i in layers]
        ax.set_yscale("log")
        ax.legend(handles=handles, fontsize=8, ncol=2, loc="best", handlelength=1.8, columnspacing=1.0)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("training step")
        ax.set_ylabel(f"{GRAD_PANELS['raw'][1]} (log scale)")
        ax.set_title("Raw, during training (trainer's hook)")
    fig.suptitle("Gradient magnitude at each layer's MHA output a_i")
    where = ("End of training, on validation batches" if (data["source"] == "checkpoint").all() else
             "At each run's last hooked step, on that training batch (no checkpoint probe was run)")
    add_note(fig, f"{where}; bars ±1 sd over seeds. Caveat: the stream entering "
                  "block 0 is much smaller than later ones, and a norm's Jacobian scales as 1/scale, so the raw "
                  "gradient at layer 0 is large partly for that reason; the scale-free measure (the first-order "
                  "loss change from removing a_i) does not have this confound.")
    return fig


# -- attention removal -----------------------------------------------------------------------
REMOVAL_MODES = {"zero": "attention output zeroed (a_i = 0)", "mean": "attention output mean-ablated (a_i = its mean)"}


def primacy_data(res: Results, variants: Iterable[str] | None = FOCUS) -> "pandas.DataFrame":
    """Δ loss when one layer's attention is removed: mean and sd over seeds per variant, series,
    metric and layer (series: see ``primacy_rows``)."""
    return seed_stats(primacy_rows(res, variants), ["variant", "series", "metric", "layer"])


def primacy_rows(res: Results, variants: Iterable[str] | None = FOCUS) -> "pandas.DataFrame":
    """Per-seed Δ loss rows. On models with a substitute signal (fal) two series: removed from
    the stream only (``<mode>_stream``: like for like with the baseline) and everywhere (the
    stream and N_f(a_0))."""
    metrics = [f"{m}{kind}.delta_loss" for m in REMOVAL_MODES for kind in ("", "_stream")]
    df = probe_rows(res, "attn_removal", metrics=metrics)
    df = df[df["variant"].isin(pick(df["variant"], variants))].copy()
    condition = df["metric"].str.replace(".delta_loss", "", regex=False)
    df["mode"] = condition.str.replace("_stream", "", regex=False)
    has_stream = set(df[condition.str.endswith("_stream")]["variant"])
    df["series"] = [
        v if v not in has_stream else f"{v}: {'stream only' if c.endswith('_stream') else 'everywhere'}"
        for v, c in zip(df["variant"], condition)
    ]
    df["group"] = df["layer"].astype(int)
    return df


def primacy_figure(res: Results, variants: Iterable[str] | None = FOCUS) -> "Figure":
    df = primacy_rows(res, variants)
    modes = [m for m in REMOVAL_MODES if m in set(df["mode"])]
    variants_shown = order(df["variant"].unique())
    # per variant: stream only (the baseline's intervention) first, then everywhere
    series = sorted(df["series"].unique(), key=lambda s: (variants_shown.index(s.split(":")[0]), s.endswith("everywhere")))
    colors = {}
    for name in series:
        variant = name.split(":")[0]
        colors[name] = color(variant) if not name.endswith("everywhere") else _lighter(color(variant))
    layers = sorted(df["group"].unique())
    fig = figure(4.4 * len(modes) + 0.8, 4.4)
    axes = fig.subplots(1, len(modes), squeeze=False, sharey=True)[0]
    for ax, mode in zip(axes, modes):
        raw = df[df["mode"] == mode]
        stats = seed_stats(raw, ["series", "group"])
        counts = stats.groupby("series")["seeds"].max()
        labels = {v: f"{v} ({seeds_text(counts.get(v, 0))})" for v in series}
        _grouped_bars(ax, stats, layers, series, labels, colors, raw, key="series")
        ax.set_xticklabels([str(g) for g in layers])
        ax.set_xlabel("layer whose attention is removed (0-based)")
        ax.set_title(REMOVAL_MODES[mode])
    axes[0].set_ylabel(f"Δ validation loss ({LOSS_UNIT})")
    axes[0].legend(title="variant: removed from")
    fig.suptitle("Primacy effect: loss increase when one layer's attention is removed")
    note = "One layer at a time, on a trained model; bars: mean ±1 sd over seeds, dots: seeds."
    if any(":" in s for s in series):
        note += ("\nOn fal, a_0 also makes the substitute N_f(a_0) that later MLPs read: 'stream only' removes a_i "
                 "from the residual stream and keeps N_f(a_0) (compare this with baseline); 'everywhere' removes both.")
    add_note(fig, note)
    return fig


def _lighter(hex_color: str, amount: float = 0.55) -> str:
    rgb = [int(hex_color[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{int(c + (255 - c) * amount):02x}" for c in rgb)


def _grouped_bars(ax, data: "pandas.DataFrame", groups: list, series: list[str], labels: dict, colors: dict,
                  raw: "pandas.DataFrame | None" = None, key: str = "variant") -> None:
    """Bars at x = group position, one per series, with ±sd error bars and seed dots."""
    import numpy as np

    width = 0.8 / max(len(series), 1)
    for k, name in enumerate(series):
        sub = data[data[key] == name].set_index("group")
        xs = np.arange(len(groups)) - 0.4 + width * (k + 0.5)
        means = [sub["mean"].get(g, np.nan) for g in groups]
        stds = [sub["std"].get(g, 0.0) for g in groups]
        ax.bar(xs, means, width * 0.92, yerr=stds, capsize=2, color=colors[name], label=labels[name],
               error_kw={"elinewidth": 0.8})
        if raw is not None:
            dots = raw[raw[key] == name]
            for x, g in zip(xs, groups):
                vals = dots[dots["group"] == g]["value"]
                ax.scatter([x] * len(vals), vals, s=8, color="black", zorder=3, linewidths=0)
        for x, mean in zip(xs, means):  # say why a slot is empty: not measured, or about zero
            if not np.isfinite(mean) or abs(mean) < 0.01 * np.nanmax(np.abs(data["mean"]), initial=0):
                ax.text(x, 0, " n/a" if not np.isfinite(mean) else " ≈0", rotation=90, ha="center", va="bottom",
                        fontsize=7, color="#666666")
    ax.set_xticks(range(len(groups)))
    ax.axhline(0, color="black", linewidth=0.8)


# -- bypass and substitution -----------------------------------------------------------------
def bypass_data(res: Results, variants: Iterable[str] | None = FOCUS) -> "pandas.DataFrame":
    """Δ loss per condition over seeds: one layer at a time, layers ≥ 1 at once (where cut and
    substitutes rewrite the same MLPs), and every layer at once (the cut only)."""
    metrics = [f"{c}{scope}.delta_loss" for c in BYPASS_CONDITIONS for scope in ("", "_all", "_rest")]
    df = probe_rows(res, "bypass", metrics=metrics, sites=["mlp"])
    df = df[df["variant"].isin(pick(df["variant"], variants))].copy()
    cond = df["metric"].str.replace(".delta_loss", "", regex=False)
    df["condition"] = cond.str.replace("_all", "", regex=False).str.replace("_rest", "", regex=False)

    def group(c: str, layer: int) -> str:
        if c.endswith("_rest") or (c.endswith("_all") and layer >= 1):  # substitutes' "all" starts at layer 1
            return "≥1"
        return "all" if c.endswith("_all") else str(int(layer))

    df["group"] = [group(c, layer) for c, layer in zip(cond, df["layer"])]
    return df


def bypass_figure(res: Results, variants: Iterable[str] | None = FOCUS) -> "Figure":
    raw = bypass_data(res, variants)
    shown = order(raw["variant"].unique())
    conditions = [c for c in BYPASS_CONDITIONS if c in set(raw["condition"])]
    colours = palette()
    palette_ = {"bypass": colours[3], "ln_plus_norm": colours[2], "ln_sum": colours[4]}
    fig = figure(5.0 * len(shown) + 0.4, 4.4)
    axes = fig.subplots(1, len(shown), squeeze=False, sharey=True)[0]
    for ax, variant in zip(axes, shown):
        sub = raw[raw["variant"] == variant]
        layers = sorted({g for g in sub["group"] if g.isdigit()}, key=int)
        groups = layers + [g for g in ("≥1", "all") if (sub["group"] == g).any()]
        stats = seed_stats(sub, ["condition", "group"])
        _grouped_bars(ax, stats, groups, conditions, BYPASS_CONDITIONS, palette_, sub, key="condition")
        names = {"≥1": "layers\n≥ 1", "all": "all\nlayers"}
        ax.set_xticklabels([names.get(g, f"layer {g}") for g in groups])
        ax.set_xlabel("MLP(s) whose input is rewritten")
        n = int(stats["seeds"].max()) if len(stats) else 0
        ax.set_title(f"{variant} ({seeds_text(n)})")
    axes[0].set_ylabel(f"Δ validation loss ({LOSS_UNIT})")
    axes[0].legend(loc="upper left", title="MLP input at inference")
    fig.suptitle("Bypassing the MHA→MLP connection at inference, and substituting layer 0's attention")
    add_note(fig, "x_i: residual stream entering block i; a_0: layer 0's attention output; N: parameter-free "
                  "normalisation. Bars: mean ±1 sd over seeds, dots: seeds.\nSubstitutes start at layer 1 "
                  "(layer 0 supplies a_0): n/a at layer 0. Compare conditions like for like in 'layers ≥ 1' (the same "
                  "MLPs rewritten); 'all layers' adds layer 0 and exists for the cut only.")
    return fig
