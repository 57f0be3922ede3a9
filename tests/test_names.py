"""One check for names that become folders: every API entry point that creates a folder under a
results (or data) root refuses a name that would leave it, and creates nothing. The command-line
entry points are rows of tests/hostile_inputs.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from falstudy.errors import FalstudyError
from falstudy.names import check_name, safe_name
from falstudy.sweep.spec import cell_run_id

BAD = ["..", "../../esc", "/abs/esc", "a/b", "a\\b", "", "a\0b", ".", ".x", "-x", "x" * 121, "a b", "é"]
TINY = {"model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16}, "train": {"steps": 1}}


@pytest.mark.parametrize("name", BAD)
def test_check_name_refuses(name):
    with pytest.raises(FalstudyError):
        check_name(name)


@pytest.mark.parametrize("name", ["default", "bypass", "fal-s0", "lr1e+20-s1", "baseline-s0-20260101-120000-ab12", "a.b_c"])
def test_check_name_accepts_what_falstudy_itself_makes(name):
    assert check_name(name) == name


def test_sweep_run_ids_and_derived_names_pass_the_check():
    for params in ({"variant": "fal"}, {"train.lr": 1e20, "variant": "x y/z"}, {"model.wiring": "../.."}):
        assert check_name(cell_run_id(params, 0))
    assert check_name(safe_name("hf-my model (v2)")) and check_name(safe_name("..")) and check_name(safe_name("/"))


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _entry_points(corpus: Path, work: Path):
    """(label, call(name)) for every API entry point that turns a name into a folder."""
    import falstudy
    from falstudy.config import RunConfig
    from falstudy.sweep.driver import plan, run_sweep
    from falstudy.sweep.spec import spec_from_dict
    from falstudy.train import as_run_config

    run = {**TINY, "data": {"path": str(corpus)}, "results_dir": str(work / "results")}

    def spec_file(name: str) -> Path:
        path = work / "s.yaml"
        path.write_text(yaml.safe_dump({"name": name, "results_dir": str(work / "results"),
                                        "run": {k: v for k, v in run.items() if k != "results_dir"},
                                        "search": {"variant": ["fal"]}}))
        return path

    def config_file(**fields) -> Path:
        path = work / "c.yaml"
        path.write_text(yaml.safe_dump({**run, **fields}))
        return path

    return {
        "train(name=)": lambda n: falstudy.train(run, name=n, quiet=True),
        "train(run_id=)": lambda n: falstudy.train(run, run_id=n, quiet=True),
        "train(config name)": lambda n: falstudy.train({**run, "name": n}, quiet=True),
        "train(yaml run_id)": lambda n: falstudy.train(str(config_file(run_id=n)), quiet=True),
        "RunConfig(name=)": lambda n: RunConfig(name=n),
        "RunConfig(run_id=)": lambda n: RunConfig(run_id=n),
        "as_run_config": lambda n: as_run_config(run, {"name": n}),
        "as_run_config(yaml)": lambda n: as_run_config(config_file(name=n)),
        "prepare(name=)": lambda n: falstudy.prepare(corpus=str(work / "texts"), out_dir=work / "data", name=n, quiet=True),
        "spec_from_dict": lambda n: spec_from_dict({"name": n, "run": TINY}),
        "run_sweep": lambda n: run_sweep(spec_file(n), quiet=True, echo=lambda line: None),
        "plan": lambda n: plan(spec_file(n), echo=lambda line: None),
    }


ENTRY_POINTS = ["train(name=)", "train(run_id=)", "train(config name)", "train(yaml run_id)", "RunConfig(name=)",
                "RunConfig(run_id=)", "as_run_config", "as_run_config(yaml)", "prepare(name=)", "spec_from_dict",
                "run_sweep", "plan"]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_no_entry_point_lets_a_name_leave_its_root(entry, corpus, tmp_path):
    work = tmp_path / "outer" / "inner" / "work"
    (work / "texts").mkdir(parents=True)
    (work / "texts" / "a.txt").write_text("some words of text\n" * 30)
    calls = _entry_points(corpus, work)
    assert sorted(calls) == sorted(ENTRY_POINTS)
    for name in ["..", "../../esc", str(tmp_path / "abs"), "a/b", "", "a\0b"]:
        before = _tree(tmp_path)
        with pytest.raises((FalstudyError, ValueError), match="it names a folder"):  # RunConfig(): pydantic's error
            calls[entry](name)
        # the YAML files the helpers write are inputs; anything else would be an escape
        assert [p for p in _tree(tmp_path) if p not in before and not p.endswith((".yaml",))] == [], name
