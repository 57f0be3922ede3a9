"""Hostile SQL for the read-only results queries: (label, sql, expected) rows.

``sql`` may name ``{group}`` (the results group) and ``{outside}`` (a folder next to it, holding
``other.parquet`` and ``other.duckdb``). ``expected`` is a piece of the one-line error. Every row
must be refused with exit code 2, one line on stderr, and leave the store and the file tree
(the group, the folder around it, the working directory and $HOME) unchanged; run by
tests/test_sql_sandbox.py, in DB mode, in spool mode and through ``Results.sql``.
"""

NOT_ALLOWED = "is not allowed: results queries are read-only"
OUTSIDE = "is not allowed: results queries read only the results group's own files"

HOSTILE_SQL: list[tuple[str, str, str]] = [
    # writing files
    ("copy to csv", "COPY (SELECT * FROM runs) TO 'out.csv'", f"COPY {NOT_ALLOWED}"),
    ("copy into the spool", "COPY (SELECT * FROM runs) TO '{group}/runs/evil/runs.parquet' (FORMAT parquet)",
     f"COPY {NOT_ALLOWED}"),
    ("copy a table", "COPY runs TO '{outside}/dump.csv'", f"COPY {NOT_ALLOWED}"),
    ("export database", "EXPORT DATABASE '{outside}/export'", f"EXPORT {NOT_ALLOWED}"),
    ("explain analyze copy", "EXPLAIN ANALYZE COPY runs TO 'out.csv'", f"EXPLAIN {NOT_ALLOWED}"),
    ("copy behind a comment", "/* harmless */ COPY runs TO 'out.csv'", f"COPY {NOT_ALLOWED}"),
    # reading outside the group
    ("read_csv passwd", "SELECT * FROM read_csv('/etc/passwd')", f"opening /etc/passwd {OUTSIDE}"),
    ("read_text passwd", "SELECT * FROM read_text('/etc/passwd')", f"opening /etc/passwd {OUTSIDE}"),
    ("read_blob", "SELECT * FROM read_blob('/etc/hostname')", f"opening /etc/hostname {OUTSIDE}"),
    ("sniff_csv", "SELECT * FROM sniff_csv('/etc/passwd')", f"opening /etc/passwd {OUTSIDE}"),
    ("replacement scan", "SELECT * FROM '/etc/passwd'", "/etc/passwd does not exist"),  # file scans are off
    ("glob root", "SELECT * FROM glob('/**')", f"opening /** {OUTSIDE}"),
    ("parquet next door", "SELECT * FROM read_parquet('{outside}/other.parquet')", OUTSIDE),
    ("read in a subquery", "SELECT (SELECT count(*) FROM read_text('/etc/passwd')) AS n", OUTSIDE),
    # other databases
    ("attach read-write", "ATTACH '{outside}/other.duckdb' AS other", f"ATTACH {NOT_ALLOWED}"),
    ("attach new file", "ATTACH '{outside}/new.duckdb'", f"ATTACH {NOT_ALLOWED}"),
    ("attach memory", "ATTACH ':memory:' AS scratch", f"ATTACH {NOT_ALLOWED}"),
    ("detach", "DETACH other", f"DETACH {NOT_ALLOWED}"),
    # settings
    ("set threads", "SET threads = 1", f"SET {NOT_ALLOWED}"),
    ("set external access", "SET enable_external_access = true", f"SET {NOT_ALLOWED}"),
    ("reset lock", "RESET lock_configuration", f"RESET {NOT_ALLOWED}"),
    ("pragma setting", "PRAGMA threads = 1", f"PRAGMA {NOT_ALLOWED}"),
    ("pragma call", "PRAGMA force_checkpoint", f"PRAGMA {NOT_ALLOWED}"),
    ("set variable", "SET VARIABLE x = 1", f"SET {NOT_ALLOWED}"),
    ("use", "USE memory", f"USE {NOT_ALLOWED}"),
    ("checkpoint", "CHECKPOINT", f"CHECKPOINT {NOT_ALLOWED}"),
    ("call", "CALL checkpoint()", f"CALL {NOT_ALLOWED}"),
    # extensions
    ("install", "INSTALL httpfs", f"INSTALL {NOT_ALLOWED}"),
    ("load", "LOAD httpfs", f"LOAD {NOT_ALLOWED}"),
    # changing the store (or the spool's views)
    ("drop table", "DROP TABLE runs", f"DROP {NOT_ALLOWED}"),
    ("drop view", "DROP VIEW runs", f"DROP {NOT_ALLOWED}"),
    ("create table as", "CREATE TABLE x AS SELECT * FROM runs", f"CREATE {NOT_ALLOWED}"),
    ("create temp table", "CREATE TEMP TABLE t AS SELECT 1 AS a", f"CREATE {NOT_ALLOWED}"),
    ("create or replace view", "CREATE OR REPLACE VIEW runs AS SELECT 1 AS a", f"CREATE {NOT_ALLOWED}"),
    ("create macro", "CREATE MACRO m(a) AS a + 1", f"CREATE {NOT_ALLOWED}"),
    ("insert", "INSERT INTO runs (run_id, name, status) VALUES ('x', 'x', 'completed')", f"INSERT {NOT_ALLOWED}"),
    ("update", "UPDATE runs SET status = 'completed'", f"UPDATE {NOT_ALLOWED}"),
    ("delete", "DELETE FROM runs", f"DELETE {NOT_ALLOWED}"),
    ("alter", "ALTER TABLE runs ADD COLUMN x INT", f"ALTER {NOT_ALLOWED}"),
    ("pivot creating types", "PIVOT runs ON status USING count(*)", "list the values"),
    ("transaction", "BEGIN TRANSACTION", f"BEGIN {NOT_ALLOWED}"),
    ("two statements", "SELECT 1; DROP TABLE runs", "2 SQL statements; pass one query at a time"),
    ("query() of a write", "SELECT * FROM query('COPY runs TO ''out.csv''')", "SQL error"),
    # not a statement at all
    ("comment only", "-- nothing", "no SQL statement (only comments or whitespace)"),
    ("block comment only", "/* nothing */", "no SQL statement (only comments or whitespace)"),
    ("blank", "   ", "empty SQL statement"),
]
