"""A run's sqlite tracking store, created once: runs started together in a fresh folder wait for each other
while MLflow creates its tables and the experiment, instead of both migrating one database (which fails with
``duplicate column name`` or ``Online migration expected to match one row``)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hwm.experiments.tracking import sqlite_path


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``folder`` itself (no lock file left behind); waits for the holder. Where
    the file system refuses locks on folders, nothing is held."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def prepare_store(tracking_uri: str, experiment: str | None) -> None:
    """Creates a sqlite store's tables and ``experiment`` (if missing) under a lock on the store's folder;
    other stores (a tracking server) are left to MLflow."""
    database = sqlite_path(tracking_uri)
    if database is None:
        return
    folder = database.absolute().parent
    folder.mkdir(parents=True, exist_ok=True)
    with folder_lock(folder):
        import mlflow

        client = mlflow.MlflowClient(tracking_uri)  # creates and migrates the tables of a new store
        if experiment and client.get_experiment_by_name(experiment) is None:
            client.create_experiment(experiment)
