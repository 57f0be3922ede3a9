"""The read-only query engine behind ``falstudy sql``, ``query``, ``spool_query`` and ``Results.sql``.

Two locks, each enough on its own for most doors, together for all of them:

1. ``check_statement``: exactly one statement, and it must be a query (``SELECT``, ``WITH``,
   ``FROM``, ``VALUES``, ``DESCRIBE``, ``SHOW``, ``SUMMARIZE``, or ``EXPLAIN`` of one). ``COPY``,
   ``EXPORT``, ``ATTACH``, ``SET``/``PRAGMA``/``RESET``, ``CALL``/``CHECKPOINT``, DDL, DML,
   ``INSTALL``/``LOAD`` and transactions are refused before DuckDB runs anything (so ``INSTALL``
   never tries a download).
2. ``lock_down``: DuckDB's own file sandbox. ``enable_external_access = false`` with
   ``allowed_paths`` set to the exact files the engine needs (the spool files behind the views; the
   open DB file is always allowed), no temp directory, no extension auto-loading, and then
   ``lock_configuration = true`` so no ``SET`` can undo any of it. ``allowed_directories`` is not
   used: DuckDB lets a query write inside an allowed directory (``COPY ... TO`` into it works),
   while an allowed path outside the list cannot even be created.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Iterable

from falstudy.errors import FalstudyError

if TYPE_CHECKING:
    import duckdb
    import pandas

EXAMPLE = 'e.g. "SELECT variant, avg(final_val_loss) FROM runs GROUP BY 1"'
QUERIES = "SELECT, WITH, FROM, VALUES, DESCRIBE, SHOW, SUMMARIZE and EXPLAIN"

# why each kind of statement is refused (keys: duckdb.StatementType names)
_WHY = {
    "COPY": "it writes files; print with --csv/--json instead (or Results.sql(...).to_csv(path) in Python)",
    "EXPORT": "it writes files; print with --csv/--json instead",
    "ATTACH": "it opens other database files; query one results group at a time (--results)",
    "DETACH": "the results store stays attached",
    "SET": "settings are fixed for read-only queries (SET, RESET, PRAGMA name=value, USE)",
    "VARIABLE_SET": "settings are fixed for read-only queries",
    "PRAGMA": "PRAGMA may change settings; use SELECT * FROM pragma_table_info('runs') or SHOW TABLES",
    "CALL": "CALL and CHECKPOINT run procedures; use SELECT * FROM <table function>(...)",
    "LOAD": "extensions are neither installed nor loaded (no downloads)",
    "TRANSACTION": "queries run one at a time; there is nothing to commit",
    "MULTI": "it creates types before it runs (a PIVOT without an IN list); list the values, e.g. "
             "PIVOT runs ON status IN ('completed', 'failed') USING count(*)",
}
_LEADING_COMMENTS = re.compile(r"^(\s+|--[^\n]*(\n|$)|/\*.*?\*/)*", re.S)
_CHANGES = "it would change the store (it is written only by `falstudy ingest` from the spool)"


def _kind(statement: Any) -> str:
    return str(statement.type).rsplit(".", 1)[-1]


def check_statement(sql: Any) -> None:
    """Refuse ``sql`` unless it is exactly one read-only query (one line, ``FalstudyError``)."""
    import duckdb

    if not isinstance(sql, str) or not sql.strip():
        raise FalstudyError(f"empty SQL statement; pass one query, {EXAMPLE}")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as err:
        raise FalstudyError(f"SQL error: {one_line(err)}") from err
    if not statements:
        raise FalstudyError(f"no SQL statement (only comments or whitespace); pass one query, {EXAMPLE}")
    if len(statements) > 1:
        raise FalstudyError(f"{len(statements)} SQL statements; pass one query at a time, {EXAMPLE}")
    statement = statements[0]
    kind = _kind(statement)
    if kind == "EXPLAIN":  # EXPLAIN ANALYZE runs its statement: the inner one must be a query too
        inner = re.sub(r"^\s*explain(\s+analyze)?\b", "", statement.query, count=1, flags=re.IGNORECASE)
        try:
            inner_statements = duckdb.extract_statements(inner)
        except duckdb.Error as err:
            raise FalstudyError(f"SQL error: {one_line(err)}") from err
        kind = _kind(inner_statements[0]) if len(inner_statements) == 1 else "MULTI"
    if kind == "SELECT":
        return
    text = _LEADING_COMMENTS.sub("", statement.query)
    word = (re.match(r"\w+", text) or re.match(r"\S+", text + "?")).group(0).upper()
    why = _WHY.get(kind, _CHANGES)
    raise FalstudyError(f"{word} is not allowed: results queries are read-only ({QUERIES} only); {why}")


def one_line(err: BaseException) -> str:
    """DuckDB's message on one line (its caret-marker lines dropped)."""
    lines = [line.strip() for line in str(err).splitlines()]
    return " | ".join(line for line in lines if line and set(line) - set("^ "))


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def lock_down(con: "duckdb.DuckDBPyConnection", allowed_paths: Iterable[str] = ()) -> None:
    """Close ``con``'s side doors: only ``allowed_paths`` (and its open database) can be opened,
    no extension loads, and no setting can change any more."""
    paths = sorted({str(p) for p in allowed_paths})
    if paths:
        con.execute(f"SET allowed_paths = [{', '.join(_literal(p) for p in paths)}]")
    con.execute("SET temp_directory = ''")  # else <db>.tmp or ./.tmp would be writable
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def execute(con: "duckdb.DuckDBPyConnection", sql: str, params: Any, where: str) -> "pandas.DataFrame":
    """Check ``sql``, run it on a locked-down ``con`` and return its rows as a DataFrame."""
    import duckdb
    import pandas as pd

    check_statement(sql)
    try:
        result = con.execute(sql, params)
        if result is None or con.description is None:
            return pd.DataFrame()
        return result.df()  # drains the (streamed) result
    except duckdb.PermissionException as err:
        target = re.search(r'"([^"]+)"', str(err))
        what = f"opening {target.group(1)}" if target else "that"
        raise FalstudyError(f"{what} is not allowed: results queries read only the results group's own "
                            f"files ({where})") from err
    except duckdb.Error as err:
        hint = ""
        if isinstance(err, duckdb.CatalogException):  # DuckDB may suggest a system table instead
            names = con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
                                "AND NOT starts_with(table_name, '_') ORDER BY 1").fetchall()
            hint = f" (tables: {', '.join(n for (n,) in names) or 'none'})"
        raise FalstudyError(f"SQL error ({where}): {one_line(err)}{hint}") from err
