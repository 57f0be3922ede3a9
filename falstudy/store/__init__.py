"""The results store: runs write Parquet into a spool, one ingester loads it into DuckDB.

    spool = RunSpool("results/mine/runs/r1")
    spool.write_table("runs", [run_row])                # runs.parquet (rewritable)
    spool.write_table("metrics", rows, part=step)       # metrics-000050.parquet (a chunk)
    ingest("results/mine")                              # -> results/mine/falstudy.duckdb
    query("results/mine", "SELECT * FROM metrics")      # read-only
    spool_query("results/mine", "SELECT * FROM runs")   # straight from Parquet, no DB

Tables and columns: ``falstudy.store.schema`` and docs/store.md. Nothing heavy is imported here
(duckdb and pyarrow load inside the functions).
"""

from falstudy.store.ingest import ingest
from falstudy.store.query import connect_readonly, db_path, load_table, query, spool_query, tables
from falstudy.store.readonly import MissingTable, Results
from falstudy.store.schema import TABLES
from falstudy.store.spool import MetricsBuffer, RunSpool, write_parquet

__all__ = [
    "MetricsBuffer",
    "RunSpool",
    "TABLES",
    "connect_readonly",
    "db_path",
    "ingest",
    "load_table",
    "query",
    "spool_query",
    "tables",
    "write_parquet",
]
