"""benchmarks/learn_dmc.py: the summary's numbers, and a tiny benchmark interrupted and resumed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO_ROOT, TINY_CONFIG, cli_env, load_script

_PATH = REPO_ROOT / "benchmarks" / "learn_dmc.py"
learn = load_script(_PATH)


def _curve(points: list[tuple[int, float, float]]) -> list[dict[str, float]]:
    return [{"frames": f, "minutes": m, "return": r} for f, m, r in points]


def test_returns_are_read_at_the_first_evaluation_at_or_after_each_mark() -> None:
    curve = _curve(
        [(96_000, 9.0, 400.0), (100_000, 10.0, 500.0), (204_000, 21.0, 910.0), (296_000, 30.0, 950.0)]
    )
    result = learn.seed_result(curve)
    assert result["return_at_frames"] == {"100000": 500.0, "200000": 910.0, "300000": None, "500000": None}
    assert result["minutes_to_900"] == 21.0  # the first evaluation of 900 or more
    assert learn.seed_result(_curve([(100_000, 10.0, 899.9)]))["minutes_to_900"] is None


def test_aggregates_give_the_iqm_with_a_bootstrap_interval_beside_the_published_means() -> None:
    seeds = {
        str(s): learn.seed_result(_curve([(100_000, 10.0, r)]))
        for s, r in enumerate([400, 500, 600, 700, 800])
    }
    out = learn.aggregate({"cartpole-balance": seeds}, marks=[100_000])
    row = out["cartpole-balance"]["at_frames"]["100000"]
    assert row["seeds"] == 5
    assert row["iqm"] == pytest.approx(600.0)  # the middle three of five
    low, high = row["ci95"]
    assert 400 <= low < 600 < high <= 800
    assert row["published_dreamerv3_mean"] == pytest.approx(840, abs=1)  # the DreamerV3 authors' 5 seeds
    assert row["published_d4pg_mean"] > 900


def _start(out: Path) -> subprocess.Popen:
    args = ["--task", "cartpole-balance", "--config", str(TINY_CONFIG), "--seeds", "0", "--frames", "400",
            "--marks", "200", "400", "--parallel", "1", "--out", str(out)]  # fmt: skip
    env = cli_env()
    return subprocess.Popen([sys.executable, str(_PATH), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _frames_logged(folder: Path) -> float:
    # The run's folder appears once its MLflow store and run exist; reading the store before then would race
    # its creation.
    if not any((folder / "checkpoints").glob("*")):
        return 0.0
    job = learn.Job("cartpole-balance", 0, folder, TINY_CONFIG, 400)
    run = learn.latest_run(job)
    return 0.0 if run is None else learn.last_value(job, run.info.run_id, "progress/env_frames") or 0.0


def test_an_interrupted_benchmark_resumes_its_run_and_keeps_finished_ones(tmp_path: Path) -> None:
    folder = tmp_path / "cartpole-balance" / "seed0"
    bench = _start(tmp_path)
    deadline = time.monotonic() + 240
    while _frames_logged(folder) < 200 and time.monotonic() < deadline and bench.poll() is None:
        time.sleep(0.5)
    assert bench.poll() is None, "the tiny run finished before it could be interrupted"
    bench.send_signal(signal.SIGINT)  # as Ctrl-C: the run checkpoints and exits 75
    out, _ = bench.communicate(timeout=240)
    assert bench.returncode == 75, out
    assert "exited 75" in out

    bench = _start(tmp_path)
    out, _ = bench.communicate(timeout=300)
    assert bench.returncode == 0, out
    assert "resume: " in out and "--ckpt_path" in out
    job = learn.Job("cartpole-balance", 0, folder, TINY_CONFIG, 400)
    run = learn.latest_run(job)
    assert run.info.status == "FINISHED"
    assert learn.last_value(job, run.info.run_id, "progress/env_frames") >= 400
    # One MLflow run, continued: the resume logged into the run the interruption left.
    assert len((folder / "commands.txt").read_text().splitlines()) == 2

    summary = json.loads((tmp_path / "summary.json").read_text())
    entry = summary["tasks"]["cartpole-balance"]["seeds"]["0"]
    assert set(entry) == {"return_at_frames", "minutes_to_900"}
    assert set(entry["return_at_frames"]) == {"200", "400"} and entry["return_at_frames"]["400"] is not None
    assert (tmp_path / "cartpole-balance" / "learning_curves.png").stat().st_size > 10_000
    rows = (folder / "curve.csv").read_text().splitlines()
    assert rows[0].startswith("frames,minutes,return,action_abs_mean")
    minutes = [float(r.split(",")[1]) for r in rows[1:]]
    assert minutes == sorted(minutes) and minutes[-1] > 0

    bench = _start(tmp_path)  # a third time: nothing left to run
    out, _ = bench.communicate(timeout=120)
    assert bench.returncode == 0 and "finished earlier: kept" in out, out


def test_variants_live_apart_from_the_preset_and_must_be_named(tmp_path: Path) -> None:
    assert learn.job_folder(tmp_path, "cartpole-balance", 3, None) == tmp_path / "cartpole-balance" / "seed3"
    folder = learn.job_folder(tmp_path, "cartpole-balance", 3, "ent3e-3")
    assert folder == tmp_path / "variants" / "ent3e-3" / "cartpole-balance" / "seed3"
    for f in (folder, learn.job_folder(tmp_path, "cartpole-swingup", 0, None)):
        f.mkdir(parents=True)
        (f / "mlflow.db").touch()
    found = {(j.task, j.seed, j.variant) for j in learn.discover(tmp_path)}
    assert found == {("cartpole-balance", 3, "ent3e-3"), ("cartpole-swingup", 0, None)}
    with pytest.raises(SystemExit):  # extra hwm fit arguments without a variant name are refused
        learn.main(["--task", "cartpole-balance", "--out", str(tmp_path), "--", "--model.actor_lr", "1e-3"])
