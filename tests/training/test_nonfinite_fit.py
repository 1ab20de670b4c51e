"""A fit whose world-model loss goes non-finite: the steps are skipped and counted, and the run either
carries on (a few) or stops with status 3 naming the last good checkpoint (too many in a row)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from helpers import TINY_CONFIG, TINY_EXPERIMENT
from hwm.models.world_model import WorldModel
from hwm.training.stop import EXIT_NONFINITE


def _poison(monkeypatch: pytest.MonkeyPatch, calls: range) -> None:
    """The world model's observation loss is NaN on the given calls of ``WorldModel.loss`` (counted from 0)."""
    original, count = WorldModel.loss, iter(range(10**9))

    def loss(self: WorldModel, batch):  # noqa: ANN001, ANN202 - the patched method's own signature
        losses, posterior, metrics = original(self, batch)
        if next(count) in calls:
            losses = {**losses, "obs": losses["obs"] * float("nan")}
        return losses, posterior, metrics

    monkeypatch.setattr(WorldModel, "loss", loss)


def _fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, template: Path, *extra: str) -> int:
    from hwm.cli import main

    shutil.copyfile(template, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    # An absolute store: MLflow caches stores by URI, and tiny.yaml's relative one would name the last test's.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--checkpoint.every_updates", "10", "--trainer.logger.init_args.tracking_uri", uri, *extra]
    return main(["fit", "--config", str(TINY_CONFIG), *args])


def _run(tmp_path: Path):  # noqa: ANN202 - an mlflow Run
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name(TINY_EXPERIMENT).experiment_id])
    return client, run


@pytest.mark.slow
def test_a_few_nonfinite_updates_are_skipped_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_db_template: Path
) -> None:
    _poison(monkeypatch, range(15, 18))
    assert _fit(tmp_path, monkeypatch, mlflow_db_template) == 0
    client, run = _run(tmp_path)
    skipped = client.get_metric_history(run.info.run_id, "nonfinite/model_skipped")
    assert skipped and max(m.value for m in skipped) == 3.0
    assert "nonfinite/actor_skipped" not in run.data.metrics  # the other optimizers never skipped
    (last,) = tmp_path.glob("checkpoints/*/last.ckpt")
    weights = torch.load(last, map_location="cpu", weights_only=False)["state_dict"]
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


@pytest.mark.slow
@pytest.mark.covers_alone
def test_a_run_of_nonfinite_updates_stops_naming_the_last_good_checkpoint(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mlflow_db_template: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    _poison(monkeypatch, range(15, 10**9))
    code = _fit(tmp_path, monkeypatch, mlflow_db_template, "--model.max_nonfinite", "5")
    err = capfd.readouterr().err
    assert code == EXIT_NONFINITE, err[-3000:]
    assert "5 model updates in a row had a non-finite loss or gradient" in err
    assert "last good checkpoint: " in err and "update-000000010.ckpt" in err
    _, run = _run(tmp_path)
    assert run.info.status == "FAILED"
