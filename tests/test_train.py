"""Training end to end on a tiny model and corpus: learning, resume after kill -9, divergence,
the store, and the CLI's exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import falstudy
from falstudy.errors import FalstudyError

TINY_MODEL = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32}


def config(corpus: Path, results: Path, **train) -> dict:
    return {
        "name": "t",
        "results_dir": str(results),
        "data": {"path": str(corpus)},
        "model": dict(TINY_MODEL),
        "train": {"steps": 40, "batch_size": 8, "lr": 3e-3, "warmup_steps": 5, "eval_interval": 10,
                  "eval_batches": 2, "log_interval": 5, "checkpoint_interval": 20, **train},
    }


def test_fal_learns_and_the_store_has_its_curve(corpus, tmp_path):
    result = falstudy.train(config(corpus, tmp_path), variant="fal", quiet=True)
    assert result.status == "completed" and result.final_step == 40
    curve = falstudy.query(
        tmp_path / "t",
        f"SELECT step, value FROM metrics WHERE run_id = '{result.run_id}' "
        "AND split = 'val' AND name = 'loss' ORDER BY step",
    )
    assert list(curve.step) == [0, 10, 20, 30, 40]
    assert curve.value.iloc[-1] < curve.value.iloc[0] - 1.0  # well below the step-0 loss
    runs = falstudy.query(tmp_path / "t", "SELECT * FROM runs")
    assert len(runs) == 1
    row = runs.iloc[0]
    assert (row.status, row.variant, row.wiring, row.final_step) == ("completed", "fal", "fal", 40)
    assert json.loads(row.config_json)["model"]["wiring"] == "fal"
    assert row.host and row.torch_version and row.git_commit is not None
    # ingesting again adds nothing
    assert sum(falstudy.ingest(tmp_path / "t").values()) == 0
    assert len(falstudy.query(tmp_path / "t", "SELECT * FROM metrics")) == len(result.metrics)


def test_same_seed_same_losses(corpus, tmp_path):
    a = falstudy.train(config(corpus, tmp_path, steps=10), seed=3, quiet=True, ingest=False)
    b = falstudy.train(config(corpus, tmp_path, steps=10), seed=3, quiet=True, ingest=False)
    c = falstudy.train(config(corpus, tmp_path, steps=10), seed=4, quiet=True, ingest=False)
    assert a.final_val_loss == b.final_val_loss != c.final_val_loss


def _cli(*args: str, cwd: Path | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "falstudy.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120, **kw)


def test_resume_after_kill_matches_an_uninterrupted_run(corpus, tmp_path):
    cfg_path = tmp_path / "run.yaml"
    import yaml

    cfg = config(corpus, tmp_path, steps=60, checkpoint_interval=20)
    cfg_path.write_text(yaml.safe_dump(cfg))
    whole = falstudy.train(cfg, run_id="whole", quiet=True)

    run_dir = tmp_path / "t" / "runs" / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "falstudy", "train", str(cfg_path), "--run-id", "killed", "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    while not (run_dir / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run_dir / "checkpoint.pt").exists(), "the run never reached its first checkpoint"

    resumed = falstudy.train(cfg, run_id="killed", quiet=True)
    assert resumed.status == "completed" and resumed.final_step == 60
    assert resumed.final_val_loss == pytest.approx(whole.final_val_loss, rel=1e-6)
    per_step = falstudy.query(
        tmp_path / "t",
        "SELECT run_id, step, split, name, count(*) AS n FROM metrics GROUP BY ALL HAVING n > 1",
    )
    assert per_step.empty, f"steps stored twice:\n{per_step}"
    steps = falstudy.query(tmp_path / "t", "SELECT DISTINCT step FROM metrics WHERE run_id = 'killed' AND split = 'val' ORDER BY step")
    assert list(steps.step) == [0, 10, 20, 30, 40, 50, 60]


def test_resume_checks_the_model_config_but_accepts_fields_added_since(corpus, tmp_path):
    import torch

    first = falstudy.train(config(corpus, tmp_path, steps=20), variant="fal", run_id="r", quiet=True)
    with pytest.raises(FalstudyError, match="another model config"):
        falstudy.train(config(corpus, tmp_path, steps=30), variant="fal", run_id="r", model__n_embd=64, quiet=True)
    # a checkpoint written before a model field existed: the field takes its default
    path = first.run_dir / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    del state["config"]["model"]["dense_dwa"]
    torch.save(state, path)
    again = falstudy.train(config(corpus, tmp_path, steps=30), variant="fal", run_id="r", quiet=True)
    assert again.status == "completed" and again.final_step == 30


def test_divergence_stops_with_a_status(corpus, tmp_path):
    result = falstudy.train(config(corpus, tmp_path, lr=1e6, grad_clip=0.0, steps=40), quiet=True)
    assert result.status == "diverged"
    assert result.final_step < 40
    runs = falstudy.query(tmp_path / "t", "SELECT status, error FROM runs")
    assert runs.status[0] == "diverged" and "non-finite" in runs.error[0]


def test_corrupt_checkpoint_is_a_clean_error(tmp_path):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(FalstudyError, match="corrupt"):
        falstudy.load_checkpoint(bad)


def test_cli_train_then_sql(corpus, tmp_path):
    out = _cli("train", "--variant", "parallel", "--steps", "10", "--data", str(corpus), "--name", "cli", "-q",
               "--set", "model.n_layer=1", "--set", "model.n_embd=16", "--set", "model.n_head=2",
               "--set", "model.block_size=16", "--set", f"results_dir={tmp_path}", "--run-id", "r1")
    assert out.returncode == 0, out.stderr
    assert "r1: completed at step 10" in out.stdout
    csv = _cli("sql", "-r", str(tmp_path / "cli"), "--csv", "SELECT step FROM metrics WHERE split='val' AND name='loss' ORDER BY step")
    assert csv.returncode == 0, csv.stderr
    assert csv.stdout.split() == ["step", "0", "10"]
    js = _cli("sql", "-r", str(tmp_path / "cli"), "--json", "SELECT variant, status FROM runs")
    assert json.loads(js.stdout) == [{"variant": "parallel", "status": "completed"}]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["train", "--variant", "fall"], "unknown variant 'fall'"),
        (["train", "--set", "model.n_embd=30", "--set", "model.n_head=4"], "not divisible"),
        (["train", "--data", "data/nope"], "data/nope"),
        (["train", "missing.yaml"], "missing.yaml: no such file"),
        (["train", "--set", "model.wirin=fal"], "model.wirin: unknown field"),
        (["sql", "-r", "nowhere", "SELECT 1"], "nowhere"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(args, needle, tmp_path):
    out = _cli(*args, cwd=tmp_path)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.stderr


def test_cli_malformed_yaml_and_bad_sql(corpus, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {n_layer: 2\ntrain: [")
    out = _cli("train", str(bad))
    assert out.returncode == 2 and "malformed YAML" in out.stderr
    falstudy.train(config(corpus, tmp_path, steps=2, eval_interval=2), quiet=True)
    out = _cli("sql", "-r", str(tmp_path / "t"), "SELEC nonsense")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1


def test_ctrl_c_names_the_run_and_the_command_that_resumes_it(corpus, tmp_path):
    import shlex

    args = ["train", "--variant", "fal", "--steps", "100000", "--data", str(corpus), "--name", "intr", "-q",
            "--set", "model.n_layer=1", "--set", "model.n_embd=16", "--set", "model.n_head=2",
            "--set", "model.block_size=16", "--set", "train.checkpoint_interval=5", "--set", "train.eval_interval=5",
            "--set", f"results_dir={tmp_path}", "--no-resume"]
    proc = subprocess.Popen([sys.executable, "-m", "falstudy.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    runs = tmp_path / "intr" / "runs"
    deadline = time.time() + 90
    while not list(runs.glob("*/checkpoint.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert list(runs.glob("*/checkpoint.pt")), "the run never reached its first checkpoint"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    (line,) = err.strip().splitlines()
    (run_id,) = [p.name for p in runs.iterdir()]
    assert line.startswith(f"falstudy: interrupted run {run_id} ({runs / run_id}); resume it from its last checkpoint with: ")
    command = shlex.split(line.split(" with: ", 1)[1])
    assert command[:2] == ["falstudy", "train"] and "--no-resume" not in command
    assert command[command.index("--run-id") + 1] == run_id
    assert command[1:command.index("--run-id")] == [a for a in args if a != "--no-resume"]
    status = falstudy.query(tmp_path / "intr", "SELECT status FROM runs").status.tolist()
    assert status == ["killed"]
