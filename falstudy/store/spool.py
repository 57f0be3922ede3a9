"""The spool: Parquet files that producers write without ever touching DuckDB.

A run writes into ``results/<name>/runs/<run_id>/`` (``falstudy.store.layout``); the sweep into
``results/<name>/sweep/``.
A file's table is its name up to the first ``-`` (or ``.parquet``): ``runs.parquet`` is a
rewritable file of table ``runs``; ``metrics-000050.parquet`` is an append-only chunk of table
``metrics``. Every write is atomic (a hidden temp file in the same folder, fsync, then
``os.replace``), so readers and the ingester see a file whole or not at all, and recorded in
the folder's hidden manifest (``falstudy.store.manifest``): the ingester loads only files listed
there.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from falstudy.atomic import atomic_write
from falstudy.errors import FalstudyError
from falstudy.store.schema import FILE_COLUMN, TABLES, arrow_type, validate_rows

if TYPE_CHECKING:
    import pyarrow

TABLE_RE = re.compile(r"^[a-z][a-z0-9_]*$")
PART_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SUFFIX = ".parquet"


def table_of(path: str | Path) -> str | None:
    """The table a spool file belongs to, or None if the file is not a spool file (hidden or
    temp files, other extensions, names that are not lowercase identifiers)."""
    name = Path(path).name
    if name.startswith(".") or not name.endswith(SUFFIX):
        return None
    table = name[: -len(SUFFIX)].split("-", 1)[0]
    return table if TABLE_RE.match(table) else None


def check_table_name(table: str) -> str:
    if not isinstance(table, str) or not TABLE_RE.match(table):
        raise FalstudyError(
            f"table name {table!r} is not a lowercase identifier; use letters, digits and _ starting with a letter"
        )
    return table


def scan(results_dir: str | Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """Spool files under ``results_dir`` by table (sorted), and the ``*.parquet`` files skipped
    because their names do not give a table. Hidden files and folders (temp files) are ignored."""
    found: dict[str, list[Path]] = {}
    skipped: list[Path] = []
    for folder, dirs, files in os.walk(results_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith(".") or not name.endswith(SUFFIX):
                continue
            table = table_of(name)
            if table is None:
                skipped.append(Path(folder, name))
            else:
                found.setdefault(table, []).append(Path(folder, name))
    return {t: sorted(found[t]) for t in sorted(found)}, sorted(skipped)


def _to_arrow(rows: Any, table: str | None) -> "pyarrow.Table":
    """Rows as an Arrow table; documented columns cast to their documented types."""
    import pyarrow as pa

    try:
        if isinstance(rows, pa.Table):
            data = rows
        elif hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # a pandas DataFrame
            data = pa.Table.from_pandas(rows, preserve_index=False)
        elif isinstance(rows, (list, tuple)):
            if not all(isinstance(r, dict) for r in rows):
                raise FalstudyError(f"rows for table {table!r} must be dicts (column -> value)")
            # pa.Table.from_pylist takes the columns of the first row only: union them, in order seen
            names = list(dict.fromkeys(k for r in rows for k in r))
            data = pa.table({str(n): [r.get(n) for r in rows] for n in names}) if names else pa.table({})
        else:
            raise FalstudyError(
                f"rows for table {table!r} must be a list of dicts, a DataFrame or an Arrow table, not {type(rows).__name__}"
            )
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:
        raise FalstudyError(f"rows for table {table!r} mix types within a column: {err}") from None

    spec = TABLES.get(table) if table else None
    if data.num_columns == 0:
        if spec is None:
            raise FalstudyError(f"nothing to write for table {table!r}: no rows and no documented columns")
        return pa.table({c.name: pa.array([], arrow_type(c.type)) for c in spec.columns})

    lowered = [str(n).lower() for n in data.column_names]
    if len(set(lowered)) != len(lowered):
        raise FalstudyError(f"rows for table {table!r} repeat a column name (SQL names ignore case): {data.column_names}")
    if FILE_COLUMN in lowered:
        raise FalstudyError(f"column {FILE_COLUMN!r} is reserved for the store; rename it in the rows for table {table!r}")
    if spec is None:
        return data

    types = {c.name: c.type for c in spec.columns}
    for i, name in enumerate(data.column_names):
        if name in types and data.schema.field(i).type != arrow_type(types[name]):
            try:
                column = data.column(i).cast(arrow_type(types[name]))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as err:
                raise FalstudyError(
                    f"{table}.{name}: {data.schema.field(i).type} values cannot be stored as {types[name]} ({err})"
                ) from None
            data = data.set_column(i, name, column)
    nulls = {n for n in data.column_names if data.column(n).null_count}
    problem = validate_rows(table, data.column_names, nulls)
    if problem:
        raise FalstudyError(problem)
    return data


def write_parquet(path: str | Path, rows: Any, *, table: str | None = None) -> Path:
    """Write ``rows`` (list of dicts, DataFrame or Arrow table) to ``path`` atomically.

    ``table`` (default: from the file name) selects the documented column types to cast to."""
    import pyarrow.parquet as pq

    from falstudy.store import manifest

    path = Path(path)
    data = _to_arrow(rows, table or table_of(path))

    def commit(tmp: Path, final: Path) -> None:
        sha256 = manifest.digest(tmp)
        with manifest.folder_lock(final.parent):  # the ingester checks file and manifest together
            os.replace(tmp, final)
            manifest.record(final, sha256)

    with atomic_write(path, commit=commit) as fh:
        pq.write_table(data, fh)
    return path


class RunSpool:
    """The spool folder of one run (or of the sweep process).

    ``write_table("runs", rows)`` writes ``runs.parquet`` (rewritable: the ingester replaces its
    rows when it changes); ``write_table("metrics", rows, part=50)`` writes the append-only chunk
    ``metrics-000050.parquet``. ``append`` buffers rows and ``flush(part)`` writes them as chunks,
    so a crash or kill loses at most the rows appended since the last flush.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._buffers: dict[str, list[dict[str, Any]]] = {}

    def path(self, table: str, part: str | int | None = None) -> Path:
        check_table_name(table)
        if part is None:
            return self.run_dir / f"{table}{SUFFIX}"
        if isinstance(part, bool) or not isinstance(part, (int, str)):
            raise FalstudyError(f"part {part!r} must be an int (e.g. the step) or a short string")
        if isinstance(part, int):
            if part < 0:
                raise FalstudyError(f"part {part} must not be negative")
            part = f"{part:06d}"  # zero-padded so chunks sort by step
        elif not PART_RE.match(part):
            raise FalstudyError(f"part {part!r} must be letters, digits, _ . - (starting with a letter or digit)")
        return self.run_dir / f"{table}-{part}{SUFFIX}"

    def write_table(self, table: str, rows: Any, part: str | int | None = None) -> Path:
        return write_parquet(self.path(table, part), rows, table=table)

    def chunks(self, table: str) -> list[Path]:
        """The chunk files of ``table`` here (``<table>-<part>.parquet``), sorted by name (by step
        for int parts)."""
        return sorted(self.run_dir.glob(f"{check_table_name(table)}-*{SUFFIX}"))

    def drop_chunks_after(self, step: int, tables: tuple[str, ...] = ("metrics", "timings")) -> None:
        """Remove the step-numbered chunks of ``tables`` past ``step`` (a resumed run writes them again)."""
        for table in tables:
            for path in self.chunks(table):
                if int(path.stem.split("-")[1]) > step:
                    path.unlink()

    def append(self, table: str, row: dict[str, Any]) -> None:
        check_table_name(table)
        self._buffers.setdefault(table, []).append(dict(row))

    def pending(self, table: str | None = None) -> int:
        """Rows appended but not yet flushed (for one table, or all)."""
        if table is not None:
            return len(self._buffers.get(table, ()))
        return sum(len(rows) for rows in self._buffers.values())

    def flush(self, part: str | int) -> list[Path]:
        """Write each table's buffered rows as ``<table>-<part>.parquet``; returns the files.
        A table's buffer is cleared only once its file is written."""
        written = []
        for table in list(self._buffers):
            rows = self._buffers[table]
            if rows:
                written.append(self.write_table(table, rows, part))
            del self._buffers[table]
        return written


