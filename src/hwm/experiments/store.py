"""A run's sqlite tracking store, created once: runs started together in a fresh folder wait for each other
while MLflow creates its tables and the experiment, instead of both migrating one database (which fails with
``duplicate column name`` or ``Online migration expected to match one row``)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hwm.experiments.tracking import EXPERIMENT_KIND_TAG, sqlite_path


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

        # The absolute path: MLflow caches a store per URI, and a relative one means another file after a chdir.
        client = mlflow.MlflowClient(f"sqlite:///{database.absolute()}")  # creates the tables of a new store
        if experiment:
            ensure_experiment(client, experiment)


def ensure_experiment(client: Any, name: str) -> str:
    """The id of experiment ``name`` (created, with hwm's kind tag, if missing); another process creating it
    at the same moment is no error."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return str(client.create_experiment(name, tags=dict([EXPERIMENT_KIND_TAG])))
        except MlflowException:  # created meanwhile by another process
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    return str(found.experiment_id)


def prepare_experiment(tracking_uri: str, name: str) -> str | None:
    """For a study about to start runs in parallel: its experiment, created once beforehand (runs creating it at
    once collide on the store's unique keys and one fails). None, with a line on stderr, where the store cannot
    be prepared: each run then meets the problem itself and reports it in its log."""
    import sys

    try:
        if sqlite_path(tracking_uri) is not None:
            prepare_store(tracking_uri, name)
            return name
        import mlflow

        return ensure_experiment(mlflow.MlflowClient(tracking_uri), name)
    except Exception as exc:
        print(
            f"hwm study: could not prepare MLflow experiment {name!r} in {tracking_uri}: {exc}",
            file=sys.stderr,
        )
        return None
