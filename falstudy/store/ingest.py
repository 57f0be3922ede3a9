"""Ingest: load the spool's new and changed Parquet files into ``<results_dir>/falstudy.duckdb``.

The DB mirrors the spool. Each file is remembered in ``_ingested_files`` with its size, mtime
and inode; every data row carries ``_file`` (its file, relative to the results group). So:
- an unchanged file is skipped (ingesting twice adds nothing);
- a rewritten file (``runs.parquet`` when a run ends) replaces that file's rows;
- a deleted file (the trainer drops metric chunks past a checkpoint when it resumes) has its
  rows removed.
All of it happens in one transaction: a crash mid-ingest leaves the previous state. Ingesters
serialise on a file lock (``filelock``, an flock) of ``falstudy.duckdb.lock``; a DB held by another process (a notebook)
is waited for briefly, then reported.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from falstudy.errors import FalstudyError
from falstudy.store.query import _SRC, _quote, db_path, one_line, open_db
from falstudy.store.schema import FILE_COLUMN, FILES_TABLE, INGESTED_FILES_DOC, TABLES, arrow_type
from falstudy.store.spool import scan

if TYPE_CHECKING:
    import duckdb

_NULL = '"NULL"'  # DuckDB's type for an all-null Parquet column of unknown type


@contextlib.contextmanager
def _exclusive(lock_path: Path, timeout_s: float) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (an flock: released when the process dies, too)."""
    from filelock import FileLock, Timeout

    try:
        with FileLock(lock_path, timeout=timeout_s):
            yield
    except Timeout:
        raise FalstudyError(
            f"another ingest has held {lock_path} for {timeout_s:.0f}s; "
            f"wait for it (or end it) and rerun `falstudy ingest {lock_path.parent}`"
        ) from None


class Ingested(dict):
    """Rows loaded per table (a dict), plus ``refused``: spool files not loaded, with why."""

    def __init__(self, added: dict[str, int], refused: dict[Path, str]) -> None:
        super().__init__(added)
        self.refused = refused


def schema_problem(path: Path, table: str) -> str | None:
    """Why a spool file cannot hold rows of ``table`` (unreadable, a documented column of the
    wrong type, a required one missing, the reserved ``_file``), or None."""
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except FileNotFoundError:
        return None  # deleted since the scan: treated as gone
    except Exception as err:  # not Parquet, truncated
        return f"not a readable Parquet file ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    names = {n.lower(): n for n in schema.names}
    if FILE_COLUMN in names:
        return f"it has the reserved column {FILE_COLUMN!r}"
    spec = TABLES.get(table)
    if spec is None:
        return None
    missing = [c for c in spec.required if c not in names]
    if missing:
        return f"it lacks required column(s) {', '.join(missing)} of table {table!r}"
    for column in spec.columns:
        name = names.get(column.name)
        if name is not None and schema.field(name).type != arrow_type(column.type) and \
                str(schema.field(name).type) != "null":
            return f"column {column.name} is {schema.field(name).type}, not {column.type} as table {table!r} documents"
    return None


def _trusted(found: dict[str, list[Path]]) -> tuple[dict[str, list[Path]], dict[Path, str]]:
    """The files falstudy wrote (listed in their folder's manifest, schema as documented)."""
    from falstudy.store.manifest import untrusted

    refused = untrusted([p for files in found.values() for p in files])
    for table, files in found.items():
        for path in files:
            if path not in refused:
                problem = schema_problem(path, table)
                if problem:
                    refused[path] = problem
    kept = {t: [p for p in files if p not in refused] for t, files in found.items()}
    return {t: files for t, files in kept.items() if files}, refused


