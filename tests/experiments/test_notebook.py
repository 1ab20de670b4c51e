"""The run-report notebook executes end to end on a tiny run (cells run in order, as Jupyter would)."""

import json
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


@pytest.mark.parametrize("experiment", ["hwm-tiny", None])
def test_notebook_runs_on_a_tiny_run(
    tiny_run: LoggedRun, tmp_path: Path, monkeypatch, experiment: str | None
) -> None:
    # From a folder of its own (not the repo, not the run's), as Jupyter started elsewhere would.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("HWM_TRACKING_URI", f"sqlite:///{tiny_run.workdir / 'mlflow.db'}")
    if experiment is None:  # the latest run of any experiment in the store
        monkeypatch.delenv("HWM_EXPERIMENT", raising=False)
    else:
        monkeypatch.setenv("HWM_EXPERIMENT", experiment)
    monkeypatch.setenv("HWM_NOTEBOOK_OUT", str(tmp_path / "report.png"))
    namespace: dict = {}
    for cell in json.loads(NOTEBOOK.read_text())["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), str(NOTEBOOK), "exec"), namespace)
    assert namespace["run"].info.run_id == tiny_run.run_id
    steps, values = namespace["weights"]["reward"]
    assert len(values) > 1 and values[-1] != 1.0
    png = (tmp_path / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_run_report_says_when_the_store_is_missing(tmp_path: Path, monkeypatch) -> None:
    from hwm.experiments.runs import CompareError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HWM_TRACKING_URI", "sqlite:///mlflow.db")
    namespace: dict = {}
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    exec(compile("".join(cells[0]["source"]), str(NOTEBOOK), "exec"), namespace)
    with pytest.raises(CompareError, match="no MLflow store at"):
        exec(compile("".join(cells[1]["source"]), str(NOTEBOOK), "exec"), namespace)
    assert not (tmp_path / "mlflow.db").exists()
