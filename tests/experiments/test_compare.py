"""`hwm study` + `hwm compare` on a tiny study (two harmonizer modes x two seeds, made once per module)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO_ROOT, TINY_CONFIG, TINY_EXPERIMENT, run_hwm
from hwm import cli
from hwm.experiments import compare

STUDY_ID = "test-study"
MODES = ("rectified", "off")
SEEDS = (0, 1)
REPS, BOOT_SEED = 1000, 3
NOTEBOOK = REPO_ROOT / "notebooks" / "compare.ipynb"


@dataclass
class TinyStudy:
    workdir: Path
    uri: str
    proc: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, mlflow_db_template: Path) -> TinyStudy:
    workdir = tmp_path_factory.mktemp("study")
    shutil.copyfile(mlflow_db_template, workdir / "mlflow.db")
    # Shorter than the tiny preset's 400 frames, with four evaluations for a learning curve.
    args = ["study", "--config", TINY_CONFIG, "--seeds", *map(str, SEEDS), "--jobs", "2"]
    args += [
        "--vary",
        f"model.harmonizer_mode={','.join(MODES)}",
        "--study-id",
        STUDY_ID,
        "--progress-every",
        "1",
    ]
    args += [
        "--",
        "--data.total_frames",
        "320",
        "--data.eval_every",
        "80",
        "--trainer.enable_checkpointing",
        "false",
    ]
    proc = run_hwm([str(a) for a in args], workdir, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return TinyStudy(workdir, f"sqlite:///{workdir / 'mlflow.db'}", proc)


def _runs(study: TinyStudy) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(study.uri)
    exp = client.get_experiment_by_name(TINY_EXPERIMENT)
    return [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("hwm.summary") != "true"]


def test_study_runs_every_variant_and_seed_as_tagged_runs(study: TinyStudy) -> None:
    lines = study.proc.stdout.splitlines()
    assert sum(line.endswith("s") and ": done in " in line for line in lines) == 4, study.proc.stdout
    runs = _runs(study)
    assert len(runs) == 4
    combos = {(r.data.params["model.harmonizer_mode"], r.data.params["data.seed"]) for r in runs}
    assert combos == {(m, str(s)) for m in MODES for s in SEEDS}
    for r in runs:
        tags = r.data.tags
        assert tags["hwm.study"] == STUDY_ID and r.data.params["seed_everything"] == tags["seed"]
        assert tags["harmonizer_mode"] == r.data.params["model.harmonizer_mode"]
        assert tags["hwm_version"] and tags["task"] == "cartpole-balance"
        assert r.info.run_name == f"harmonizer_mode={tags['harmonizer_mode']} seed={tags['seed']}"
        if "git_commit" in tags:  # present when the source is a git checkout (it is in this repo)
            assert len(tags["git_commit"]) == 40
    # Each run's whole output is kept beside the study, and the study says where.
    logs = sorted((study.workdir / "studies" / STUDY_ID).glob("*.log"))
    assert len(logs) == 4
    for log in logs:
        assert f"(log: {log.relative_to(study.workdir)})" in study.proc.stdout
        text = log.read_text()
        assert "hwm: run finished: 320 env frames" in text and "320/320 [" in text
    # Progress while a run goes, read from its log (each run takes seconds: some poll sees its bar).
    progress = [line for line in lines if line.endswith("/320 env frames")]
    assert progress and all(re.search(r"\] .*: \d+/320 env frames$", line) for line in progress), (
        study.proc.stdout
    )


def _recompute(study: TinyStudy, metric: str) -> dict[str, dict]:
    """Per group: final, best, IQM and CI straight from the raw metric histories."""
    from mlflow import MlflowClient
    from rliable import library as rly
    from rliable import metrics

    client = MlflowClient(study.uri)
    finals: dict[str, list[float]] = {}
    bests: dict[str, list[float]] = {}
    for r in _runs(study):
        history = sorted(client.get_metric_history(r.info.run_id, metric), key=lambda m: m.step)
        mode = r.data.params["model.harmonizer_mode"]
        finals.setdefault(mode, []).append(history[-1].value)
        bests.setdefault(mode, []).append(max(m.value for m in history))
    scores = {g: np.array(v)[:, None] for g, v in finals.items()}
    point, interval = rly.get_interval_estimates(
        scores,
        lambda x: np.array([metrics.aggregate_iqm(x)]),
        reps=REPS,
        random_state=np.random.RandomState(BOOT_SEED),
    )
    return {
        g: {
            "final_mean": float(np.mean(finals[g])),
            "final_std": float(np.std(finals[g], ddof=1)),
            "best_mean": float(np.mean(bests[g])),
            "iqm": float(point[g][0]),
            "ci": (float(interval[g][0, 0]), float(interval[g][1, 0])),
        }
        for g in finals
    }


@pytest.fixture(scope="module")
def compared(
    study: TinyStudy, tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("compare_out")
    args = ["compare", "--experiment", TINY_EXPERIMENT, "--tracking-uri", study.uri, "--study", STUDY_ID]
    args += ["--out", str(out), "--reps", str(REPS), "--seed", str(BOOT_SEED), "--log-to-mlflow"]
    # In-process through the `hwm` entry point (a subprocess would spend seconds importing Lightning).
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(args)
    assert code == 0, stderr.getvalue()
    return stdout.getvalue(), out


@pytest.mark.filterwarnings("ignore:random_state is deprecated:FutureWarning")  # arch, called by rliable
def test_compare_table_equals_a_recomputation_from_raw_metrics(compared, study: TinyStudy) -> None:
    stdout, out = compared
    expected = _recompute(study, "eval/return")
    summary = json.loads((out / "summary.json").read_text())
    assert {g["group"] for g in summary["groups"]} == set(MODES)
    table = stdout
    for g in summary["groups"]:
        e = expected[g["group"]]
        assert g["runs"] == 2 and g["frames_min"] == g["frames_max"] == 320
        assert g["final_mean"] == pytest.approx(e["final_mean"], abs=1e-9)
        assert g["final_std"] == pytest.approx(e["final_std"], abs=1e-9)
        assert g["best_mean"] == pytest.approx(e["best_mean"], abs=1e-9)
        assert g["iqm"] == pytest.approx(e["iqm"], abs=1e-9)
        assert (g["ci_low"], g["ci_high"]) == pytest.approx(e["ci"], abs=1e-9)
        assert g["ci_low"] <= g["iqm"] <= g["ci_high"]
        # The printed row shows the same numbers.
        row = next(line for line in table.splitlines() if line.startswith(g["group"] + " "))
        for text in (
            f"{e['final_mean']:.2f} ± {e['final_std']:.2f}",
            f"{e['best_mean']:.2f}",
            f"{e['iqm']:.2f} [{e['ci'][0]:.2f}, {e['ci'][1]:.2f}]",
            "320",
        ):
            assert text in row, (text, row)


def test_compare_writes_valid_plots_and_logs_them_to_a_summary_run(compared, study: TinyStudy) -> None:
    from mlflow import MlflowClient
    from PIL import Image

    _, out = compared
    for name in ("curves.png", "iqm.png"):
        with Image.open(out / name) as im:
            im.verify()
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 100
    client = MlflowClient(study.uri)
    exp = client.get_experiment_by_name(TINY_EXPERIMENT)
    summaries = client.search_runs([exp.experiment_id], filter_string="tags.`hwm.summary` = 'true'")
    assert len(summaries) == 1
    logged = {a.path for a in client.list_artifacts(summaries[0].info.run_id, "compare")}
    assert {"compare/curves.png", "compare/iqm.png", "compare/summary.json"} <= logged
    # The summary run is not itself one of the compared runs.
    assert len(compare.load_runs(study.uri, TINY_EXPERIMENT)) == 4


def test_compare_any_metric_and_groups_of_one_run(study: TinyStudy, tmp_path: Path, capsys) -> None:
    code = compare.main(
        [
            "--experiment",
            TINY_EXPERIMENT,
            "--tracking-uri",
            study.uri,
            "--metric",
            "harmonizer/weight_reward",
            "--filter",
            "params.`data.seed` = '0'",
            "--out",
            str(tmp_path),
            "--reps",
            "200",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "group 'off' has one run" in captured.err and "group 'rectified' has one run" in captured.err
    assert captured.out.count("[n/a]") == 2
    summary = json.loads((tmp_path / "summary.json").read_text())
    off = next(g for g in summary["groups"] if g["group"] == "off")
    assert off["final_mean"] == 1.0  # fixed weights in `off` mode
    rectified = next(g for g in summary["groups"] if g["group"] == "rectified")
    assert rectified["final_mean"] != 1.0 and rectified["ci_low"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--experiment", "nope"], "no experiment 'nope' in this tracking store; known experiments: "),
        (
            ["--metric", "eval/success_rate"],
            "no run of 'hwm-tiny' logged the metric 'eval/success_rate'; available",
        ),
        (["--group-by", "model.harmonizer"], "did you mean model.harmonizer_lr, model.harmonizer_mode"),
        (["--study", "other"], "has no runs of study 'other'"),
        (
            ["--out", "/dev/null/compare"],
            "cannot write /dev/null/compare: Not a directory; pass --out FOLDER",
        ),
    ],
)
def test_compare_bad_input_is_one_clear_line(study: TinyStudy, tmp_path: Path, capsys, args, message) -> None:
    base = ["--experiment", TINY_EXPERIMENT, "--tracking-uri", study.uri, "--out", str(tmp_path)]
    assert compare.main(base + args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hwm compare: error: ") and message in err and "\n" not in err
    if args[0] == "--experiment":
        assert TINY_EXPERIMENT in err
    if args[0] == "--metric":
        assert "eval/return" in err and "harmonizer/weight_obs" in err


def test_learning_curves_of_different_lengths_share_one_grid() -> None:
    short = compare.RunCurve("a", "a", "g", np.array([100, 200]), np.array([1.0, 3.0]), 200)
    long = compare.RunCurve("b", "b", "g", np.array([100, 300, 500]), np.array([1.0, 7.0, 9.0]), 500)
    grid = compare.curve_grid([short, long], points=5)
    assert grid.tolist() == [100, 200, 300, 400, 500]
    x, mean, lo, hi = compare.group_curve([short, long], grid, reps=200)
    # Only where both runs have data; each interpolated between its own evaluations.
    assert x.tolist() == [100, 200] and mean.tolist() == [1.0, 3.5]
    assert lo[1] == pytest.approx(3.0) and hi[1] == pytest.approx(4.0)
    x1, mean1, lo1, hi1 = compare.group_curve([long], grid, reps=200)
    assert x1.tolist() == grid.tolist() and mean1.tolist() == lo1.tolist() == [1.0, 4.0, 7.0, 8.0, 9.0]


def test_study_bad_input_is_one_clear_line(capsys) -> None:
    from hwm.experiments import study_run

    assert study_run.main(["--config", str(TINY_CONFIG), "--vary", "model.harmonizer_mode"]) == 2
    assert "--vary expects KEY=V1,V2" in capsys.readouterr().err
    assert study_run.main(["--seeds", "0"]) == 2
    assert "give at least one --config" in capsys.readouterr().err


def test_study_plan_file_gives_the_same_runs(tmp_path: Path, capsys) -> None:
    from hwm.experiments import study_run

    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"study:\n  config: [{TINY_CONFIG}]\n  seeds: [0, 1]\n"
        "  vary: {model.harmonizer_mode: [rectified, fixed]}\n  experiment: e\n"
    )
    assert study_run.main(["--plan", str(plan), "--dry-run", "--study-id", "s1"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert len(lines) == 4
    assert "--model.harmonizer_mode fixed --seed_everything 1 --data.seed 1" in lines[3]
    assert "experiment_name e" in lines[0] and "hwm.study" in lines[0] and "s1" in lines[0]


def test_compare_notebook_is_committed_without_outputs() -> None:
    nb = json.loads(NOTEBOOK.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


def test_compare_notebook_runs_as_jupyter_runs_it_on_the_tiny_study(
    study: TinyStudy, tmp_path: Path, monkeypatch, run_notebook
) -> None:
    # The study's store at the top of a checkout, the notebook in notebooks/, where Jupyter runs it.
    shutil.copyfile(study.workdir / "mlflow.db", tmp_path / "mlflow.db")
    (tmp_path / "notebooks").mkdir()
    shutil.copyfile(NOTEBOOK, tmp_path / "notebooks" / NOTEBOOK.name)
    for name in ("HWM_TRACKING_URI", "HWM_NOTEBOOK_OUT", "HWM_CONFIG", "MPLBACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HWM_EXPERIMENT", TINY_EXPERIMENT)
    monkeypatch.setenv("HWM_STUDY", STUDY_ID)
    monkeypatch.setenv("HWM_LAUNCH", "0")  # the study above stands in for the notebook's own
    done = run_notebook(tmp_path / "notebooks" / NOTEBOOK.name, tmp_path / "notebooks")
    # No library's warning (e.g. tqdm's IProgress one); hwm's own note that 2 runs make a poor interval stays.
    ours = re.compile(r"UserWarning: group '\w+' has 2 runs: its 95% CI|^\s+stats = summarize")
    stderr = [line for line in done.output("stderr").splitlines() if not ours.search(line)]
    assert not [line for line in stderr if "Warning" in line], stderr
    table = done.output("stdout")
    assert all(re.search(rf"^{mode} +2 ", table, re.MULTILINE) for mode in MODES), table
    # The cross-task section: the paper's aggregates from the published curves, and their plot.
    assert "HarmonyDream(V3), published" in table and "DreamerV3, published" in table
    out = tmp_path / "notebooks" / "compare_out"
    for name in ("curves.png", "iqm.png", "compare_weights.png", "published_overlay.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    # Its text says what its weight plot shows: on the tiny study every harmonized weight ends below 1.
    text = "".join("".join(c["source"]) for c in json.loads(NOTEBOOK.read_text())["cells"])
    assert "every weight drifts down from 1" in text
    for run in _runs(study):
        if run.data.params["model.harmonizer_mode"] == "rectified":
            for task in ("obs", "reward", "dynamics"):
                assert run.data.metrics[f"harmonizer/weight_{task}"] < 1.0, (run.info.run_name, task)


def test_compare_notebook_finds_its_config_from_another_folder(tmp_path: Path, monkeypatch) -> None:
    """Its settings cell, as Jupyter started in a folder outside the checkout would run it."""
    monkeypatch.chdir(tmp_path)
    for launch, study in (("1", None), ("0", None)):
        monkeypatch.setenv("HWM_LAUNCH", launch)
        monkeypatch.delenv("HWM_STUDY", raising=False)
        namespace: dict = {}
        settings = next(c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code")
        exec(compile("".join(settings["source"]), str(NOTEBOOK), "exec"), namespace)
        if launch == "1":
            assert namespace["CONFIG"] == TINY_CONFIG and namespace["STUDY"].startswith("notebook-")
        else:  # the user's own runs: no config needed, every run of the experiment
            assert namespace["CONFIG"] is None and namespace["STUDY"] is study