def ingest(results_dir: str | Path, *, wait_s: float = 10.0, lock_timeout_s: float = 600.0,
           adopt: bool = False) -> Ingested:
    """Load new or changed spool files of a results group into its DuckDB file.

    Returns the rows loaded per table (tables with no new or changed files are left out, so a
    second ingest returns ``{}``). Rows of rewritten or deleted files are replaced or removed.
    Only files falstudy wrote are loaded (``falstudy.store.manifest``): the others are left out,
    warned about, and listed in the result's ``refused`` (path -> why); rows loaded from a file
    before it was tampered with are removed.
    ``wait_s``: how long to wait for a DB held by another process; ``lock_timeout_s``: for
    another ingest of the same group to finish. ``adopt``: first trust the files of spool folders
    that have no manifest at all (written by a falstudy from before manifests).
    """
    import duckdb

    root = Path(results_dir)
    if not root.is_dir():
        raise FalstudyError(f"{root}: no such results folder; pass results/<name> (a sweep or train --name)")
    root = root.resolve()
    db = db_path(root)
    with _exclusive(db.with_name(db.name + ".lock"), lock_timeout_s):
        con = open_db(db, read_only=False, wait_s=wait_s, rerun=f"falstudy ingest {root}")
        try:
            for attempt in range(2):
                found, skipped = scan(root)  # after taking the lock: files may have come while waiting
                if adopt:
                    from falstudy.store.manifest import adopt as adopt_files

                    adopt_files([p for files in found.values() for p in files])
                found, refused = _trusted(found)
                try:
                    added = _sync(con, root, found)
                    break
                except FalstudyError as err:  # a file deleted while we read it (a resuming run): once more
                    if attempt == 0 and isinstance(err.__cause__, duckdb.IOException):
                        continue
                    raise
        finally:
            con.close()
    for path in skipped:
        warnings.warn(f"{path}: not ingested: a spool file's name must start with a lowercase table name",
                      stacklevel=2)
    for path, why in refused.items():
        warnings.warn(f"{path}: refused, not ingested: {why}; remove it (only files falstudy writes are loaded)",
                      stacklevel=2)
    return Ingested(added, refused)


def _sync(con: "duckdb.DuckDBPyConnection", root: Path, found: dict[str, list[Path]]) -> dict[str, int]:
    current: dict[str, tuple[str, os.stat_result]] = {}  # relative path -> (table, stat)
    for table, files in found.items():
        for path in files:
            try:
                current[path.relative_to(root).as_posix()] = (table, path.stat())
            except FileNotFoundError:  # deleted since the scan: treat as gone
                pass

    con.execute("BEGIN TRANSACTION")
    try:
        columns = ", ".join(f"{name} {type_}" for name, type_, _ in INGESTED_FILES_DOC)
        con.execute(f"CREATE TABLE IF NOT EXISTS {FILES_TABLE} ({columns})")
        known = {
            path: (size, mtime_ns, inode, table)
            for path, size, mtime_ns, inode, table in con.execute(
                f"SELECT path, size, mtime_ns, inode, table_name FROM {FILES_TABLE}").fetchall()
        }
        stale: dict[str, list[str]] = {}  # table -> files whose old rows go
        load: dict[str, list[str]] = {}  # table -> files to (re)load
        for rel, (table, st) in current.items():
            old = known.get(rel)
            if old is not None and old[:3] == (st.st_size, st.st_mtime_ns, st.st_ino):
                continue
            load.setdefault(table, []).append(rel)
            if old is not None:
                stale.setdefault(old[3], []).append(rel)
        for rel, old in known.items():
            if rel not in current:
                stale.setdefault(old[3], []).append(rel)

        existing = _existing_tables(con)
        for table, rels in stale.items():
            if table in existing:
                con.execute(f"DELETE FROM {_quote(table)} WHERE list_contains(?, {FILE_COLUMN})", [rels])
        forget = [rel for rels in stale.values() for rel in rels]
        if forget:
            con.execute(f"DELETE FROM {FILES_TABLE} WHERE list_contains(?, path)", [forget])

        added: dict[str, int] = {}
        for table, rels in load.items():
            counts = _load(con, root, table, rels, exists=table in existing)
            added[table] = sum(counts.values())
            stats = [current[rel][1] for rel in rels]
            # one statement with list parameters: executemany costs a round trip per row
            con.execute(
                f"INSERT INTO {FILES_TABLE} SELECT unnest(?), unnest(?), unnest(?), unnest(?), ?, unnest(?), now()",
                [rels, [st.st_size for st in stats], [st.st_mtime_ns for st in stats],
                 [st.st_ino for st in stats], table, [counts.get(rel, 0) for rel in rels]],
            ).fetchall()
        con.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(Exception):
            con.execute("ROLLBACK")
        raise
    return added


