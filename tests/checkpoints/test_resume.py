"""Resume: a killed run continues from its checkpoint as if nothing happened; bad checkpoints get one line."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from helpers import (
    CKPT_ROOT,
    TINY_CONFIG,
    TINY_EXPERIMENT,
    LoggedRun,
    WatchedFit,
    assert_same_training,
    data_state,
    fit_and_load,
    load_checkpoint,
    replay_items,
    run_folder,
    run_hwm,
    straight_and_split,
)


def _assert_steps_strictly_increase(run: LoggedRun) -> None:
    for key in run.run.data.metrics:
        steps = [m.step for m in run.client.get_metric_history(run.run_id, key)]
        assert all(a < b for a, b in zip(steps, steps[1:], strict=False)), f"{key}: steps {steps}"


def _snapshot(workdir: Path) -> dict[str, str]:
    """Every file's hash under ``workdir`` (symlinks by target): what a failed resume must leave alone."""
    out = {}
    for path in sorted(workdir.rglob("*")):
        if path.is_symlink():
            out[str(path)] = "->" + os.readlink(path)
        elif path.is_file():
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# -- a run killed with SIGKILL after a checkpoint ---------------------------------------------------------
def test_sigkill_then_resume_from_last(tmp_path: Path, mlflow_db_template: Path) -> None:
    shutil.copyfile(mlflow_db_template, tmp_path / "mlflow.db")
    total = 600
    args = ["--config", TINY_CONFIG, "--checkpoint.every_updates", 10, "--data.total_frames", total]
    fit = WatchedFit(args, tmp_path)
    # Kill once the second checkpoint is reported: the run is mid-way, with training after it.
    fit.wait_for_checkpoint(count=2)
    assert fit.proc.poll() is None, "the run ended before it could be killed: " + fit.output.text()[-2000:]
    fit.proc.send_signal(signal.SIGKILL)
    fit.finish(timeout=30)

    run_dir = run_folder(tmp_path)
    resumed_from = load_checkpoint(run_dir / "last.ckpt")
    state = data_state(resumed_from)
    frames_at_ckpt = int(state["counters"]["env_frames"])
    assert 0 < frames_at_ckpt < total

    run = fit_and_load(tmp_path, ["--config", str(TINY_CONFIG), "--ckpt_path", "last"])
    assert "resuming MLflow run" in run.proc.stderr
    # tiny.yaml says 400 frames; the run was started with --data.total_frames 600, which a resume keeps.
    assert "kept the checkpoint's settings over the config files for data.total_frames: 400 -> 600" in (
        run.proc.stderr
    )

    final = load_checkpoint(run_dir / "last.ckpt")
    counters = data_state(final)["counters"]
    assert counters["env_frames"] == total  # the budget of the killed run (from the checkpoint's config)
    assert counters["agent_steps"] == total // 4
    assert counters["resumes"] == 1
    assert counters["episodes"] >= state["counters"]["episodes"]
    assert final["hwm"]["updates"] > resumed_from["hwm"]["updates"]
    assert final["hwm"]["run_id"] == resumed_from["hwm"]["run_id"] == run.run_id  # one MLflow run
    # The resumed buffer started from the checkpointed transitions: the final replay begins with them.
    n = int(state["replay"]["write_count"])
    before, after = replay_items(run_dir, resumed_from, n), replay_items(run_dir, final, n)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert run.run.info.status == "FINISHED"
    _assert_steps_strictly_increase(run)
    assert run.history("progress/env_frames")[-1] == (total, float(total))
    assert run.run.data.tags["resumes"] == "1"


# -- determinism: N updates straight == N/2, resume, N/2 --------------------------------------------------
# tiny: 20 agent steps per episode, 40 prefill steps, one update per agent step after the prefill. The split
# at 50 steps (200 frames) is mid-episode (step 10 of the third): every env's simulator state and the
# policy's latent are in the checkpoint, so the resumed run continues the episode where it stood.
SPLIT, FULL = 200, 320
DETERMINISM_ARGS = ["--data.eval_every", str(SPLIT), "--checkpoint.every_updates", "0"]


def test_resume_is_bitwise_deterministic(tmp_path: Path, mlflow_db_template: Path) -> None:
    base = ["--config", str(TINY_CONFIG), *DETERMINISM_ARGS]
    a, half, b, resumed = straight_and_split(tmp_path, mlflow_db_template, base, SPLIT, FULL)
    assert data_state(half)["in_flight_steps"] == [10]  # checkpointed mid-episode
    assert a["hwm"]["updates"] == b["hwm"]["updates"] == 40 and half["hwm"]["updates"] == 10
    assert_same_training(a, b, tmp_path)
    assert data_state(a)["counters"]["env_frames"] == data_state(b)["counters"]["env_frames"] == FULL
    assert resumed.run.data.tags["resume1.overrides"] == f"data.total_frames: {SPLIT} -> {FULL}"
    _assert_steps_strictly_increase(resumed)


