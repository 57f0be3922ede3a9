"""The command line's usage errors, --version and help: one line, exit 2, a suggestion."""

from __future__ import annotations

import pytest
import typer

from falstudy.cli import app, main


def _leaf_commands(cmd=None, path=()):
    cmd = cmd or typer.main.get_command(app)
    if hasattr(cmd, "list_commands"):
        for name in cmd.list_commands(None):
            yield from _leaf_commands(cmd.get_command(None, name), (*path, name))
    else:
        yield path


def _run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(list(args))
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


COMMANDS = sorted(_leaf_commands())


def test_the_walk_finds_the_commands():
    assert {("train",), ("probe",), ("sql",), ("data", "prepare"), ("bench", "tp"), ("sweep",), ("report",)} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p))
def test_every_command_refuses_an_unknown_option_in_one_line(capsys, path):
    code, out, err = _run(capsys, *path, "--no-such-option")
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"falstudy {' '.join(path)}: error: no such option --no-such-option")
    assert f"falstudy {' '.join(path)} --help" in lines[0]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["train", "--stepz", "3"], "no such option --stepz (did you mean --steps?)"),
        (["trian"], "no such command 'trian' (did you mean train?)"),
        (["nosuchcmd"], "no such command 'nosuchcmd'"),
        (["sql"], "missing argument"),
        (["data", "prepare", "--tokenizer", "bytes"], "(did you mean byte?)"),
        (["train", "--steps", "many"], "'--steps'"),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(capsys, args, needle):
    code, out, err = _run(capsys, *args)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert "internal error" not in err


def test_version_names_the_package_and_commit(capsys):
    import falstudy
    from falstudy.provenance import _git

    code, out, err = _run(capsys, "--version")
    assert code == 0, err
    assert out.startswith(f"falstudy {falstudy.__version__} ")
    commit = _git("rev-parse", "--short", "HEAD")
    assert (commit or "not a git checkout") in out


def test_train_help_shows_the_defaults(capsys):
    code, out, _ = _run(capsys, "train", "--help")
    assert code == 0
    flat = "".join(out.split())  # help wraps lines anywhere, hyphens too
    for text in ("[default: (small without CONFIG, none with it)]", "[default: (300 with preset small, 200 with none)]",
                 "[default: (0)]", "[default: (data/shakespeare-byte)]", "[default: (auto)]", "[default: 1]"):
        assert "".join(text.split()) in flat, text


def test_dry_run_prints_the_resolved_config_and_writes_nothing(capsys, corpus, tmp_path):
    import yaml

    code, out, err = _run(capsys, "train", "--dry-run", "--variant", "fal", "--data", str(corpus),
                          "--set", f"results_dir={tmp_path / 'res'}", "--set", "train.lr=0.002")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("model: fal (fal), 4 layers x 64 (4 heads), block 64, vocab 256: ")
    assert "M parameters (preset small" in lines[0]
    assert lines[1].startswith("train: 1000 steps x 32 x 64 tokens, lr 0.002, seed 0, device cpu")
    assert lines[2].startswith("estimate: ~") and " per step, ~" in lines[2]
    resolved = yaml.safe_load(out.split("\n", 4)[4])
    assert resolved["model"]["n_layer"] == 4 and resolved["model"]["wiring"] == "fal"
    assert resolved["train"]["lr"] == 0.002 and resolved["data"]["path"] == str(corpus)
    assert not (tmp_path / "res").exists()
    # --preset none gives the config defaults; a config file takes them too unless asked
    code, out, _ = _run(capsys, "train", "--dry-run", "--preset", "none", "--data", str(corpus))
    assert code == 0 and out.startswith("model: baseline (baseline), 6 layers x 384 (6 heads), block 256")
    assert "preset" not in out.splitlines()[0]


def test_dry_run_parameter_count_is_the_models(capsys, corpus):
    import falstudy

    code, out, _ = _run(capsys, "train", "--dry-run", "--data", str(corpus), "--set", "model.n_layer=2")
    cfg = falstudy.RunConfig(model={"n_layer": 2, "n_embd": 64, "n_head": 4, "block_size": 64, "vocab_size": 256})
    n = falstudy.GPT(cfg.model).num_params(non_embedding=False)
    assert code == 0 and f": {n / 1e6:.2f}M parameters" in out.splitlines()[0]


def test_probe_takes_a_run_id_and_prints_what_it_measured(capsys, corpus, tmp_path, monkeypatch):
    import falstudy
    from falstudy.probe.summary import summary_table

    tiny = {"model__n_layer": 2, "model__n_embd": 32, "model__n_head": 2, "model__block_size": 32}
    for group in ("a", "b"):
        falstudy.train(data__path=str(corpus), results_dir=str(tmp_path / "results"), name=group, run_id=f"r-{group}",
                       train__steps=4, train__eval_interval=4, train__eval_batches=1, quiet=True, **tiny)
    falstudy.train(data__path=str(corpus), results_dir=str(tmp_path / "results"), name="b", run_id="r-a",
                   train__steps=4, train__eval_interval=4, train__eval_batches=1, quiet=True, **tiny)
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "results" / "a" / "runs" / "r-a"
    args = ["--probes", "logit_lens", "--tokens", "256", "--batch-size", "4", "-q"]

    code, out, err = _run(capsys, "probe", "r-a", *args, "--no-write")
    assert code == 2 and "run r-a is in 2 groups" in err and "-r" in err
    code, out, err = _run(capsys, "probe", "r-a", "-r", "results/a", *args, "--no-write")
    assert code == 0, err
    want = summary_table(falstudy.run_probes(run_dir, "logit_lens", 256, 4, out=False, quiet=True))
    lines = out.strip().splitlines()
    assert lines[0].split() == ["probe", "site", "metric", "L0", "L1"]
    for line, (_, row) in zip(lines[1:], want.iterrows()):
        cells = line.split()
        assert cells[:3] == [row.probe, row.site, row.metric]
        assert [float(c) for c in cells[3:]] == pytest.approx([row.L0, row.L1], rel=1e-3)
    assert lines[-1] == "rows per probe: logit_lens: 12; not written (--no-write)"
    assert not list(run_dir.glob("probes-*.parquet"))

    code, out, err = _run(capsys, "probe", "r-b", *args)
    assert code == 0, err
    assert list((tmp_path / "results" / "b" / "runs" / "r-b").glob("probes-logit_lens*.parquet"))
    assert "written to results/b/runs/r-b/probes-*.parquet" in out.splitlines()[-1]
    code, _, err = _run(capsys, "probe", "r-zzz", *args)
    assert code == 2 and "no run with that id" in err
