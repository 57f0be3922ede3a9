"""The lm-evaluation-harness adapter end to end on local task YAMLs over tiny JSONL files (no
hub): lm-eval's numbers through ``--model falstudy`` equal ``falstudy eval``'s for the same items.

Needs the optional extra ``.[eval]`` (lm-eval 0.4.x); under CI (``CI`` set) a missing extra fails
the test rather than skipping it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

if os.environ.get("CI") and not __import__("importlib").util.find_spec("lm_eval"):
    pytest.fail("lm-eval is not installed: `make setup` installs the .[eval] extra", pytrace=False)
pytest.importorskip("lm_eval", reason="the lm-eval adapter needs the .[eval] extra: pip install -e '.[eval]'")

sys.path.insert(0, str(Path(__file__).parent))
from test_eval import make_run  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PAIRS = [("The cat sat on the mat.", "The sat cat on the mat."), ("She reads a book.", "She a reads book."),
         ("Dogs bark at night.", "Dogs at bark night."), ("We went home early.", "We home went early.")]
CHOICES = [{"context": "The sky is", "choices": ["blue", "a sandwich", "green"], "gold": 0},
           {"context": "Two plus two is", "choices": ["four", "fish"], "gold": 0},
           {"context": "Shall I compare thee to a", "choices": ["summer's day", "toaster"], "gold": 0}]


def offline_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
            "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets"), "HF_EVALUATE_OFFLINE": "1"}


def task_files(tmp_path: Path) -> Path:
    """Two local tasks: BLiMP's own template over a JSONL of pairs, and a multiple-choice one."""
    (tmp_path / "pairs.jsonl").write_text(
        "".join(json.dumps({"sentence_good": g, "sentence_bad": b}) + "\n" for g, b in PAIRS))
    (tmp_path / "choices.jsonl").write_text("".join(json.dumps(c) + "\n" for c in CHOICES))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "fs_pairs.yaml").write_text(f"""task: fs_pairs
dataset_path: json
dataset_kwargs:
  data_files: {{train: {tmp_path / 'pairs.jsonl'}}}
output_type: multiple_choice
validation_split: train
doc_to_text: ""
doc_to_target: 0
doc_to_choice: "{{{{[sentence_good, sentence_bad]}}}}"
num_fewshot: 0
metric_list:
  - metric: acc
metadata: {{version: 1.0}}
""")
    (tasks / "fs_choice.yaml").write_text(f"""task: fs_choice
dataset_path: json
dataset_kwargs:
  data_files: {{test: {tmp_path / 'choices.jsonl'}}}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_target: gold
doc_to_choice: choices
num_fewshot: 0
metric_list:
  - metric: acc
  - metric: acc_norm
metadata: {{version: 1.0}}
""")
    return tasks


