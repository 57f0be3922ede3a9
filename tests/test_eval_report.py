"""The downstream report section and the held-out verdict rows on a synthetic group whose
per-seed bits per byte are known: fal 0.05 below baseline on kjv (a real difference), level with
it on fortunes (a null one)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from falstudy import stats
from falstudy.report import downstream, verdicts
from falstudy.store import RunSpool, ingest
from falstudy.store.readonly import MissingTable, Results

sys.path.insert(0, str(Path(__file__).parent))
from test_verdicts import BASE, NOISE, _run  # noqa: E402


def _evals(group: Path, variant: str, seed: int, bpb: dict[str, float], acc: float) -> None:
    run_id = f"{variant}-64-s{seed}"
    rows = [{"run_id": run_id, "step": 800, "kind": "heldout", "task": d, "metric": "bpb", "value": v, "n": 128}
            for d, v in bpb.items()]
    rows.append({"run_id": run_id, "step": 800, "kind": "pairs", "task": "wordswap-web", "metric": "acc",
                 "value": acc, "n": 500})
    RunSpool(group / "runs" / run_id).write_table("evals", rows, part="synthetic")


def _group(root: Path) -> Path:
    group = root / "results" / "g"
    for s in range(5):
        _run(group, "baseline", s, 2.0)
        _run(group, "fal", s, 2.0)
        _evals(group, "baseline", s, {"kjv": BASE[s] + 1, "fortunes": BASE[s] + 2}, 0.6)
        _evals(group, "fal", s, {"kjv": BASE[s] + 1 - 0.05 + NOISE[s], "fortunes": BASE[s] + 2 + NOISE[s]}, 0.6 + NOISE[s])
    ingest(group)
    return group


def test_heldout_verdicts_are_paired_by_seed_per_domain_and_over_all(tmp_path):
    report = verdicts.compute([_group(tmp_path)])
    rows = {r.variant: r for r in report.rows if r.claim == "fal_le_baseline_heldout"}
    assert set(rows) == {"fal vs baseline (kjv)", "fal vs baseline (fortunes)", "fal vs baseline (all)"}
    kjv = rows["fal vs baseline (kjv)"]
    ref = stats.paired_t([-0.05 + e for e in NOISE])
    assert kjv.effect == pytest.approx(-0.05) and kjv.n == 5 and kjv.unit == "bits/byte"
    assert (kjv.ci_lo, kjv.ci_hi) == (pytest.approx(ref.lo), pytest.approx(ref.hi)) and kjv.verdict == stats.HOLDS
    assert rows["fal vs baseline (fortunes)"].verdict == stats.INCONCLUSIVE
    assert rows["fal vs baseline (all)"].effect == pytest.approx(-0.025)
    assert "fal_le_baseline_heldout" in verdicts.text_table(report)


def test_without_evals_the_claim_says_what_to_run(tmp_path):
    group = tmp_path / "results" / "g"
    for s in range(2):
        _run(group, "baseline", s, 2.0)
        _run(group, "fal", s, 1.9)
    ingest(group)
    report = verdicts.compute([group])
    assert any(m.startswith("fal_le_baseline_heldout") and "falstudy eval" in m for m in report.missing)
    with pytest.raises(MissingTable, match="falstudy eval"):
        downstream.heldout_table(Results(group))


def test_downstream_tables_and_figures(tmp_path):
    res = Results(_group(tmp_path))
    table = downstream.heldout_table(res)
    kjv = table[(table["task"] == "kjv")].set_index("variant")
    assert kjv.loc["baseline", "mean"] == pytest.approx(sum(BASE) / 5 + 1) and kjv.loc["fal", "runs"] == 5
    assert kjv.loc["fal", "vs_baseline"] == pytest.approx(-0.05) and kjv.loc["fal", "pairs"] == 5
    assert kjv.loc["fal", "sd"] == pytest.approx(stats.paired_t([b + e for b, e in zip(BASE, NOISE)]).sd)
    acc = downstream.accuracy_table(res).set_index("variant")
    assert acc.loc["baseline", "mean"] == pytest.approx(0.6) and acc.loc["baseline", "sd"] == 0.0
    fig = downstream.heldout_figure(res)
    assert len(fig.axes) == 2 and {a.get_title() for a in fig.axes} == {"kjv (bpb)", "fortunes (bpb)"}
    assert len(downstream.accuracy_figure(res).axes) == 1


def test_downstream_pairs_share_seed_learning_rate_and_size(tmp_path):
    group = tmp_path / "results" / "g"
    wide = {"n_layer": 3, "n_embd": 96, "n_head": 4, "steps": 800, "batch_size": 32, "seq_len": 64}
    for s in range(3):
        for variant, gap in (("baseline", 0.0), ("fal", -0.05)):
            _run(group, variant, s, 2.0)
            _evals(group, variant, s, {"kjv": 3.0 + gap + NOISE[s] * (variant == "fal")}, 0.6)
            _run(group, variant, s, 2.0, size=wide)  # another size: its own rows, never paired across
            RunSpool(group / "runs" / f"{variant}-96-s{s}").write_table("evals", [
                {"run_id": f"{variant}-96-s{s}", "step": 800, "kind": "heldout", "task": "kjv", "metric": "bpb",
                 "value": 2.0 + 2 * gap, "n": 128}], part="synthetic")
    _run(group, "fal", 3, 2.0)  # fal's seed 3 has no baseline partner: not in the difference
    _evals(group, "fal", 3, {"kjv": 9.0}, 0.6)
    ingest(group)
    table = downstream.heldout_table(Results(group))
    fal = table[table["variant"] == "fal"].set_index("size")["vs_baseline"]
    pairs = table[table["variant"] == "fal"].set_index("size")["pairs"]
    assert len(fal) == 2 and sorted(pairs) == [3, 3]
    assert sorted(fal) == [pytest.approx(-0.1), pytest.approx(-0.05 + sum(NOISE[:3]) / 3)]
