"""run_probes end to end on tiny models: rows, spool files, the docs' SQL, and input errors."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from falstudy.config import RunConfig
from falstudy.errors import FalstudyError
from falstudy.models.checkpoint import save_checkpoint
from falstudy.models.gpt import GPT
from falstudy.probe import run_probes
from falstudy.probe.rows import COLUMNS

TINY = dict(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=48)
FAST = {"linear": {"sites": ["resid_post"], "tasks": ["position"]}}  # sklearn fits are the slow part

# the two queries docs/probes.md shows (kept identical: the docs test below reads them from there)
SQL_WORST_LAYER = """
SELECT r.variant, p.layer, avg(p.value) AS delta_loss
FROM probes p JOIN runs r USING (run_id)
WHERE p.probe = 'attn_removal' AND p.metric = 'zero.delta_loss'
GROUP BY r.variant, p.layer
QUALIFY row_number() OVER (PARTITION BY r.variant ORDER BY avg(p.value) DESC) = 1
ORDER BY r.variant
""".strip()
SQL_WITHIN_BLOCK = """
SELECT r.variant, p.layer, avg(p.value) AS cka
FROM probes p JOIN runs r USING (run_id)
WHERE p.probe = 'cka' AND p.site = 'attn_out|mlp_in' AND p.layer = p.layer_b
GROUP BY r.variant, p.layer
ORDER BY r.variant, p.layer
""".strip()


def tokens(n: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 48, (n, 17), generator=torch.Generator().manual_seed(seed))


def tiny(wiring: str = "baseline", **fields) -> GPT:
    torch.manual_seed(0)
    return GPT(RunConfig(model={**TINY, "wiring": wiring, **fields}).model)


def make_run(root: Path, variant: str, run_id: str) -> Path:
    cfg = RunConfig(name="g", variant=variant, run_id=run_id, model=TINY)
    torch.manual_seed(0)
    model = GPT(cfg.model)
    run_dir = root / "g" / "runs" / run_id
    save_checkpoint(run_dir / "checkpoint.pt", {"model": model.state_dict(), "config": cfg.model_dump(mode="json"), "step": 40})
    return run_dir


@pytest.mark.parametrize("wiring", ["baseline", "parallel", "fal", "no_attn"])
def test_all_probes_return_documented_rows(wiring):
    df = run_probes(tiny(wiring), "all", tokens=256, batch_size=4, data=tokens(), quiet=True, options=FAST)
    assert list(df.columns) == COLUMNS
    assert df["value"].dtype == "float64" and df["layer"].dtype == "int64"
    expected = {"cka", "grads", "attn_removal", "bypass", "linear", "logit_lens"}
    if wiring == "no_attn":  # nothing to remove, bypass or compare attention with
        expected -= {"attn_removal", "bypass"}
    assert set(df["probe"]) == expected
    assert df["run_id"].isna().all()  # a bare model has no run
    for extra in df["extra_json"]:
        assert isinstance(json.loads(extra), dict)
    # pairwise rows have layer_b; per-layer rows do not
    assert df.loc[df["probe"] == "cka", "layer_b"].notna().all()
    assert df.loc[df["probe"].isin(["grads", "logit_lens", "linear", "attn_removal"]), "layer_b"].isna().all()
    cka = df[df["probe"] == "cka"]
    if wiring != "no_attn":
        assert set(cka["site"]) == {"attn_out|attn_out", "mlp_in|mlp_in", "attn_out|mlp_in"}
        assert len(cka[cka["site"] == "attn_out|mlp_in"]) == 4  # 2 x 2 layers, within and across blocks
    diag = cka[(cka["site"] == "mlp_in|mlp_in") & (cka["layer"] == cka["layer_b"])]
    assert (diag["value"] - 1).abs().max() < 1e-9


def test_run_folder_rows_go_to_its_spool_and_the_docs_sql_answers(tmp_path):
    from falstudy.store import RunSpool, ingest, query

    frames = {}
    for variant in ("baseline", "fal"):
        run_dir = make_run(tmp_path, variant, f"{variant}-r1")
        RunSpool(run_dir).write_table("runs", [{"run_id": f"{variant}-r1", "name": "g", "status": "completed", "variant": variant}])
        frames[variant] = run_probes(run_dir, "cka,attn_removal", tokens=256, batch_size=4, data=tokens(), quiet=True)
        files = sorted(p.name for p in run_dir.glob("probes-*.parquet"))
        assert files == ["probes-attn_removal-step000040.parquet", "probes-cka-step000040.parquet"]
        written = pd.concat(pd.read_parquet(run_dir / f) for f in files)
        assert len(written) == len(frames[variant])
        assert set(written["run_id"]) == {f"{variant}-r1"} and set(written["step"]) == {40}

    ingest(tmp_path / "g")
    worst = query(tmp_path / "g", SQL_WORST_LAYER)
    assert list(worst["variant"]) == ["baseline", "fal"]
    for variant, df in frames.items():
        zero = df[df["metric"] == "zero.delta_loss"].set_index("layer")["value"]
        got = worst[worst["variant"] == variant].iloc[0]
        assert got["layer"] == zero.idxmax() and got["delta_loss"] == pytest.approx(zero.max())
    within = query(tmp_path / "g", SQL_WITHIN_BLOCK)
    assert len(within) == 2 * 2
    base = frames["baseline"]
    want = base[(base["site"] == "attn_out|mlp_in") & (base["layer"] == base["layer_b"])]["value"].tolist()
    assert within[within["variant"] == "baseline"]["cka"].tolist() == pytest.approx(want)

    # rerunning a probe replaces its file rather than adding rows
    run_probes(tmp_path / "g" / "runs" / "fal-r1", "cka", tokens=256, batch_size=4, data=tokens(seed=1), quiet=True)
    assert len(list((tmp_path / "g" / "runs" / "fal-r1").glob("probes-cka*.parquet"))) == 1


def test_docs_show_the_tested_sql():
    doc = (Path(__file__).parents[1] / "docs" / "probes.md").read_text()
    assert SQL_WORST_LAYER in doc and SQL_WITHIN_BLOCK in doc


def test_bare_model_writes_nothing_unless_given_a_run_id(tmp_path):
    with pytest.raises(FalstudyError, match="run_id"):
        run_probes(tiny(), "logit_lens", tokens=64, data=tokens(), out=tmp_path, quiet=True)
    df = run_probes(tiny(), "logit_lens", tokens=64, data=tokens(), out=tmp_path, run_id="mine", quiet=True)
    assert (tmp_path / "probes-logit_lens.parquet").exists() and set(df["run_id"]) == {"mine"}


def test_explicit_site_pairs(tmp_path):
    df = run_probes(
        tiny("fal"),
        "cka",
        tokens=128,
        batch_size=4,
        data=tokens(),
        quiet=True,
        cka_pairs=[("blocks.0.attn", "blocks.1.fal_in"), ("blocks.1.resid_post", "ln_f")],
    )
    pair = df[df["site"] == "attn_out|fal_in"]
    assert len(pair) == 1 and pair.iloc[0]["layer"] == 0 and pair.iloc[0]["layer_b"] == 1
    assert len(df[(df["site"] == "resid_post|ln_f") & (df["layer_b"] == 2)]) == 1


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        (dict(probes="cka,telepathy"), "unknown probe 'telepathy'"),
        (dict(probes=""), "no probes given"),
        (dict(probes="cka", cka_pairs=[("blocks.0.attn", "blocks.1.mlp")]), "ambiguous"),
        (dict(probes="cka", cka_pairs=[("blocks.0.attn", "blocks.0.fal_src")]), "does not exist"),
        (dict(probes="grads", cka_pairs=[("blocks.0.attn", "ln_f")]), "cka probe is not selected"),
        (dict(probes="linear", options={"linear": {"top_k": 4, "depth": 2}}), "unknown option"),
        (dict(probes="cka", options={"lens": {}}), "unknown probe"),
        (dict(probes="cka", tokens=0), "tokens must be a positive"),
        (dict(probes="cka", device="cuda:3"), "CUDA is not available"),
        (dict(probes="logit_lens", seq_len=40), "block_size"),
    ],
)
def test_bad_input_is_a_one_line_user_error(kwargs, msg):
    kwargs = {"tokens": 64, "data": tokens(), "quiet": True, **kwargs}
    with pytest.raises(FalstudyError, match=msg) as err:
        run_probes(tiny(), **kwargs)
    assert "\n" not in str(err.value)


def test_too_few_tokens_for_cka_says_how_many_and_what_to_do():
    # 3 tokens of 4-token sequences: one sequence, positions 1..3 -> 3 samples
    data = torch.randint(0, 48, (8, 5))
    with pytest.raises(FalstudyError, match=r"more than 3 token samples.*gives 3.*raise tokens"):
        run_probes(tiny(), "cka", tokens=3, data=data, quiet=True)
    assert len(run_probes(tiny(), "cka", tokens=8, data=data, quiet=True))  # two sequences: 6 samples


def test_checkpoint_that_does_not_match_its_config(tmp_path):
    cfg = RunConfig(name="g", run_id="r", model={**TINY, "n_embd": 64})
    save_checkpoint(tmp_path / "checkpoint.pt", {"model": tiny().state_dict(), "config": cfg.model_dump(mode="json")})
    with pytest.raises(FalstudyError, match="does not match its config"):
        run_probes(tmp_path, "cka", data=tokens(), quiet=True)
    with pytest.raises(FalstudyError, match="not found"):
        run_probes(tmp_path / "nowhere", "cka", data=tokens(), quiet=True)


def test_data_comes_from_the_runs_prepared_corpus(tmp_path):
    from falstudy.data.shards import write_split

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    ids = torch.randint(0, 48, (3000,), generator=torch.Generator().manual_seed(0)).numpy()
    n_train = write_split(corpus, "train", ids[:2000], "uint16")
    n_val = write_split(corpus, "val", ids[2000:], "uint16")
    (corpus / "meta.json").write_text(json.dumps({"vocab_size": 48, "dtype": "uint16", "n_train": n_train, "n_val": n_val}))
    cfg = RunConfig(name="g", run_id="r", model=TINY, data={"path": str(corpus)})
    run_dir = tmp_path / "runs" / "r"
    save_checkpoint(run_dir / "checkpoint.pt", {"model": tiny().state_dict(), "config": cfg.model_dump(mode="json")})
    df = run_probes(run_dir, "attn_removal,cka", tokens=100, batch_size=4, seq_len=16, quiet=True)
    extra = json.loads(df[df["probe"] == "attn_removal"]["extra_json"].iloc[0])
    assert extra["n_tokens"] == 2 * 4 * 16  # ceil(100 / 16) = 7 sequences, rounded up to 2 batches of 4
    assert json.loads(df[df["probe"] == "cka"]["extra_json"].iloc[0])["n_samples"] == 8 * 15
    assert (run_dir / "probes-cka.parquet").exists()  # no step in this checkpoint
    meta = json.loads((corpus / "meta.json").read_text())
    (corpus / "meta.json").write_text(json.dumps({**meta, "vocab_size": 100}))  # a corpus the model cannot read
    with pytest.raises(FalstudyError, match="vocabulary 100 > the model's 48"):
        run_probes(run_dir, "cka", data=corpus, quiet=True, out=False)


def test_trainer_hook_and_checkpoint_probes_end_to_end(tmp_path):
    import falstudy
    from falstudy.data.shards import write_split
    from falstudy.probe import GradientHook

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    ids = torch.randint(0, 48, (3000,), generator=torch.Generator().manual_seed(0)).numpy()
    n_train, n_val = write_split(corpus, "train", ids[:2000], "uint16"), write_split(corpus, "val", ids[2000:], "uint16")
    (corpus / "meta.json").write_text(json.dumps({"vocab_size": 48, "dtype": "uint16", "n_train": n_train, "n_val": n_val}))
    config = {
        "name": "h",
        "run_id": "r1",
        "results_dir": str(tmp_path / "results"),
        "data": {"path": str(corpus)},
        "model": {"n_layer": 2, "n_head": 4, "n_embd": 32, "block_size": 16},
        "train": {"steps": 4, "batch_size": 4, "eval_interval": 4, "eval_batches": 1, "warmup_steps": 1},
    }
    result = falstudy.train(config, quiet=True, hooks=[(2, GradientHook("r1"))])
    assert result.status == "completed"
    # probe the checkpoint with the run's own corpus (data=None)
    run_probes(result.run_dir, "cka,logit_lens", tokens=128, batch_size=4, quiet=True)
    assert (result.run_dir / "probes-cka-step000004.parquet").exists()
    group = tmp_path / "results" / "h"
    falstudy.ingest(group)
    grads = falstudy.query(group, "SELECT step, layer FROM probes WHERE probe = 'grads' AND site = 'attn_out' "
                                  "AND metric = 'grad_norm' ORDER BY step, layer")
    assert grads.values.tolist() == [[2, 0], [2, 1], [4, 0], [4, 1]]
    lens = falstudy.query(group, "SELECT count(*) AS n, min(step) AS s FROM probes WHERE probe = 'logit_lens'")
    assert lens["n"][0] == 2 * 3 * 2 and lens["s"][0] == 4
