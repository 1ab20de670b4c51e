"""An `mlflow server` stopped for a while and restarted during a fit: training goes on, nothing is missing."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import TINY_CONFIG, TINY_EXPERIMENT, LoggedRun, cli_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """`mlflow server` on a fixed port and sqlite store, which can be stopped and started again."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir, self.port, self.proc = workdir, port, None
        self.base = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.workdir / 'server.db'}",
        ]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        cmd += ["--serve-artifacts", "--artifacts-destination", str(self.workdir / "artifacts")]
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        log = open(self.workdir / "server.log", "a")  # noqa: SIM115 - the server's own
        self.proc = subprocess.Popen(
            cmd, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{self.base}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, (
                self.workdir / "server.log"
            ).read_text()[-3000:]
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is None:
            return
        os.killpg(self.proc.pid, signal.SIGKILL)  # gone at once, as a crashed server
        self.proc.wait()
        self.proc = None


@pytest.mark.slow
def test_server_down_for_a_while_loses_no_metric(
    tmp_path: Path, mlflow_db_template: Path, tiny_run: LoggedRun
) -> None:
    shutil.copyfile(mlflow_db_template, tmp_path / "server.db")
    server = _Server(tmp_path, _free_port())
    server.start()
    workdir = tmp_path / "fit"
    workdir.mkdir()
    args = ["fit", "--config", str(TINY_CONFIG), "--trainer.logger.init_args.tracking_uri", server.base]
    args += ["--checkpoint.every_updates", "10", "--tracking.retry_seconds", "1"]
    env = cli_env()
    env.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    fit = subprocess.Popen([sys.executable, "-m", "hwm.cli", *args], cwd=workdir, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not list(workdir.glob("checkpoints/*/update-*.json")):
            assert fit.poll() is None and time.monotonic() < deadline, fit.stderr.read()[-3000:]
            time.sleep(0.05)
        server.stop()
        time.sleep(8)  # training goes on meanwhile
        assert fit.poll() is None, "the run stopped with the server"
        server.start()
        out, err = fit.communicate(timeout=300)
    finally:
        if fit.poll() is None:
            fit.kill()
        server.stop()
    assert fit.returncode == 0, err[-4000:]
    assert "tracking server unreachable" in err and "tracking server back" in err

    server.start()
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(server.base)
        (run,) = client.search_runs([client.get_experiment_by_name(TINY_EXPERIMENT).experiment_id])
        for key in ("progress/env_frames", "progress/updates", "loss/obs", "eval/return"):
            got = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
            want = [(m.step, m.value) for m in tiny_run.client.get_metric_history(tiny_run.run_id, key)]
            assert [s for s, _ in got] == [s for s, _ in want], key  # every step, in order
        assert run.info.status == "FINISHED"
    finally:
        server.stop()


@pytest.mark.slow
def test_server_gone_for_good_ends_the_run_with_a_checkpoint_and_the_resume_sends_the_rest(
    tmp_path: Path, mlflow_db_template: Path, tiny_run: LoggedRun
) -> None:
    shutil.copyfile(mlflow_db_template, tmp_path / "server.db")
    server = _Server(tmp_path, _free_port())
    server.start()
    workdir = tmp_path / "fit"
    workdir.mkdir()
    budget = 800  # long enough to outlast the 6 s the run waits for the server
    args = ["fit", "--config", str(TINY_CONFIG), "--trainer.logger.init_args.tracking_uri", server.base]
    args += ["--checkpoint.every_updates", "10", "--data.total_frames", str(budget)]
    args += ["--tracking.retry_seconds", "1", "--tracking.give_up_minutes", "0.1"]
    env = cli_env()
    env.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    fit = subprocess.Popen([sys.executable, "-m", "hwm.cli", *args], cwd=workdir, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not list(workdir.glob("checkpoints/*/update-*.json")):
            assert fit.poll() is None and time.monotonic() < deadline, fit.stderr.read()[-3000:]
            time.sleep(0.05)
        server.stop()
        _, err = fit.communicate(timeout=300)
    finally:
        if fit.poll() is None:
            fit.kill()
    assert fit.returncode == 5, err[-4000:]
    assert "Traceback" not in err
    assert "unreachable for 0.1 minutes" in err and "continue with: hwm fit --ckpt_path" in err

    server.start()
    try:
        resume = subprocess.run(
            [sys.executable, "-m", "hwm.cli", "fit", "--config", str(TINY_CONFIG), "--ckpt_path", "last"],
            cwd=workdir, env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert resume.returncode == 0, resume.stderr[-4000:]
        assert "metric steps the checkpoint had not sent yet" in resume.stderr
        from mlflow.tracking import MlflowClient

        client = MlflowClient(server.base)
        (run,) = client.search_runs([client.get_experiment_by_name(TINY_EXPERIMENT).experiment_id])
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "progress/env_frames")]
        straight = [
            m.step for m in tiny_run.client.get_metric_history(tiny_run.run_id, "progress/env_frames")
        ]
        # The straight run's steps up to its budget, then every collect to this one's: none missing.
        assert steps == straight + list(range(straight[-1] + 4, budget + 1, 4))
        assert run.info.status == "FINISHED"
    finally:
        server.stop()
