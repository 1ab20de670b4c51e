"""`hwm compare` never pools runs of different bases or tasks into one group, and says when it replaces an
earlier comparison."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from hwm.experiments import compare
from hwm.experiments.runs import RunCurve, split_mixed


def _curve(group: str, base: str, task: str) -> RunCurve:
    steps = np.array([100, 200])
    return RunCurve(
        f"{base}-{task}", f"{base}-{task}", group, steps, np.array([0.0, 1.0]), 200, task, None, base
    )


def test_groups_are_split_by_the_settings_their_runs_differ_in() -> None:
    runs = [_curve("rectified", "dreamerv2", "cartpole"), _curve("rectified", "dreamerv3", "cartpole")]
    split, keys = split_mixed(runs, "model.harmonizer_mode")
    assert keys == ["model.base"]
    assert [r.group for r in split] == ["rectified [dreamerv2]", "rectified [dreamerv3]"]
    runs.append(_curve("off", "dreamerv2", "walker"))
    split, keys = split_mixed(runs, "model.harmonizer_mode")
    assert keys == ["model.base", "data.task"] and split[0].group == "off [dreamerv2, walker]"
    # Grouped by the base itself, or with one base and one task: nothing to split.
    assert split_mixed(runs, "model.base")[1] == ["data.task"]
    assert split_mixed(runs[:1], "model.harmonizer_mode") == (runs[:1], [])


def _store(tmp_path: Path, template: Path) -> str:
    from mlflow import MlflowClient

    shutil.copyfile(template, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("hwm-tiny")  # conf/tiny.yaml and tiny_v3.yaml both log here
    for base, final in (("dreamerv2", 50.0), ("dreamerv3", 20.0)):
        run = client.create_run(exp).info.run_id
        client.log_param(run, "model.base", base)
        client.log_param(run, "model.harmonizer_mode", "rectified")
        client.log_param(run, "data.task", "cartpole-balance")
        for step, value in ((200, final / 2), (400, final)):
            client.log_metric(run, "eval/return", value, step=step)
            client.log_metric(run, "progress/env_frames", step, step=step)
    return uri


def test_compare_splits_a_group_mixing_bases_and_says_so(
    tmp_path: Path, mlflow_db_template: Path, capsys
) -> None:
    uri = _store(tmp_path, mlflow_db_template)
    out = tmp_path / "compare"
    assert (
        compare.main(["--tracking-uri", uri, "--experiment", "hwm-tiny", "--out", str(out), "--reps", "50"])
        == 0
    )
    captured = capsys.readouterr()
    assert "hwm compare: warning: runs differ in model.base: each group is split by it" in captured.err
    assert "--filter \"params.`model.base` = 'dreamerv2'\"" in captured.err
    table = captured.out.splitlines()
    assert any(line.startswith("rectified [dreamerv2]  1") and "50.00" in line for line in table), table
    assert any(line.startswith("rectified [dreamerv3]  1") and "20.00" in line for line in table), table
    assert json.loads((out / "summary.json").read_text())["split_by"] == ["model.base"]
    assert "replacing" not in captured.err

    assert (
        compare.main(["--tracking-uri", uri, "--experiment", "hwm-tiny", "--out", str(out), "--reps", "50"])
        == 0
    )
    assert f"hwm compare: warning: replacing the comparison in {out}/ (--out FOLDER keeps it)" in (
        capsys.readouterr().err
    )
