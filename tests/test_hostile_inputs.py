"""Every row of tests/hostile_inputs.py through the command line: exit code 2, one line naming
what is wrong, nothing written anywhere under the test's folder (and a pickled payload never runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostile_inputs import CASES, HF_CONFIG, HF_SHAPES, Case, config, hf_dir, spec  # noqa: E402  (tests/ is on sys.path)


def tree(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its size and modification time (files) or None (folders)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
            for p in sorted(root.rglob("*"))}


def materialise(case: Case, work: Path, corpus: Path) -> None:
    for rel, content in case.files.items():
        path = work / rel
        if callable(content):
            content(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content.replace("{corpus}", str(corpus)), encoding="utf-8")
        else:
            path.write_bytes(content)


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """falstudy's exit code and stderr; a warning counts as a line of stderr (the CLI prints them)."""
    import warnings

    from falstudy.cli import main

    with warnings.catch_warnings(record=True) as caught, pytest.raises(SystemExit) as done:
        warnings.simplefilter("always")
        main(argv)
    shown = [f"{w.category.__name__}: {w.message}" for w in caught if not issubclass(w.category, DeprecationWarning)]
    return done.value.code, "\n".join(shown + [capsys.readouterr().err])


def test_the_table_is_large_and_its_ids_unique():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_exits_2_with_one_line_and_writes_nothing(case, corpus, tmp_path, monkeypatch, capsys):
    work = tmp_path / "outer" / "inner" / "work"
    work.mkdir(parents=True)
    materialise(case, work, corpus)
    before = tree(tmp_path)
    monkeypatch.chdir(work)
    subs = {"{corpus}": str(corpus), "{work}": str(work), "{root}": str(tmp_path)}
    argv = [a if not any(k in a for k in subs) else _sub(a, subs) for a in case.argv]
    code, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("falstudy: error: "), err
    assert case.needle in lines[0], lines[0]
    assert tree(tmp_path) == before  # nothing created (no results/, no pwned), changed or removed


def _sub(text: str, subs: dict[str, str]) -> str:
    for k, v in subs.items():
        text = text.replace(k, v)
    return text


# the rows start from valid files: each fails for its own mutation, not a broken fixture


def test_the_unmutated_gpt2_folders_load(tmp_path):
    from falstudy.models.hf import load_gpt2

    for weights in ("safetensors", "bin"):
        hf_dir(weights=weights)(tmp_path / weights)
        model, cfg = load_gpt2(tmp_path / weights)
        assert cfg.model.n_layer == HF_CONFIG["n_layer"] and cfg.model.vocab_size == HF_CONFIG["vocab_size"]

    import math

    from falstudy.models.hf import gpt2_param_count, gpt2_shapes

    base = cfg.model
    assert gpt2_shapes(base) == HF_SHAPES  # the table's hand-written layout is the loader's
    for tied in (True, False):  # the size check counts what the shape check lists
        model_cfg = base.model_copy(update={"tie_weights": tied})
        assert gpt2_param_count(model_cfg) == sum(math.prod(s) for s in gpt2_shapes(model_cfg).values())


def test_the_unmutated_spec_and_config_are_valid(corpus, tmp_path):
    from falstudy.sweep.spec import load_spec
    from falstudy.train import as_run_config

    (tmp_path / "s.yaml").write_text(spec().replace("{corpus}", str(corpus)))
    (tmp_path / "c.yaml").write_text(config().replace("{corpus}", str(corpus)))
    assert load_spec(tmp_path / "s.yaml").name == "s"
    assert as_run_config(tmp_path / "c.yaml").name == "g"


@pytest.mark.parametrize("case_id", ["train --name up-and-out", "train: billion laughs in a field", "hf: pickled payload in .bin"])
def test_rows_through_a_real_process(case_id, corpus, tmp_path):
    """The same contract end to end: the installed entry point, its own stderr and exit code."""
    import subprocess
    import sys

    case = next(c for c in CASES if c.id == case_id)
    work = tmp_path / "outer" / "inner" / "work"
    work.mkdir(parents=True)
    materialise(case, work, corpus)
    before = tree(tmp_path)
    argv = [_sub(a, {"{corpus}": str(corpus), "{work}": str(work), "{root}": str(tmp_path)}) for a in case.argv]
    proc = subprocess.run([sys.executable, "-m", "falstudy", *argv], capture_output=True, text=True, cwd=work, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and case.needle in lines[0], proc.stderr
    assert tree(tmp_path) == before
