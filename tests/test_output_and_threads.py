"""Stored values print verbatim (no Rich markup or emoji; control characters escaped, --csv
exact), and concurrent falstudy processes share the host's cores (issue 19)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from falstudy.cli import main
from falstudy.store import RunSpool, ingest

HOSTILE_VALUES = ["[bold red]hi", "root:x:0:0", ":x: :smile:", "a [/oops] b", "[link=http://x]y[/link]",
                  "\x1b[31mred\x1b[0m", "two\nlines", "tab\there", "back\\slash"]
SHOWN = ["[bold red]hi", "root:x:0:0", ":x: :smile:", "a [/oops] b", "[link=http://x]y[/link]",
         "\\x1b[31mred\\x1b[0m", "two\\nlines", "tab\\there", "back\\slash"]


@pytest.fixture
def group(tmp_path) -> Path:
    g = tmp_path / "g"
    for i, value in enumerate(HOSTILE_VALUES):
        RunSpool(g / "runs" / f"r{i}").write_table("runs", [{"run_id": f"r{i}", "name": "g", "status": "failed",
                                                             "error": value, "final_val_loss": 1.5 + i}])
    ingest(g)
    return g


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as done:
        main(args)
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


@pytest.mark.parametrize("spool", [False, True])
def test_table_output_shows_stored_values_verbatim(group, spool, capsys):
    code, out, err = run_cli(["sql", "-r", str(group), *(["--spool"] if spool else []),
                              "SELECT run_id, error, final_val_loss FROM runs ORDER BY run_id"], capsys)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == 2 + len(HOSTILE_VALUES)  # header, rule, one line per row: no cell broke a line
    assert lines[0].split() == ["run_id", "error", "final_val_loss"]
    for i, shown in enumerate(SHOWN):
        assert re.split(r"\s{2,}", lines[2 + i].strip()) == [f"r{i}", shown, f"{1.5 + i:g}"], lines[2 + i]
    assert "\x1b" not in out and "❌" not in out and "😄" not in out


def test_csv_output_is_the_exact_bytes(group, capsys):
    import csv
    import io

    code, out, _ = run_cli(["sql", "-r", str(group), "--csv", "SELECT error FROM runs ORDER BY run_id"], capsys)
    assert code == 0 and [r["error"] for r in csv.DictReader(io.StringIO(out))] == HOSTILE_VALUES


def test_the_sweep_view_renders_values_as_text_not_markup():
    from rich.console import Console

    from falstudy.sweep.progress import Progress, Summary

    summary = Summary({"COMPLETE": 1}, 2, "0.5 ([bold]x:x:)", [
        {"trial": 1, "run_id": "[red]r1[/nope]", "worker": "h:x:1", "elapsed_s": 3.0, "step": 5, "value": 2.0}])
    console = Console(width=200, record=True, color_system=None)
    console.print(Progress.render(object.__new__(Progress), summary))
    text = console.export_text()
    assert "[red]r1[/nope]" in text and "h:x:1" in text and "[bold]x:x:" in text


# --- the host's thread budget --------------------------------------------------------------------

@pytest.fixture
def host_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FALSTUDY_HOST_DIR", str(tmp_path / "leases"))
    return tmp_path / "leases"


def test_two_processes_split_the_cores_and_a_dead_one_gives_them_back(host_dir):
    from falstudy.hostbudget import Lease, live_slots, share

    assert share(4) == 4  # alone on the host
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        theirs = Lease(1, pid=other.pid)  # another falstudy process training one model
        with Lease(1):  # this one
            assert live_slots() == 2 and share(4) == 2 and share(2) == 1
            assert share(1) == 1  # never 0
        assert share(4) == 4 // 1
        assert theirs.path.exists()
    finally:
        other.kill()
        other.wait()
    assert live_slots() == 0 and share(4) == 4  # the dead process's lease is dropped
    assert not theirs.path.exists()


def test_a_sweep_worker_asks_the_budget_per_trial(host_dir, corpus, tmp_path):
    from falstudy.hostbudget import Lease
    from falstudy.sweep.spec import spec_from_dict
    from falstudy.sweep.worker import WorkerConfig

    spec = spec_from_dict({"name": "s", "run": {"data": {"path": str(corpus)}}, "search": {"variant": ["fal"]}})
    cfg = WorkerConfig(spec, "j", tmp_path, str(tmp_path), budget=True)
    with Lease(1):  # this sweep's one worker
        alone = cfg.trial_threads()
        with Lease(1):  # a second sweep starts on the same host
            assert cfg.trial_threads() == max(1, alone // 2)
    fixed = spec_from_dict({"name": "s", "run": {"data": {"path": str(corpus)}, "train": {"threads": 3}},
                            "search": {"variant": ["fal"]}})
    assert WorkerConfig(fixed, "j", tmp_path, str(tmp_path), budget=True).trial_threads() is None  # the spec decides
