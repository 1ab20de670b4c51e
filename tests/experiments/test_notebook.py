"""The run-report notebook runs end to end on a tiny run, in a kernel in notebooks/ as Jupyter runs it."""

import json
import shutil
from pathlib import Path

import pytest

from helpers import REPO_ROOT, LoggedRun

NOTEBOOK = REPO_ROOT / "notebooks" / "run_report.ipynb"


def test_notebook_is_committed_without_outputs() -> None:
    nb = json.loads(NOTEBOOK.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


def test_notebooks_show_their_plots_inline() -> None:
    for path in NOTEBOOK.parent.glob("*.ipynb"):
        code = "".join(
            "".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"
        )
        # A save-only backend would keep Jupyter from showing the figures.
        assert "matplotlib.use(" not in code, path.name


def test_notebook_runs_as_jupyter_runs_it_on_a_tiny_run(
    tiny_run: LoggedRun, tmp_path: Path, monkeypatch, run_notebook
) -> None:
    # A checkout where `hwm fit` ran: its store at the top, the notebook in notebooks/, where Jupyter runs it.
    shutil.copyfile(tiny_run.workdir / "mlflow.db", tmp_path / "mlflow.db")
    (tmp_path / "notebooks").mkdir()
    shutil.copyfile(NOTEBOOK, tmp_path / "notebooks" / NOTEBOOK.name)
    for name in ("HWM_TRACKING_URI", "HWM_EXPERIMENT", "HWM_RUN_ID", "HWM_NOTEBOOK_OUT", "MPLBACKEND"):
        monkeypatch.delenv(name, raising=False)
    done = run_notebook(tmp_path / "notebooks" / NOTEBOOK.name, tmp_path / "notebooks")
    assert tiny_run.run_id in done.output("stdout")  # the latest run of the store above
    assert "Warning" not in done.output("stderr"), done.output("stderr")  # e.g. tqdm's IProgress warning
    png = (tmp_path / "notebooks" / "run_report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert not (tmp_path / "notebooks" / "mlflow.db").exists()  # found the store, made none


def test_run_report_says_when_the_store_is_missing(tmp_path: Path, monkeypatch) -> None:
    from hwm.experiments.runs import CompareError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HWM_TRACKING_URI", "sqlite:///mlflow.db")
    namespace: dict = {}
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    exec(compile("".join(cells[0]["source"]), str(NOTEBOOK), "exec"), namespace)
    with pytest.raises(CompareError, match="no MLflow store at .*: set TRACKING_URI in the cell above"):
        exec(compile("".join(cells[1]["source"]), str(NOTEBOOK), "exec"), namespace)
    assert not (tmp_path / "mlflow.db").exists()
