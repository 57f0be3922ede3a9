"""The analysis layer: the read-only helper (DB, spool fallback, locked DB, hints), every
figure of `falstudy report` on a fixture store made by the real writers (labelled axes with
units, titles, legends), the numbers behind them, and a store missing tables (hints, no
traceback). The fixture is built once per session (tests/fixture_store.py, ~10 s)."""

from __future__ import annotations

import base64
import html
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import markupsafe
import pytest

import falstudy
from falstudy.errors import FalstudyError
from falstudy.report import ANALYSES, BY_KEY, make_report
from falstudy.report.variants import pareto_front
from falstudy.store.readonly import MissingTable, Results

sys.path.insert(0, str(Path(__file__).parent))
import fixture_store  # noqa: E402

KEYS = [a.key for a in ANALYSES]
# what the fixture store can draw: all but the sizing figure, which needs runs at several widths
# and budgets (tested on its own group below)
FULL_KEYS = [k for k in KEYS if k != "sizing"]
# a substring every figure's y (or x) axis label must carry: its unit or what is counted
UNITS = {
    "cka": ("CKA", "layer"), "grad_norm": ("nats per unit", "layer"), "primacy": ("nats/token", "layer"),
    "bypass": ("nats/token", "MLP"), "loss_curves": ("nats/token", "step"), "final_loss": ("variant", "nats/token"),
    "importance": ("parameter", "importance"), "pareto": ("(ms)", "(nats/token)"),
    "sizing": ("nats/token", "FLOPs"), "collectives": ("count", ""), "step_times": ("(ms)", ""), "cost_model": ("baseline", "GPUs"),
    "heldout_bpb": ("variant", "bits per byte"), "pair_accuracy": ("variant", "accuracy"),
    "overlap": ("(ms)", ""),
}
LEGEND = {"grad_norm", "primacy", "bypass", "loss_curves", "final_loss", "pareto", "collectives", "step_times",
          "cost_model", "overlap"}


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[Path, Path]:
    return fixture_store.stores(tmp_path_factory)


@pytest.fixture(scope="module")
def full(stores) -> Results:
    return Results(stores[0])


# -- the read-only helper ----------------------------------------------------------------------
def test_results_reads_the_db_read_only_and_knows_its_tables(stores, full):
    assert full.source == "db" and full.note == ""
    assert full.tables() == ["evals", "metrics", "probes", "runs", "timings", "trials"]
    assert full.has("probes") and not full.has("nope")
    runs = full.table("runs")
    assert set(runs["run_id"]) == {"baseline-s0", "baseline-s1", "fal-s0", "fal-s1", "baseline-tp2-s0", "fal-tp2-s0"}
    n = full.sql("SELECT count(*) AS n FROM runs WHERE variant = ?", ["fal"])["n"][0]
    assert n == 3
    with pytest.raises(FalstudyError, match="SQL error") as err:
        full.sql("SELEC nonsense")
    assert "\n" not in str(err.value)
    with pytest.raises(FalstudyError):  # the connection is read-only
        full.sql("CREATE TABLE x (a INT)")
    assert "falstudy.duckdb" in str(full.root / "falstudy.duckdb") and full.table("trials")["study"].iloc[0] == "fx"


def test_missing_table_names_the_command_that_makes_it(stores):
    partial = Results(stores[1])
    assert partial.tables() == ["metrics", "runs"]
    for table, words in (("probes", "falstudy probe"), ("trials", "falstudy sweep"), ("timings", "--tp")):
        with pytest.raises(MissingTable, match=f"no {table} table") as err:
            partial.table(table)
        assert words in str(err.value) and words in err.value.hint and "\n" not in str(err.value)
    with pytest.raises(MissingTable, match="bench/tp_step.py"):
        partial.bench("tp_step")
    with pytest.raises(FalstudyError, match="no such results folder"):
        Results(stores[1] / "nowhere")


