"""Verdicts (falstudy.report.verdicts, `falstudy verdict`): on synthetic groups whose effects are
known, each claim's number equals the hand-computed one, a real difference is called, a null one
is not; groups lacking seeds or probes name what is missing; the fixture store gives rows."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from falstudy import stats
from falstudy.errors import FalstudyError
from falstudy.probe.rows import row
from falstudy.report import verdicts
from falstudy.store import RunSpool, ingest
from falstudy.store.readonly import Results

sys.path.insert(0, str(Path(__file__).parent))
import fixture_store  # noqa: E402

SIZE = dict(n_layer=3, n_embd=64, n_head=4, steps=800, batch_size=32, seq_len=64)
NOISE = (0.004, -0.003, 0.001, -0.002, 0.0)  # mean 0: what a null effect looks like per seed
BASE = (2.00, 2.02, 1.98, 2.01, 1.99)


def _run(group: Path, variant: str, seed: int, loss: float, size: dict = SIZE, probes: list[dict] = ()) -> None:
    run_id = f"{variant}-{size['n_embd']}-s{seed}"
    spool = RunSpool(group / "runs" / run_id)
    spool.write_table("runs", [{"run_id": run_id, "name": group.name, "status": "completed", "variant": variant,
                                "wiring": variant, "seed": seed, "final_val_loss": loss,
                                "ended_at": f"2026-12-01T00:00:0{seed}+00:00", **size}])
    if probes:
        spool.write_table("probes", [{**r, "run_id": run_id} for r in probes], part="synthetic")


def _baseline_probes(seed: int) -> list[dict]:
    """Probe rows with known per-seed numbers: CKA gap 0.5 + noise, gradient ratios e^1 (raw)
    and e^0.5 (scale-free), primacy 0.2, bypass - removal -0.1, substitutes -0.01 / +noise."""
    e = NOISE[seed]
    rows = []
    for i in range(3):
        for j in range(i, 3):
            same = 1.0 if i == j else None
            rows.append(row("cka", "mlp_in|mlp_in", i, "cka", same or 0.9 + e, layer_b=j))
            rows.append(row("cka", "attn_out|attn_out", i, "cka", same or 0.4, layer_b=j))
    for i, (g, ga) in enumerate([(2.718281828, 1.6487212707), (1.0, 1.0), (0.5, 0.9)]):
        rows.append(row("grads", "attn_out", i, "grad_norm_per_token", g))
        rows.append(row("grads", "attn_out", i, "grad_x_act", ga))
    for i, d in enumerate([0.25, 0.05, 0.03]):
        rows.append(row("attn_removal", "attn_out", i, "zero.delta_loss", d + e))
    rows.append(row("attn_removal", "attn_out", 1, "zero_rest.delta_loss", 0.12))
    rows.append(row("bypass", "mlp", 1, "bypass_rest.delta_loss", 0.02 + e))
    rows.append(row("bypass", "mlp", 1, "ln_plus_norm_all.delta_loss", 0.01 + e))
    rows.append(row("bypass", "mlp", 1, "ln_sum_all.delta_loss", 0.02 + e + NOISE[-1 - seed]))
    return rows


def _group(root: Path, name: str = "g", seeds: int = 5, size: dict = SIZE, fal_gap: float = -0.05,
           probes: bool = True) -> Path:
    group = root / "results" / name
    for s in range(seeds):
        base = BASE[s]
        _run(group, "baseline", s, base, size, _baseline_probes(s) if probes else [])
        _run(group, "fal", s, base + fal_gap + NOISE[s], size)  # a real difference
        _run(group, "fal_plus", s, base + fal_gap + 2 * NOISE[s], size)  # fal_plus - fal = NOISE: null
        _run(group, "parallel", s, base + 0.03 + NOISE[(s + 2) % 5], size)
        _run(group, "no_attn", s, base + 0.5, size)
    ingest(group)
    return group


def _by_claim(report) -> dict[str, verdicts.Verdict]:
    return {(r.claim, r.variant): r for r in report.rows}


def test_known_effects_are_called_and_null_ones_are_not(tmp_path):
    report = verdicts.compute([_group(tmp_path)])
    rows = _by_claim(report)
    fal = rows[("fal_le_baseline", "fal vs baseline")]
    ref = stats.paired_t([-0.05 + e for e in NOISE])
    assert fal.effect == pytest.approx(-0.05) and fal.n == 5
    assert (fal.ci_lo, fal.ci_hi, fal.p) == (pytest.approx(ref.lo), pytest.approx(ref.hi), pytest.approx(ref.p))
    assert fal.verdict == stats.HOLDS and fal.seeds_needed is None
    null = rows[("fal_plus_le_fal", "fal_plus vs fal")]
    assert null.effect == pytest.approx(0.0, abs=1e-12) and null.verdict == stats.INCONCLUSIVE
    assert rows[("parallel_ge_baseline", "parallel vs baseline")].verdict == stats.HOLDS
    sub = rows[("fal_lt_parallel", "fal vs parallel")]  # -0.05 against +0.03, noise of both seeds
    assert sub.effect == pytest.approx(-0.08) and sub.verdict == stats.HOLDS
    assert rows[("control_no_attn", "no_attn vs baseline")].effect == pytest.approx(0.5)
    assert 0 < fal.p_holm <= 1 and fal.p_holm >= fal.p


def test_probe_claims_use_the_hand_computed_numbers(tmp_path):
    rows = _by_claim(verdicts.compute([_group(tmp_path)]))
    assert rows[("cka", "baseline")].effect == pytest.approx(0.5)
    assert rows[("cka", "baseline")].verdict == stats.HOLDS
    assert rows[("grad_raw", "baseline")].effect == pytest.approx(1.0)  # ln(e / 1)
    assert rows[("grad_scale_free", "baseline")].effect == pytest.approx(0.5)
    assert rows[("primacy", "baseline")].effect == pytest.approx(0.2)  # 0.25 - max(0.05, 0.03)
    bypass = rows[("bypass_lt_removal", "baseline")]
    assert bypass.effect == pytest.approx(0.02 - 0.12) and bypass.verdict == stats.HOLDS
    assert rows[("substitute_ln_plus_norm", "baseline")].effect == pytest.approx(-0.01)
    assert rows[("substitute_ln_plus_norm", "baseline")].verdict == stats.HOLDS
    sub = rows[("substitute_ln_sum", "baseline")]  # per seed: NOISE reversed, mean 0
    assert sub.effect == pytest.approx(0.0, abs=1e-12) and sub.verdict == stats.INCONCLUSIVE


def test_primacy_on_fal_uses_stream_only_removal(tmp_path):
    group = tmp_path / "results" / "p"
    for s in range(3):
        # removing a_0 everywhere on fal also removes N_f(a_0): a bigger number, not like for like
        probes = [row("attn_removal", "attn_out", 0, "zero.delta_loss", 0.9),
                  row("attn_removal", "attn_out", 0, "zero_stream.delta_loss", 0.3 + NOISE[s]),
                  row("attn_removal", "attn_out", 1, "zero.delta_loss", 0.1),
                  row("attn_removal", "attn_out", 1, "zero_stream.delta_loss", 0.1)]
        _run(group, "fal", s, 2.0, probes=probes)
    ingest(group)
    report = verdicts.compute([group])
    primacy = _by_claim(report)[("primacy", "fal")]
    assert primacy.effect == pytest.approx(0.2 + sum(NOISE[:3]) / 3)
    assert "stream only" in primacy.note


def test_two_sizes_get_the_size_row(tmp_path):
    small = _group(tmp_path, "small", probes=False)
    large = _group(tmp_path, "large", size={**SIZE, "n_embd": 96}, fal_gap=-0.10, probes=False)
    report = verdicts.compute([small, large])
    size_rows = [r for r in report.rows if r.claim == "fal_gap_vs_size"]
    assert len(size_rows) == 1
    row_ = size_rows[0]
    assert row_.test == "Welch t" and row_.effect == pytest.approx(-0.05)  # -0.10 - (-0.05)
    assert row_.verdict == stats.HOLDS and "96d" in row_.size.split(" vs ")[0]
    assert {r.size for r in report.rows if r.claim == "fal_le_baseline"} == {row_.size.split(" vs ")[0],
                                                                            row_.size.split(" vs ")[1]}


def test_groups_that_reuse_run_ids_keep_their_own_probes(tmp_path):
    """Run ids are unique within a group only (a sweep names its runs baseline-s0, ...)."""
    groups = []
    for name, gap in (("a", 0.9), ("b", 0.5)):
        group = tmp_path / "results" / name
        for s in range(3):
            rows = [row("cka", "mlp_in|mlp_in", 0, "cka", gap + 0.4 + NOISE[s], layer_b=1),
                    row("cka", "attn_out|attn_out", 0, "cka", 0.4, layer_b=1)]
            spool = RunSpool(group / "runs" / f"baseline-s{s}")  # the same ids in both groups
            spool.write_table("runs", [{"run_id": f"baseline-s{s}", "name": name, "status": "completed",
                                        "variant": "baseline", "seed": s, "final_val_loss": 2.0,
                                        **{**SIZE, "n_embd": 64 if name == "a" else 96}}])
            spool.write_table("probes", [{**r, "run_id": f"baseline-s{s}"} for r in rows], part="synthetic")
        ingest(group)
        groups.append(group)
    cka = {r.size: r.effect for r in verdicts.compute(groups).rows if r.claim == "cka"}
    assert sorted(cka.values()) == [pytest.approx(0.5 + sum(NOISE[:3]) / 3), pytest.approx(0.9 + sum(NOISE[:3]) / 3)]


def test_pairs_share_the_learning_rate_as_well_as_the_seed(tmp_path):
    group = tmp_path / "results" / "lr"
    for s in range(3):
        for variant, lr, loss in (("baseline", 1e-2, 2.0), ("fal", 1e-2, 1.9 + NOISE[s]), ("fal", 3e-3, 2.5)):
            run_id = f"{variant}-lr{lr}-s{s}"
            RunSpool(group / "runs" / run_id).write_table("runs", [{
                "run_id": run_id, "name": "lr", "status": "completed", "variant": variant, "seed": s, "lr": lr,
                "final_val_loss": loss, "ended_at": f"2026-12-01T00:00:0{s}+00:00", **SIZE}])
    ingest(group)
    (row_,) = [r for r in verdicts.compute([group]).rows if r.claim == "fal_le_baseline"]
    assert row_.n == 3 and row_.effect == pytest.approx(-0.1 + sum(NOISE[:3]) / 3)  # the lr 3e-3 runs pair with none


def test_one_seed_names_what_is_missing(tmp_path):
    group = _group(tmp_path, "one", seeds=1, probes=False)
    with pytest.raises(FalstudyError) as err:
        verdicts.compute([group])
    message = str(err.value)
    assert "no claim can be tested" in message and "≥2 seeds" in message and "\n" not in message


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "falstudy.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_exits_2_with_one_line_when_nothing_can_be_tested(tmp_path):
    group = _group(tmp_path, "one", seeds=1, probes=False)
    proc = _cli("verdict", str(group))
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "≥2 seeds" in proc.stderr
    assert not (group / "verdicts").exists()
    proc = _cli("verdict", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "no such results folder" in proc.stderr


def test_cli_writes_the_verdicts_table(tmp_path):
    group = _group(tmp_path)
    proc = _cli("verdict", str(group))
    assert proc.returncode == 0, proc.stderr
    assert "fal_le_baseline" in proc.stdout and stats.HOLDS in proc.stdout and "Regime:" in proc.stdout
    table = Results(group).table("verdicts")
    assert set(table["claim"]) >= {"fal_le_baseline", "cka", "primacy", "bypass_lt_removal"}
    assert table["git_commit"].notna().all() or table["git_commit"].isna().all()
    again = _cli("verdict", str(group))  # rewritten whole, not appended
    assert again.returncode == 0
    assert len(Results(group).table("verdicts")) == len(table)


def test_fixture_store_gives_rows(tmp_path_factory, tmp_path):
    full, _ = fixture_store.stores(tmp_path_factory)
    group = tmp_path / "fx"
    shutil.copytree(full, group)  # the session's fixture stays as other tests expect it
    report = verdicts.compute([group])
    claims = {r.claim for r in report.rows}
    assert {"fal_le_baseline", "cka", "grad_raw", "grad_scale_free", "primacy", "bypass_lt_removal"} <= claims
    assert all(r.n == 2 for r in report.rows)  # two seeds a variant; the TP runs add no pair
    assert any("parallel" in m for m in report.missing)
    assert "Not tested:" in verdicts.text_table(report)


def test_ladder_claims_are_two_sided_and_only_where_a_ladder_was_trained(tmp_path):
    plain = verdicts.compute([_group(tmp_path, "plain", probes=False)])
    assert not any(r.claim in verdicts.OPTIONAL for r in plain.rows)
    assert not any("ladder" in m for m in plain.missing)
    group = tmp_path / "results" / "rival"
    for s in range(5):
        _run(group, "baseline", s, BASE[s])
        _run(group, "fal", s, BASE[s] - 0.05 + NOISE[s])
        _run(group, "ladder", s, BASE[s] + 0.04 + NOISE[(s + 1) % 5])  # worse: called in the "either" test
        _run(group, "fal_ladder", s, BASE[s] - 0.05 + 2 * NOISE[s])  # fal_ladder - fal = NOISE: null
    ingest(group)
    rows = _by_claim(verdicts.compute([group]))
    ladder = rows[("ladder_vs_baseline", "ladder vs baseline")]
    ref = stats.paired_t([0.04 + NOISE[(s + 1) % 5] for s in range(5)])
    assert ladder.effect == pytest.approx(0.04) and ladder.p == pytest.approx(ref.p)
    assert ladder.direction == "either" and ladder.verdict == stats.HOLDS
    null = rows[("fal_ladder_vs_fal", "fal_ladder vs fal")]
    assert null.effect == pytest.approx(0.0, abs=1e-12) and null.verdict == stats.INCONCLUSIVE
