"""`hwm compare --across-tasks` on fake MLflow runs: Atari (2 games x 2 variants x 2 seeds, with the
published rows and the overlay), Meta-world, and bad input."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from hwm.experiments import compare, compare_tasks, scores

REPS = 200
RANGES = {"pong": (-20.7, 14.6), "breakout": (1.7, 30.5)}
# variant -> game -> the final human-normalised score of each seed
ATARI_HNS = {
    "rectified": {"pong": [0.5, 1.0], "breakout": [0.2, 0.4]},
    "off": {"pong": [0.1, 0.3], "breakout": [0.0, 0.2]},
}
SUCCESS = {
    "rectified": {"lever-pull": [1.0, 0.8], "hammer": [0.6, 0.2]},
    "off": {"lever-pull": [0.5, 0.5], "hammer": [0.0, 0.1]},
}


def _log_run(
    client,
    exp_id: str,
    name: str,
    *,
    params: dict[str, str],
    tags: dict[str, str],
    metrics: dict[str, Sequence],
) -> None:
    from mlflow.entities import Metric, Param

    run = client.create_run(exp_id, run_name=name, tags=tags)
    now = int(time.time() * 1000)
    batch = [Metric(key, float(v), now, int(step)) for key, points in metrics.items() for step, v in points]
    client.log_batch(run.info.run_id, metrics=batch, params=[Param(k, v) for k, v in params.items()])
    client.set_terminated(run.info.run_id)


def _atari_run(
    client, exp_id: str, mode: str, task: str, seed: int, hns: float, *, suite: str = "atari"
) -> None:
    game = task.lower().removeprefix("ale/").removesuffix("-v5")
    lo, hi = RANGES.get(game, (0.0, 1.0))
    final = lo + (hi - lo) * hns
    returns = [(100_000, lo), (200_000, (lo + final) / 2), (400_000, final)]
    hns_curve = [(s, (v - lo) / (hi - lo)) for s, v in returns]
    _log_run(
        client,
        exp_id,
        f"harmonizer_mode={mode} task={task} seed={seed}",
        params={
            "model.harmonizer_mode": mode,
            "data.task": task,
            "data.suite": suite,
            "seed_everything": str(seed),
        },
        tags={"task": task, "suite": suite, "seed": str(seed)},
        metrics={
            "eval/return": returns,
            "eval/human_normalized_score": hns_curve,
            "progress/env_frames": [(400_000, 400_000)],
        },
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, mlflow_db_template: Path) -> str:
    """One sqlite store with a fake experiment per case."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("tasks") / "mlflow.db"
    shutil.copyfile(mlflow_db_template, db)
    uri = f"sqlite:///{db}"
    client = MlflowClient(uri)
    atari = client.create_experiment("atari")
    for mode, games in ATARI_HNS.items():
        for game, values in games.items():
            for seed, hns in enumerate(values):
                # Spellings differ between runs (as users type them); they are one game.
                task = {("pong", 1): "ALE/Pong-v5", ("breakout", 0): "Breakout"}.get((game, seed), game)
                _atari_run(client, atari, mode, task, seed, hns)
    metaworld = client.create_experiment("metaworld")
    for mode, tasks in SUCCESS.items():
        for task, values in tasks.items():
            for seed, success in enumerate(values):
                curve = [(250_000, success / 2), (500_000, success)]
                _log_run(
                    client,
                    metaworld,
                    f"{mode} {task} {seed}",
                    params={"model.harmonizer_mode": mode},  # task and suite only as tags: enough
                    tags={"task": task, "suite": "metaworld"},
                    metrics={"eval/success_rate": curve, "eval/return": [(500_000, 100 * success)]},
                )
    unknown = client.create_experiment("unknown-game")
    _atari_run(client, unknown, "off", "pong", 0, 0.5)
    _atari_run(client, unknown, "off", "tennis", 0, 0.5)
    no_task = client.create_experiment("no-task")
    _log_run(
        client,
        no_task,
        "anonymous",
        params={"model.harmonizer_mode": "off"},
        tags={"suite": "atari"},
        metrics={"eval/return": [(1000, 1.0)]},
    )
    mixed = client.create_experiment("mixed")
    _atari_run(client, mixed, "off", "pong", 0, 0.5)
    _log_run(
        client,
        mixed,
        "mw",
        params={"model.harmonizer_mode": "off", "data.task": "hammer"},
        tags={"suite": "metaworld"},
        metrics={"eval/success_rate": [(1000, 0.5)]},
    )
    return uri


def _compare(store: str, experiment: str, out: Path, *extra: str) -> int:
    args = ["--experiment", experiment, "--tracking-uri", store, "--out", str(out), "--reps", str(REPS)]
    return compare.main([*args, "--across-tasks", *extra])


