"""The analysis notebooks: committed without outputs, and executed top to bottom (nbclient) on
the fixture store and on a store missing tables, where they print the hints instead of failing.

The kernel is this test's own interpreter: a kernelspec written to a temporary JUPYTER_DATA_DIR
(searched first) runs ``sys.executable -m ipykernel_launcher``, so a fresh venv with the test
extra (ipykernel, nbclient) is all it takes, whatever kernels the machine has installed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import fixture_store  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ["01_motivation", "02_variants", "03_parallel"]
IMAGES = {"01_motivation": 4, "02_variants": 6, "03_parallel": 4}  # figures on the full fixture
HINTS = {  # what each prints on a store with runs and metrics only
    "01_motivation": ["no probes table: run a sweep with probes (sweeps/bypass.yaml) or `falstudy probe RUN`"],
    "02_variants": ["no trials table: run a sweep (`falstudy sweep sweeps/bypass.yaml`)",
                    "no evals table: run `falstudy eval RESULTS_DIR`"],
    "03_parallel": ["timings        missing: run `falstudy sweep sweeps/tensor_parallel.yaml`",
                    "tp_step        missing: run `falstudy bench tp`", "Measured step times: not drawn"],
}


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[Path, Path]:
    return fixture_store.stores(tmp_path_factory)


@pytest.fixture
def kernel(tmp_path, monkeypatch) -> str:
    spec = tmp_path / "jupyter" / "kernels" / "falstudy-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "falstudy tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter"))
    monkeypatch.delenv("FALSTUDY_BENCH", raising=False)
    return "falstudy-test"


def run(name: str, results: Path, kernel: str, monkeypatch) -> tuple[int, str]:
    """Execute a notebook; return (PNG outputs, all text outputs). Any cell error fails."""
    from nbclient import NotebookClient

    monkeypatch.setenv("FALSTUDY_RESULTS", str(results))
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, timeout=180, kernel_name=kernel, resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    images, text = 0, []
    for cell in nb.cells:
        shown = []
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", out
            images += "image/png" in out.get("data", {})
            shown.append(out.get("text", "") + out.get("data", {}).get("text/plain", ""))
        assert len(set(shown)) == len(shown), f"{name}: a cell shows the same output twice: {cell.source}"
        text += shown
    return images, "\n".join(text)


def test_committed_notebooks_have_no_outputs():
    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code, name
        for cell in code:
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: strip outputs before committing"
        assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
        assert "widgets" not in nb.metadata


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_on_the_fixture_store(name, stores, kernel, monkeypatch):
    images, text = run(name, stores[0], kernel, monkeypatch)
    assert images == IMAGES[name], text
    assert "not drawn" not in text and "not available" not in text, text
    assert f"{stores[0]}: DuckDB store (read-only)" in text


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_on_a_store_missing_tables_and_prints_hints(name, stores, kernel, monkeypatch):
    images, text = run(name, stores[1], kernel, monkeypatch)
    for hint in HINTS[name]:
        assert hint in text, text
    assert "Traceback" not in text
    assert images == {"01_motivation": 0, "02_variants": 2, "03_parallel": 2}[name]
