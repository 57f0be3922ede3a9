"""The documented tables of the results store, as data.

``docs/store.md`` embeds ``markdown()`` verbatim (a test checks they agree), the spool writer
casts documented columns to these types (so an all-None column still has its real type), and
the ingester creates each documented table with all of these columns, so a documented column
can always be queried (NULL where a producer did not write it). Producers may write extra
columns; the ingester adds them. Every data table also gets ``_file``: the spool file a row
came from, relative to the results group (how a rewritten file replaces its rows).

Print the Markdown for the docs with
``python -c "from falstudy.store.schema import markdown; print(markdown(), end='')"``.
"""

from __future__ import annotations

from dataclasses import dataclass

# DuckDB type -> pyarrow type name; the only types documented columns use
_ARROW = {"VARCHAR": "string", "BIGINT": "int64", "DOUBLE": "float64", "BOOLEAN": "bool_"}

FILE_COLUMN = "_file"
FILES_TABLE = "_ingested_files"


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # a key of _ARROW
    doc: str
    required: bool = False  # a row without it is refused by the spool writer


@dataclass(frozen=True)
class Table:
    name: str
    doc: str
    written_by: str
    spool: str  # where its files live, relative to results/<name>/
    columns: tuple[Column, ...]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def required(self) -> list[str]:
        return [c.name for c in self.columns if c.required]


def _c(name: str, type_: str, doc: str, required: bool = False) -> Column:
    return Column(name, type_, doc, required)


RUNS = Table(
    "runs",
    "One row per training run. Rewritten by the run when it ends, so a run that is still going "
    "(or was killed with SIGKILL) shows `status = 'running'`.",
    "the trainer (`falstudy.train`)",
    "runs/<run_id>/runs.parquet",
    (
        _c("run_id", "VARCHAR", "unique id; also the spool folder name `runs/<run_id>/`", True),
        _c("name", "VARCHAR", "results group (`results/<name>/`), e.g. the sweep name", True),
        _c("status", "VARCHAR", "running | completed | pruned | diverged | failed | killed", True),
        _c("variant", "VARCHAR", "the label to group by: the preset name (e.g. `fal`, `llama_fal`), else `model.wiring`"),
        _c("wiring", "VARCHAR", "`model.wiring`: baseline | parallel | fal | fal_plus | no_attn | no_mlp"),
        _c("seed", "BIGINT", "seed for init and data order"),
        _c("n_layer", "BIGINT", "`model.n_layer`"),
        _c("n_head", "BIGINT", "`model.n_head`"),
        _c("n_embd", "BIGINT", "`model.n_embd`"),
        _c("norm", "VARCHAR", "`model.norm`: layernorm | rmsnorm"),
        _c("mlp", "VARCHAR", "`model.mlp`: gelu | swiglu"),
        _c("pos", "VARCHAR", "`model.pos`: learned | rope"),
        _c("lr", "DOUBLE", "peak learning rate `train.lr`"),
        _c("batch_size", "BIGINT", "sequences per step (per data-parallel rank)"),
        _c("seq_len", "BIGINT", "tokens per sequence"),
        _c("steps", "BIGINT", "steps the run was configured for"),
        _c("tp", "BIGINT", "tensor-parallel degree (NULL: single process)"),
        _c("dp", "BIGINT", "data-parallel degree (NULL: single process)"),
        _c("device", "VARCHAR", "resolved device, e.g. `cpu`, `cuda:0`"),
        _c("n_params", "BIGINT", "parameter count"),
        _c("data_path", "VARCHAR", "prepared corpus folder"),
        _c("config_json", "VARCHAR", "the full resolved RunConfig as JSON (`config_json->'$.model.wiring'`)"),
        _c("git_commit", "VARCHAR", "commit of the falstudy checkout (NULL outside git)"),
        _c("git_dirty", "BOOLEAN", "uncommitted changes to tracked files"),
        _c("host", "VARCHAR", "host name of the process that trained"),
        _c("pid", "BIGINT", "its process id"),
        _c("argv", "VARCHAR", "its command line"),
        _c("torch_version", "VARCHAR", "torch version"),
        _c("versions_json", "VARCHAR", "python, falstudy, torch, numpy, nnsight, optuna, duckdb, ... versions as JSON"),
        _c("started_at", "VARCHAR", "ISO 8601 UTC (`started_at::TIMESTAMPTZ` converts)"),
        _c("ended_at", "VARCHAR", "ISO 8601 UTC; NULL while running"),
        _c("final_step", "BIGINT", "last step reached (the resume point while running)"),
        _c("final_val_loss", "DOUBLE", "validation loss at the last eval (NULL if none)"),
        _c("error", "VARCHAR", "why it stopped early (diverged, failed, killed), else NULL"),
    ),
)

