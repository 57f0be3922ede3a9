"""A rank of `falstudy train --tp 2` that dies is reported in one line (rank, signal, run id, the
resume command), exit code 3, with torchrun's report kept in the run's torchrun.log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from falstudy.parallel.supervise import parse_report, resume_command

REPORT = Path(__file__).parent / "data" / "torchrun_rank_failure.txt"  # a real one: rank 1 got SIGKILL


def test_the_report_names_the_root_cause_rank_and_signal():
    failure = parse_report(REPORT.read_text())
    assert (failure.rank, failure.exitcode, failure.signal) == (1, -9, "SIGKILL")  # not rank 0's SIGTERM
    assert failure.how() == "killed by SIGKILL"
    assert parse_report("no report here") is None


def test_the_resume_command_adds_the_run_id_once():
    assert resume_command(["train", "--tp", "2"], "r1") == "falstudy train --tp 2 --run-id r1"
    assert resume_command(["train", "--run-id", "r1", "--set", "a=b c"], "r1") == \
        "falstudy train --run-id r1 --set 'a=b c'"


def _ranks_tagged(tag: str) -> dict[int, int]:
    """rank -> pid of the processes whose environment carries FALSTUDY_TEST_TAG=tag."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = dict(kv.split("=", 1) for kv in (entry / "environ").read_bytes().decode(errors="replace").split("\0") if "=" in kv)
        except OSError:
            continue
        if env.get("FALSTUDY_TEST_TAG") == tag and "RANK" in env:
            found[int(env["RANK"])] = int(entry.name)
    return found


def test_a_killed_rank_is_one_line_and_exit_3(corpus, tmp_path):
    tag = uuid.uuid4().hex
    sets = {"model.n_layer": 2, "model.n_head": 2, "model.n_embd": 16, "model.block_size": 16,
            "train.batch_size": 2, "train.eval_interval": 5, "train.eval_batches": 1, "train.log_interval": 5,
            "train.checkpoint_interval": 5, "results_dir": str(tmp_path), "data.path": str(corpus)}
    argv = [sys.executable, "-m", "falstudy", "train", "-q", "--tp", "2", "--steps", "1000000", "--name", "g"]
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["FALSTUDY_TEST_TAG"] = tag
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 240  # only so a broken launcher cannot hang the suite
        ranks = {}
        while not (list(tmp_path.glob("g/runs/*/metrics-*.parquet")) and 1 in (ranks := _ranks_tagged(tag))):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        os.kill(ranks[1], signal.SIGKILL)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    run_dir = next(tmp_path.glob("g/runs/*"))
    run_id = run_dir.name
    assert proc.returncode == 3, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"falstudy: error: rank 1 (killed by SIGKILL) died in run {run_id}; ")
    assert f"--run-id {run_id}`" in lines[0] and "falstudy train -q --tp 2" in lines[0]
    log = run_dir / "torchrun.log"
    assert str(log) in lines[0] and "Root Cause" in log.read_text()
