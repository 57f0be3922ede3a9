"""The results store: atomic spool writes, idempotent ingest into DuckDB, read-only queries."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from falstudy.errors import FalstudyError
from falstudy.store import (
    MetricsBuffer,
    RunSpool,
    connect_readonly,
    db_path,
    ingest,
    load_table,
    query,
    spool_query,
    tables,
    write_parquet,
)
from falstudy.store.schema import TABLES, markdown
from falstudy.store.spool import table_of


def _run_row(run_id: str, status: str = "running", **extra) -> dict:
    return {"run_id": run_id, "name": "g", "status": status, "variant": "fal", "seed": 0, **extra}


def _spool_run(root: Path, run_id: str, steps=(10, 20), status="completed") -> RunSpool:
    spool = RunSpool(root / "runs" / run_id)
    spool.write_table("runs", [_run_row(run_id, status, final_val_loss=2.0)])
    for step in steps:
        spool.write_table("metrics", [{"run_id": run_id, "step": step, "split": s, "name": "loss", "value": 3.0 - step / 100}
                                      for s in ("train", "val")], part=step)
    return spool


def _count(root: Path, table: str) -> int:
    return int(query(root, f"SELECT count(*) AS n FROM {table}").n[0])


def _rows(df) -> list[list]:
    """DataFrame rows as lists, with pandas' missing values (NaN, <NA>) as None."""
    return df.astype(object).where(df.notna(), None).values.tolist()


def _hidden(folder: Path) -> list[str]:
    """Hidden files other than the manifest and its lock (temp files)."""
    return [p.name for p in folder.rglob(".*") if p.name not in (".manifest.json", ".manifest.lock")]


# --- spool -----------------------------------------------------------------------------------

def test_write_is_atomic_and_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = write_parquet(tmp_path / "runs" / "r" / "runs.parquet", [_run_row("r")])
    assert pq.read_table(path).column("status").to_pylist() == ["running"]

    def torn_write(table, where, **kw):  # dies halfway through writing
        where.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", torn_write)
    with pytest.raises(OSError, match="disk full"):
        write_parquet(path, [_run_row("r", "completed")])
    assert pq.read_table(path).column("status").to_pylist() == ["running"]  # old file, whole
    assert _hidden(tmp_path) == []  # no temp file left behind


def test_table_naming():
    assert table_of("runs/r/runs.parquet") == "runs"
    assert table_of("metrics-000050.parquet") == "metrics"
    assert table_of("probes-cka-final.parquet") == "probes"
    assert table_of(".metrics-1.parquet.123-ab.tmp") is None  # temp files
    assert table_of("Runs.parquet") is None and table_of("runs.csv") is None
    spool = RunSpool("x")
    assert spool.path("metrics", 50).name == "metrics-000050.parquet"
    assert spool.path("probes", "cka").name == "probes-cka.parquet"
    assert spool.path("runs").name == "runs.parquet"
    for bad in ("Metrics", "my-table", "_files", "1x"):
        with pytest.raises(FalstudyError, match="lowercase identifier"):
            spool.path(bad)
    with pytest.raises(FalstudyError, match="part"):
        spool.path("metrics", "../x")


def test_documented_columns_get_their_types_and_required_ones_are_checked(tmp_path):
    spool = RunSpool(tmp_path)
    path = spool.write_table("runs", [_run_row("r", final_val_loss=None)])
    schema = pq.read_schema(path)
    assert str(schema.field("final_val_loss").type) == "double"  # not "null"
    assert str(schema.field("seed").type) == "int64"
    with pytest.raises(FalstudyError, match="required column.*value"):
        spool.write_table("metrics", [{"run_id": "r", "step": 1, "split": "val", "name": "loss"}], part=1)
    with pytest.raises(FalstudyError, match=r"metrics.step: .*BIGINT"):
        spool.write_table("metrics", [{"run_id": "r", "step": 1.5, "split": "val", "name": "loss", "value": 1.0}], part=1)
    with pytest.raises(FalstudyError, match="_file.*reserved"):
        spool.write_table("extra", [{"_file": "x"}])
    with pytest.raises(FalstudyError, match="mix types"):
        spool.write_table("extra", [{"a": 1}, {"a": "x"}])
    # rows with different keys: every column kept (pyarrow's from_pylist would drop later keys)
    path = spool.write_table("extra", [{"a": 1}, {"a": 2, "b": "x"}])
    assert pq.read_table(path).to_pylist() == [{"a": 1, "b": None}, {"a": 2, "b": "x"}]
    # no rows of a documented table: an empty file with the documented columns
    path = spool.write_table("probes", [], part=5)
    assert pq.read_table(path).num_rows == 0 and "metric" in pq.read_schema(path).names


