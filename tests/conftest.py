"""Fixtures over the shared test machinery of helpers.py: a migrated MLflow store, tiny fits, an `mlflow
server`, and the environment and torch threads each test leaves as it found them."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import TINY_CONFIG, LoggedRun, MlflowServer, cli_env, fit_and_load, write_episode_dataset

# Before anything imports MuJoCo (hwm.cli sets the same default).
os.environ.setdefault("MUJOCO_GL", "egl")


@pytest.fixture
def hwm_env() -> dict[str, str]:
    """``cli_env()`` for tests that start `hwm` themselves (``subprocess.Popen``)."""
    return cli_env()


@pytest.fixture(autouse=True)
def _restore_environ() -> Iterator[None]:
    """In-process runs seed through Lightning, which exports PL_GLOBAL_SEED; keep that out of other tests."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """In-process fits size torch's threads (hwm.cli.main.size_threads); later tests get the count back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_torch_thread_seeded() -> Iterator[None]:
    """One torch thread and seed 0 for the duration of a test (the count is restored after every test)."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_config() -> Path:
    return TINY_CONFIG


@pytest.fixture(scope="session")
def mlflow_db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow sqlite store with its tables already migrated (the migrations take ~4 s per new store)."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()  # creates and migrates the tables
    assert db.is_file()
    return db


@pytest.fixture
def fit_tiny(tmp_path: Path, mlflow_db_template: Path) -> Callable[..., LoggedRun]:
    """`fit_tiny(*extra_args)`: `hwm fit --config conf/tiny.yaml EXTRA` in a fresh tmp dir -> LoggedRun.

    The tmp dir starts with a copy of an empty, migrated MLflow store; `tiny_run` covers a fresh one.
    """

    def fit(*extra: str, timeout: float = 300) -> LoggedRun:
        shutil.copyfile(mlflow_db_template, tmp_path / "mlflow.db")
        return fit_and_load(tmp_path, ["--config", TINY_CONFIG, *extra], timeout=timeout)

    return fit


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> LoggedRun:
    """The default end-to-end run (conf/tiny.yaml, rectified harmonizers), trained once per session."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    return fit_and_load(workdir, ["--config", TINY_CONFIG])


@pytest.fixture
def mlflow_server(tmp_path: Path, mlflow_db_template: Path) -> Iterator[MlflowServer]:
    """A started `mlflow server` over a migrated store in a folder of its own; stopped after the test."""
    folder = tmp_path / "mlflow_server"
    folder.mkdir()
    server = MlflowServer(folder, store=mlflow_db_template)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server_uri(tmp_path_factory: pytest.TempPathFactory, mlflow_db_template: Path) -> Iterator[str]:
    """One `mlflow server` for the session (tests that only log to it, e.g. SLURM studies); yields its URI."""
    folder = tmp_path_factory.mktemp("mlflow_server_session")
    server = MlflowServer(
        folder, store=mlflow_db_template, startup_timeout=600
    )  # minutes on a loaded machine
    server.start()
    try:
        yield server.base
    finally:
        server.stop()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A single-node SLURM (munged, slurmctld, slurmd on 127.0.0.1) for the session: tests/slurm_cluster.py.
    Skips, with the reason, where the packages are missing or the daemons cannot start."""
    from slurm_cluster import SlurmCluster, SlurmUnavailable

    # Short: a UNIX socket's path must fit in 108 bytes.
    cluster = SlurmCluster(Path(tempfile.mkdtemp(prefix="hwm-slurm-")))
    try:
        cluster.start()
    except SlurmUnavailable as exc:
        cluster.stop()
        pytest.skip(f"no SLURM here: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


@dataclass
class ExecutedNotebook:
    """A notebook after a Jupyter kernel ran it: its cells with their outputs."""

    cells: list

    def output(self, stream: str) -> str:
        """What the cells wrote to ``stream`` (``stdout`` or ``stderr``: warnings land there)."""
        return "".join(
            out.get("text", "")
            for cell in self.cells
            for out in cell.get("outputs", [])
            if out.get("name") == stream
        )


@pytest.fixture
def run_notebook() -> Callable[..., ExecutedNotebook]:
    """`run_notebook(notebook, folder, timeout=600)`: executes the notebook in a Jupyter kernel started in
    ``folder``, as Jupyter runs a notebook in the folder it lies in. The kernel inherits this process's
    environment (``HWM_*`` settings, ``PYTHONPATH``)."""

    def run(notebook: Path, folder: Path, timeout: float = 600) -> ExecutedNotebook:
        import nbformat
        from nbclient import NotebookClient

        nb = nbformat.read(notebook, as_version=4)
        client = NotebookClient(
            nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
        )
        client.execute()
        return ExecutedNotebook(nb.cells)

    return run


@pytest.fixture
def episode_dataset(tmp_path: Path) -> Path:
    """Ten synthetic state-vector episodes of 21 rows (``helpers.write_episode_dataset``) under tmp_path/episodes."""
    return write_episode_dataset(tmp_path / "episodes")


@pytest.fixture
def make_episode_dataset() -> Callable[..., Path]:
    """``make_episode_dataset(folder, episodes=10, steps=20, pixels=False)``: ``helpers.write_episode_dataset``."""
    return write_episode_dataset