# -- bad input: one line, exit 2, nothing written ---------------------------------------------------------
@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run with periodic checkpoints (the last 2 kept)."""
    workdir = tmp_path_factory.mktemp("checkpointed")
    args = ["--config", str(TINY_CONFIG), "--checkpoint.every_updates", "20", "--checkpoint.keep_last", "2"]
    fit_and_load(workdir, args)
    return workdir


def test_rotation_keeps_last_and_their_replay(checkpointed_run: Path) -> None:
    run_dir = run_folder(checkpointed_run)
    checkpoints = sorted(run_dir.glob("update-*.ckpt"))
    assert [p.name for p in checkpoints] == ["update-000000040.ckpt", "update-000000060.ckpt"]
    assert os.readlink(run_dir / "last.ckpt") == "update-000000060.ckpt"
    needed = {c["file"] for p in checkpoints for c in data_state(load_checkpoint(p))["replay"]["chunks"]}
    on_disk = {f"replay/{p.name}" for p in (run_dir / "replay").iterdir()}
    assert on_disk == needed


@pytest.fixture
def workdir(checkpointed_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(checkpointed_run, tmp_path, dirs_exist_ok=True, symlinks=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _fails_with(args: list[str], workdir: Path, capfd: pytest.CaptureFixture[str], *needles: str) -> str:
    from hwm.cli import main

    before = _snapshot(workdir)
    code = main(["fit", "--config", str(TINY_CONFIG), *args])
    err = capfd.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("hwm fit: error: ")
    for needle in needles:
        assert needle in err, err
    assert _snapshot(workdir) == before, "a failed resume changed files"
    return err


def _last(workdir: Path) -> Path:
    return (run_folder(workdir) / "last.ckpt").resolve()


def test_missing_path(workdir: Path, capfd) -> None:
    _fails_with(["--ckpt_path", "nowhere/x.ckpt"], workdir, capfd, "nowhere/x.ckpt", "does not exist")


def test_last_without_checkpoints(workdir: Path, capfd) -> None:
    shutil.rmtree(workdir / CKPT_ROOT)
    _fails_with(["--ckpt_path", "last"], workdir, capfd, "no checkpoint found")


def test_truncated_checkpoint(workdir: Path, capfd) -> None:
    path = _last(workdir)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _fails_with(["--ckpt_path", "last"], workdir, capfd, "truncated or corrupt")


def test_corrupt_checkpoint(workdir: Path, capfd) -> None:
    path = _last(workdir)
    path.write_bytes(os.urandom(path.stat().st_size))
    _fails_with(["--ckpt_path", str(path)], workdir, capfd, "truncated or corrupt")


def test_not_an_hwm_checkpoint(workdir: Path, capfd) -> None:
    path = workdir / "other.ckpt"
    torch.save({"state_dict": {}}, path)
    _fails_with(["--ckpt_path", str(path)], workdir, capfd, "not written by hwm")


def test_newer_format_version(workdir: Path, capfd) -> None:
    path = _last(workdir)
    checkpoint = load_checkpoint(path)
    checkpoint["hwm"]["format_version"] = 99
    torch.save(checkpoint, path)
    _fails_with(["--ckpt_path", "last"], workdir, capfd, "format version 99", "upgrade hwm")


def test_older_format_version(workdir: Path, capfd) -> None:
    path = _last(workdir)
    checkpoint = load_checkpoint(path)
    checkpoint["hwm"]["format_version"] = 1  # replay of transitions, before episodes' steps were stored
    torch.save(checkpoint, path)
    _fails_with(["--ckpt_path", "last"], workdir, capfd, "format version 1", "cannot continue")


def test_incompatible_override_is_rejected(workdir: Path, capfd) -> None:
    _fails_with(
        ["--ckpt_path", "last", "--model.world_model.deter", "48"],
        workdir,
        capfd,
        "model.world_model.init_args.deter: 32 -> 48",
    )


def test_weights_that_do_not_fit(workdir: Path, capfd) -> None:
    path = _last(workdir)
    checkpoint = load_checkpoint(path)
    checkpoint["hwm"]["config"] = checkpoint["hwm"]["config"].replace("deter: 32", "deter: 40")
    torch.save(checkpoint, path)
    # With frames left to train: a spent budget is answered before the run (and its weights) are built.
    args = ["--ckpt_path", "last", "--data.total_frames", "100000"]
    _fails_with(args, workdir, capfd, "do not fit", "in the checkpoint vs", "40")


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_damaged_replay_file(workdir: Path, capfd, damage: str) -> None:
    chunk = data_state(load_checkpoint(_last(workdir)))["replay"]["chunks"][0]["file"]
    path = run_folder(workdir) / chunk
    if damage == "delete":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:-100])
    _fails_with(["--ckpt_path", "last"], workdir, capfd, "replay file", chunk.split("/")[-1])


def test_safe_override_is_applied(workdir: Path) -> None:
    run = fit_and_load(
        workdir, ["--config", str(TINY_CONFIG), "--ckpt_path", "last", "--data.total_frames", "440"]
    )
    assert "overrides applied: data.total_frames: 400 -> 440" in run.proc.stderr
    assert data_state(load_checkpoint(_last(workdir)))["counters"]["env_frames"] == 440
    assert run.run.data.params["data.total_frames"] == "400"  # MLflow params are write-once...
    assert run.run.data.tags["resume1.overrides"] == "data.total_frames: 400 -> 440"  # ...the change is a tag
    assert run.client.get_experiment_by_name(TINY_EXPERIMENT) is not None
    _assert_steps_strictly_increase(run)


# Slow (three Atari fits); the default suite checks the ALE snapshot continuing an episode bitwise
# (tests/envs/test_snapshot.py) and the whole mid-episode resume on DMC (test_resume_is_bitwise_deterministic).
@pytest.mark.slow
@pytest.mark.covers_alone
def test_atari_resume_mid_episode_is_bitwise(tmp_path: Path, mlflow_db_template: Path) -> None:
    """The discrete path, and ALE's state (RNG included) and the no-op generator checkpointed mid-episode."""
    args = ["--config", str(TINY_CONFIG), "--data.suite", "atari", "--data.task", "pong", *DETERMINISM_ARGS]
    args += ["--data.from_pixels", "true", "--data.time_limit", "200", "--data.eval_every", "240"]
    a, half, b, run = straight_and_split(tmp_path, mlflow_db_template, args, 240, 320)
    assert data_state(half)["in_flight_steps"] == [10]  # 60 steps, episodes of 50
    assert data_state(b)["counters"]["env_frames"] == 320
    assert b["hwm"]["updates"] == half["hwm"]["updates"] + 20
    assert_same_training(a, b, tmp_path)
    _assert_steps_strictly_increase(run)