def test_buffers_flush_as_chunks(tmp_path):
    spool = RunSpool(tmp_path / "r")
    buf = MetricsBuffer(spool, "r", tokens_per_step=64)
    buf.log(5, "train", loss=3.0, lr=1e-3)
    buf.log(10, "val", loss=2.5)
    assert buf.flush().name == "metrics-000010.parquet" and len(buf) == 0
    assert buf.flush() is None  # nothing pending
    buf.log(20, "val", loss=2.0)
    buf.flush()
    assert sorted(p.name for p in (tmp_path / "r").glob("*.parquet")) == ["metrics-000010.parquet", "metrics-000020.parquet"]
    rows = pq.read_table(tmp_path / "r" / "metrics-000010.parquet").to_pylist()
    assert [(r["step"], r["split"], r["name"], r["value"], r["tokens"]) for r in rows] == [
        (5, "train", "loss", 3.0, 320), (5, "train", "lr", 1e-3, 320), (10, "val", "loss", 2.5, 640)]

    spool.append("timings", {"run_id": "r", "kind": "all_reduce", "count": 4, "rank": 0})
    spool.append("timings", {"run_id": "r", "kind": "all_reduce", "count": 6, "rank": 1})
    assert spool.pending() == 2
    assert [p.name for p in spool.flush(30)] == ["timings-000030.parquet"]
    assert spool.pending() == 0 and spool.flush(40) == []


# --- ingest ----------------------------------------------------------------------------------

def test_ingest_is_idempotent_and_follows_rewrites_additions_and_deletions(tmp_path):
    a = _spool_run(tmp_path, "a", status="running")
    _spool_run(tmp_path, "b")
    assert ingest(tmp_path) == {"runs": 2, "metrics": 8}
    assert tables(tmp_path) == ["metrics", "runs"]
    assert ingest(tmp_path) == {}
    assert (_count(tmp_path, "runs"), _count(tmp_path, "metrics")) == (2, 8)

    # the run ends: runs.parquet is rewritten (with a new column), a chunk is added
    a.write_table("runs", [_run_row("a", "completed", final_val_loss=1.5, tp=2, note="done")])
    a.write_table("metrics", [{"run_id": "a", "step": 30, "split": "val", "name": "loss", "value": 1.5}], part=30)
    assert ingest(tmp_path) == {"runs": 1, "metrics": 1}
    runs = query(tmp_path, "SELECT run_id, status, final_val_loss, tp, note, _file FROM runs ORDER BY run_id")
    assert _rows(runs) == [["a", "completed", 1.5, 2, "done", "runs/a/runs.parquet"],
                                    ["b", "completed", 2.0, None, None, "runs/b/runs.parquet"]]
    assert _count(tmp_path, "metrics") == 9

    # resuming from a checkpoint deletes chunks past it: their rows go too
    (tmp_path / "runs" / "a" / "metrics-000030.parquet").unlink()
    assert ingest(tmp_path) == {}
    assert _count(tmp_path, "metrics") == 8
    files = query(tmp_path, "SELECT table_name, count(*) AS n, sum(n_rows) AS r FROM _ingested_files GROUP BY 1 ORDER BY 1")
    assert files.values.tolist() == [["metrics", 4, 8], ["runs", 2, 2]]


def test_ingest_creates_documented_columns_and_widens_undocumented_ones(tmp_path):
    spool = RunSpool(tmp_path / "runs" / "r")
    spool.write_table("runs", [_run_row("r")])
    spool.write_table("grads", [{"run_id": "r", "norm": 1, "empty": None}], part=1)
    ingest(tmp_path)
    # every documented column exists, NULL where nobody wrote it
    columns = list(query(tmp_path, "SELECT * FROM runs").columns)
    assert columns[: len(TABLES["runs"].columns)] == TABLES["runs"].column_names
    assert "empty" not in list(query(tmp_path, "SELECT * FROM grads").columns)  # untyped until a file types it
    spool.write_table("grads", [{"run_id": "r", "norm": 2.5, "empty": "x"}], part=2)
    ingest(tmp_path)
    grads = query(tmp_path, "SELECT norm, empty FROM grads ORDER BY norm")
    assert _rows(grads) == [[1.0, None], [2.5, "x"]]
    assert query(tmp_path, "SELECT data_type FROM information_schema.columns WHERE column_name = 'norm'").data_type[0] == "DOUBLE"


