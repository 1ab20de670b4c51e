"""Shared fixtures: run the `hwm` CLI in a scratch directory and read back what it logged to MLflow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO_ROOT / "conf" / "tiny.yaml"
TINY_EXPERIMENT = "hwm-tiny"  # trainer.logger.init_args.experiment_name in conf/tiny.yaml

# Before anything imports MuJoCo (hwm.cli sets the same default).
os.environ.setdefault("MUJOCO_GL", "egl")


def cli_env() -> dict[str, str]:
    """Environment for `hwm` subprocesses: headless EGL rendering, one torch thread (the machine is shared
    and the tiny model gains nothing from more), no colour codes."""
    env = dict(os.environ)
    env.update({"MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NO_COLOR": "1"})
    env.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    return env


@pytest.fixture(autouse=True)
def _restore_environ() -> Iterator[None]:
    """In-process runs seed through Lightning, which exports PL_GLOBAL_SEED; keep that out of other tests."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def one_torch_thread_seeded() -> Iterator[None]:
    """One torch thread and seed 0 for the duration of a test; the thread count is restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


RunHwm = Callable[..., subprocess.CompletedProcess]


def _run_hwm(args: Sequence[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hwm.cli", *map(str, args)],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def run_hwm() -> RunHwm:
    """`run_hwm(args, cwd, timeout=300)`: runs `python -m hwm.cli ARGS` in `cwd`, returns the CompletedProcess."""
    return _run_hwm


@pytest.fixture
def tiny_config() -> Path:
    return TINY_CONFIG


@dataclass
class LoggedRun:
    """One finished `hwm fit` subprocess and the MLflow run it logged."""

    proc: subprocess.CompletedProcess
    workdir: Path
    client: object  # mlflow.tracking.MlflowClient
    run: object  # mlflow.entities.Run

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def history(self, key: str) -> list[tuple[int, float]]:
        """(step, value) pairs of a metric, in logging order."""
        metrics = self.client.get_metric_history(self.run_id, key)
        return [(m.step, m.value) for m in sorted(metrics, key=lambda m: (m.timestamp, m.step))]


def _describe(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout (tail) ---\n{proc.stdout[-3000:]}\n--- stderr (tail) ---\n{proc.stderr[-6000:]}"


def fit_and_load(
    workdir: Path, args: Sequence[str], experiment: str = TINY_EXPERIMENT, timeout: float = 300
) -> LoggedRun:
    """Runs `hwm fit ARGS` in `workdir` and returns its only MLflow run (fails the test on a non-zero exit)."""
    from mlflow.tracking import MlflowClient

    proc = _run_hwm(["fit", *args], cwd=workdir, timeout=timeout)
    assert proc.returncode == 0, _describe(proc)
    db = workdir / "mlflow.db"
    assert db.is_file(), f"no MLflow store at {db}\n{_describe(proc)}"
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment!r} missing from {db}"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, f"expected one run, found {len(runs)}"
    return LoggedRun(proc=proc, workdir=workdir, client=client, run=runs[0])


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


def write_episode_dataset(folder: Path, episodes: int = 10, steps: int = 20, pixels: bool = False) -> Path:
    """A folder of ``episodes`` synthetic episodes (``steps`` steps after the reset row) in the replay's chunk
    format. Episode i's observations carry i in their first element (pixels: in every pixel of their first
    row of the image) and its rewards grow with i, so episodes can be told apart and ranked by return."""
    import torch
    from tensordict import TensorDict

    from hwm.data.episodes import write_episodes

    gen = torch.Generator().manual_seed(0)
    out = []
    for i in range(episodes):
        n = steps + 1
        if pixels:
            obs = torch.randint(0, 256, (n, 3, 64, 64), generator=gen, dtype=torch.uint8)
            obs[:, :, 0, :] = i
        else:
            obs = torch.randn(n, 5, generator=gen)
            obs[:, 0] = i
        reward = (i + torch.rand(n, 1, generator=gen)) / episodes  # returns strictly grow with i
        action = torch.rand(n, 1, generator=gen) * 2 - 1
        reward[0], action[0] = 0.0, 0.0  # the reset row
        flags = {k: torch.zeros(n, 1, dtype=torch.bool) for k in ("is_first", "is_last", "is_terminal")}
        flags["is_first"][0] = flags["is_last"][-1] = True
        key = "pixels" if pixels else "observation"
        out.append(TensorDict({key: obs, "action": action, "reward": reward, **flags}, batch_size=[n]))
    write_episodes(folder, out)
    return folder


@pytest.fixture
def episode_dataset(tmp_path: Path) -> Path:
    """Ten synthetic state-vector episodes of 21 rows (``write_episode_dataset``) under tmp_path/episodes."""
    return write_episode_dataset(tmp_path / "episodes")


@pytest.fixture
def make_episode_dataset() -> Callable[..., Path]:
    """``make_episode_dataset(folder, episodes=10, steps=20, pixels=False)``: ``write_episode_dataset``."""
    return write_episode_dataset
