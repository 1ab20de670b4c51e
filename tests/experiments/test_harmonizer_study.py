"""benchmarks/harmonizer_study.py (the harmonizer mechanism study) and benchmarks/harmonizer_gpu.py (its GPU
version): the summary builder on known numbers and on a tiny real study, and the GPU script at a tiny scale
on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import OFFLINE_TINY_CONFIG, REPO_ROOT, load_script

BENCHMARKS = REPO_ROOT / "benchmarks"
OFFLINE_TINY = OFFLINE_TINY_CONFIG


study = load_script(BENCHMARKS / "harmonizer_study.py")


def _export(weighting: str, seed: int, final: float, steps: int = 4) -> dict:
    """A run's export whose held-out errors fall linearly to ``final`` and whose weights are constant."""
    metrics = {key: [[s, final * (1 + steps - s)] for s in range(steps + 1)] for key in study.ERRORS}
    for task, weight in (("obs", 0.5), ("reward", 2.0), ("dynamics", 1.0)):
        metrics[f"harmonizer/weight_{task}"] = [[s, weight] for s in range(1, steps + 1)]
    return {
        "weighting": weighting,
        "seed": seed,
        "run_id": f"{weighting}{seed}",
        "settings": {},
        "updates": steps,
        "dataset": "d",
        "minutes": 1.0,
        "metrics": metrics,
    }


def test_summary_gives_iqm_and_ci_per_weighting(tmp_path: Path) -> None:
    finals = {"off": [0.4, 0.5, 0.9, 0.6], "rectified": [0.1, 0.2, 0.3, 0.2], "gradnorm": [0.3]}
    runs = tmp_path / "runs"
    runs.mkdir()
    for weighting, values in finals.items():
        for seed, value in enumerate(values):
            (runs / f"{weighting}-s{seed}.json").write_text(json.dumps(_export(weighting, seed, value)))
    (runs / "off-s9.json").write_text(json.dumps({**_export("off", 9, 99.0), "finished": False}))  # left out
    files = study.write_summary(tmp_path, reps=200)
    assert [f.name for f in files] == ["summary.json", "heldout_errors.png", "weights.png"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary["weightings"]) == ["off", "rectified", "gradnorm"]  # the study's order
    off = summary["weightings"]["off"]
    assert off["seeds"] == 4 and off["seed_list"] == [0, 1, 2, 3] and off["updates"] == 4
    reward = off["final"]["heldout/reward_mse"]
    # IQM of 4 values: the mean of the middle two (rliable's trimmed mean at 25%).
    assert reward["iqm"] == pytest.approx(np.mean([0.5, 0.6]))
    assert reward["ci_low"] <= reward["iqm"] <= reward["ci_high"] and 0.4 <= reward["ci_low"]
    assert reward["ci_high"] <= 0.9 and off["final"]["heldout/obs_mse"]["iqm"] == pytest.approx(0.55)
    single = summary["weightings"]["gradnorm"]
    assert single["seeds"] == 1 and single["final"]["heldout/kl"]["ci_low"] is None
    assert off["final_weights"] == {"obs": 0.5, "reward": 2.0, "dynamics": 1.0}
    assert any("one run" in note for note in summary["notes"])


def test_weightings_as_fit_arguments() -> None:
    assert study.weighting_args("fixed_r100") == [
        "--model.harmonizer_mode",
        "fixed",
        "--model.harmonizer_weights",
        '{"reward": 100.0}',
    ]
    assert study.weighting_args("reward_only")[-1] == '{"obs": 0.0}'
    assert set(study.WEIGHTINGS) == {
        "off",
        "fixed_r10",
        "fixed_r100",
        "reward_only",
        "rectified",
        "unrectified",
        "gradnorm",
    }


@pytest.mark.slow
def test_tiny_study_runs_resumably_and_summarizes(tmp_path: Path, episode_dataset: Path) -> None:
    """Two weightings x two seeds of conf/offline_tiny.yaml, for real; a second call runs nothing again."""
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        str(BENCHMARKS / "harmonizer_study.py"),
        "run",
        "--dataset",
        str(episode_dataset),
        "--workdir",
        str(tmp_path / "work"),
        "--config",
        str(OFFLINE_TINY),
        "--out",
        str(out),
        "--seeds",
        "0",
        "1",
        "--weightings",
        "off",
        "rectified",
        "--reps",
        "100",
        "--",
        "--data.total_updates",
        "4",
        "--data.eval_every",
        "2",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "off-s0.json",
        "off-s1.json",
        "rectified-s0.json",
        "rectified-s1.json",
    ]
    export = json.loads((out / "runs" / "rectified-s1.json").read_text())
    assert [s for s, _ in export["metrics"]["heldout/reward_mse"]] == [0, 2, 4]
    assert export["harmonizer_mode"] == "rectified" and export["seed"] == 1
    summary = json.loads((out / "summary.json").read_text())
    assert {w: v["seeds"] for w, v in summary["weightings"].items()} == {"off": 2, "rectified": 2}
    assert (out / "weights.png").is_file() and (out / "heldout_errors.png").is_file()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "0 runs to go" in again.stdout
    # hwm compare reads the same runs from the study's MLflow store, grouped by the weighting tag.
    compare = subprocess.run(
        [
            sys.executable,
            "-m",
            "hwm.cli",
            "compare",
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}",
            "--experiment",
            study.EXPERIMENT,
            "--group-by",
            "tags.weighting",
            "--metric",
            "heldout/reward_mse",
            "--out",
            str(tmp_path / "compare"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert compare.returncode == 0, compare.stderr
    iqm = {
        line.split()[0]: line for line in compare.stdout.splitlines() if line.startswith(("off", "rectified"))
    }
    reported = summary["weightings"]["off"]["final"]["heldout/reward_mse"]["iqm"]
    assert f"{reported:.2f}" in iqm["off"]


def test_learner_and_offline_data_import_without_mlflow() -> None:
    """What the GPU script runs in its workers must import on a node without MLflow (the wheelhouse's)."""
    code = "import sys; sys.modules['mlflow'] = None; import hwm.learner, hwm.data.offline; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.slow
def test_gpu_script_at_a_tiny_scale_on_the_cpu(tmp_path: Path) -> None:
    """benchmarks/harmonizer_gpu.py's whole path (record the dataset, calibrate, every run at once, exports
    the summary builder reads) at its tiny scale on the CPU, with MLflow unavailable to its workers."""
    blocked = tmp_path / "no_mlflow"
    blocked.mkdir()
    (blocked / "mlflow.py").write_text("raise ImportError('no MLflow on this node')\n")
    env = {**os.environ, "PYTHONPATH": f"{blocked}:{os.environ.get('PYTHONPATH', '')}"}
    out = tmp_path / "gpu"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "harmonizer_gpu.py"),
            "--cpu",
            "--scale",
            "tiny",
            "--out",
            str(out),
            "--weightings",
            "off",
            "rectified",
            "--budget-s",
            "900",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plan = json.loads((out / "gpu_study.json").read_text())
    assert plan["finished"] == 2 and plan["updates"] >= 2 and plan["updates"] % 2 == 0
    export = json.loads((out / "runs" / "rectified-s0.json").read_text())
    assert export["finished"] and export["updates"] == plan["updates"]
    assert [s for s, _ in export["metrics"]["heldout/reward_mse"]][-1] == plan["updates"]
    assert len(list((out / "dataset").glob("*.pt"))) == 4
    summary = study.summarize(study.load_exports(out), reps=50)
    assert set(summary["weightings"]) == {"off", "rectified"}