def test_a_bad_spool_file_is_refused_with_its_path_and_the_rest_loads(tmp_path):
    _spool_run(tmp_path, "a")
    ingest(tmp_path)
    bad = tmp_path / "runs" / "a" / "metrics-000040.parquet"
    bad.write_bytes(b"not parquet")
    _spool_run(tmp_path, "b")
    with pytest.warns(UserWarning, match="metrics-000040.parquet: refused, not ingested: not listed"):
        added = ingest(tmp_path)
    assert dict(added) == {"runs": 1, "metrics": 4} and list(added.refused) == [bad.resolve()]
    assert (_count(tmp_path, "runs"), _count(tmp_path, "metrics")) == (2, 8)


def _ingest_then_die_mid_way(root: str) -> None:
    import importlib

    mod = importlib.import_module("falstudy.store.ingest")  # the package's `ingest` is the function

    real = mod._load

    def load_then_die(*args, **kw):
        real(*args, **kw)  # one table's rows are in, uncommitted
        os._exit(9)

    mod._load = load_then_die
    mod.ingest(root)


def test_a_crash_mid_ingest_leaves_the_previous_state(tmp_path):
    a = _spool_run(tmp_path, "a", status="running")
    ingest(tmp_path)
    a.write_table("runs", [_run_row("a", "completed")])
    _spool_run(tmp_path, "b")
    child = mp.get_context("spawn").Process(target=_ingest_then_die_mid_way, args=(str(tmp_path),))
    child.start()
    child.join(60)
    assert child.exitcode == 9
    assert query(tmp_path, "SELECT status FROM runs").status.tolist() == ["running"]
    assert _count(tmp_path, "metrics") == 4
    assert ingest(tmp_path) == {"runs": 2, "metrics": 4}  # the next ingest does it all
    assert _count(tmp_path, "runs") == 2


def _hold_db(db: str, opened, release) -> None:
    import duckdb

    con = duckdb.connect(db)
    opened.set()
    release.wait(30)
    con.close()


def test_a_db_held_by_another_process_is_reported(tmp_path):
    _spool_run(tmp_path, "a")
    ingest(tmp_path)
    ctx = mp.get_context("spawn")
    opened, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_db, args=(str(db_path(tmp_path)), opened, release))
    holder.start()
    try:
        assert opened.wait(30)
        with pytest.raises(FalstudyError, match=r"open in another process.*rerun `falstudy ingest"):
            ingest(tmp_path, wait_s=0.3)
        with pytest.raises(FalstudyError, match="open in another process"):
            query(tmp_path, "SELECT 1", wait_s=0.3)
    finally:
        release.set()
        holder.join(30)
    assert _count(tmp_path, "runs") == 1