def falstudy_eval(tmp_path: Path, *args: str) -> dict[tuple, float]:
    done = subprocess.run([sys.executable, "-m", "falstudy", "eval", *args, "--heldout", "none", "-q"],
                          cwd=tmp_path, env=offline_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    import duckdb

    con = duckdb.connect(str(tmp_path / "results" / "g" / "falstudy.duckdb"), read_only=True)
    rows = con.execute("SELECT kind, task, metric, value, n FROM evals").fetchall()
    con.close()
    return {(r[0], r[1], r[2]): (r[3], r[4]) for r in rows}


def test_lm_eval_with_model_falstudy_gives_falstudy_evals_numbers(tmp_path, corpus):
    run = make_run(tmp_path / "results" / "g", "baseline-s0", corpus)
    tasks = task_files(tmp_path)
    own = falstudy_eval(tmp_path, str(run), "--pairs", str(tmp_path / "pairs.jsonl"),
                        "--choices", str(tmp_path / "choices.jsonl"))
    via = falstudy_eval(tmp_path, str(run), "--pairs", "none", "--lm-eval", "fs_pairs,fs_choice",
                        "--include-path", str(tasks))
    assert own[("pairs", "pairs", "acc")] == pytest.approx(via[("lm_eval", "fs_pairs", "acc")])
    assert own[("choice", "choices", "acc")] == pytest.approx(via[("lm_eval", "fs_choice", "acc")])
    assert own[("choice", "choices", "acc_norm")] == pytest.approx(via[("lm_eval", "fs_choice", "acc_norm")])
    assert via[("lm_eval", "fs_pairs", "acc")][1] == len(PAIRS) and via[("lm_eval", "fs_choice", "acc")][1] == 3

    # lm-eval's own command line, the model found by name, per-item log-likelihoods logged
    out = tmp_path / "lm_eval_out"
    script = Path(sys.executable).parent / "falstudy-lm-eval"
    assert script.is_file(), "falstudy-lm-eval is not installed: pip install -e '.[eval]'"
    done = subprocess.run([str(script), "--model", "falstudy", "--model_args", f"run={run}",
                           "--tasks", "fs_pairs,fs_choice", "--include_path", str(tasks), "--output_path", str(out),
                           "--log_samples"], cwd=tmp_path, env=offline_env(tmp_path), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (results,) = out.rglob("results_*.json")
    got = json.loads(results.read_text())["results"]
    assert got["fs_pairs"]["acc,none"] == pytest.approx(own[("pairs", "pairs", "acc")][0])
    assert got["fs_choice"]["acc_norm,none"] == pytest.approx(own[("choice", "choices", "acc_norm")][0])

    (samples,) = out.rglob("samples_fs_pairs_*.jsonl")
    logged = [[float(r[0][0]) for r in json.loads(line)["resps"]] for line in samples.read_text().splitlines()]
    from falstudy.eval.pairs import read_pairs, score_pairs
    from falstudy.eval.runner import load_run
    from falstudy.eval.score import Scorer

    loaded = load_run(run)
    mine = score_pairs(Scorer(loaded.model, loaded.tokenizer), read_pairs(tmp_path / "pairs.jsonl"))["logprobs"]
    # each logged document's [good, bad] log-likelihoods are one of falstudy's pairs (lm-eval may reorder docs)
    assert len(logged) == len(mine)
    for pair in mine:
        assert any(lg == pytest.approx(list(pair), rel=1e-6) for lg in logged)


def test_an_unknown_lm_eval_task_is_one_line(tmp_path, corpus):
    run = make_run(tmp_path / "results" / "g", "r", corpus)
    tasks = task_files(tmp_path)
    done = subprocess.run([sys.executable, "-m", "falstudy", "eval", str(run), "--heldout", "none", "--pairs", "none",
                           "--lm-eval", "fs_pairs,no_such_task", "--include-path", str(tasks), "-q"], cwd=tmp_path,
                          env=offline_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and "unknown lm-eval task(s) no_such_task" in done.stderr, done.stderr[-2000:]
    assert not list(run.glob("evals-*"))


def test_the_adapter_decodes_greedily_up_to_a_stop_string():
    from types import SimpleNamespace

    import torch
    from test_eval import Bigram

    from falstudy.data.tokenizer import ByteTokenizer
    from falstudy.eval.lmeval import FalstudyLM
    from falstudy.eval.score import Scorer

    table = torch.zeros(256, 256)
    table[ord("a"), ord("b")] = table[ord("b"), ord("c")] = table[ord("c"), ord("!")] = 5.0
    lm = FalstudyLM(scorer=Scorer(Bigram(table), ByteTokenizer()))
    ask = lambda ctx, **kw: SimpleNamespace(args=(ctx, kw))  # noqa: E731  (an lm-eval Instance's args)
    assert lm.generate_until([ask("xa", until=["!"], max_gen_toks=10), ask("xa", until=[], max_gen_toks=2)]) == ["bc", "bc"]
    ((ll, greedy),) = lm.loglikelihood([SimpleNamespace(args=("xa", "bc"))])
    assert greedy and ll == pytest.approx(float(torch.log_softmax(table[ord("a")], -1)[ord("b")]
                                                + torch.log_softmax(table[ord("b")], -1)[ord("c")]))
