"""The run-report notebook executes end to end on a tiny run (cells run in order, as Jupyter would)."""

import json
from pathlib import Path

from conftest import REPO_ROOT, LoggedRun

NOTEBOOK = REPO_ROOT / "notebooks" / "run_report.ipynb"


def test_notebook_is_committed_without_outputs() -> None:
    nb = json.loads(NOTEBOOK.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


def test_notebook_runs_on_a_tiny_run(tiny_run: LoggedRun, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HWM_TRACKING_URI", f"sqlite:///{tiny_run.workdir / 'mlflow.db'}")
    monkeypatch.setenv("HWM_EXPERIMENT", "hwm-tiny")
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
