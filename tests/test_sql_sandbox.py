"""`falstudy sql`, `query`, `spool_query` and `Results.sql` are read-only for real (issue 18):
every row of tests/hostile_sql.py is refused in one line with exit code 2 and changes nothing on
disk, ingest loads only files falstudy wrote, and the documented queries still run."""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from hostile_sql import HOSTILE_SQL  # noqa: E402

from falstudy.cli import main  # noqa: E402
from falstudy.errors import FalstudyError  # noqa: E402
from falstudy.store import RunSpool, ingest, query, spool_query, write_parquet  # noqa: E402
from falstudy.store.readonly import Results  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs" / "store.md"


def _run_row(run_id: str, status: str = "completed") -> dict:
    return {"run_id": run_id, "name": "g", "status": status, "variant": "fal", "final_val_loss": 2.0, "final_step": 20}


def _make_group(root: Path) -> Path:
    group = root / "results" / "g"
    spool = RunSpool(group / "runs" / "r1")
    spool.write_table("runs", [_run_row("r1")])
    spool.write_table("metrics", [{"run_id": "r1", "step": s, "split": "val", "name": "loss", "value": 3.0 - s / 10}
                                  for s in (10, 20)], part=20)
    ingest(group)
    return group


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A results group, a folder next to it with another Parquet file and DuckDB file, and a
    working directory and $HOME inside tmp_path, so every write would show in the tree."""
    import duckdb

    group = _make_group(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    pq.write_table(pa.table({"secret": ["s3cr3t"]}), outside / "other.parquet")
    con = duckdb.connect(str(outside / "other.duckdb"))
    con.execute("CREATE TABLE t AS SELECT 42 AS a")
    con.close()
    for name in ("cwd", "home"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path, group, outside


def tree(root: Path) -> dict[str, str]:
    """Every file and folder under root: relative path -> digest of its bytes ('dir' for folders)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(args)
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


def _sql(sql: str, group: Path, outside: Path) -> str:
    return sql.replace("{group}", str(group)).replace("{outside}", str(outside))


@pytest.mark.parametrize("mode", ["db", "spool"])
@pytest.mark.parametrize(("label", "sql", "expected"), HOSTILE_SQL, ids=[row[0] for row in HOSTILE_SQL])
def test_hostile_sql_is_refused_in_one_line_and_changes_nothing(label, sql, expected, mode, sandbox, capsys):
    root, group, outside = sandbox
    before = tree(root)
    args = ["sql", "-r", str(group)] + (["--spool"] if mode == "spool" else []) + [_sql(sql, group, outside)]
    code, out, err = cli(args, capsys)
    assert code == 2, (label, out, err)
    assert out == "" and err.count("\n") == 1 and err.startswith("falstudy: error: "), (label, err)
    assert expected in err, (label, err)
    assert tree(root) == before, label
    assert query(group, "SELECT count(*) AS n FROM runs").n[0] == 1


@pytest.mark.parametrize("source", ["db", "spool"])
def test_results_sql_refuses_every_hostile_row(source, sandbox):
    """The notebooks' engine: Results.sql, reading the DB or (as when an ingest holds the DB) the spool."""
    root, group, outside = sandbox
    before = tree(root)
    res = Results(group, source=source)
    for label, sql, expected in HOSTILE_SQL:
        with pytest.raises(FalstudyError) as err:
            res.sql(_sql(sql, group, outside))
        assert expected.strip() in str(err.value) and "\n" not in str(err.value), (label, str(err.value))
    assert tree(root) == before
    assert res.sql("SELECT count(*) AS n FROM runs").n[0] == 1


def test_queries_still_read_the_group_and_explain_works(sandbox):
    _, group, _ = sandbox
    for read in (query, spool_query):
        assert read(group, "SELECT run_id, final_step FROM runs").values.tolist() == [["r1", 20]]
        assert len(read(group, "EXPLAIN SELECT * FROM metrics")) >= 1
        assert {"metrics", "runs"} <= set(read(group, "SHOW TABLES").iloc[:, 0])
        assert read(group, "SELECT completed FROM (PIVOT runs ON status IN ('completed') USING count(*))").completed[0] == 1