METRICS = Table(
    "metrics",
    "Training curves in long (tidy) form: one row per (run, step, split, name). Flushed in "
    "chunks at every eval and checkpoint, so a kill loses at most the current interval.",
    "the trainer",
    "runs/<run_id>/metrics-<step>.parquet",
    (
        _c("run_id", "VARCHAR", "the run (join `runs` on it)", True),
        _c("step", "BIGINT", "optimizer step (0 = before training)", True),
        _c("split", "VARCHAR", "train | val", True),
        _c("name", "VARCHAR", "loss | ppl | lr | grad_norm | tokens_per_s | step_ms | ...", True),
        _c("value", "DOUBLE", "the value (NaN/inf kept as written: a diverged run's last loss)", True),
        _c("tokens", "BIGINT", "training tokens seen at this step"),
        _c("elapsed_s", "DOUBLE", "wall-clock seconds since the run (or its resume) started"),
    ),
)

PROBES = Table(
    "probes",
    "Measurements of trained models (CKA, gradient norms, ablations, linear probes), one value "
    "per row.",
    "the probe toolkit (`falstudy probe`, or training hooks)",
    "runs/<run_id>/probes[-<part>].parquet",
    (
        _c("run_id", "VARCHAR", "the run probed", True),
        _c("step", "BIGINT", "training step of the weights probed"),
        _c("probe", "VARCHAR", "cka, grads, attn_removal, bypass, linear or logit_lens (docs/probes.md)", True),
        _c("site", "VARCHAR", "a site kind (`attn_out`, `mlp_in`, `resid_post`, ...), a pair `attn_out|mlp_in`, or a parameter group"),
        _c("layer", "BIGINT", "layer (0-based)"),
        _c("layer_b", "BIGINT", "second layer for pairwise probes (CKA), else NULL"),
        _c("metric", "VARCHAR", "what `value` is; interventions prefix their condition: `cka`, `grad_norm`, `zero.delta_loss`, `bypass_all.cka`", True),
        _c("value", "DOUBLE", "the measurement"),
        _c("extra_json", "VARCHAR", "anything else, as JSON"),
    ),
)

EVALS = Table(
    "evals",
    "Downstream evaluation of trained models: bits per byte on held-out domains, minimal-pair and "
    "multiple-choice accuracy, lm-evaluation-harness metrics (docs/eval.md), one value per row.",
    "`falstudy eval` (or a sweep's `evals:` section)",
    "runs/<run_id>/evals-<kind>-<task>[-step<N>].parquet",
    (
        _c("run_id", "VARCHAR", "the run evaluated", True),
        _c("step", "BIGINT", "training step of the weights evaluated"),
        _c("kind", "VARCHAR", "heldout | pairs | choice | lm_eval", True),
        _c("task", "VARCHAR", "held-out domain (`kjv`, `web`, `fortunes`), pair set (`wordswap-web`, a file's stem), choice file's stem, or lm-eval task", True),
        _c("metric", "VARCHAR", "`bpb`, `loss` (nats/token), `bytes_per_token`, `acc`, `acc_norm`, or an lm-eval metric", True),
        _c("value", "DOUBLE", "the measurement"),
        _c("n", "BIGINT", "items scored (windows of text for held-out domains)"),
        _c("stderr", "DOUBLE", "standard error of the mean over items, where one is defined"),
        _c("extra_json", "VARCHAR", "anything else, as JSON (bytes and tokens scored, chance level, lm-eval filter)"),
    ),
)

