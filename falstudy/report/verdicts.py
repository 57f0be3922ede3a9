"""Verdicts: each claim of the FAL study that a results group can test, with its effect, 95%
interval, test, p-value, number of seeds and a verdict (docs/report.md, "Verdicts").

Every claim is reduced to one number per seed (a run, or a pair of runs that share a seed and
so share initialisation and data order), and the numbers are tested with ``falstudy.stats``:

    claim                 per-seed number                                               claimed
    cka                   mean CKA(MLP in_i, MLP in_j) - mean CKA(MHA out_i, MHA out_j), i<j  > 0
    gradient (raw)        ln(‖∂L/∂a_0‖ / max_{i≥1} ‖∂L/∂a_i‖)                                > 0
    gradient (scale-free) ln(Σ|∂L/∂a_0 · a_0| / max_{i≥1} Σ|∂L/∂a_i · a_i|)                  > 0
    primacy               Δloss(remove a_0) - max_{i≥1} Δloss(remove a_i)                  > 0
                          (on fal models: a_0 removed from the stream only, N_f(a_0) kept)
    bypass < removal      Δloss(MLPs ≥1 read LN x) - Δloss(attention ≥1 zeroed)             < 0
    substitute recovers   Δloss(MLPs ≥1 read LN x + N(a_0)) - Δloss(MLPs ≥1 read LN x)       < 0
    trained from scratch  val loss(A) - val loss(B), paired by seed                         per claim
                          (fal ≤ baseline, fal_plus ≤ fal, parallel ≥ baseline, fal < parallel, and
                          the control no_attn > baseline; where trained, the rival Ladder residual:
                          ladder vs baseline and fal_ladder vs fal, either way)
    size                  (fal - baseline) at the larger size - at the smaller (Welch)      ≠ 0
    held-out domains      bits per byte(fal) - bits per byte(baseline), paired by seed, per  < 0
                          domain and averaged over domains (the evals table: falstudy eval)

Probe claims are tested on the baseline model (the paper's analyses), primacy on fal too.
Runs are grouped by size (layers, width, heads, steps, batch, context): claims are tested
within one size, and a group holding two sizes also gets the size row.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from falstudy import stats
from falstudy.errors import FalstudyError
from falstudy.report.common import probe_rows
from falstudy.store.readonly import MissingTable, Results

if TYPE_CHECKING:
    import pandas

# claims are tested within one size (shape and budget; with several groups, one group); a pair
# is two runs of one seed and one learning rate
SIZE_KEYS = ["n_layer", "n_embd", "n_head", "steps", "batch_size", "seq_len"]
PAIR = ["seed", "lr"]
PROBE_VARIANT = "baseline"  # the model the paper's motivating analyses are run on


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    measure: str
    unit: str
    direction: str  # less | greater | either


CLAIMS: dict[str, Claim] = {c.id: c for c in (
    Claim("cka", "MLP inputs are more alike across depth than MHA outputs are",
          "mean CKA of MLP-input pairs minus mean CKA of MHA-output pairs (layers i < j)", "CKA", "greater"),
    Claim("grad_raw", "the first layer's ‖∂L/∂a‖ is the largest (raw)",
          "ln(‖∂L/∂a_0‖ / max over later layers)", "log ratio", "greater"),
    Claim("grad_scale_free", "the first layer's gradient is the largest (scale-free: |∂L/∂a · a|)",
          "ln(Σ|∂L/∂a_0·a_0| / max over later layers)", "log ratio", "greater"),
    Claim("primacy", "removing layer 0's attention costs more than removing any other single layer's",
          "Δloss(a_0 removed) − max over later layers", "nats", "greater"),
    Claim("bypass_lt_removal", "bypassing MHA→MLP at inference costs less than removing the attention (layers ≥ 1)",
          "Δloss(MLPs ≥1 read LN x) − Δloss(attention ≥1 zeroed)", "nats", "less"),
    Claim("substitute_ln_plus_norm", "a substitute LN x + N(a_0) recovers part of the bypass cost (layers ≥ 1)",
          "Δloss(substitute) − Δloss(bypass)", "nats", "less"),
    Claim("substitute_ln_sum", "a substitute LN(x + a_0) recovers part of the bypass cost (layers ≥ 1)",
          "Δloss(substitute) − Δloss(bypass)", "nats", "less"),
    Claim("fal_le_baseline", "trained from scratch, fal reaches a lower val loss than baseline",
          "val loss(fal) − val loss(baseline), paired by seed", "nats", "less"),
    Claim("fal_plus_le_fal", "trained from scratch, fal_plus reaches a lower val loss than fal",
          "val loss(fal_plus) − val loss(fal), paired by seed", "nats", "less"),
    Claim("parallel_ge_baseline", "trained from scratch, parallel (bypass, no substitute) is worse than baseline",
          "val loss(parallel) − val loss(baseline), paired by seed", "nats", "greater"),
    Claim("fal_lt_parallel", "trained from scratch, the substitute recovers part of the bypass cost: fal beats parallel",
          "val loss(fal) − val loss(parallel), paired by seed", "nats", "less"),
    Claim("control_no_attn", "control: an attention-free stack is worse than baseline",
          "val loss(no_attn) − val loss(baseline), paired by seed", "nats", "greater"),
    Claim("ladder_vs_baseline", "trained from scratch, the Ladder residual (a TP rival: hide the all-reduce) "
          "changes val loss against baseline", "val loss(ladder) − val loss(baseline), paired by seed", "nats", "either"),
    Claim("fal_ladder_vs_fal", "trained from scratch, overlapping fal's one all-reduce Ladder-style changes its val loss",
          "val loss(fal_ladder) − val loss(fal), paired by seed", "nats", "either"),
    Claim("fal_le_baseline_heldout", "on held-out domains, fal reaches lower bits per byte than baseline",
          "held-out bits per byte(fal) − (baseline), paired by seed", "bits/byte", "less"),
    Claim("fal_gap_vs_size", "fal − baseline changes with model size",
          "(fal − baseline) at the larger size − at the smaller, per seed (Welch)", "nats", "either"),
)}
TRAINED = {  # claim -> (variant A, variant B): the number is loss(A) - loss(B)
    "fal_le_baseline": ("fal", "baseline"),
    "fal_plus_le_fal": ("fal_plus", "fal"),
    "parallel_ge_baseline": ("parallel", "baseline"),
    "fal_lt_parallel": ("fal", "parallel"),
    "control_no_attn": ("no_attn", "baseline"),
    "ladder_vs_baseline": ("ladder", "baseline"),
    "fal_ladder_vs_fal": ("fal_ladder", "fal"),
}
# claims about wirings a study may leave out: skipped without a note when the first was not trained
OPTIONAL = {"ladder_vs_baseline", "fal_ladder_vs_fal"}


@dataclass
class Verdict:
    """One row of the verdicts table (docs/store.md)."""

    claim: str
    statement: str
    variant: str
    size: str
    measure: str
    unit: str
    direction: str
    effect: float
    ci_lo: float
    ci_hi: float
    test: str
    p: float
    n: int
    sd: float
    resolvable: float  # the |effect| this many seeds detect with 80% power at this spread
    verdict: str
    seeds_needed: int | None  # for an inconclusive row: seeds that resolve the observed effect
    p_holm: float = math.nan  # Holm-adjusted over the table's rows
    note: str = ""


@dataclass
class VerdictReport:
    rows: list[Verdict]
    missing: list[str]  # claims that could not be tested, and why
    regime: list[str]  # context: how far the models are trained
    groups: list[str] = field(default_factory=list)

    def frame(self) -> "pandas.DataFrame":
        import pandas as pd

        return pd.DataFrame([asdict(r) for r in self.rows], columns=list(Verdict.__dataclass_fields__))


# -- reading the groups ---------------------------------------------------------------------------
def _size_label(row, group: str | None = None) -> str:
    label = (f"{int(row.n_layer)}L×{int(row.n_embd)}d×{int(row.n_head)}h, {int(row.steps)} steps of "
             f"{int(row.batch_size)}×{int(row.seq_len)} tokens")
    return f"{label} ({Path(group).name})" if group else label


def _runs(groups: Sequence[Results]) -> "pandas.DataFrame":
    import pandas as pd

    frames = []
    for res in groups:
        res.require("runs")
        df = res.sql("SELECT run_id, coalesce(variant, wiring) AS variant, seed, lr, status, final_val_loss, "
                     f"{', '.join(SIZE_KEYS)}, ended_at FROM runs")
        df["group"] = str(res.root)
        frames.append(df)
    runs = pd.concat(frames, ignore_index=True)
    runs = runs[runs["status"] == "completed"].copy()
    runs["key"] = runs["group"] + "/" + runs["run_id"]  # run ids are unique within a group only
    runs["lr"] = runs["lr"].fillna(-1.0)  # unknown (rows written by hand): pairs by seed alone
    several = len(groups) > 1  # runs of two groups are never paired: the group joins the label
    runs["size"] = [_size_label(r, r.group if several else None) for r in runs.itertuples()] if len(runs) else []
    runs["compute"] = runs["n_layer"] * runs["n_embd"] ** 2 * runs["steps"] * runs["batch_size"] * runs["seq_len"]
    return runs.sort_values("ended_at")


def _one_per_seed(runs: "pandas.DataFrame") -> "pandas.DataFrame":
    """A rerun of one (size, variant, seed, lr) counts once: its latest completed run."""
    return runs.drop_duplicates(["size", "variant", *PAIR], keep="last")


def _probes(groups: Sequence[Results], probe: str, metrics: list[str], sites: list[str]) -> "pandas.DataFrame":
    import pandas as pd

    frames = []
    for res in groups:
        try:
            rows = probe_rows(res, probe, metrics=metrics, sites=sites, checkpoint_only=True)
            frames.append(rows.assign(key=f"{res.root}/" + rows["run_id"]))
        except MissingTable:
            continue
    if not frames:
        return pd.DataFrame(columns=["variant", "seed", "run_id", "key", "site", "layer", "layer_b", "metric", "value",
                                     "_file"])
    return pd.concat(frames, ignore_index=True)


# -- tests --------------------------------------------------------------------------------------
def _row(claim_id: str, variant: str, size: str, values: Sequence[float], note: str = "",
         two_sample: Sequence[float] | None = None) -> Verdict:
    claim = CLAIMS[claim_id]
    if two_sample is None:
        t = stats.paired_t(values)
    else:
        t = stats.welch_t(values, two_sample)
    direction = claim.direction
    if direction == "either":
        v = stats.HOLDS if (t.lo > 0 or t.hi < 0) else stats.INCONCLUSIVE
    else:
        v = stats.verdict(t, direction)  # type: ignore[arg-type]
    two = two_sample is not None
    needed = stats.seeds_needed(t.effect, t.sd, two) if v == stats.INCONCLUSIVE else None
    return Verdict(claim.id, claim.statement, variant, size, claim.measure, claim.unit, direction, t.effect,
                   t.lo, t.hi, t.test, t.p, t.n, t.sd, stats.resolvable(t.sd, t.n, two), v, needed, note=note)


def _per_run(df: "pandas.DataFrame", fn: Callable[["pandas.DataFrame"], float | None]) -> dict[str, float]:
    out = {}
    for key, sub in df.groupby("key"):
        value = fn(sub)
        if value is not None and math.isfinite(value):
            out[key] = value
    return out


def _first_vs_rest(sub: "pandas.DataFrame", log: bool) -> float | None:
    by_layer = sub.groupby("layer")["value"].mean()
    if 0 not in by_layer.index or len(by_layer) < 2:
        return None
    first, rest = by_layer.loc[0], by_layer.drop(0).max()
    if log:
        return math.log(first / rest) if first > 0 and rest > 0 else None
    return first - rest


def _metric(sub: "pandas.DataFrame", metric: str) -> float | None:
    vals = sub[sub["metric"] == metric]["value"]
    return float(vals.iloc[0]) if len(vals) else None


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


# -- the claims ------------------------------------------------------------------------------------
def _probe_claims(groups, runs, rows: list, missing: list) -> None:
    cka = _probes(groups, "cka", ["cka"], ["attn_out|attn_out", "mlp_in|mlp_in"])
    grads = _probes(groups, "grads", ["grad_norm_per_token", "grad_norm", "grad_x_act"], ["attn_out"])
    removal = _probes(groups, "attn_removal", ["zero.delta_loss", "zero_stream.delta_loss", "zero_rest.delta_loss"],
                      ["attn_out"])
    bypass = _probes(groups, "bypass", ["bypass_rest.delta_loss", "ln_plus_norm_all.delta_loss",
                                        "ln_sum_all.delta_loss"], ["mlp"])

    def cka_gap(sub):
        off = sub[sub["layer"] < sub["layer_b"]]
        mlp, mha = off[off["site"] == "mlp_in|mlp_in"]["value"], off[off["site"] == "attn_out|attn_out"]["value"]
        return float(mlp.mean() - mha.mean()) if len(mlp) and len(mha) else None

    def grad_metric(sub, scale_free: bool):
        if scale_free:
            sub = sub[sub["metric"] == "grad_x_act"]
        else:
            metric = "grad_norm_per_token" if (sub["metric"] == "grad_norm_per_token").any() else "grad_norm"
            sub = sub[sub["metric"] == metric]
        return _first_vs_rest(sub, log=True) if len(sub) else None

    def primacy(metric: str):
        return lambda sub: _first_vs_rest(sub[sub["metric"] == metric], log=False)

    bypass_m = lambda s: _metric(s, "bypass_rest.delta_loss")  # noqa: E731
    zero_rest = _per_run(removal, lambda s: _metric(s, "zero_rest.delta_loss"))
    specs = [
        ("cka", [PROBE_VARIANT], _per_run(cka, cka_gap), "cka"),
        ("grad_raw", [PROBE_VARIANT], _per_run(grads, lambda s: grad_metric(s, False)), "grads"),
        ("grad_scale_free", [PROBE_VARIANT], _per_run(grads, lambda s: grad_metric(s, True)),
         "grads (with grad_x_act)"),
        ("primacy", [PROBE_VARIANT], _per_run(removal, primacy("zero.delta_loss")), "attn_removal"),
        # on fal a_0 also makes N_f(a_0): remove it from the stream only, the baseline's intervention
        ("primacy", ["fal"], _per_run(removal, primacy("zero_stream.delta_loss")), "attn_removal (zero_stream)"),
        ("bypass_lt_removal", [PROBE_VARIANT],
         {r: v - zero_rest[r] for r, v in _per_run(bypass, bypass_m).items() if r in zero_rest},
         "bypass and attn_removal (bypass_rest, zero_rest)"),
        ("substitute_ln_plus_norm", [PROBE_VARIANT],
         _per_run(bypass, lambda s: _diff(_metric(s, "ln_plus_norm_all.delta_loss"), bypass_m(s))), "bypass"),
        ("substitute_ln_sum", [PROBE_VARIANT],
         _per_run(bypass, lambda s: _diff(_metric(s, "ln_sum_all.delta_loss"), bypass_m(s))), "bypass"),
    ]
    notes = {
        "grad_raw": "the stream entering block 0 is far smaller than later ones and a norm's Jacobian scales as "
                    "1/σ: compare the scale-free row",
        "substitute_ln_plus_norm": "at inference on a baseline, which never learned to read N(a_0); the trained "
                                   "counterpart is fal_lt_parallel",
        "substitute_ln_sum": "at inference on a baseline; the trained counterpart is fal_lt_parallel",
    }
    for claim_id, variants, per_run, probe in specs:
        for variant in variants:
            tested = False
            of_variant = runs[(runs["variant"] == variant) & runs["key"].isin(list(per_run))]
            for size, sub in _one_per_seed(of_variant).groupby("size"):
                values = [per_run[k] for k in sub["key"]]
                if len(values) >= 2:
                    note = notes.get(claim_id, "")
                    if claim_id == "primacy" and variant != PROBE_VARIANT:
                        note = "a_0 removed from the stream only; N_f(a_0) kept (like for like with baseline)"
                    rows.append(_row(claim_id, variant, size, values, note))
                    tested = True
            if not tested:
                found = of_variant["seed"].nunique()
                missing.append(f"{claim_id} ({variant}): needs the {probe} probe on ≥2 seeds of {variant} "
                               f"of one size, found {found}")


def _trained_claims(runs, rows: list, missing: list) -> dict[str, dict[tuple, float]]:
    """The seed-paired loss differences; returns, per size, fal - baseline by seed (for the size row)."""
    gaps: dict[str, dict[tuple, float]] = {}
    runs = _one_per_seed(runs[runs["final_val_loss"].notna() & (runs["final_val_loss"].abs() != float("inf"))])
    for claim_id, (a, b) in TRAINED.items():
        tested = False
        for size, sub in runs.groupby("size"):
            la = sub[sub["variant"] == a].set_index(PAIR)["final_val_loss"]
            lb = sub[sub["variant"] == b].set_index(PAIR)["final_val_loss"]
            pairs = sorted(set(la.index) & set(lb.index))  # same seed and learning rate
            diffs = {pair: float(la[pair] - lb[pair]) for pair in pairs}
            if claim_id == "fal_le_baseline":
                gaps[size] = diffs
            if len(diffs) >= 2:
                rows.append(_row(claim_id, f"{a} vs {b}", size, list(diffs.values())))
                tested = True
        if not tested:
            n = {v: int((runs["variant"] == v).sum()) for v in (a, b)}
            if claim_id in OPTIONAL and not n[a]:
                continue
            missing.append(f"{claim_id}: needs ≥2 seeds trained of both {a} and {b} at one size "
                           f"(completed runs: {a} {n[a]}, {b} {n[b]})")
    return gaps


def _heldout_claims(groups, runs, rows: list, missing: list) -> None:
    """fal - baseline in held-out bits per byte, per domain and over all of them (``all``)."""
    import pandas as pd

    from falstudy.report.downstream import HELDOUT, eval_rows

    frames = []
    for res in groups:
        try:
            frames.append(eval_rows(res, *HELDOUT).assign(key=lambda d, r=res: f"{r.root}/" + d["run_id"]))
        except MissingTable:
            continue
    if not frames:
        missing.append("fal_le_baseline_heldout: needs held-out bits per byte of fal and baseline: run "
                       "`falstudy eval RESULTS_DIR` (docs/eval.md)")
        return
    bpb = pd.concat(frames)
    per_domain = {d: dict(zip(sub["key"], sub["value"])) for d, sub in bpb.groupby("task")}
    n_domains = bpb.groupby("key")["task"].nunique()
    full = n_domains[n_domains == bpb["task"].nunique()].index  # runs scored on every domain
    per_domain["all"] = bpb[bpb["key"].isin(full)].groupby("key")["value"].mean().to_dict()
    for domain, per_run in per_domain.items():
        tested = False
        for size, sub in _one_per_seed(runs[runs["key"].isin(list(per_run))]).groupby("size"):
            a = sub[sub["variant"] == "fal"].set_index(PAIR)["key"]
            b = sub[sub["variant"] == "baseline"].set_index(PAIR)["key"]
            diffs = [per_run[a[p]] - per_run[b[p]] for p in sorted(set(a.index) & set(b.index))]
            if len(diffs) >= 2:
                note = "mean over the domains" if domain == "all" else ""
                rows.append(_row("fal_le_baseline_heldout", f"fal vs baseline ({domain})", size, diffs, note))
                tested = True
        if not tested:
            missing.append(f"fal_le_baseline_heldout ({domain}): needs ≥2 seeds of fal and baseline evaluated")


def _size_claim(runs, gaps: dict[str, dict[tuple, float]], rows: list) -> None:
    sizes = [s for s, d in gaps.items() if len(d) >= 2]
    if len(sizes) < 2:
        return
    compute = runs.groupby("size")["compute"].first()
    by_compute = sorted(sizes, key=lambda s: compute[s])
    small, large = by_compute[0], by_compute[-1]
    ratio = compute[large] / compute[small]
    rows.append(_row("fal_gap_vs_size", "fal vs baseline", f"{large} vs {small}",
                     list(gaps[large].values()), f"larger size: {ratio:.1f}× the training compute",
                     two_sample=list(gaps[small].values())))


def _regime(runs, groups) -> list[str]:
    """How far training got: the numbers that say whether the wirings can differ at all."""
    lines = []
    removal = _probes(groups, "attn_removal", ["zero.delta_loss"], ["attn_out"])
    runs = _one_per_seed(runs[runs["final_val_loss"].notna()])
    for size, sub in runs.groupby("size"):
        loss = sub.groupby("variant")["final_val_loss"].mean()
        if PROBE_VARIANT not in loss:
            continue
        parts = [f"baseline val loss {loss[PROBE_VARIANT]:.3f}"]
        if "no_attn" in loss:
            parts.append(f"no_attn − baseline {loss['no_attn'] - loss[PROBE_VARIANT]:+.3f}")
        base_runs = set(sub[sub["variant"] == PROBE_VARIANT]["key"])
        later = removal[removal["key"].isin(base_runs) & (removal["layer"] >= 1)]
        if len(later):
            per_layer = later.groupby("layer")["value"].mean()
            parts.append(f"largest later-layer attention removal {per_layer.max():+.3f} (layer {int(per_layer.idxmax())})")
        lines.append(f"{size}: " + ", ".join(parts) + " (nats, mean over seeds)")
    return lines


def compute(results_dirs: Iterable[str | Path]) -> VerdictReport:
    """The verdicts of one or more results groups (several: e.g. one per model size)."""
    groups = [Results(d) for d in results_dirs]
    if not groups:
        raise FalstudyError("no results folder given; pass results/<name> (e.g. results/bypass)")
    runs = _runs(groups)
    rows: list[Verdict] = []
    missing: list[str] = []
    if runs.empty:
        raise FalstudyError(f"{', '.join(str(g.root) for g in groups)}: no completed runs, so no claim can be tested; "
                            "train runs first (falstudy sweep sweeps/bypass.yaml)")
    gaps = _trained_claims(runs, rows, missing)
    _size_claim(runs, gaps, rows)
    _probe_claims(groups, runs, rows, missing)
    _heldout_claims(groups, runs, rows, missing)
    if not rows:
        raise FalstudyError(f"{', '.join(str(g.root) for g in groups)}: no claim can be tested: " + "; ".join(missing))
    for r, p in zip(rows, stats.holm([r.p for r in rows])):
        r.p_holm = p
    order = list(CLAIMS)
    rows.sort(key=lambda r: (order.index(r.claim), r.size, r.variant))
    return VerdictReport(rows, missing, _regime(runs, groups), [str(g.root) for g in groups])


def write(report: VerdictReport, results_dir: str | Path) -> Path:
    """The verdicts as the group's ``verdicts`` table (spool file, then ingest)."""
    from falstudy.provenance import now_iso, provenance
    from falstudy.store import ingest
    from falstudy.store.spool import write_parquet

    prov = provenance()
    rows = [{**asdict(r), "groups": ", ".join(report.groups), "computed_at": now_iso(),
             "git_commit": prov.get("git_commit")} for r in report.rows]
    path = write_parquet(Path(results_dir) / "verdicts" / "verdicts.parquet", rows, table="verdicts")
    try:
        ingest(results_dir)
    except FalstudyError as err:  # the store is held: the spool file is there for the next ingest
        import warnings

        warnings.warn(f"verdicts kept in the spool, not ingested ({err})")
    return path


