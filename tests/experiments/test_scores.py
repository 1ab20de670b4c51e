"""Cross-task aggregates (hwm.experiments.scores): the paper's Atari numbers from the shipped published curves, and
mean / median / IQM / CIs on small hand-made cases."""

from __future__ import annotations

import fnmatch
import subprocess
import sys
import warnings

import numpy as np
import pytest

from helpers import REPO_ROOT
from hwm.envs.atari_scores import ATARI100K_SCORES, atari100k_game, human_normalized_score
from hwm.experiments import scores

REFERENCE_DIR = REPO_ROOT / "src" / "hwm" / "experiments" / "reference_scores"


def test_published_curves_give_the_papers_atari_100k_numbers() -> None:
    """HarmonyDream paper: 136.4% mean / 67.1% median HNS for HarmonyDream(V3), 107.4% / 41.6% for DreamerV3."""
    rows = {r.group: r for r in scores.published_aggregates(reps=100)}
    harmony, dreamer = rows["HarmonyDream(V3), published"], rows["DreamerV3, published"]
    assert (round(100 * harmony.mean, 1), round(100 * harmony.median, 1)) == (136.4, 67.1)
    assert (round(100 * dreamer.mean, 1), round(100 * dreamer.median, 1)) == (107.4, 41.6)
    for row in (harmony, dreamer):
        assert row.published and row.tasks == 26 and row.runs == 130 and row.frames_max == 400_000
        assert set(row.per_task) == set(ATARI100K_SCORES)
        assert row.ci_low is not None and row.ci_high is not None and row.ci_low <= row.iqm <= row.ci_high
    # The same through the plain functions: final point, mean over the 5 seeds, normalised, mean/median.
    finals = scores.load_reference("harmonydream_v3").finals()
    means = {
        g: (v.mean() - ATARI100K_SCORES[g][0]) / (ATARI100K_SCORES[g][1] - ATARI100K_SCORES[g][0])
        for g, v in finals.items()
    }
    assert harmony.mean == pytest.approx(np.mean(list(means.values())), abs=1e-12)
    assert harmony.median == pytest.approx(np.median(list(means.values())), abs=1e-12)
    assert scores.mean_and_median(scores.human_normalized(finals)) == (harmony.mean, harmony.median)


def test_published_files_load_with_hwms_game_names() -> None:
    for key in scores.REFERENCES:
        ref = scores.load_reference(key)
        assert ref.steps.tolist() == list(range(20_000, 400_001, 20_000))
        assert set(ref.curves) == set(ATARI100K_SCORES)  # james_bond -> jamesbond
        assert all(c.shape == (5, 20) for c in ref.curves.values())
    ref = scores.load_reference("harmonydream_v3")
    assert ref.frames(100_000) == 100_000 and ref.frames(99_999) == 80_000 and ref.frames(10) == 20_000
    assert ref.finals(["Pong"], frames=99_999)["pong"].tolist() == ref.curves["pong"][:, 3].tolist()
    assert set(ref.finals(["ALE/Breakout-v5", "james_bond"])) == {"breakout", "jamesbond"}
    with pytest.raises(ValueError, match="no published scores 'x'"):
        scores.load_reference("x")


def test_published_files_are_package_data_and_credited() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["hwm.experiments"]
    files = sorted(
        p.relative_to(REFERENCE_DIR.parent).as_posix() for p in REFERENCE_DIR.rglob("*") if p.is_file()
    )
    assert {f for f in files if any(fnmatch.fnmatch(f, p) for p in patterns)} == set(files)
    assert {f"reference_scores/{name}" for _, name in scores.REFERENCES.values()} <= set(files)
    notice = (REFERENCE_DIR / "README.md").read_text()
    assert (
        "thuml/HarmonyDream" in notice and "MIT License" in notice and "THUML @ Tsinghua University" in notice
    )
    # The DMC curves (danijar/dreamerv3's score files) carry their own notice beside them.
    assert any(f.startswith("reference_scores/dmc/") and f.endswith(".json.gz") for f in files)
    dmc_notice = (REFERENCE_DIR / "dmc" / "README.md").read_text()
    assert "danijar/dreamerv3" in dmc_notice and "MIT" in dmc_notice