def _existing_tables(con: "duckdb.DuckDBPyConnection") -> set[str]:
    rows = con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()
    return {r[0] for r in rows}


def _columns(con: "duckdb.DuckDBPyConnection", table: str) -> dict[str, str]:
    """Lower-cased column name -> type, for an existing table."""
    rows = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'main' AND table_name = ? ORDER BY ordinal_position", [table]).fetchall()
    return {name.lower(): type_ for name, type_ in rows}


def _supertype(con: "duckdb.DuckDBPyConnection", a: str, b: str) -> str:
    """The type DuckDB would unify two column types to (e.g. BIGINT + DOUBLE -> DOUBLE)."""
    rows = con.execute(f"DESCRIBE SELECT * FROM (SELECT NULL::{a} AS x UNION ALL SELECT NULL::{b} AS x)").fetchall()
    return rows[0][1]


def _load(con: "duckdb.DuckDBPyConnection", root: Path, table: str, rels: list[str], exists: bool) -> dict[str, int]:
    """Insert the rows of ``rels`` (files of one table), creating or widening the table first.
    Returns rows per file."""
    import duckdb

    files = [str(root / rel) for rel in rels]
    source = f"read_parquet(?, union_by_name=true, filename='{_SRC}')"
    try:
        incoming = [(name, type_) for name, type_, *_ in
                    con.execute(f"DESCRIBE SELECT * FROM {source}", [files]).fetchall() if name != _SRC]
        # ours, not the file's; an all-null column of unknown type waits for a typed file
        incoming = [(n, t) for n, t in incoming if n.lower() != FILE_COLUMN and t != _NULL]
        _fit_table(con, table, incoming, exists)
        select = ", ".join(_quote(n) for n, _ in incoming)
        con.execute(
            f"INSERT INTO {_quote(table)} BY NAME SELECT {select + ', ' if select else ''}"
            f"substr({_quote(_SRC)}, ?) AS {FILE_COLUMN} FROM {source}",
            [len(str(root)) + 2, files],
        ).fetchall()
    except duckdb.Error as err:
        example = rels[0] if len(rels) == 1 else f"{len(rels)} files such as {rels[0]}"
        raise FalstudyError(
            f"cannot ingest table {table!r} from {example} in {root}: {one_line(err)}; fix or remove the file and rerun"
        ) from err
    rows = con.execute(
        f"SELECT {FILE_COLUMN}, count(*) FROM {_quote(table)} WHERE list_contains(?, {FILE_COLUMN}) GROUP BY 1",
        [rels]).fetchall()
    return dict(rows)


def _fit_table(con: "duckdb.DuckDBPyConnection", table: str, incoming: list[tuple[str, str]], exists: bool) -> None:
    """Create the table (documented columns first, then the files' extra ones, then ``_file``),
    or add the files' new columns and widen undocumented ones whose type grew."""
    spec = TABLES.get(table)
    documented = {c.name: c.type for c in spec.columns} if spec else {}
    if not exists:
        columns = list(documented.items()) + [(n, t) for n, t in incoming if n.lower() not in documented]
        columns.append((FILE_COLUMN, "VARCHAR"))
        con.execute(f"CREATE TABLE {_quote(table)} ({', '.join(f'{_quote(n)} {t}' for n, t in columns)})")
        return
    have = _columns(con, table)
    for name, type_ in incoming:
        old = have.get(name.lower())
        if old is None:
            con.execute(f"ALTER TABLE {_quote(table)} ADD COLUMN {_quote(name)} {type_}")
        elif old != type_ and name.lower() not in documented:  # documented types stay; inserts cast
            wider = _supertype(con, old, type_)
            if wider != old:
                con.execute(f"ALTER TABLE {_quote(table)} ALTER COLUMN {_quote(name)} SET DATA TYPE {wider}")