@pytest.fixture(scope="module")
def atari_out(store: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("atari_out")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = _compare(store, "atari", out, "--log-to-mlflow")
    assert code == 0, stderr.getvalue()
    return out, stdout.getvalue()


def test_atari_across_tasks_human_normalised_aggregates(atari_out: tuple[Path, str]) -> None:
    out, stdout = atari_out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "across_tasks" and summary["suite"] == "atari" and summary["score"] == "HNS"
    rows = {r["group"]: r for r in summary["rows"]}
    off, rectified = rows["off"], rows["rectified"]
    # Per-task means over seeds 0.2 / 0.1 (off) and 0.75 / 0.3 (rectified); IQM: middle half of the 4 runs.
    assert off["per_task"] == {"breakout": pytest.approx(0.1), "pong": pytest.approx(0.2)}
    assert (off["mean"], off["median"], off["iqm"]) == pytest.approx((0.15, 0.15, 0.15))
    assert (rectified["mean"], rectified["median"], rectified["iqm"]) == pytest.approx((0.525, 0.525, 0.45))
    for r in (off, rectified):
        assert r["tasks"] == 2 and r["runs"] == 4 and r["frames_min"] == r["frames_max"] == 400_000
        assert r["ci_low"] <= r["iqm"] <= r["ci_high"] and not r["published"]
    assert rectified["per_task_raw"]["pong"] == pytest.approx(-20.7 + 35.3 * 0.75)
    # The published rows: same two games, at the frames the runs reached, as hwm.experiments.scores gives them.
    expected = scores.published_aggregates(["pong", "breakout"], frames=400_000, reps=REPS)
    for e in expected:
        got = rows[e.group]
        assert got["published"] and set(got["per_task"]) == {"pong", "breakout"} and got["runs"] == 10
        assert (got["mean"], got["median"], got["iqm"]) == (e.mean, e.median, e.iqm)
        assert (got["ci_low"], got["ci_high"]) == (e.ci_low, e.ci_high)
    line = next(x for x in stdout.splitlines() if x.startswith("rectified "))
    assert "52.5%" in line and "45.0% [" in line and "400000" in line
    assert "HarmonyDream(V3), published" in stdout and "DreamerV3, published" in stdout
    assert "8 runs on 2 atari tasks with eval/return" in stdout


def test_atari_plots_overlay_and_summary_run(atari_out: tuple[Path, str], store: str) -> None:
    from mlflow import MlflowClient
    from PIL import Image

    out, _ = atari_out
    for name, min_size in (("task_curves.png", (600, 300)), ("iqm.png", (400, 150))):
        with Image.open(out / name) as im:
            im.verify()
            assert im.format == "PNG" and im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("atari")
    (summary_run,) = client.search_runs([exp.experiment_id], filter_string="tags.`hwm.summary` = 'true'")
    logged = {a.path for a in client.list_artifacts(summary_run.info.run_id, "compare")}
    assert {"compare/task_curves.png", "compare/summary.json", "compare/table.txt"} <= logged


def test_env_logged_hns_gives_the_same_aggregates(
    store: str, atari_out: tuple[Path, str], tmp_path: Path
) -> None:
    result = compare_tasks.compare_across_tasks(
        tracking_uri=store,
        experiment="atari",
        metric="eval/human_normalized_score",
        group_by="model.harmonizer_mode",
        out_dir=tmp_path,
        reps=REPS,
    )
    by_return = {r["group"]: r for r in json.loads((atari_out[0] / "summary.json").read_text())["rows"]}
    for row in result.rows:
        ref = by_return[row.group]
        assert (row.mean, row.median, row.iqm) == pytest.approx(
            (ref["mean"], ref["median"], ref["iqm"]), abs=1e-12
        )


def test_overlay_without_runs_draws_the_published_curves(tmp_path: Path) -> None:
    refs = [scores.load_reference(k) for k in scores.REFERENCES]
    path = compare_tasks.plot_task_curves(
        {"breakout": {}, "gopher": {}}, tmp_path / "o.png", references=refs, reps=50
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metaworld_across_tasks_mean_success(store: str, tmp_path: Path, capsys) -> None:
    assert _compare(store, "metaworld", tmp_path) == 0
    stdout = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["suite"] == "metaworld" and summary["metric"] == "eval/success_rate"
    rows = {r["group"]: r for r in summary["rows"]}
    assert set(rows) == {"off", "rectified"}  # no published rows outside Atari
    assert rows["rectified"]["mean"] == pytest.approx(0.65) and rows["off"]["mean"] == pytest.approx(0.275)
    assert rows["rectified"]["per_task"] == {"hammer": pytest.approx(0.4), "lever-pull": pytest.approx(0.9)}
    assert "mean success" in stdout and "65.0%" in stdout and "27.5%" in stdout
    assert (tmp_path / "task_curves.png").is_file()


@pytest.mark.parametrize(
    ("experiment", "extra", "message"),
    [
        (
            "unknown-game",
            [],
            "run 'harmonizer_mode=off task=tennis seed=0': 'tennis' is not an Atari 100k game",
        ),
        ("no-task", [], "run 'anonymous' ("),
        ("mixed", [], "the runs are of several suites (atari, metaworld): pick one with --suite"),
        ("metaworld", ["--suite", "atari"], "no run of suite 'atari' logged 'eval/return'"),
    ],
)
def test_across_tasks_bad_input_is_one_clear_line(
    store: str, tmp_path: Path, capsys, experiment, extra, message
) -> None:
    assert _compare(store, experiment, tmp_path, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hwm compare: error: ") and message in err and "\n" not in err
    if experiment == "no-task":
        assert "has no task (param data.task or tag task)" in err


def test_suite_picks_runs_of_a_mixed_experiment(store: str, tmp_path: Path, capsys) -> None:
    assert _compare(store, "mixed", tmp_path, "--suite", "metaworld") == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(r["group"], r["per_task"]) for r in summary["rows"]] == [("off", {"hammer": 0.5})]


def test_across_tasks_flags_need_the_mode(store: str, tmp_path: Path, capsys) -> None:
    args = ["--experiment", "atari", "--tracking-uri", store, "--out", str(tmp_path), "--suite", "atari"]
    assert compare.main(args) == 2
    assert (
        capsys.readouterr().err.strip()
        == "hwm compare: error: --suite and --no-published go with --across-tasks"
    )