def test_game_names_and_human_normalised_scores() -> None:
    assert atari100k_game("ALE/MsPacman-v5") == atari100k_game("ms_pacman") == "ms_pacman"
    assert atari100k_game("james_bond") == atari100k_game("JamesBond") == "jamesbond"
    assert atari100k_game("UpNDown") == "up_n_down"
    with pytest.raises(ValueError, match="'tennis' is not an Atari 100k game; the 26 games are alien"):
        atari100k_game("tennis")
    assert human_normalized_score("Pong", -20.7) == 0.0 and human_normalized_score("pong", 14.6) == 1.0
    out = human_normalized_score("breakout", [[1.7, 30.5], [16.1, 59.3]])
    assert out.shape == (2, 2) and out == pytest.approx(np.array([[0.0, 1.0], [0.5, 2.0]]))
    normalized = scores.human_normalized({"Pong": [-20.7, 14.6]})
    assert list(normalized) == ["pong"] and normalized["pong"].tolist() == pytest.approx([0.0, 1.0])
    with pytest.raises(ValueError, match="appears twice"):
        scores.human_normalized({"Pong": [0.0], "pong": [1.0]})


def test_mean_median_and_iqm_with_different_seed_counts() -> None:
    finals = {"a": [1.0, 3.0], "b": [10.0], "c": [0.0, 0.0, 3.0]}
    # Every task weighs the same: task means 2, 10, 1.
    assert scores.task_means(finals) == {"a": 2.0, "b": 10.0, "c": 1.0}
    assert scores.mean_and_median(finals) == (pytest.approx(13 / 3), 2.0)
    # The IQM pools every run: sorted [0, 0, 1, 3, 3, 10], the middle half [0, 1, 3, 3].
    assert scores.iqm(finals) == 1.75
    point, lo, hi = scores.iqm_with_ci(finals, reps=300, seed=1)
    assert point == 1.75 and lo is not None and hi is not None and lo <= point <= hi and lo < hi
    assert scores.iqm_with_ci(finals, reps=300, seed=1) == (point, lo, hi)  # seeded: reproducible
    # One run per task: resampling cannot move the IQM, so there is no interval.
    assert scores.iqm_with_ci({"a": [1.0], "b": [2.0]}, reps=50) == (1.5, None, None)
    with pytest.raises(ValueError, match="expected one finite final score per run"):
        scores.aggregate("x", {"a": [1.0, float("nan")]})
    with pytest.raises(ValueError, match="no tasks"):
        scores.aggregate("x", {})


def test_iqm_ci_is_rliables_stratified_bootstrap_and_leaves_the_global_rng_alone() -> None:
    from rliable import library as rly
    from rliable import metrics

    matrix = np.random.RandomState(0).rand(5, 4)  # [runs, tasks]
    finals = {f"t{j}": matrix[:, j] for j in range(4)}
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    point, lo, hi = scores.iqm_with_ci(finals, reps=500, seed=7)
    assert (np.random.get_state()[1] == before).all()
    np.random.seed(7)  # rliable 1.2 draws its resamples from the global RNG
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        p, ci = rly.get_interval_estimates(
            {"m": matrix}, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=500
        )
    assert point == pytest.approx(float(p["m"][0]), abs=1e-12) == metrics.aggregate_iqm(matrix)
    assert (lo, hi) == (pytest.approx(ci["m"][0, 0], abs=1e-12), pytest.approx(ci["m"][1, 0], abs=1e-12))


def test_aggregate_normalises_atari_returns_and_keeps_the_raw_ones() -> None:
    row = scores.aggregate(
        "mine",
        {"Pong": [-20.7 + 35.3 * 0.5, 14.6], "breakout": [1.7, 1.7 + 28.8 * 0.4]},
        normalize="atari",
        reps=200,
        frames=(300_000, 400_000),
    )
    assert row.per_task == {"pong": pytest.approx(0.75), "breakout": pytest.approx(0.2)}
    assert row.per_task_raw == {"pong": pytest.approx(5.775), "breakout": pytest.approx(7.46)}
    assert (row.mean, row.median) == (pytest.approx(0.475), pytest.approx(0.475))
    assert row.iqm == pytest.approx(0.45)  # middle half of [0, 0.4, 0.5, 1]
    assert (row.tasks, row.runs, row.runs_per_task) == (2, 4, {"pong": 2, "breakout": 2})
    table = scores.format_aggregates([row], group_by="variant")
    assert "47.5%" in table and "45.0% [" in table and "300000-400000" in table
    success = scores.aggregate("v", {"hammer": [1.0, 0.5], "lever-pull": [0.0, 0.25]}, reps=200)
    assert success.mean == pytest.approx(0.4375) and success.per_task_raw == success.per_task


def test_scores_and_compare_stay_light() -> None:
    """`hwm compare` and hwm.experiments.scores import neither torch nor the emulator (nor MLflow until they need it)."""
    code = "import sys, hwm.experiments.compare_tasks; print(sorted(m for m in ('torch', 'ale_py', 'mlflow', 'lightning') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