class MetricsBuffer:
    """Tidy ``metrics`` rows of one run, buffered and flushed as chunks.

        buf = MetricsBuffer(RunSpool(run_dir), run_id, tokens_per_step=B * T)
        buf.log(step, "train", loss=2.1, lr=3e-4)
        buf.flush()          # -> metrics-<last logged step>.parquet
    """

    def __init__(self, spool: RunSpool, run_id: str, *, tokens_per_step: int | None = None, table: str = "metrics") -> None:
        self.spool, self.run_id, self.table = spool, run_id, check_table_name(table)
        self.tokens_per_step = tokens_per_step
        self._rows: list[dict[str, Any]] = []
        self._t0 = time.perf_counter()

    def log(self, step: int, split: str, *, tokens: int | None = None, elapsed_s: float | None = None,
            **values: float) -> list[dict[str, Any]]:
        """Buffer one row per value; returns the rows (the trainer keeps them for its caller)."""
        if tokens is None and self.tokens_per_step is not None:
            tokens = step * self.tokens_per_step
        rows = []
        for name, value in values.items():
            rows.append({"run_id": self.run_id, "step": step, "split": split, "name": name, "value": float(value),
                         "tokens": tokens,
                         "elapsed_s": time.perf_counter() - self._t0 if elapsed_s is None else elapsed_s})
        self._rows.extend(rows)
        return rows

    def __len__(self) -> int:
        return len(self._rows)

    def flush(self, part: str | int | None = None) -> Path | None:
        """Write the buffered rows as one chunk (default part: the last step logged)."""
        if not self._rows:
            return None
        path = self.spool.write_table(self.table, self._rows, self._rows[-1]["step"] if part is None else part)
        self._rows = []
        return path
