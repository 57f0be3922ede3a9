"""What ``falstudy probe`` prints: a compact table of the probe rows, one line per probe, site
and metric, one column per layer.

Perplexities are left out (``exp`` of the losses shown). A pair probe (CKA, bypass similarity)
shows its row against the lowest layer it compares with (``vs L0``: for FAL, the first
attention), so the table stays n_layer wide; the store has every pair.
"""

from __future__ import annotations

import pandas as pd


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Rows (probe, site, metric), columns ``L0 .. L{n-1}`` (and ``all`` for whole-stack rows)."""
    if df.empty:
        return pd.DataFrame()
    df = df[~df.metric.str.endswith("ppl")].copy()
    pairs = df.layer_b.notna()
    first = df[pairs].groupby(["probe", "site", "metric"]).layer.transform("min")
    keep = ~pairs
    keep[pairs] = df.loc[pairs, "layer"] == first
    df = df[keep].copy()
    df["label"] = df.site
    df.loc[pairs[keep], "label"] = df.site + " vs L" + df.layer.astype(int).astype(str)
    df["column"] = df.layer.astype(int)
    df.loc[pairs[keep], "column"] = df.layer_b.astype("Int64")
    # a whole-stack intervention (bypass_all ...) reports one number at its first layer
    stack = df.metric.str.split(".").str[0].str.endswith("_all")
    table = df[~stack].pivot_table(index=["probe", "label", "metric"], columns="column", values="value", aggfunc="mean")
    table.columns = [f"L{int(c)}" for c in table.columns]
    if stack.any():
        whole = df[stack].groupby(["probe", "label", "metric"]).value.mean().rename("all").to_frame()
        table = pd.concat([table, whole]).sort_index()
    table.index.names = ["probe", "site", "metric"]
    return table.reset_index()
