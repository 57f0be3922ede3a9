"""Reading results: SQL over the DuckDB store (read-only) or straight over the spool.

DuckDB lets one process hold a file read-write, and while it does nobody else can open it, not
even read-only. Ingests are short, so opening retries for a few seconds before giving up.
``spool_query`` never touches the DB: it reads the Parquet files, so it works while a sweep is
still writing (and while an ingest holds the DB).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from falstudy.errors import FalstudyError
from falstudy.store.sandbox import execute, lock_down, one_line
from falstudy.store.schema import FILE_COLUMN, TABLES
from falstudy.store.spool import check_table_name, scan

if TYPE_CHECKING:
    import duckdb
    import pandas

DB_NAME = "falstudy.duckdb"
# the storage format new stores are written in: DuckDB 2 writes its own by default, which no
# DuckDB 1.x (the CLI most users have) can open; v1.0.0 is read by every DuckDB from 0.10 on
STORAGE_VERSION = "v1.0.0"
_SRC = "__falstudy_src"  # file-name column while reading Parquet; dropped again


def db_path(results_dir: str | Path) -> Path:
    """The DuckDB file of a results group: ``<results_dir>/falstudy.duckdb``."""
    return Path(results_dir) / DB_NAME


def resolve_db(results_dir_or_db: str | Path) -> Path:
    path = Path(results_dir_or_db)
    return path if path.suffix == ".duckdb" or path.is_file() else db_path(path)


def open_db(db: Path, *, read_only: bool, wait_s: float, rerun: str) -> "duckdb.DuckDBPyConnection":
    """Open ``db``, retrying for ``wait_s`` while another process holds it."""
    import duckdb

    deadline = time.monotonic() + wait_s
    # only a new file takes the setting; an existing one keeps the format it was written in
    config = {} if read_only else {"storage_compatibility_version": STORAGE_VERSION}
    while True:
        try:
            return duckdb.connect(str(db), read_only=read_only, config=config)
        except duckdb.Error as err:
            message = str(err)
            if not (isinstance(err, duckdb.IOException) and "lock" in message.lower()):
                raise FalstudyError(f"{db}: cannot open the results store: {one_line(err)}") from err
            if time.monotonic() >= deadline:
                holder = re.search(r"PID \d+", message)
                who = f" ({holder.group(0)})" if holder else ""
                raise FalstudyError(
                    f"{db} is open in another process{who} (a notebook or another ingest?); "
                    f"close it and rerun `{rerun}`"
                ) from None
            time.sleep(0.1)


def storage_version(results_dir_or_db: str | Path) -> str:
    """The storage format a store was written in, as DuckDB names it (e.g. ``v1.0.0+``)."""
    con = connect_readonly(results_dir_or_db)
    try:
        (tags,) = con.execute("SELECT tags FROM duckdb_databases() WHERE database_name = current_database()").fetchone()
    finally:
        con.close()
    return tags.get("storage_version", "unknown")


def connect_readonly(results_dir_or_db: str | Path, *, wait_s: float = 10.0) -> "duckdb.DuckDBPyConnection":
    """A read-only DuckDB connection to a results group's store, locked down like every results
    query (no other files, no settings changes: ``falstudy.store.sandbox``). Close it when done
    (or use ``with``): while it is open, no ingest can run."""
    db = resolve_db(results_dir_or_db)
    if not db.parent.is_dir():
        raise FalstudyError(f"{db.parent}: no such results folder; pass results/<name> (a sweep or train --name)")
    if not db.is_file():
        raise FalstudyError(
            f"{db}: no results store; run `falstudy ingest {db.parent}` first (or read the spool with spool_query)"
        )
    con = open_db(db, read_only=True, wait_s=wait_s, rerun="falstudy sql ...")
    lock_down(con)
    return con


def query(results_dir_or_db: str | Path, sql: str, params: Any = None, *, wait_s: float = 10.0) -> "pandas.DataFrame":
    """Run one SQL statement against the store, read-only, as a DataFrame.

        query("results/bypass", "SELECT variant, avg(final_val_loss) FROM runs GROUP BY 1")
    """
    from falstudy.store.sandbox import check_statement

    check_statement(sql)  # before waiting for the DB: a refused statement never needs it
    con = connect_readonly(results_dir_or_db, wait_s=wait_s)
    try:
        return execute(con, sql, params, str(resolve_db(results_dir_or_db)))
    finally:
        con.close()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _create_views(con: "duckdb.DuckDBPyConnection", results_dir: Path) -> list[Path]:
    """One view per spool table (documented columns always present, plus ``_file``); returns
    the files behind them."""
    found, _ = scan(results_dir)
    prefix = len(str(results_dir)) + 2  # substr is 1-based; skip the "/"
    for table, files in found.items():
        source = (f"read_parquet([{', '.join(_literal(str(f)) for f in files)}], "
                  f"union_by_name=true, filename={_literal(_SRC)})")
        have = {row[0].lower() for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
        spec = TABLES.get(table)
        missing = [c for c in spec.columns if c.name not in have] if spec else []
        columns = [f"* EXCLUDE ({_quote(_SRC)})"]
        columns += [f"CAST(NULL AS {c.type}) AS {_quote(c.name)}" for c in missing]
        columns.append(f"substr({_quote(_SRC)}, {prefix}) AS {FILE_COLUMN}")
        con.execute(f"CREATE VIEW {_quote(table)} AS SELECT {', '.join(columns)} FROM {source}")
    return [f for files in found.values() for f in files]


def spool_query(results_dir: str | Path, sql: str, params: Any = None) -> "pandas.DataFrame":
    """Run SQL over views of the spool's Parquet files, one view per table found (``runs``,
    ``metrics``, ...), without the DB: works while runs are still writing."""
    import duckdb

    from falstudy.store.sandbox import check_statement

    check_statement(sql)
    root = Path(results_dir)
    if not root.is_dir():
        raise FalstudyError(f"{root}: no such results folder")
    root = root.resolve()
    for attempt in range(2):  # a chunk deleted between listing and reading: list again
        # in memory (the DB file is never opened); nothing loads extensions behind our back
        con = duckdb.connect(config={"autoload_known_extensions": False, "autoinstall_known_extensions": False})
        try:
            files = _create_views(con, root)
            if not files:
                raise FalstudyError(f"{root}: no spool files (*.parquet) yet; train or sweep into it first")
            lock_down(con, files)
            return execute(con, sql, params, f"spool of {root}")
        except duckdb.Error as err:  # while creating the views
            if attempt == 0 and isinstance(err, duckdb.IOException):
                continue
            raise FalstudyError(f"{root}: cannot read the spool: {one_line(err)}") from err
        except FalstudyError as err:
            if attempt == 0 and isinstance(err.__cause__, duckdb.IOException):
                continue
            raise
        finally:
            con.close()
    raise AssertionError("unreachable")


def tables(results_dir: str | Path, *, spool: bool = False) -> list[str]:
    """The data tables of a results group: in the DB (default) or in the spool."""
    if spool:
        if not Path(results_dir).is_dir():
            raise FalstudyError(f"{results_dir}: no such results folder")
        return list(scan(results_dir)[0])
    sql = ("SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
           "AND NOT starts_with(table_name, '_') ORDER BY 1")
    return list(query(results_dir, sql)["table_name"])


def load_table(results_dir: str | Path, table: str, *, spool: bool = False) -> "pandas.DataFrame":
    """A whole table as a DataFrame, from the DB (default) or straight from the spool."""
    check_table_name(table)
    have = tables(results_dir, spool=spool)
    if table not in have:
        where = "spool" if spool else "store"
        raise FalstudyError(f"no table {table!r} in the {where} of {results_dir}; tables: {', '.join(have) or 'none'}")
    sql = f"SELECT * FROM {_quote(table)}"
    return spool_query(results_dir, sql) if spool else query(results_dir, sql)
