"""`--ckpt_path last` continues the newest run of the task and experiment the command line sets, whatever
other runs were written since in the same folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from hwm.cli.run_match import OtherRunError, newest_run_like


def _config(task: str, experiment: str) -> dict:
    return {"data": {"task": task}, "trainer": {"logger": {"init_args": {"experiment_name": experiment}}}}


def _run(root: Path, name: str, task: str, experiment: str, age_s: float, *, legacy: bool = False) -> Path:
    """A run folder with one checkpoint; ``legacy``: its sidecar predates recording task and experiment."""
    folder = root / name
    folder.mkdir(parents=True)
    checkpoint = folder / "update-000000010.ckpt"
    torch.save({"hwm": {"config": yaml.safe_dump(_config(task, experiment))}}, checkpoint)
    record = {"file": checkpoint.name, "run_id": name}
    if not legacy:
        record |= {"task": task, "experiment": experiment}
    checkpoint.with_suffix(".json").write_text(json.dumps(record))
    os.symlink(checkpoint.name, folder / "last.ckpt")
    when = checkpoint.stat().st_mtime - age_s
    os.utime(checkpoint, (when, when))
    return folder / "last.ckpt"


def _args(tmp_path: Path, task: str, experiment: str) -> list[str]:
    path = tmp_path / f"{task}-{experiment}.yaml"
    path.write_text(yaml.safe_dump(_config(task, experiment)))
    return ["--config", str(path)]


def test_last_picks_the_newest_run_of_the_configs_task_and_experiment(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    cartpole = _run(root, "a", "cartpole-balance", "hwm-cartpole", age_s=300)
    older = _run(root, "b", "cartpole-balance", "hwm-cartpole", age_s=600, legacy=True)
    _run(root, "c", "cartpole-balance", "hwm-tiny", age_s=10)  # a tiny test run since, in the same folder
    _run(root, "d", "walker-walk", "hwm-cartpole", age_s=20)
    assert newest_run_like(_args(tmp_path, "cartpole-balance", "hwm-cartpole"), root) == cartpole
    os.utime(older.resolve(), None)  # the legacy run written last: its checkpoint's config names it
    assert newest_run_like(_args(tmp_path, "cartpole-balance", "hwm-cartpole"), root) == older
    assert newest_run_like([], root) == older  # a command line that names no run: the newest of all


def test_last_refuses_when_no_run_is_of_the_config(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    _run(root, "a", "cartpole-balance", "hwm-cartpole", age_s=300)
    _run(root, "c", "cartpole-balance", "hwm-tiny", age_s=10)
    with pytest.raises(OtherRunError) as refused:
        newest_run_like(_args(tmp_path, "walker-walk", "hwm-dmc"), root)
    message = str(refused.value)
    assert message.startswith(f"--ckpt_path last: no run under {str(root)!r} is of task 'walker-walk' and ")
    assert f"the newest, '{root / 'c' / 'last.ckpt'}', is of task 'cartpole-balance'" in message
    assert "\n" not in message


def test_a_spent_budget_is_said_before_anything_is_built() -> None:
    from hwm.cli.resume import NothingToTrain, check_budget_left

    checkpoint = {"ReplayDataModule": {"counters": {"env_frames": 400}}, "unlogged_metrics": {"metrics": {}}}
    saved = {"data": {"total_frames": 400}}
    with pytest.raises(NothingToTrain, match=r"spent the frame budget \(400 >= data.total_frames 400\)"):
        check_budget_left(checkpoint, saved, [])
    with pytest.raises(NothingToTrain, match="400 >= data.total_frames 300"):
        check_budget_left(checkpoint, saved, ["--data.total_frames", "300"])
    check_budget_left(checkpoint, saved, ["--data.total_frames", "1e3"])  # a larger budget: trains on
    # Metrics the tracking server never got go out with a resume, even one with nothing to train.
    unsent = {**checkpoint, "callbacks": {"TrackingBuffer": {"unsent": [[400, {"eval/return": 1.0}]]}}}
    check_budget_left(unsent, saved, [])


def test_resuming_a_finished_run_says_so_and_leaves_it_finished(tiny_run, run_hwm) -> None:
    run_dir = tiny_run.workdir / "checkpoints" / tiny_run.run_id
    proc = run_hwm(["fit", "--ckpt_path", run_dir], tiny_run.workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "hwm: the checkpoint has spent the frame budget (400 >= data.total_frames 400): nothing to train; "
        "pass a larger --data.total_frames"
    ]
    assert tiny_run.client.get_run(tiny_run.run_id).info.status == "FINISHED"