def test_ingest_waits_for_another_ingest(tmp_path):
    import fcntl

    _spool_run(tmp_path, "a")
    with open(tmp_path / "falstudy.duckdb.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as another ingester would
        with pytest.raises(FalstudyError, match="another ingest has held"):
            ingest(tmp_path, lock_timeout_s=0.2)
    assert ingest(tmp_path) == {"runs": 1, "metrics": 4}


def _ingest_in_child(root: str) -> dict:
    return ingest(root)


def test_concurrent_ingests_serialise(tmp_path):
    for i in range(6):
        _spool_run(tmp_path, f"r{i}", steps=(10, 20, 30))
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = [pool.apply_async(_ingest_in_child, (str(tmp_path),)) for _ in range(2)]
        added = [r.get(timeout=60) for r in results]
    assert sum(a.get("runs", 0) for a in added) == 6  # each file loaded by exactly one of them
    assert sum(a.get("metrics", 0) for a in added) == 36
    assert (_count(tmp_path, "runs"), _count(tmp_path, "metrics")) == (6, 36)
    dups = query(tmp_path, "SELECT run_id, step, split FROM metrics GROUP BY ALL HAVING count(*) > 1")
    assert dups.empty


# --- query -----------------------------------------------------------------------------------

def test_query_is_read_only_and_errors_are_one_line(tmp_path):
    _spool_run(tmp_path, "a")
    ingest(tmp_path)
    curve = query(tmp_path, "SELECT step, value FROM metrics WHERE split = ? ORDER BY step", ["val"])
    assert curve.step.tolist() == [10, 20]
    assert query(db_path(tmp_path), "SELECT count(*) AS n FROM runs").n[0] == 1  # the .duckdb path works too
    for sql, needle in [("SELEC nonsense", "syntax error"), ("SELECT nope FROM runs", "nope"),
                        ("SELECT * FROM missing", "tables: metrics, runs"), ("DELETE FROM runs", "read-only"),
                        ("CREATE TABLE x (a INT)", "read-only"), ("", "empty SQL")]:
        with pytest.raises(FalstudyError) as err:
            query(tmp_path, sql)
        assert needle in str(err.value) and "\n" not in str(err.value), sql
    assert _count(tmp_path, "runs") == 1
    with connect_readonly(tmp_path) as con:
        assert con.execute("SELECT count(*) FROM metrics").fetchall() == [(4,)]
    assert load_table(tmp_path, "runs").run_id.tolist() == ["a"]
    with pytest.raises(FalstudyError, match="no table 'probes'.*metrics, runs"):
        load_table(tmp_path, "probes")


def test_missing_db_says_to_ingest(tmp_path):
    _spool_run(tmp_path, "a")
    with pytest.raises(FalstudyError, match="no results store; run `falstudy ingest"):
        query(tmp_path, "SELECT 1")
    with pytest.raises(FalstudyError, match="nowhere: no such results folder"):
        query(tmp_path / "nowhere", "SELECT 1")
    assert not db_path(tmp_path).exists()  # a read never creates the DB


def test_spool_query_reads_before_ingest(tmp_path):
    a = _spool_run(tmp_path, "a", status="running")
    _spool_run(tmp_path, "b")
    df = spool_query(tmp_path, "SELECT run_id, status, tp, _file FROM runs ORDER BY run_id")
    assert _rows(df) == [["a", "running", None, "runs/a/runs.parquet"],
                                  ["b", "completed", None, "runs/b/runs.parquet"]]
    a.write_table("runs", [_run_row("a", "completed")])  # sees rewrites at once
    sql = "SELECT count(*) AS n FROM metrics JOIN runs USING (run_id) WHERE status = 'completed'"
    assert spool_query(tmp_path, sql).n[0] == 8
    assert tables(tmp_path, spool=True) == ["metrics", "runs"]
    assert len(load_table(tmp_path, "metrics", spool=True)) == 8
    assert not db_path(tmp_path).exists()
    with pytest.raises(FalstudyError, match="SQL error.*spool"):
        spool_query(tmp_path, "SELECT * FROM trials")
    ingest(tmp_path)  # the same SQL gives the same answer from the DB
    assert query(tmp_path, sql).n[0] == 8


def test_docs_show_the_schema():
    docs = (Path(__file__).parent.parent / "docs" / "store.md").read_text()
    assert markdown() in docs, "docs/store.md is out of date: paste falstudy.store.schema.markdown()"


def test_imports_stay_light():
    import subprocess
    import sys

    code = "import sys, falstudy.store; print(sorted(m for m in ('duckdb', 'pyarrow', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=os.environ)
    assert out.stdout.strip() == "[]", out.stderr


# --- a store other DuckDB versions can open ---------------------------------------------------

OLD_DUCKDB = "duckdb==1.1.3"  # the oldest DuckDB 1.x a reader is tested with; `make setup` fetches it


def _old_duckdb(tmp_path: Path) -> Path:
    """The DuckDB 1.x wheel unpacked into a folder of its own (never installed into the venv)."""
    import subprocess
    import sys
    import zipfile

    cache = Path(os.environ.get("FALSTUDY_WHEEL_CACHE") or Path(__file__).resolve().parent.parent / ".cache" / "wheels")
    wheels = sorted(cache.glob(f"duckdb-{OLD_DUCKDB.split('==')[1]}-*.whl"))
    if not wheels:  # as `make setup` would
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "-d", str(cache), OLD_DUCKDB], check=False, timeout=600)
        wheels = sorted(cache.glob(f"duckdb-{OLD_DUCKDB.split('==')[1]}-*.whl"))
    assert wheels, f"no {OLD_DUCKDB} wheel in {cache} and pip could not fetch it; run `make setup`"
    target = tmp_path / "duckdb1"
    with zipfile.ZipFile(wheels[0]) as zf:
        zf.extractall(target)
    return target


