"""`hwm fit` with the harmonizer settings beyond the paper's: reward-only weights, GradNorm, the harmonizers'
own optimizer (SGD), and `hwm study` varying them (the learning study's tooling) at the tiny scale."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from helpers import TINY_CONFIG, TINY_EXPERIMENT, run_hwm

HARMONIZED = ("obs", "reward", "dynamics")
# About 20 updates past the prefill, no evaluation (as tests/cli/test_cli.py's mode tests).
SHORT = ("--data.total_frames", "240", "--data.eval_episodes", "0")


def _weights(run, task: str) -> list[float]:
    return [v for _, v in run.history(f"harmonizer/weight_{task}")]


def test_reward_only_weights_are_logged_as_set(fit_tiny) -> None:
    run = fit_tiny(*SHORT, "--model.harmonizer_mode", "fixed", "--model.harmonizer_weights", "{obs: 0.0}")
    assert run.run.data.params["model.harmonizer_weights.obs"] == "0.0"
    expected = {"obs": 0.0, "reward": 1.0, "dynamics": 1.0}
    for task, weight in expected.items():
        weights = _weights(run, task)
        assert len(weights) > 5 and weights == pytest.approx([weight] * len(weights)), (task, weights)
    assert "harmonizer/sigma_obs" not in run.run.data.metrics  # no finite sigma for a dropped task
    # The decoder gets no gradient, yet the observation loss is still computed and logged.
    assert all(math.isfinite(v) for _, v in run.history("loss/obs"))


def test_gradnorm_fit_logs_weights_and_gradient_norms(fit_tiny) -> None:
    run = fit_tiny(*SHORT, "--model.harmonizer_mode", "gradnorm", "--model.gradnorm_alpha", "0")
    assert run.run.data.tags["harmonizer_mode"] == "gradnorm"
    for task in HARMONIZED:
        weights = _weights(run, task)
        assert weights[0] == pytest.approx(1.0, abs=1e-3)  # w_i = 1 at the start
        assert abs(weights[-1] - 1.0) > 1e-5, (task, weights)  # moved (float32 resolves ~1e-7 here)
        norms = [v for _, v in run.history(f"harmonizer/grad_norm_{task}")]
        assert norms and all(math.isfinite(v) and v >= 0 for v in norms), (task, norms)
    totals = [sum(_weights(run, t)[i] for t in HARMONIZED) for i in range(len(_weights(run, "obs")))]
    assert totals == pytest.approx([3.0] * len(totals), rel=1e-4)  # renormalised to the number of tasks
    # alpha 0 moves the weights towards equal weighted norms: the largest raw norm's weight falls.
    last = {t: run.history(f"harmonizer/grad_norm_{t}")[-1][1] for t in HARMONIZED}
    biggest = max(last, key=last.__getitem__)
    assert _weights(run, biggest)[-1] < 1.0


def test_harmonizers_with_their_own_sgd(fit_tiny) -> None:
    run = fit_tiny(*SHORT, "--model.harmonizer_optimizer", "sgd", "--model.harmonizer_lr", "0.001")
    assert run.run.data.params["model.harmonizer_optimizer"] == "sgd"
    for task in HARMONIZED:
        # Logged weights are those an update used; the second is after one SGD step on s = -log w, whose
        # gradient at s = 0 is 0.5 - L (Adam's first step would be 0.001 whatever the gradient).
        weights, losses = _weights(run, task), [v for _, v in run.history(f"loss/{task}")]
        assert weights[0] == 1.0
        assert -math.log(weights[1]) == pytest.approx(0.001 * (losses[0] - 0.5), rel=1e-3), (task, weights)


@pytest.mark.slow
def test_study_varies_mode_and_harmonizer_optimizer(tmp_path: Path, mlflow_db_template: Path) -> None:
    """The learning study's tooling at the tiny scale: `hwm study --vary` over the harmonizer mode and its
    optimizer, then `hwm compare` grouped by either."""
    shutil.copyfile(mlflow_db_template, tmp_path / "mlflow.db")
    proc = run_hwm(
        [
            "study",
            "--config",
            TINY_CONFIG,
            "--seeds",
            "0",
            "--vary",
            "model.harmonizer_mode=rectified,off",
            "--vary",
            "model.harmonizer_optimizer=adam,sgd",
            "--progress-every",
            "0",
            "--",
            *SHORT,
        ],
        cwd=tmp_path,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "4/4 runs finished" in proc.stdout
    study = next(
        line.split()[2].rstrip(":") for line in proc.stdout.splitlines() if line.startswith("hwm study")
    )
    for group in ("model.harmonizer_mode", "model.harmonizer_optimizer"):
        proc = run_hwm(
            [
                "compare",
                "--experiment",
                TINY_EXPERIMENT,
                "--study",
                study,
                "--group-by",
                group,
                "--metric",
                "loss/reward",
                "--out",
                tmp_path / group,
            ],
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.count(" 2 ") >= 2, proc.stdout  # two groups of two runs each
