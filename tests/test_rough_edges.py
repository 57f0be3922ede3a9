"""One line and exit code 2 where main crashed or said the wrong thing (issues 18 and 19): a
storage that is a folder or inside a file (leaving no folders behind), a spec that is a folder, a
model too big for memory, a corpus split shorter than one block; and status fields that tell the
truth (final_step while running, the trial a dead worker was running)."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

import falstudy
from falstudy.cli import main
from falstudy.errors import FalstudyError

sys.path.insert(0, str(Path(__file__).parent))
from test_sweep import write_spec  # noqa: E402


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(args)
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("falstudy: error: "), err
    return lines[0]


@pytest.mark.parametrize("kind", ["folder", "inside a file"])
def test_a_bad_journal_storage_is_one_line_and_leaves_no_folders(kind, corpus, tmp_path, capsys):
    spec = write_spec(tmp_path, corpus)
    if kind == "folder":
        storage, expected = tmp_path / "adir", "is a folder; give a journal file path"
        storage.mkdir()
    else:
        (tmp_path / "afile").write_text("x")
        storage, expected = tmp_path / "afile" / "j.journal", "afile is a file, not a folder"
    for extra in ([], ["--dry-run"]):
        code, _, err = cli(["sweep", str(spec), "--quiet", "--storage", str(storage), *extra], capsys)
        assert code == 2 and expected in one_error_line(err)
    assert not (tmp_path / "results").exists()  # no results/<name>/sweep/logs left behind


def test_a_spec_that_is_a_folder_says_so(tmp_path, capsys):
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "a.yaml").write_text("name: a\n")
    code, _, err = cli(["sweep", str(tmp_path / "specs")], capsys)
    line = one_error_line(err)
    assert code == 2 and "is a folder, not a YAML file" in line and "a.yaml" in line and "no such file" not in line


def test_a_model_too_big_for_memory_is_refused_before_allocating(corpus, tmp_path, capsys):
    code, _, err = cli(["train", "-q", "--data", str(corpus), "--steps", "1", "--set", f"results_dir={tmp_path}",
                        "--set", "model.n_layer=400", "--set", "model.n_embd=16384", "--set", "model.n_head=64"], capsys)
    line = one_error_line(err)
    assert code == 2 and "parameters: training it needs" in line and "bytes a parameter" in line and "available" in line
    assert not list(tmp_path.glob("*/runs/*/checkpoint.pt"))


def test_a_corpus_too_small_for_one_block_is_refused(tmp_path, capsys):
    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(10):
        (texts / f"d{i}.txt").write_text("tiny " * 10)  # ~50 tokens each: the val split is < 257
    code, _, err = cli(["data", "prepare", "--corpus", str(texts), "--out", str(tmp_path / "data"), "-q"], capsys)
    line = one_error_line(err)
    assert code == 2 and "validation split has" in line and "fewer than one block" in line and "--val-fraction" in line
    assert [p.name for p in (tmp_path / "data").iterdir()] == []  # the temp folder is gone too


def test_final_step_is_the_resume_point_while_running(corpus, tmp_path):
    seen = {}

    def at_eval(step: int, val_loss: float) -> bool:
        row = pq.read_table(next(tmp_path.glob("g/runs/*/runs.parquet"))).to_pylist()[0]
        seen[step] = (row["status"], row["final_step"])
        return False

    falstudy.train(None, on_eval=at_eval, quiet=True, **{
        "name": "g", "results_dir": str(tmp_path), "data.path": str(corpus), "model.n_layer": 1, "model.n_head": 2,
        "model.n_embd": 16, "model.block_size": 16, "train.steps": 15, "train.batch_size": 2,
        "train.eval_interval": 5, "train.eval_batches": 1, "train.log_interval": 5, "train.checkpoint_interval": 5})
    # each eval runs before that step's checkpoint: the resume point is the checkpoint before it
    assert seen == {5: ("running", 0), 10: ("running", 5), 15: ("running", 10)}
    assert falstudy.query(tmp_path / "g", "SELECT status, final_step FROM runs").values.tolist() == [["completed", 15]]


def test_a_dead_worker_line_names_the_trial_it_was_running(tmp_path):
    import optuna

    from falstudy.sweep.driver import failed_worker_line
    from falstudy.sweep.reap import host_name

    study = optuna.create_study()
    done = study.ask()
    for trial, run_id in ((done, "t0000-s0"), (running := study.ask(), "t0001-s0")):
        trial.set_user_attr("run_id", run_id)
        trial.set_user_attr("worker_pid", 4242)
        trial.set_user_attr("worker_host", host_name())
    study.tell(done, 1.0)
    log = tmp_path / "worker.log"
    log.write_text("trial 0 t0000-s0: COMPLETE [1.0]\nTraceback (most recent call last):\nMemoryError\n")
    line = failed_worker_line(study, 0, 4242, -9, log)
    assert line == ("worker 0 (pid 4242) ended with killed by signal SIGKILL while running trial 1 (t0001-s0): "
                    "Traceback (most recent call last): | MemoryError")
    log.write_text("trial 0 t0000-s0: COMPLETE [1.0]\n")  # nothing after the finished trial: quote nothing
    assert failed_worker_line(study, 0, 4242, -9, log).endswith("while running trial 1 (t0001-s0)")
    assert running.number == 1


def test_the_bad_storage_check_itself_creates_nothing(tmp_path):
    from falstudy.sweep.study import check_storage

    with pytest.raises(FalstudyError, match="folder .*missing does not exist"):
        check_storage(str(tmp_path / "missing" / "j.journal"))
    check_storage(str(tmp_path / "results" / "g" / "optuna.journal"), made_later=tmp_path / "results" / "g")
    assert list(tmp_path.iterdir()) == []
    assert yaml  # the spec helper writes YAML