def test_the_store_is_written_in_a_format_duckdb_1_reads(tmp_path):
    import struct
    import subprocess
    import sys

    from falstudy.store.query import storage_version

    _spool_run(tmp_path, "r1")
    ingest(tmp_path)
    assert storage_version(tmp_path) == "v1.0.0+"
    with open(db_path(tmp_path), "rb") as fh:  # the main header: 8-byte checksum, "DUCK", version
        head = fh.read(20)
    assert head[8:12] == b"DUCK" and struct.unpack("<Q", head[12:20])[0] == 64

    reader = _old_duckdb(tmp_path)
    script = ("import duckdb, sys; con = duckdb.connect(sys.argv[1], read_only=True); "
              "print(duckdb.__version__); "
              "print(con.execute('SELECT run_id, step, value FROM metrics WHERE split = ? ORDER BY step', ['val']).fetchall())")
    env = {**os.environ, "PYTHONPATH": str(reader)}
    out = subprocess.run([sys.executable, "-c", script, str(db_path(tmp_path))], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    version, rows = out.stdout.splitlines()
    assert version == "1.1.3"
    assert rows == "[('r1', 10, 2.9), ('r1', 20, 2.8)]"


def test_adopt_trusts_folders_written_before_manifests_and_nothing_else(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from falstudy.store import RunSpool, ingest, query

    group = tmp_path / "g"
    old, new = RunSpool(group / "runs" / "old"), RunSpool(group / "runs" / "new")
    for spool, run_id in ((old, "old"), (new, "new")):
        spool.write_table("runs", [{"run_id": run_id, "name": "g", "status": "completed"}])
    (group / "runs" / "old" / ".manifest.json").unlink()  # as an older falstudy left it
    pq.write_table(pa.table({"run_id": ["evil"], "name": ["g"], "status": ["completed"]}),
                   group / "runs" / "new" / "runs-evil.parquet")  # dropped into a folder with a manifest
    first = ingest(group)
    assert first == {"runs": 1} and len(first.refused) == 2
    assert "--adopt" in first.refused[group.resolve() / "runs" / "old" / "runs.parquet"]
    second = ingest(group, adopt=True)
    assert second == {"runs": 1} and list(second.refused) == [group.resolve() / "runs" / "new" / "runs-evil.parquet"]
    assert sorted(query(group, "SELECT run_id FROM runs")["run_id"]) == ["new", "old"]


def test_the_layout_names_run_folders_and_a_resume_drops_only_later_chunks(tmp_path):
    from falstudy.store import layout

    run = layout.run_dir(tmp_path, "g", "r1")
    assert run == tmp_path / "g" / "runs" / "r1" and layout.group_of(run) == tmp_path / "g"
    assert not layout.is_run_dir(run)  # not there yet
    spool = RunSpool(run)
    spool.write_table("runs", [_run_row("r1")])
    for step in (50, 100, 150):
        spool.write_table("metrics", [{"run_id": "r1", "step": step, "split": "val", "name": "loss", "value": 1.0}],
                          part=step)
    spool.write_table("timings", [{"run_id": "r1", "kind": "all_reduce", "count": 1, "rank": 0}], part=150)
    spool.write_table("probes", [], part="cka")
    assert layout.is_run_dir(run) and layout.find_run([tmp_path / "g", tmp_path / "h"], "r1") == [run]
    assert [p.name for p in spool.chunks("metrics")] == [f"metrics-{s:06d}.parquet" for s in (50, 100, 150)]
    spool.drop_chunks_after(100)
    assert sorted(p.name for p in run.glob("*.parquet")) == [
        "metrics-000050.parquet", "metrics-000100.parquet", "probes-cka.parquet", "runs.parquet"]