def test_no_install_download_or_home_folder(sandbox, capsys):
    root, group, _ = sandbox
    code, _, err = cli(["sql", "-r", str(group), "INSTALL httpfs"], capsys)
    assert code == 2 and "no downloads" in err
    assert list((root / "home").iterdir()) == []  # no ~/.duckdb/extensions


# --- ingest trusts only files falstudy wrote ---------------------------------------------------

def test_injected_spool_files_are_refused_by_path(sandbox, capsys):
    root, group, _ = sandbox
    evil_run = group / "runs" / "evil" / "runs.parquet"
    evil_run.parent.mkdir()
    pq.write_table(pa.table({"run_id": ["evil"], "name": ["g"], "status": ["completed"]}), evil_run)
    evil_chunk = group / "runs" / "r1" / "metrics-999999.parquet"
    pq.write_table(pa.table({"run_id": ["r1"] * 17, "step": list(range(17)), "split": ["val"] * 17,
                             "name": ["loss"] * 17, "value": [0.0] * 17}), evil_chunk)
    db_before = hashlib.sha256((group / "falstudy.duckdb").read_bytes()).hexdigest()

    code, out, err = cli(["ingest", str(group)], capsys)
    assert code == 2 and out.strip() == "nothing new"
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("falstudy: error: ") for line in lines)
    # a new folder has no manifest at all: refused too, and the line says how old results are adopted
    assert any(str(evil_run.resolve()) in line and "has no .manifest.json" in line and "--adopt" in line
               for line in lines)
    assert any(str(evil_chunk.resolve()) in line and "not listed" in line for line in lines)
    assert hashlib.sha256((group / "falstudy.duckdb").read_bytes()).hexdigest() == db_before
    assert query(group, "SELECT count(*) AS n FROM runs").n[0] == 1
    assert query(group, "SELECT count(*) AS n FROM metrics").n[0] == 2


def test_a_tampered_or_misshapen_file_is_refused_and_its_old_rows_go(sandbox):
    _, group, _ = sandbox
    runs = group / "runs" / "r1" / "runs.parquet"
    pq.write_table(pa.table({"run_id": ["r1"], "name": ["g"], "status": ["completed"], "final_val_loss": [0.001]}), runs)
    odd = write_parquet(group / "runs" / "r1" / "metrics-000030.parquet", [{"run_id": "r1", "step": "thirty"}],
                        table="odd")  # written by falstudy, but not with metrics' columns
    with pytest.warns(UserWarning) as caught:
        added = ingest(group)
    why = {p.name: reason for p, reason in added.refused.items()}
    assert "changed since falstudy wrote it" in why["runs.parquet"]
    assert "lacks required column(s) split, name, value" in why[odd.name]
    assert len(caught) == 2
    assert query(group, "SELECT count(*) AS n FROM runs").n[0] == 0  # the tampered file's rows are gone
    assert query(group, "SELECT count(*) AS n FROM metrics").n[0] == 2


# --- documented queries still run ----------------------------------------------------------------

@pytest.fixture(scope="module")
def fixture_group(tmp_path_factory) -> Path:
    import fixture_store

    return fixture_store.stores(tmp_path_factory)[0]


def test_every_query_in_the_store_docs_runs_on_db_and_spool(fixture_group):
    blocks = re.findall(r"```sql\n(.*?)```", DOCS.read_text(), flags=re.S)
    inline = re.findall(r'falstudy sql -r results/mine (?:--csv )?"([^"]+)"', DOCS.read_text())
    assert len(blocks) >= 5 and len(inline) >= 2
    for sql in blocks + inline:
        sql = sql.strip().rstrip(";")
        db, spool = query(fixture_group, sql), spool_query(fixture_group, sql)
        assert list(db.columns) == list(spool.columns), sql
        assert len(db) == len(spool), sql
    res = Results(fixture_group)
    assert res.sql("SELECT count(*) AS n FROM runs WHERE status = ?", ["completed"]).n[0] >= 4
