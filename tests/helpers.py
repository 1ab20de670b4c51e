"""Shared test machinery: running `hwm` in a scratch folder, watching a child's output, an `mlflow server`,
and reading back checkpoints and MLflow runs. conftest.py turns the long-lived parts into fixtures."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO_ROOT / "conf" / "tiny.yaml"
OFFLINE_TINY_CONFIG = REPO_ROOT / "conf" / "offline_tiny.yaml"
TINY_EXPERIMENT = "hwm-tiny"  # trainer.logger.init_args.experiment_name in conf/tiny.yaml
CKPT_ROOT = "checkpoints"


def load_script(path: Path) -> ModuleType:
    """A script that is not part of a package (benchmarks/*.py) as a module, without touching sys.path."""
    spec = importlib.util.spec_from_file_location(f"hwm_script_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


def cli_env() -> dict[str, str]:
    """Environment for `hwm` subprocesses: headless EGL rendering, one torch thread (the machine is shared
    and the tiny model gains nothing from more), no colour codes."""
    env = dict(os.environ)
    env.update({"MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NO_COLOR": "1"})
    env.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    return env


def run_hwm(args: Sequence[Any], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs `python -m hwm.cli ARGS` in ``cwd`` to its end."""
    return subprocess.run(
        [sys.executable, "-m", "hwm.cli", *map(str, args)],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def describe(proc: subprocess.CompletedProcess) -> str:
    return (
        f"exit {proc.returncode}\n--- stdout (tail) ---\n{proc.stdout[-3000:]}\n"
        f"--- stderr (tail) ---\n{proc.stderr[-6000:]}"
    )


@dataclass
class LoggedRun:
    """One finished `hwm fit` subprocess and the MLflow run it logged."""

    proc: subprocess.CompletedProcess
    workdir: Path
    client: Any  # mlflow.tracking.MlflowClient
    run: Any  # mlflow.entities.Run

    @property
    def run_id(self) -> str:
        return str(self.run.info.run_id)

    def history(self, key: str) -> list[tuple[int, float]]:
        """(step, value) pairs of a metric, in logging order."""
        metrics = self.client.get_metric_history(self.run_id, key)
        return [(m.step, m.value) for m in sorted(metrics, key=lambda m: (m.timestamp, m.step))]

    def steps(self, key: str) -> list[int]:
        return [m.step for m in self.client.get_metric_history(self.run_id, key)]


def fit_and_load(
    workdir: Path, args: Sequence[Any], experiment: str = TINY_EXPERIMENT, timeout: float = 300
) -> LoggedRun:
    """Runs `hwm fit ARGS` in `workdir` and returns its only MLflow run (fails the test on a non-zero exit)."""
    from mlflow.tracking import MlflowClient

    proc = run_hwm(["fit", *args], cwd=workdir, timeout=timeout)
    assert proc.returncode == 0, describe(proc)
    db = workdir / "mlflow.db"
    assert db.is_file(), f"no MLflow store at {db}\n{describe(proc)}"
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment!r} missing from {db}"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, f"expected one run, found {len(runs)}"
    return LoggedRun(proc=proc, workdir=workdir, client=client, run=runs[0])


class OutputWatch:
    """Reads a child's output line by line in a thread (so its pipe never fills), copies it to ``log`` and
    lets a test wait for a line: no polling of files with sleeps."""

    def __init__(self, stream: TextIO, log: Path | None = None) -> None:
        self.lines: list[str] = []
        self._done = False
        self._cond = threading.Condition()
        self._log = open(log, "a") if log is not None else None  # noqa: SIM115 - closed by the reader
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: TextIO) -> None:
        try:
            for line in stream:
                if self._log is not None:
                    self._log.write(line)
                    self._log.flush()
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()
        finally:
            if self._log is not None:
                self._log.close()
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float, after: int = 0) -> tuple[int, re.Match[str]]:
        """(index, match) of the first line from index ``after`` on that matches ``pattern``; fails on a
        timeout or at the end of the output."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        index = after
        with self._cond:
            while True:
                while index < len(self.lines):
                    found = regex.search(self.lines[index])
                    if found is not None:
                        return index, found
                    index += 1
                left = deadline - time.monotonic()
                if self._done or left <= 0:
                    why = "the output ended" if self._done else f"{timeout:.0f} s passed"
                    raise AssertionError(f"{why} before a line matched {pattern!r}:\n{self.text()[-3000:]}")
                self._cond.wait(timeout=left)

    def text(self) -> str:
        return "".join(self.lines)

    def join(self, timeout: float = 30) -> str:
        """All of the output, once the child closed it."""
        self._thread.join(timeout)
        return self.text()


class WatchedFit:
    """`hwm fit ARGS` running in the background, its stderr (hwm's notices, one per line) watched; its
    stdout (the progress bar) dropped."""

    def __init__(self, args: Sequence[Any], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hwm.cli", "fit", *map(str, args)],
            cwd=cwd,
            env=env or cli_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        self.output = OutputWatch(self.proc.stderr)

    def wait_for_checkpoint(self, count: int = 1, timeout: float = 240) -> int:
        """Until the run has reported ``count`` checkpoints written; the index of the last one's line."""
        index = -1
        for _ in range(count):
            index, _ = self.output.wait_for(r"hwm: checkpoint \S+ \(", timeout, after=index + 1)
        return index

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        """Waits for the exit: (status, all of stderr)."""
        try:
            status = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return status, self.output.join()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.output.join()


class MlflowServer:
    """`mlflow server` on 127.0.0.1 (one worker, job execution off) over a sqlite store in ``workdir``.

    The first start lets the OS pick a free port (port 0) and reads it back from the server's log line;
    a later start (after :meth:`stop`, an outage) takes the same port, since a running fit knows that URL.
    """

    def __init__(self, workdir: Path, store: Path | None = None, startup_timeout: float = 120) -> None:
        self.workdir, self.startup_timeout = workdir, startup_timeout
        if store is not None:  # a migrated empty store: the migrations take seconds per new store
            shutil.copyfile(store, workdir / "server.db")
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._output: OutputWatch | None = None

    @property
    def base(self) -> str:
        assert self.port, "the server has not started"
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "mlflow", "server"]
        cmd += ["--backend-store-uri", f"sqlite:///{self.workdir / 'server.db'}"]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        cmd += ["--serve-artifacts", "--artifacts-destination", str(self.workdir / "artifacts")]
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        # Its own session: the web workers are its children and go with it.
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        self._output = OutputWatch(self.proc.stdout, log=self.workdir / "server.log")
        _, running = self._output.wait_for(
            r"Uvicorn running on http://127\.0\.0\.1:(\d+)", self.startup_timeout
        )
        self.port = int(running.group(1))
        with urllib.request.urlopen(f"{self.base}/health", timeout=30) as response:
            assert response.status == 200

    def stop(self) -> None:
        """Kills the server at once, as a crash would."""
        if self.proc is None:
            return
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        assert self._output is not None
        self._output.join()
        self.proc = self._output = None


def hold_lock(run_dir: Path) -> subprocess.Popen:
    """A process that holds ``run_dir``'s lock until killed."""
    code = (
        "import sys, time; from hwm.checkpoints.lock import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


# -- checkpoints --------------------------------------------------------------------------------------------
def run_folder(workdir: Path) -> Path:
    """The one run folder under ``workdir``'s checkpoints."""
    (found,) = [p for p in (workdir / CKPT_ROOT).iterdir() if p.is_dir()]
    return found


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint read whole, for tests (hwm itself loads without running code: checkpoints/io.py)."""
    loaded: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return loaded


def data_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = checkpoint["ReplayDataModule"]
    return state


def replay_items(folder: Path, checkpoint: dict[str, Any], end: int) -> dict[str, torch.Tensor]:
    """Transitions 0..end-1 (global order) from the replay chunks a checkpoint lists."""
    parts: dict[str, list[torch.Tensor]] = {}
    for chunk in sorted(data_state(checkpoint)["replay"]["chunks"], key=lambda c: c["start"]):
        tensors = torch.load(folder / chunk["file"], weights_only=True)
        take = max(0, min(chunk["end"], end) - chunk["start"])
        for key, value in tensors.items():
            parts.setdefault(key, []).append(value[:take])
    return {k: torch.cat(v) for k, v in parts.items()}


def straight_and_split(
    tmp_path: Path, template: Path, args: list[str], split: int, full: int
) -> tuple[dict, dict, dict, LoggedRun]:
    """Fits ``full`` frames straight and ``split`` + resume to ``full``: (straight, half, resumed) last
    checkpoints and the resumed run."""
    straight, split_dir = tmp_path / "straight", tmp_path / "split"
    for workdir in (straight, split_dir):
        workdir.mkdir()
        shutil.copyfile(template, workdir / "mlflow.db")
    fit_and_load(straight, [*args, "--data.total_frames", str(full)])
    fit_and_load(split_dir, [*args, "--data.total_frames", str(split)])
    half = load_checkpoint(run_folder(split_dir) / "last.ckpt")
    resumed = fit_and_load(split_dir, [*args, "--data.total_frames", str(full), "--ckpt_path", "last"])
    last = load_checkpoint(run_folder(split_dir) / "last.ckpt")
    return load_checkpoint(run_folder(straight) / "last.ckpt"), half, last, resumed


def assert_same_training(a: dict, b: dict, tmp_path: Path) -> None:
    """Same parameters bitwise, same counters, and the same replay (every stored row)."""
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), f"{key} differs after resume"
    da, db = data_state(a), data_state(b)
    assert da["counters"] == {**db["counters"], "resumes": da["counters"]["resumes"]}
    assert db["counters"]["dropped_steps"] == 0
    if "lanes" not in da["replay"]:
        n = da["replay"]["write_count"]
        assert n == db["replay"]["write_count"]
        ra = replay_items(run_folder(tmp_path / "straight"), a, n)
        rb = replay_items(run_folder(tmp_path / "split"), b, n)
        for key in ra:
            assert torch.equal(ra[key], rb[key]), key


def fit_parser(offline: bool = False) -> Any:
    """`hwm fit`'s argument parser alone (nothing instantiated), built in the current folder, refusing bad
    input with an exception instead of exiting: what tests that check configs and commands parse need.
    ``offline``: the parser of `hwm fit --data.dataset` (a world model trained alone, hwm.cli.offline)."""
    from hwm.cli.fit import HwmCLI
    from hwm.cli.offline import OfflineCLI

    kind = OfflineCLI if offline else HwmCLI

    class ParseOnly(kind):
        def instantiate_classes(self) -> None:  # the parser is all these tests need
            pass

    config = (
        ["--config", str(OFFLINE_TINY_CONFIG), "--data.dataset", "."]
        if offline
        else ["--config", str(TINY_CONFIG)]
    )
    return ParseOnly(
        kind.model_class_default,
        kind.data_class_default,
        run=False,
        args=config,
        save_config_callback=None,
        parser_kwargs={"exit_on_error": False, "parser_mode": "omegaconf"},
        auto_configure_optimizers=False,
    ).parser


def write_episode_dataset(folder: Path, episodes: int = 10, steps: int = 20, pixels: bool = False) -> Path:
    """A folder of ``episodes`` synthetic episodes (``steps`` steps after the reset row) in the replay's chunk
    format. Episode i's observations carry i in their first element (pixels: in every pixel of their first
    row of the image) and its rewards grow with i, so episodes can be told apart and ranked by return."""
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