TIMINGS = Table(
    "timings",
    "Communication and compute accounting of parallel runs: per rank and kind, how many "
    "calls, bytes and seconds over an interval.",
    "the parallel trainer",
    "runs/<run_id>/timings-<part>.parquet",
    (
        _c("run_id", "VARCHAR", "the run", True),
        _c("step", "BIGINT", "last step of the interval"),
        _c("rank", "BIGINT", "global rank"),
        _c("kind", "VARCHAR", "all_reduce | all_gather | compute | ...", True),
        _c("count", "BIGINT", "calls in the interval"),
        _c("bytes", "BIGINT", "bytes moved in the interval"),
        _c("seconds", "DOUBLE", "wall-clock seconds spent in the interval (collectives: inside the calls)"),
        _c("in_flight_seconds", "DOUBLE", "collectives: seconds from launch to completion, summed over calls (NULL for compute and step rows)"),
        _c("exposed_seconds", "DOUBLE", "collectives: seconds this rank was held up by them (synchronous: = in flight; asynchronous: launch + wait()); in_flight_seconds - exposed_seconds was hidden behind compute"),
    ),
)

TRIALS = Table(
    "trials",
    "Optuna trials of a sweep, one row per trial (rewritten when its state changes).",
    "the sweep",
    "sweep/trials[-<part>].parquet",
    (
        _c("study", "VARCHAR", "Optuna study name", True),
        _c("trial_number", "BIGINT", "Optuna trial number", True),
        _c("run_id", "VARCHAR", "the run this trial trained (join `runs`)"),
        _c("state", "VARCHAR", "RUNNING | COMPLETE | PRUNED | FAIL"),
        _c("params_json", "VARCHAR", "sampled/enqueued parameters as JSON"),
        _c("values_json", "VARCHAR", "objective value(s) as a JSON list"),
        _c("duration_s", "DOUBLE", "wall-clock seconds"),
        _c("error", "VARCHAR", "why it failed, else NULL"),
        _c("host", "VARCHAR", "host of the worker that ran it"),
        _c("pid", "BIGINT", "pid of that worker (dead trials are reaped by it)"),
        _c("datetime_start", "VARCHAR", "ISO 8601 start, from Optuna"),
        _c("datetime_complete", "VARCHAR", "ISO 8601 end, from Optuna; NULL while running"),
        _c("kind", "VARCHAR", "`grid` (an enqueued cell) or `sampled` (asked of the sampler)"),
        _c("seed", "BIGINT", "the run's seed (each cell or point runs once per seed)"),
        _c("status", "VARCHAR", "the trainer's status of the run: completed | pruned | diverged | failed | killed"),
        _c("trial_pid", "BIGINT", "pid of the trial's own process"),
        _c("rerun_of", "BIGINT", "the trial number this one re-runs (reaped or interrupted), else NULL"),
        _c("retry", "BOOLEAN", "FAIL only: true if --resume will run it again (interrupted), false if final"),
        _c("probe_error", "VARCHAR", "why the probes after training failed (the trial still counts), else NULL"),
    ),
)

