"""The probes table: one tidy row per measured number.

    run_id      the run probed (None until the runner or trainer fills it in)
    step        training step of the weights probed (None when unknown)
    probe       cka | grads | attn_removal | bypass | linear | logit_lens
    site        what was measured: a site kind (``attn_out``, ``mlp_in``, ``resid_post`` ...),
                ``kindA|kindB`` for a pair (CKA), or a parameter group (``attn_params`` ...)
    layer       0-based block index of the site (ln_f: n_layer); for an intervention, the
                (first) intervened layer
    layer_b     the second layer of a pair (CKA: layer of kindB; bypass: the later layer
                compared), else None
    metric      the number's name; interventions prefix it with the condition, e.g.
                ``zero.delta_loss``, ``bypass_all.cka``
    value       float
    extra_json  JSON object with the details (sample counts, intervened layers, ...)
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable

COLUMNS = ["run_id", "step", "probe", "site", "layer", "layer_b", "metric", "value", "extra_json"]


def row(probe: str, site: str, layer: int, metric: str, value: float, layer_b: int | None = None, **extra: Any) -> dict:
    value = float(value)
    return {
        "run_id": None,
        "step": None,
        "probe": probe,
        "site": site,
        "layer": int(layer),
        "layer_b": None if layer_b is None else int(layer_b),
        "metric": metric,
        "value": value,
        "extra_json": json.dumps(extra, sort_keys=True, default=str),
    }


def frame(rows: Iterable[dict]):
    """The rows as a pandas DataFrame with the table's columns and dtypes."""
    import pandas as pd

    df = pd.DataFrame(list(rows), columns=COLUMNS)
    df["layer"] = df["layer"].astype("int64")
    df["layer_b"] = df["layer_b"].astype("Int64")
    df["step"] = df["step"].astype("Int64")
    df["value"] = df["value"].astype("float64")
    return df


def ppl(loss: float) -> float:
    return math.exp(min(loss, 50.0))
