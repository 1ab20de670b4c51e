"""The experiment a study's runs share is prepared once, before they start in parallel."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hwm.experiments.tracking import EXPERIMENT_KIND_TAG, ensure_experiment, prepare_experiment


def test_ensure_experiment_creates_once_tags_and_is_idempotent(
    tmp_path: Path, mlflow_db_template: Path
) -> None:
    from mlflow import MlflowClient

    shutil.copyfile(mlflow_db_template, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with ThreadPoolExecutor(4) as pool:  # callers racing on a fresh store all get the one experiment
        ids = set(pool.map(lambda _: ensure_experiment(uri, "e"), range(4)))
    assert len(ids) == 1
    experiment = MlflowClient(uri).get_experiment_by_name("e")
    assert experiment.experiment_id in ids
    assert experiment.tags[EXPERIMENT_KIND_TAG[0]] == EXPERIMENT_KIND_TAG[1]
    assert ensure_experiment(uri, "e") == experiment.experiment_id


def test_prepare_experiment_reports_a_store_it_cannot_write(tmp_path: Path, capsys) -> None:
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "mlflow.db").write_text("not a database")
    assert prepare_experiment(f"sqlite:///{tmp_path / 'ro' / 'mlflow.db'}", "e") is None
    err = capsys.readouterr().err
    assert err.startswith("hwm study: could not prepare MLflow experiment 'e'")