def test_spool_fallback_without_db_and_the_not_ingested_hint(stores, tmp_path):
    group = tmp_path / "results" / "copy"
    shutil.copytree(stores[0], group, ignore=shutil.ignore_patterns("falstudy.duckdb*"))
    res = Results(group)
    assert res.source == "spool" and "no falstudy.duckdb" in res.note
    assert set(res.tables()) >= {"runs", "metrics", "probes", "trials", "timings"}
    same = res.sql("SELECT count(*) AS n FROM probes")["n"][0]
    assert same == Results(stores[0]).sql("SELECT count(*) AS n FROM probes")["n"][0]
    with pytest.raises(FalstudyError, match="no results store"):
        Results(group, source="db")
    # a DB that lacks what the spool has: the hint says to ingest
    from falstudy.store import ingest

    probes = sorted(group.glob("runs/*/probes-*.parquet"))
    hidden = [p.rename(p.with_name("." + p.name)) for p in probes]
    ingest(group)
    for p in hidden:
        p.rename(p.with_name(p.name[1:]))
    res = Results(group)
    assert res.source == "db" and not res.has("probes")
    with pytest.raises(MissingTable, match="falstudy ingest"):
        res.table("probes")


def test_a_db_held_by_another_process_falls_back_to_the_spool(stores, tmp_path):
    group = tmp_path / "results" / "held"
    shutil.copytree(stores[0], group)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
                               "time.sleep(60)", str(group / "falstudy.duckdb")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = Results(group, wait_s=0.3)
        assert res.source == "spool" and "another process" in res.note
        assert len(res.table("runs")) == 6
    finally:
        holder.kill()
        holder.wait()


