"""`hwm compare` on the store it is given, or on none: it reads and never creates, picks the only experiment
when none is named, and says in one line what is wrong with a filter; `hwm study`'s run logs."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from helpers import TINY_CONFIG
from hwm.experiments import compare, study_run, study_slot
from hwm.experiments.runs import CompareError, RunCurve, resolve_experiment


def test_compare_without_a_store_creates_none(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert compare.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hwm compare: error: no MLflow store at ") and "\n" not in err
    assert list(tmp_path.iterdir()) == []  # no mlflow.db, no mlruns/


def _store(tmp_path: Path, template: Path, experiments: dict[str, int]) -> str:
    from mlflow import MlflowClient

    shutil.copyfile(template, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    for name, runs in experiments.items():
        exp_id = client.create_experiment(name)
        for _ in range(runs):
            client.create_run(exp_id)
    return uri


def test_the_experiment_defaults_to_the_stores_only_one(tmp_path: Path, mlflow_db_template: Path) -> None:
    uri = _store(tmp_path, mlflow_db_template, {"hwm-cartpole": 2})
    name, notice = resolve_experiment(uri, None)
    assert name == "hwm-cartpole" and "the only one with runs" in (notice or "")
    assert resolve_experiment(uri, "other") == ("other", None)


def test_several_experiments_ask_for_one(tmp_path: Path, mlflow_db_template: Path, capsys) -> None:
    uri = _store(tmp_path, mlflow_db_template, {"hwm-tiny": 1, "hwm-cartpole": 2})
    with pytest.raises(
        CompareError, match=r"several experiments: hwm-cartpole \(2 runs\), hwm-tiny \(1 run\)"
    ):
        resolve_experiment(uri, None)
    assert compare.main(["--tracking-uri", uri]) == 2
    assert "pick one with --experiment" in capsys.readouterr().err


def test_a_bad_filter_is_one_line(tmp_path: Path, mlflow_db_template: Path, capsys) -> None:
    uri = _store(tmp_path, mlflow_db_template, {"e": 1})
    assert (
        compare.main(["--tracking-uri", uri, "-e", "e", "--filter", "params.x = = 3", "--out", str(tmp_path)])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("hwm compare: error: bad --filter 'params.x = = 3': ") and "\n" not in err


def test_compare_help_shows_percent_and_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        compare.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "95% stratified" in text and "%%" not in text
    assert "(default: sqlite:///mlflow.db)" in text and "(default: 2000)" in text


def _curve(group: str, name: str, final: float) -> RunCurve:
    return RunCurve(name, name, group, np.array([100, 200]), np.array([0.0, final]), 200)


def test_few_runs_per_group_come_with_a_warning_about_the_interval() -> None:
    runs = [_curve("a", "a1", 1.0), _curve("a", "a2", 3.0)] + [
        _curve("b", f"b{i}", float(i)) for i in range(5)
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats = compare.summarize(runs, reps=200)
    messages = [str(w.message) for w in caught if str(w.message).startswith("group ")]
    assert len(messages) == 1 and messages[0].startswith("group 'a' has 2 runs: its 95% CI")
    a = next(s for s in stats if s.group == "a")
    assert (a.ci_low, a.ci_high) == (1.0, 3.0)  # with two runs the interval is their range: hence the warning


def test_a_failed_study_run_points_at_its_full_log(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    args = [
        "--config",
        str(TINY_CONFIG),
        "--seeds",
        "0",
        "--study-id",
        "s1",
        "--",
        "--config",
        "missing.yaml",
    ]
    assert study_run.main(args) == 2
    out = capsys.readouterr().out
    log = tmp_path / "studies" / "s1" / "01-seed=0.log"
    assert log.is_file() and "config file 'missing.yaml' does not exist" in log.read_text()
    assert f"(log: {log.relative_to(tmp_path)})" in out and "does not exist" in out


def test_a_study_that_cannot_keep_its_logs_says_so(tmp_path: Path, capsys) -> None:
    args = ["--config", str(TINY_CONFIG), "--seeds", "0", "--study-id", "s1", "--logs", "/dev/null/logs"]
    assert study_run.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("hwm study: error: cannot write the runs' logs under /dev/null/logs/s1: ")
        and "\n" not in err
    )


def test_progress_and_the_last_message_are_read_from_a_run_log(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_text(
        "hwm: prefilling the replay buffer with 160 random-action env frames\n"
        "hwm fit:  41%|####      | 164/400 [00:00<00:00, 238frame/s]\r"
        "hwm fit:  60%|######    | 240/400 [00:10<00:07, 21frame/s, updates=20]\r"
        "hwm fit: error: something broke\n"
        "hwm fit:  61%|######    | 244/400 [00:11<00:07, 21frame/s, updates=21]\r"
    )
    assert study_slot.frames_so_far(log) == (244, 400)
    assert study_slot.last_message(log) == "hwm fit: error: something broke"
    assert study_slot.frames_so_far(tmp_path / "none.log") is None
