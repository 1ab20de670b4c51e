"""`hwm fit` logging to an `mlflow server` (one worker, job execution off), checked through its REST API."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

from helpers import TINY_CONFIG, TINY_EXPERIMENT, MlflowServer, cli_env


def _get(base: str, endpoint: str, **query: str) -> dict:
    url = f"{base}{endpoint}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _post(base: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(
        f"{base}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_fit_logs_run_metrics_and_media_to_a_server(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    workdir = tmp_path / "fit"
    workdir.mkdir()
    base = mlflow_server.base
    args = ["fit", "--config", TINY_CONFIG, "--trainer.logger.init_args.tracking_uri", base]
    # Pixels with videos: the run's media travel to the server too.
    args += [
        "--data.from_pixels",
        "true",
        "--data.video_every",
        "200",
        "--trainer.enable_checkpointing",
        "false",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "hwm.cli", *map(str, args)],
        cwd=workdir,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (workdir / "mlflow.db").exists()  # nothing went to a local store

    exp = _get(base, "/api/2.0/mlflow/experiments/get-by-name", experiment_name=TINY_EXPERIMENT)
    runs = _post(
        base, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment"]["experiment_id"]]}
    )
    assert len(runs["runs"]) == 1
    run = runs["runs"][0]
    run_id = run["info"]["run_id"]
    assert run["info"]["status"] == "FINISHED"
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["harmonizer_mode"] == "rectified" and tags["hwm_version"] and tags["seed"] == "0"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["data.from_pixels"] == "True" and params["model.harmonizer_mode"] == "rectified"

    for task in ("obs", "reward", "dynamics"):
        history = _get(
            base,
            "/api/2.0/mlflow/metrics/get-history",
            run_id=run_id,
            metric_key=f"harmonizer/weight_{task}",
        )["metrics"]
        steps = [m["step"] for m in history]
        assert (
            len(history) > 5 and steps == sorted(set(steps)) and 0 < steps[-1] <= 400
        )  # keyed by env frames
        assert history[-1]["value"] != 1.0  # learned, not the initial weight
    evals = _get(base, "/api/2.0/mlflow/metrics/get-history", run_id=run_id, metric_key="eval/return")
    assert [m["step"] for m in evals["metrics"]][-1] == 400

    top = {f["path"] for f in _get(base, "/api/2.0/mlflow/artifacts/list", run_id=run_id).get("files", [])}
    assert {"config.yaml", "media"} <= top
    media = _get(base, "/api/2.0/mlflow/artifacts/list", run_id=run_id, path="media")["files"]
    names = {f["path"] for f in media}
    assert {"media/eval_episode_000000400.gif", "media/open_loop_000000400.gif"} <= names
    assert all(int(f["file_size"]) > 1000 for f in media)