# -- figures -----------------------------------------------------------------------------------
def _labels(fig) -> list[tuple[str, str, str]]:
    return [(ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes]


def _twin(ax) -> bool:
    """A twinx axis: it shares the x axis (and its label) of another one."""
    return any(other is not ax and other.get_xlabel() for other in ax.get_shared_x_axes().get_siblings(ax))


@pytest.fixture(scope="module")
def sizing(tmp_path_factory) -> Results:
    """A sizing group: baseline runs at 2 widths x 2 step counts x 2 learning rates (spool rows)."""
    from falstudy.store import RunSpool, ingest

    group = tmp_path_factory.mktemp("sizing") / "results" / "sizing"
    for width, n_params in ((48, 111_000), (64, 198_000)):
        for steps in (300, 600):
            for lr in (5e-3, 1e-2):
                run_id = f"d{width}-s{steps}-lr{lr}"
                loss = 2.6 - 0.002 * width - 0.0005 * steps + (0.02 if lr == 5e-3 else 0.0)
                RunSpool(group / "runs" / run_id).write_table("runs", [{
                    "run_id": run_id, "name": "sizing", "status": "completed", "variant": "baseline", "seed": 0,
                    "n_layer": 4, "n_head": 4, "n_embd": width, "n_params": n_params, "steps": steps,
                    "batch_size": 32, "seq_len": 64, "lr": lr, "final_val_loss": loss}])
    ingest(group)
    return Results(group)


def test_sizing_figure_puts_each_run_at_its_compute(sizing):
    from falstudy.report import variants

    data = variants.sizing_data(sizing)
    row = data[(data["n_embd"] == 64) & (data["steps"] == 600)].iloc[0]
    assert row["flops"] == 6 * (198_000 + 4 * 64 * 64) * 600 * 32 * 64
    fig = variants.sizing_figure(sizing)
    (ax,) = [a for a in fig.axes if a.get_xlabel()]
    lines = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert len(lines) == 2  # one per width: its best learning rate at each budget
    assert all(list(line.get_ydata()) == sorted(line.get_ydata(), reverse=True) for line in lines)
    with pytest.raises(MissingTable, match="sizing.yaml"):
        variants.sizing_data(Results(fixture_store_path_of(sizing)))


def fixture_store_path_of(res: Results):
    """A group with one width only: the sizing group's d=48 runs, copied."""
    target = res.root.parent / "one_width"
    if not target.exists():
        shutil.copytree(res.root, target, ignore=shutil.ignore_patterns("*d64*", "falstudy.duckdb*"))
    return target


@pytest.mark.parametrize("key", KEYS)
def test_every_figure_has_titles_labelled_axes_units_and_legends(full, sizing, key):
    fig = BY_KEY[key].make(sizing if key == "sizing" else full)
    assert fig.get_suptitle() or any(ax.get_title() for ax in fig.axes), _labels(fig)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and not _twin(ax)
              and (ax.get_xlabel() or ax.get_ylabel() or ax.get_title())]
    assert panels
    for ax in panels:
        assert ax.get_title() or fig.get_suptitle()
        assert ax.get_xlabel(), (key, _labels(fig))
    ylabels = " ".join(ax.get_ylabel() for ax in fig.axes)
    xlabels = " ".join(ax.get_xlabel() for ax in fig.axes)
    assert ylabels.strip(), (key, _labels(fig))
    y_unit, x_unit = UNITS[key]
    assert y_unit in ylabels and x_unit in xlabels, (key, _labels(fig))
    if key in LEGEND:
        assert any(ax.get_legend() is not None for ax in fig.axes) or fig.legends, key
    if key == "cka":  # the colour scale is labelled instead
        assert any("CKA" in ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>")


def test_report_writes_every_png_and_an_html_page_that_shows_them(stores, tmp_path):
    out = tmp_path / "report"
    report = make_report(stores[0], out)
    assert list(report.missing) == ["sizing"] and "sweeps/sizing.yaml" in report.missing["sizing"]
    assert report.failed == {}
    assert set(report.figures) == set(FULL_KEYS)
    page = (out / "report.html").read_text()
    for analysis in (a for a in ANALYSES if a.key in FULL_KEYS):
        png = out / f"{analysis.key}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        # self-contained: the PNG itself, embedded
        assert f'<img src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}"' in page
        assert html.escape(analysis.caption).split("`")[0][:60] in page
        assert str(markupsafe.escape(analysis.title)) in page  # as Jinja2 escapes it
    assert page.count("<figure>") == len(FULL_KEYS) and page.count("Not drawn") == 1
    assert "<table" in page and "val_loss_mean" in page  # the final-loss table
    assert 'src="' not in page.replace('src="data:image/png;base64,', "")  # nothing linked by path
    # the header says what the results are of
    runs = falstudy.query(stores[0], "SELECT DISTINCT n_layer, n_embd, n_head, git_commit FROM runs")
    row = runs.iloc[0]
    assert f"model: {row.n_layer} layers x {row.n_embd} ({row.n_head} heads)" in page
    assert f"code: git {row.git_commit[:10]}" in page and "steps: " in page and "seeds: " in page
    assert "corpus: " in page


def test_each_footnote_is_printed_once(full, tmp_path):
    report = make_report(full.root, tmp_path / "r")
    page = (tmp_path / "r" / "report.html").read_text()
    notes = [n for a in ANALYSES if a.key in report.figures for n in getattr(a.make(full), "falstudy_notes", [])]
    assert notes, "no figure of the fixture has a footnote"
    for note in notes:  # drawn in the PNG; the caption does not repeat it
        assert html.escape(note)[:40] not in page


def test_a_store_missing_tables_gets_a_report_with_hints(stores, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "cka.png").write_bytes(b"from an earlier report of another store")
    proc = subprocess.run([sys.executable, "-m", "falstudy.cli", "report", str(stores[1]), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "4 figure(s), 11 missing data, 0 failed" in proc.stdout
    # drawn where the data allows; the stale cka.png is gone with its data
    assert {p.stem for p in out.glob("*.png")} == {"loss_curves", "final_loss", "collectives", "cost_model"}
    page = (out / "report.html").read_text()
    assert page.count('class="missing"') == 11
    assert page.count("no evals table: run <code>falstudy eval RESULTS_DIR</code>") == 2
    assert page.count("no probes table: run a sweep with probes (sweeps/bypass.yaml) or <code>falstudy probe RUN</code>") == 4
    assert page.count("no trials table") == 2
    assert "<code>python bench/tp_step.py</code>" in page and "<code>falstudy train --tp 2 ...</code>" in page
    # the collectives figure was still drawn (counted from the configs) and says what is missing
    assert "no timings table" in page and "no tp_step benchmark file" in page
    assert "<code>falstudy sweep sweeps/tensor_parallel.yaml</code>" in page and "<code>falstudy bench tp</code>" in page


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    for folder, message in ((tmp_path / "nope", "no such results folder"), (tmp_path, "no results here")):
        proc = subprocess.run([sys.executable, "-m", "falstudy.cli", "report", str(folder)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "report").exists()


# -- the numbers behind the figures ------------------------------------------------------------
def test_final_loss_table_matches_the_runs(full):
    from falstudy.report.variants import final_table

    table = final_table(full).set_index("variant")
    runs = full.table("runs").dropna(subset=["final_val_loss"])
    for variant, g in runs.groupby("variant"):
        losses = list(g["final_val_loss"])
        assert table.loc[variant, "runs"] == len(losses) == 2
        assert table.loc[variant, "val_loss_mean"] == pytest.approx(sum(losses) / 2)
        assert table.loc[variant, "val_loss_sd"] == pytest.approx(abs(losses[0] - losses[1]) / math.sqrt(2))
        assert table.loc[variant, "ppl_mean"] == pytest.approx(sum(math.exp(x) for x in losses) / 2)
    assert table.loc["baseline", "vs_baseline"] == 0.0
    assert list(table["val_loss_mean"]) == sorted(table["val_loss_mean"])


def test_probe_figures_use_each_runs_latest_probe_and_both_variants(full):
    from falstudy.report import motivation

    cka = motivation.cka_data(full)
    assert set(cka["variant"]) == {"baseline", "fal"} and set(cka["count"]) == {2}
    same = cka[(cka["site"] != "attn_out|mlp_in") & (cka["layer"] == cka["layer_b"])]
    assert len(same) == 2 * 2 * 3 and all(abs(v - 1) < 1e-6 for v in same["mean"])
    grads = motivation.grads_data(full)
    assert sorted(grads["layer"].unique()) == [0, 1, 2] and set(grads["count"]) == {2}
    assert set(grads[grads["measure"] == "raw"]["metric"]) == {"grad_norm_per_token"}
    assert set(grads["measure"]) == {"raw", "grad_x_act"}
    hook = motivation.grads_training_data(full, "grad_norm_per_token")
    assert sorted(hook["step"].unique()) == [10, 20, 30]
    primacy = motivation.primacy_data(full)
    base, fal = primacy[primacy["variant"] == "baseline"], primacy[primacy["variant"] == "fal"]
    assert set(base["metric"]) == {"zero.delta_loss", "mean.delta_loss"} and len(base) == 2 * 3
    # fal: removed from the stream only, and everywhere (with N_f(a_0)): two series per mode
    assert set(fal["series"]) == {"fal: stream only", "fal: everywhere"} and len(fal) == 4 * 3
    assert set(fal["metric"]) == {"zero.delta_loss", "mean.delta_loss", "zero_stream.delta_loss",
                                  "mean_stream.delta_loss"}
    bypass = motivation.bypass_data(full)
    assert set(bypass["condition"]) == {"bypass", "ln_plus_norm", "ln_sum"}
    assert set(bypass["group"]) == {"0", "1", "2", "≥1", "all"}
    like = bypass[bypass["group"] == "≥1"]  # cut and substitutes over the same MLPs
    assert set(like["condition"]) == {"bypass", "ln_plus_norm", "ln_sum"} and set(like["layer"]) == {1}
    assert set(bypass[bypass["group"] == "all"]["condition"]) == {"bypass"}
    fig = motivation.bypass_figure(full)  # substitutes need a_0, so layer 0 has none: marked, not blank
    marks = [t.get_text().strip() for ax in fig.axes for t in ax.texts]
    assert marks.count("n/a") == 2 * 2 + 2 * 2  # layer 0, and "all layers" (the cut only)


def test_parallel_sources_counts_and_timings(full):
    from falstudy.report import parallel

    counted = parallel.counted(full).set_index("variant")
    assert (counted.loc["baseline", "fwd"], counted.loc["baseline", "bwd"]) == (6, 6)  # 3 layers x (2 + 2)
    assert (counted.loc["fal", "fwd"], counted.loc["fal", "bwd"]) == (4, 5)  # block 0 2+2, then 1+1, +1 bwd
    timings = parallel.timings_per_step(full).set_index("variant")
    assert list(timings["rank"]) == [1, 1]  # the slower rank
    assert timings.loc["baseline", "fwd"] == 6 and timings.loc["fal", "bwd"] == 5
    assert timings.loc["baseline", "step_ms"] == pytest.approx(52.0)
    data, notes = parallel.collectives_data(full)
    assert notes == [] and data["source"].nunique() == 3
    panels, _ = parallel.step_times_data(full)
    assert len(panels) == 3  # two benchmark shapes and the TP=2 timings
    projection, source = parallel.projection_data(full)
    assert "tp_projection.parquet" in source and set(projection["tp"]) == {2, 4, 8}
    assert timings.loc["fal", "in_flight_ms"] == timings.loc["fal", "exposed_ms"] == timings.loc["fal", "comm_ms"]
    # rows written before the meter split in flight from exposed count as synchronous
    assert timings.loc["baseline", "in_flight_ms"] == timings.loc["baseline", "exposed_ms"] == timings.loc["baseline", "comm_ms"] > 0


def test_overlap_panels_split_exposed_from_hidden(full):
    from falstudy.report import parallel

    panels, notes = parallel.overlap_data(full)
    assert notes == [] and len(panels) == 3  # two benchmark shapes and the TP=2 timings
    bench = full.bench("tp_step")
    for title, data in panels.items():
        data = data.set_index("variant")
        if title.startswith("timings"):
            assert (data["hidden_ms"] == 0).all() and data["predicted_exposed_ms"].isna().all()
            continue
        shape = title.split("'")[1]
        b = bench[bench["shape"] == shape].set_index("wiring")
        assert data.loc["ladder", "hidden_ms"] == pytest.approx(1e3 * (b.loc["ladder", "comm_in_flight_s"] - b.loc["ladder", "comm_exposed_s"]))
        assert data.loc["ladder", "hidden_ms"] > 0 and data.loc["baseline", "hidden_ms"] == 0
        assert data.loc["ladder", "predicted_hidden_ms"] == pytest.approx(1e3 * b.loc["ladder", "predicted_hidden_s"])


def test_optuna_importance_from_the_journal_and_the_pareto_front(full):
    from falstudy.report import variants

    imp = variants.importance_data(full)
    assert set(imp["objective"]) == {"val_loss", "step_ms"} and set(imp["param"]) == {"variant", "train.lr"}
    for _, g in imp.groupby("objective"):
        assert g["importance"].sum() == pytest.approx(1.0)
    data, info = variants.pareto_data(full)
    assert info.known and info.objectives == ["val_loss", "step_ms"] and info.directions == ["minimize", "minimize"]
    assert len(data) == 4 and data["on_front"].any()  # the FAIL trial has no values
    points = list(zip(data["x"], data["y"]))
    assert data["on_front"].tolist() == [i in pareto_front(points, info.directions) for i in range(len(points))]


def test_pareto_front_logic():
    points = [(1.0, 5.0), (2.0, 2.0), (3.0, 3.0), (4.0, 1.0), (2.0, 2.0)]
    assert pareto_front(points, ["minimize", "minimize"]) == [0, 1, 3, 4]
    assert pareto_front(points, ["minimize", "maximize"]) == [0]
    assert pareto_front(points, ["maximize", "maximize"]) == [0, 2, 3]


def test_importance_without_a_journal_says_so(stores, tmp_path):
    from falstudy.report import variants

    group = tmp_path / "results" / "fx"
    shutil.copytree(stores[0], group, ignore=shutil.ignore_patterns("optuna.journal*"))
    res = Results(group)
    with pytest.raises(MissingTable, match="optuna.journal is not there"):
        variants.importance_data(res)
    data, info = variants.pareto_data(res)  # from the trials table alone, objectives unnamed
    assert not info.known and info.objectives == ["objective 1", "objective 2"] and len(data) == 4
    fig = variants.pareto_figure(res)
    assert any("objective names unknown" in n for n in fig.falstudy_notes)
    assert json.loads(res.table("trials")["values_json"].dropna().iloc[0])


def test_importance_is_not_drawn_for_a_single_searched_parameter(tmp_path):
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.storages.journal import JournalFileBackend

    from falstudy.report import variants
    from falstudy.store.readonly import MissingTable, Results
    from falstudy.sweep.records import export_trials

    group = tmp_path / "one"
    group.mkdir()
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(group / "optuna.journal")))
    study = optuna.create_study(study_name="one", storage=storage)
    dists = {"variant": CategoricalDistribution(["baseline", "fal"])}
    for i, (variant, loss) in enumerate([("baseline", 2.0), ("fal", 1.9), ("baseline", 2.1), ("fal", 1.8)]):
        study.add_trial(optuna.trial.create_trial(params={"variant": variant}, distributions=dists, value=loss,
                                                  user_attrs={"run_id": f"r{i}", "seed": i, "kind": "grid"}))
    export_trials(study, group)
    with pytest.raises(MissingTable, match="only variant was searched, so its importance is 1 by construction"):
        variants.importance_data(Results(group))


def test_seed_stats_counts_a_rerun_seed_once():
    import pandas as pd

    from falstudy.report.common import seed_stats

    # baseline: seeds 0, 1 and a rerun of seed 1; fal: two runs without a seed column value
    df = pd.DataFrame({"variant": ["baseline"] * 3 + ["fal"] * 2, "seed": [0, 1, 1, None, None],
                       "value": [1.0, 2.0, 4.0, 3.0, 5.0]})
    out = seed_stats(df, ["variant"]).set_index("variant")
    assert out.loc["baseline", "count"] == 3 and out.loc["baseline", "seeds"] == 2
    assert out.loc["baseline", "mean"] == pytest.approx(7 / 3)
    assert out.loc["fal", "seeds"] == 2  # rows without a seed count one each
    no_seed = seed_stats(df.drop(columns="seed"), ["variant"]).set_index("variant")
    assert no_seed.loc["fal", "seeds"] == no_seed.loc["fal", "count"] == 2


def test_grads_figure_without_a_checkpoint_probe_says_it_shows_the_trainers_hook(full, monkeypatch):
    from falstudy.report import common, motivation

    def hook_rows_only(res, probe, **kw):
        df = common.probe_rows(res, probe, **kw)
        return df[df["_file"].fillna("").str.contains("hook")]

    assert motivation.grads_data(full)["source"].eq("checkpoint").all()
    monkeypatch.setattr(motivation, "probe_rows", hook_rows_only)
    data = motivation.grads_data(full)
    assert len(data) and data["source"].eq("hook").all()
    notes = " ".join(t.get_text() for t in motivation.grads_figure(full).texts)
    assert "training batch" in notes and "validation batches" not in notes