VERDICTS = Table(
    "verdicts",
    "Each claim of the study that the group's runs and probes can test, with its effect, 95% "
    "interval, test and verdict (docs/report.md, \"Verdicts\"). Rewritten whole each time.",
    "`falstudy verdict`",
    "verdicts/verdicts.parquet",
    (
        _c("claim", "VARCHAR", "claim id, e.g. `fal_le_baseline`, `primacy`, `cka`", True),
        _c("statement", "VARCHAR", "the claim in words"),
        _c("variant", "VARCHAR", "the model probed (probe claims) or the pair compared (`fal vs baseline`)"),
        _c("size", "VARCHAR", "the model size and budget the runs share (claims are tested within one size)"),
        _c("measure", "VARCHAR", "the per-seed number tested"),
        _c("unit", "VARCHAR", "its unit: nats, CKA, log ratio or bits/byte"),
        _c("direction", "VARCHAR", "the claimed sign of the effect: less (< 0), greater (> 0) or either"),
        _c("effect", "DOUBLE", "mean of the per-seed numbers (or difference of means, Welch)"),
        _c("ci_lo", "DOUBLE", "lower end of its 95% interval (Student t)"),
        _c("ci_hi", "DOUBLE", "upper end of its 95% interval"),
        _c("test", "VARCHAR", "paired t (over seeds) or Welch t (between sizes)"),
        _c("p", "DOUBLE", "two-sided p-value"),
        _c("p_holm", "DOUBLE", "p adjusted (Holm) over all rows of the table"),
        _c("n", "BIGINT", "seeds (pairs) tested"),
        _c("sd", "DOUBLE", "seed-to-seed standard deviation of the per-seed number"),
        _c("resolvable", "DOUBLE", "smallest |effect| these seeds detect with 80% power at this spread"),
        _c("verdict", "VARCHAR", "holds | does not hold | inconclusive at this scale", True),
        _c("seeds_needed", "BIGINT", "inconclusive rows: seeds that would resolve the observed effect (NULL: none would)"),
        _c("note", "VARCHAR", "the caveat that goes with the row, if any"),
        _c("groups", "VARCHAR", "the results groups the verdicts were computed from"),
        _c("computed_at", "VARCHAR", "ISO 8601 UTC"),
        _c("git_commit", "VARCHAR", "commit of the falstudy checkout that computed them"),
    ),
)

TABLES: dict[str, Table] = {t.name: t for t in (RUNS, METRICS, PROBES, EVALS, TIMINGS, TRIALS, VERDICTS)}

INGESTED_FILES_DOC = (
    ("path", "VARCHAR", "spool file relative to the results group"),
    ("size", "BIGINT", "size in bytes when ingested"),
    ("mtime_ns", "BIGINT", "modification time when ingested"),
    ("inode", "BIGINT", "inode when ingested (an atomic rewrite always changes it)"),
    ("table_name", "VARCHAR", "table its rows went to"),
    ("n_rows", "BIGINT", "rows it held"),
    ("ingested_at", "TIMESTAMPTZ", "when"),
)


def arrow_type(duckdb_type: str):
    import pyarrow as pa

    return getattr(pa, _ARROW[duckdb_type])()


def validate_rows(table: str, columns: list[str], null_columns: set[str] = frozenset()) -> str | None:
    """The problem with rows for ``table`` (a missing or null required column), or None."""
    spec = TABLES.get(table)
    if spec is None:
        return None
    missing = [c for c in spec.required if c not in columns]
    if missing:
        return f"rows for table {table!r} lack required column(s) {', '.join(missing)}"
    nulls = [c for c in spec.required if c in null_columns]
    if nulls:
        return f"rows for table {table!r} have nulls in required column(s) {', '.join(nulls)}"
    return None


def markdown() -> str:
    """The table reference for docs/store.md."""
    out = []
    for t in TABLES.values():
        out.append(f"### `{t.name}`\n\n{t.doc} Written by {t.written_by} to `{t.spool}`.\n")
        out.append("| column | type | meaning |\n|---|---|---|")
        for c in t.columns:
            req = " (required)" if c.required else ""
            out.append(f"| `{c.name}` | {c.type} | {c.doc.replace('|', '&#124;')}{req} |")
        out.append(f"| `{FILE_COLUMN}` | VARCHAR | spool file of the row, relative to the results group |\n")
    out.append(f"### `{FILES_TABLE}`\n\nBookkeeping of the ingester: one row per spool file loaded.\n")
    out.append("| column | type | meaning |\n|---|---|---|")
    out.extend(f"| `{n}` | {ty} | {doc} |" for n, ty, doc in INGESTED_FILES_DOC)
    return "\n".join(out) + "\n"