@pytest.mark.slow
@pytest.mark.covers_alone
def test_metaworld_resume_mid_episode_is_bitwise(tmp_path: Path, mlflow_db_template: Path) -> None:
    """MuJoCo's state, the goal generator and the task's Python-side episode state checkpointed."""
    args = [
        "--config",
        str(TINY_CONFIG),
        "--data.suite",
        "metaworld",
        "--data.task",
        "reach",
        *DETERMINISM_ARGS,
    ]
    args += ["--data.action_repeat", "1", "--data.time_limit", "30", "--data.prefill_frames", "40"]
    args += ["--data.train_ratio", "32", "--data.eval_every", "45"]
    a, half, b, _ = straight_and_split(tmp_path, mlflow_db_template, args, 45, 80)
    assert data_state(half)["in_flight_steps"] == [15]
    assert_same_training(a, b, tmp_path)


@pytest.mark.slow
def test_checkpoint_without_env_states_still_resumes(tmp_path: Path, mlflow_db_template: Path) -> None:
    """A checkpoint written before env states were saved (tests/fixtures/legacy_run, 400 frames, at an
    episode boundary) resumes as it used to: the next episode starts from the saved reset randomness."""
    shutil.copyfile(mlflow_db_template, tmp_path / "mlflow.db")
    shutil.copytree(Path(__file__).parents[1] / "fixtures" / "legacy_run", tmp_path / "old", symlinks=True)
    assert "carrier" not in data_state(load_checkpoint(tmp_path / "old" / "last.ckpt"))
    args = ["fit", "--config", str(TINY_CONFIG), "--ckpt_path", "old/last.ckpt", "--data.total_frames", "480"]
    proc = run_hwm(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = data_state(load_checkpoint(tmp_path / "old" / "last.ckpt"))
    assert final["counters"]["env_frames"] == 480 and final["counters"]["dropped_steps"] == 0
    assert "carrier" in final