# -- text ------------------------------------------------------------------------------------------
def _num(x: float, unit: str) -> str:
    digits = 3 if unit in ("nats", "CKA", "bits/byte") else 2
    return f"{x:+.{digits}f}"


def text_table(report: VerdictReport) -> str:
    """The table as plain text (what ``falstudy verdict`` and ``make demo`` print)."""
    lines = []
    if report.regime:
        lines += ["Regime:"] + [f"  {line}" for line in report.regime] + [""]
    sizes = list(dict.fromkeys(r.size for r in report.rows))
    w = max([20] + [len(r.variant) for r in report.rows])
    wc = 30 if all(r.unit != "bits/byte" for r in report.rows) else 34
    header = f"{'claim':<24} {'variant':<{w}} {'effect [95% CI]':<{wc}} {'test':<9} {'p':>7} {'n':>3}  verdict"
    for size in sizes:
        lines += [f"Size: {size}", header, "-" * len(header)]
        for r in (r for r in report.rows if r.size == size):
            ci = f"{_num(r.effect, r.unit)} [{_num(r.ci_lo, r.unit)}, {_num(r.ci_hi, r.unit)}] {r.unit}"
            verdict = r.verdict
            if r.verdict == stats.INCONCLUSIVE:
                if r.seeds_needed:
                    verdict += f" (~{r.seeds_needed} seeds would resolve it)"
                else:
                    verdict += " (no effect to resolve)" if r.effect == 0 else f" (> {stats.MAX_SEEDS} seeds needed)"
            lines.append(f"{r.claim:<24} {r.variant:<{w}} {ci:<{wc}} {r.test:<9} {r.p:>7.3f} {r.n:>3}  {verdict}")
        lines.append("")
    if report.missing:
        lines += ["Not tested:"] + [f"  {m}" for m in report.missing] + [""]
    lines.append("Paired t test over seeds (Welch across sizes); holds / does not hold when the 95% interval lies on "
                 "one side of 0. Claims and method: docs/report.md.")
    return "\n".join(lines)
