"""Read-only access to one results group, for notebooks and reports.

    res = Results("results/bypass")        # or Results.from_env() (FALSTUDY_RESULTS)
    res.tables()                            # ['metrics', 'probes', 'runs', 'trials']
    res.has("probes")
    runs = res.table("runs")                # a whole table, as a DataFrame
    df = res.sql("SELECT variant, avg(final_val_loss) FROM runs GROUP BY 1")
    res.bench("tp_step")                    # results/bench/tp_step.parquet (`falstudy bench tp`)

Reads the DuckDB store read-only with one short connection per call (so an ingest can run
between calls), and falls back to the Parquet spool when the DB is absent or held by another
process. A missing table raises ``MissingTable``, a ``FalstudyError`` whose one-line message
says which command produces the table.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from falstudy.errors import FalstudyError
from falstudy.store.query import connect_readonly, db_path, spool_query
from falstudy.store.sandbox import check_statement, execute
from falstudy.store.spool import check_table_name, scan

if TYPE_CHECKING:
    import pandas

ENV_RESULTS = "FALSTUDY_RESULTS"
ENV_BENCH = "FALSTUDY_BENCH"

RUNS_HINT = "train runs into this group: `falstudy sweep sweeps/bypass.yaml` or `falstudy train --name NAME`"
TABLE_HINTS: dict[str, str] = {
    "runs": RUNS_HINT,
    "metrics": RUNS_HINT,
    "probes": "run a sweep with probes (sweeps/bypass.yaml) or `falstudy probe RUN`",
    "trials": "run a sweep (`falstudy sweep sweeps/bypass.yaml`); runs from `falstudy train` have no trials",
    "timings": "run `falstudy sweep sweeps/tensor_parallel.yaml` (every wiring at TP=2) or train with tensor "
               "parallelism (`falstudy train --tp 2 ...`): its CommMeter writes them",
}
TP_BENCH = "`falstudy bench tp` (or `python bench/tp_step.py`)"
BENCH_HINTS: dict[str, str] = {
    "tp_step": f"run {TP_BENCH}; it writes results/bench/tp_step.parquet",
    "tp_projection": f"run {TP_BENCH}; it writes results/bench/tp_projection.parquet",
}


class MissingTable(FalstudyError):
    """A table (or benchmark file) the analysis needs is not there; ``hint`` says what makes it."""

    def __init__(self, what: str, hint: str) -> None:
        super().__init__(f"no {what}: {hint}")
        self.what = what
        self.hint = hint


class Results:
    """One results group (``results/<name>/``), read-only.

    ``source``: ``auto`` (the DB if it opens, else the spool), ``db`` or ``spool``.
    ``bench_dir``: where benchmark Parquet files live (default: ``$FALSTUDY_BENCH``, else
    ``<group>/bench`` or the sibling ``results/bench`` that bench scripts write).
    """

    def __init__(self, results_dir: str | Path, *, source: str = "auto", wait_s: float = 2.0,
                 bench_dir: str | Path | None = None) -> None:
        if source not in ("auto", "db", "spool"):
            raise FalstudyError(f"source={source!r}: use auto, db or spool")
        self.root = Path(results_dir)
        if not self.root.is_dir():
            raise FalstudyError(f"{self.root}: no such results folder; pass results/<name> or set "
                                f"{ENV_RESULTS} (make one with `falstudy sweep sweeps/bypass.yaml`)")
        self.wait_s = wait_s
        self.bench_dir = Path(bench_dir) if bench_dir else (Path(os.environ[ENV_BENCH]) if os.environ.get(ENV_BENCH) else None)
        self.note = ""  # why the spool is read instead of the DB, if it is
        self.source = self._pick_source(source)
        self._tables: list[str] | None = None

    @classmethod
    def from_env(cls, default: str | Path = "../results/bypass", var: str = ENV_RESULTS, **kwargs: Any) -> "Results":
        """The group named by the environment variable ``var`` (default ``FALSTUDY_RESULTS``)."""
        return cls(os.environ.get(var) or default, **kwargs)

    # -- where to read -------------------------------------------------------------------------
    def _pick_source(self, wanted: str) -> str:
        db = db_path(self.root)
        if wanted == "spool":
            return "spool"
        if not db.is_file():
            if wanted == "db":
                raise FalstudyError(f"{db}: no results store; run `falstudy ingest {self.root}`")
            self.note = f"no {db.name}: reading the Parquet spool"
            return "spool"
        try:
            connect_readonly(self.root, wait_s=self.wait_s).close()
        except FalstudyError as err:
            if wanted == "db":
                raise
            self.note = f"reading the Parquet spool: {err}"
            return "spool"
        return "db"

    def _spool_tables(self) -> list[str]:
        return list(scan(self.root)[0])

    def describe(self) -> str:
        """One line: where the data comes from and which tables there are."""
        where = "DuckDB store (read-only)" if self.source == "db" else "Parquet spool"
        text = f"{self.root}: {where}; tables: {', '.join(self.tables()) or 'none'}"
        return text + (f" ({self.note})" if self.note else "")

    # -- reading -------------------------------------------------------------------------------
    def sql(self, sql: str, params: Any = None) -> "pandas.DataFrame":
        """Run one read-only SQL statement (DuckDB dialect) and return a DataFrame. Only queries
        run, and only over this group's files (``falstudy.store.sandbox``)."""
        check_statement(sql)
        if self.source == "db":
            try:
                con = connect_readonly(self.root, wait_s=self.wait_s)
            except FalstudyError as err:  # an ingest or another writer holds it now
                warnings.warn(f"{err}; reading the Parquet spool instead", stacklevel=2)
                self.source, self.note, self._tables = "spool", f"reading the Parquet spool: {err}", None
            else:
                return self._run_db(con, sql, params)
        if not self._spool_tables():
            raise MissingTable("runs table", f"{self.root} holds no results yet; {RUNS_HINT}")
        return spool_query(self.root, sql, params)

    def _run_db(self, con: Any, sql: str, params: Any) -> "pandas.DataFrame":
        try:
            return execute(con, sql, params, str(db_path(self.root)))
        finally:
            con.close()

    def tables(self) -> list[str]:
        """The data tables (cached; ``refresh()`` forgets)."""
        if self._tables is None:
            if self.source == "spool":
                self._tables = self._spool_tables()
            else:
                names = self.sql("SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
                                 "AND NOT starts_with(table_name, '_') ORDER BY 1")
                self._tables = list(names["table_name"])
        return list(self._tables)

    def refresh(self) -> None:
        self._tables = None

    def has(self, name: str) -> bool:
        return name in self.tables()

    def hint(self, name: str) -> str:
        """What produces table ``name`` (or that it is in the spool but not ingested yet)."""
        if self.source == "db" and name in self._spool_tables():
            return (f"its rows are in the spool but not in the store yet: run `falstudy ingest {self.root}` "
                    "(or Results(..., source='spool'))")
        return TABLE_HINTS.get(name, f"nothing has written a {name} table into {self.root}")

    def require(self, *names: str) -> None:
        """Raise ``MissingTable`` for the first of ``names`` this group lacks."""
        for name in names:
            if not self.has(check_table_name(name)):
                raise MissingTable(f"{name} table", self.hint(name))

    def table(self, name: str) -> "pandas.DataFrame":
        """A whole table as a DataFrame (``MissingTable`` if this group has none)."""
        self.require(name)
        return self.sql(f'SELECT * FROM "{name}"')

    # -- benchmark files -----------------------------------------------------------------------
    def bench_dirs(self) -> list[Path]:
        dirs = [self.bench_dir] if self.bench_dir else []
        return dirs + [self.root / "bench", self.root.parent / "bench"]

    def bench_path(self, name: str) -> Path | None:
        check_table_name(name)
        return next((d / f"{name}.parquet" for d in self.bench_dirs() if (d / f"{name}.parquet").is_file()), None)

    def has_bench(self, name: str) -> bool:
        return self.bench_path(name) is not None

    def bench(self, name: str) -> "pandas.DataFrame":
        """A benchmark's Parquet file (e.g. ``tp_step`` from ``falstudy bench tp``) as a DataFrame."""
        import pandas as pd

        path = self.bench_path(name)
        if path is None:
            looked = ", ".join(str(d) for d in self.bench_dirs())
            hint = BENCH_HINTS.get(name, f"no benchmark writes {name}.parquet")
            raise MissingTable(f"{name} benchmark file", f"{hint}; looked in {looked}")
        try:
            return pd.read_parquet(path)
        except Exception as err:  # a truncated or foreign file
            raise FalstudyError(f"{path}: cannot read: {str(err).splitlines()[0]}") from err
