"""Many hosts: two `falstudy sweep` processes (each standing in for a host, with its own results
folder) share one study in a real PostgreSQL server, started here on loopback.

The server is Debian's `postgresql` package (`make postgres` installs it; CI runs that). It
refuses to run as root, so as root the fixture runs initdb/pg_ctl as the `postgres` user in a
temp dir it chowns. Skipped, with the reason, only where PostgreSQL is not installed.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
import yaml

PG_BINS = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))


TINY_MODEL = {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16}
TINY_TRAIN = {"steps": 20, "batch_size": 4, "lr": 3e-3, "warmup_steps": 1, "eval_interval": 5, "eval_batches": 1,
              "log_interval": 5, "checkpoint_interval": 10}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    if not PG_BINS:
        pytest.skip("PostgreSQL is not installed here (apt-get install postgresql, or `make postgres`)")
    bindir = Path(PG_BINS[-1]).parent
    as_postgres: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="falstudy-pg-"))  # under /tmp: the postgres user can reach it
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run the server as")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    data = root / "data"

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run([*as_postgres, *cmd], capture_output=True, text=True, timeout=120, check=True)

    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-o", opts, "-w", "start")
    try:
        import psycopg2

        con = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        con.autocommit = True
        con.cursor().execute("CREATE DATABASE falstudy")
        con.close()
        yield f"postgresql://postgres@127.0.0.1:{port}/falstudy"
    finally:
        subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_two_hosts_share_one_study_in_postgresql(postgres_url, corpus, tmp_path):
    cells = {f"{v}-s{s}" for v in ("baseline", "parallel", "fal", "no_attn") for s in (0, 1)}
    spec = {"name": "hosts", "workers": 1, "seeds": [0, 1], "storage": postgres_url,
            "run": {"data": {"path": str(corpus)}, "model": TINY_MODEL, "train": TINY_TRAIN},
            "search": {"variant": ["baseline", "parallel", "fal", "no_attn"]}}
    path = tmp_path / "hosts.yaml"
    path.write_text(yaml.safe_dump(spec))
    # both "hosts" start at once on a fresh database: one creates the study, both queue the grid
    hosts = [subprocess.Popen([sys.executable, "-m", "falstudy.cli", "sweep", str(path), "--quiet",
                               "--results-dir", str(tmp_path / f"host{i}")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
             for i in range(2)]
    outs = [h.communicate(timeout=240)[0] for h in hosts]
    assert [h.returncode for h in hosts] == [0, 0], outs

    from falstudy.sweep.study import make_storage

    study = optuna.load_study(study_name="hosts", storage=make_storage(postgres_url))
    trials = study.get_trials()
    assert len(trials) == 8 and all(t.state.name == "COMPLETE" for t in trials)
    assert sorted(t.user_attrs["run_id"] for t in trials) == sorted(cells)  # each cell exactly once
    workers = {t.user_attrs["worker_pid"] for t in trials}
    assert len(workers) == 2, "both hosts took trials"
    # each host's results folder holds the runs it trained; together, every cell once
    runs = [{p.name for p in (tmp_path / f"host{i}" / "hosts" / "runs").iterdir()} for i in range(2)]
    assert runs[0].isdisjoint(runs[1]) and runs[0] | runs[1] == cells
    # each host's store has the whole trials table (from the shared study) joined to its own runs
    import falstudy

    for i in range(2):
        df = falstudy.query(tmp_path / f"host{i}" / "hosts",
                            "SELECT count(*) AS trials, count(r.run_id) AS local_runs "
                            "FROM trials t LEFT JOIN runs r USING (run_id)")
        assert df.trials[0] == 8 and df.local_runs[0] == len(runs[i])
