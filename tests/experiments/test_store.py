"""The tracking store is created once, under a lock: runs started together in a fresh folder all start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from jsonargparse import Namespace

from hwm.cli.fit import prepare_tracking

# Imports MLflow, says so, waits for the go (a line on stdin), then creates the store and its experiment.
CHILD = (
    "import sys, mlflow; from hwm.experiments.store import prepare_store; print('ready', flush=True); "
    "sys.stdin.readline(); prepare_store(sys.argv[1], 'hwm-race'); print('done', flush=True)"
)


def test_two_runs_starting_together_in_a_fresh_folder_both_get_the_store(
    tmp_path: Path, hwm_env: dict[str, str]
) -> None:
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, uri],
            env=hwm_env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    for child in children:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
    for child in children:  # both go at once: each would migrate the new database
        assert child.stdin is not None
        child.stdin.write("\n")
        child.stdin.flush()
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0 and out == "done\n", err[-3000:]
    from mlflow.tracking import MlflowClient

    names = [e.name for e in MlflowClient(uri).search_experiments()]
    assert names.count("hwm-race") == 1


def test_only_a_new_run_with_an_mlflow_logger_prepares_a_store(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    mlflow_logger = "lightning.pytorch.loggers.MLFlowLogger"
    for logger in (
        None,  # --trainer.logger false
        Namespace(class_path="lightning.pytorch.loggers.CSVLogger", init_args=Namespace(save_dir=".")),
        Namespace(class_path=mlflow_logger, init_args=Namespace(run_id="abc")),  # a resume: its store exists
    ):
        prepare_tracking(Namespace(trainer=Namespace(logger=logger)))
        assert not (tmp_path / "mlflow.db").exists(), logger
    fresh = Namespace(class_path=mlflow_logger, init_args=Namespace(experiment_name="mine", run_id=None))
    prepare_tracking(Namespace(trainer=Namespace(logger=fresh)))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_experiment_by_name("mine") is not None
