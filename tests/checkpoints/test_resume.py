"""Resume: a killed run continues from its checkpoint as if nothing happened; bad checkpoints get one line."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY_CONFIG, TINY_EXPERIMENT, LoggedRun, cli_env, fit_and_load

CKPT_ROOT = "checkpoints"


def _run_dir(workdir: Path) -> Path:
    (run_dir,) = [p for p in (workdir / CKPT_ROOT).iterdir() if p.is_dir()]
    return run_dir


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _data_state(checkpoint: dict) -> dict:
    return checkpoint["ReplayDataModule"]


def _replay_items(run_dir: Path, checkpoint: dict, end: int) -> dict[str, torch.Tensor]:
    """Transitions 0..end-1 (global order) from the replay chunks a checkpoint lists."""
    parts: dict[str, list[torch.Tensor]] = {}
    for chunk in sorted(_data_state(checkpoint)["replay"]["chunks"], key=lambda c: c["start"]):
        tensors = torch.load(run_dir / chunk["file"], weights_only=True)
        take = max(0, min(chunk["end"], end) - chunk["start"])
        for key, value in tensors.items():
            parts.setdefault(key, []).append(value[:take])
    return {k: torch.cat(v) for k, v in parts.items()}


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
    args = ["fit", "--config", str(TINY_CONFIG), "--checkpoint.every_updates", "10"]
    args += ["--data.total_frames", str(total)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hwm.cli", *args],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        # Kill once the second checkpoint is on disk: the run is mid-way, with training after it.
        if len(list(tmp_path.glob(f"{CKPT_ROOT}/*/update-*.json"))) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, (
        "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()

    run_dir = _run_dir(tmp_path)
    resumed_from = _load(run_dir / "last.ckpt")
    state = _data_state(resumed_from)
    frames_at_ckpt = int(state["counters"]["env_frames"])
    assert 0 < frames_at_ckpt < total

    run = fit_and_load(tmp_path, ["--config", str(TINY_CONFIG), "--ckpt_path", "last"])
    assert "resuming MLflow run" in run.proc.stderr
    # tiny.yaml says 400 frames; the run was started with --data.total_frames 600, which a resume keeps.
    assert "kept the checkpoint's settings over the config files for data.total_frames: 400 -> 600" in (
        run.proc.stderr
    )

    final = _load(run_dir / "last.ckpt")
    counters = _data_state(final)["counters"]
    assert counters["env_frames"] == total  # the budget of the killed run (from the checkpoint's config)
    assert counters["agent_steps"] == total // 4
    assert counters["resumes"] == 1
    assert counters["episodes"] >= state["counters"]["episodes"]
    assert final["hwm"]["updates"] > resumed_from["hwm"]["updates"]
    assert final["hwm"]["run_id"] == resumed_from["hwm"]["run_id"] == run.run_id  # one MLflow run
    # The resumed buffer started from the checkpointed transitions: the final replay begins with them.
    n = int(state["replay"]["write_count"])
    before, after = _replay_items(run_dir, resumed_from, n), _replay_items(run_dir, final, n)
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


def straight_and_split(
    tmp_path: Path, template: Path, args: list[str], split: int, full: int
) -> tuple[dict, dict, dict, LoggedRun]:
    """Fits ``full`` frames straight and ``split`` + resume to ``full``: (straight, half, resumed) last
    checkpoints and the resumed run."""
    straight, split_dir = tmp_path / "straight", tmp_path / "split"
    for workdir in (straight, split_dir):
        workdir.mkdir()
        shutil.copyfile(template, workdir / "mlflow.db")
    fit_and_load(straight, [*args, "--data.total_frames", str(full)])
    fit_and_load(split_dir, [*args, "--data.total_frames", str(split)])
    half = _load(_run_dir(split_dir) / "last.ckpt")
    resumed = fit_and_load(split_dir, [*args, "--data.total_frames", str(full), "--ckpt_path", "last"])
    return _load(_run_dir(straight) / "last.ckpt"), half, _load(_run_dir(split_dir) / "last.ckpt"), resumed


def assert_same_training(a: dict, b: dict, tmp_path: Path) -> None:
    """Same parameters bitwise, same counters, and the same replay (every stored row)."""
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), f"{key} differs after resume"
    da, db = _data_state(a), _data_state(b)
    assert da["counters"] == {**db["counters"], "resumes": da["counters"]["resumes"]}
    assert db["counters"]["dropped_steps"] == 0
    if "lanes" not in da["replay"]:
        n = da["replay"]["write_count"]
        assert n == db["replay"]["write_count"]
        ra = _replay_items(_run_dir(tmp_path / "straight"), a, n)
        rb = _replay_items(_run_dir(tmp_path / "split"), b, n)
        for key in ra:
            assert torch.equal(ra[key], rb[key]), key


def test_resume_is_bitwise_deterministic(tmp_path: Path, mlflow_db_template: Path) -> None:
    base = ["--config", str(TINY_CONFIG), *DETERMINISM_ARGS]
    a, half, b, resumed = straight_and_split(tmp_path, mlflow_db_template, base, SPLIT, FULL)
    assert _data_state(half)["in_flight_steps"] == [10]  # checkpointed mid-episode
    assert a["hwm"]["updates"] == b["hwm"]["updates"] == 40 and half["hwm"]["updates"] == 10
    assert_same_training(a, b, tmp_path)
    assert _data_state(a)["counters"]["env_frames"] == _data_state(b)["counters"]["env_frames"] == FULL
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
    run_dir = _run_dir(checkpointed_run)
    checkpoints = sorted(run_dir.glob("update-*.ckpt"))
    assert [p.name for p in checkpoints] == ["update-000000040.ckpt", "update-000000060.ckpt"]
    assert os.readlink(run_dir / "last.ckpt") == "update-000000060.ckpt"
    needed = {c["file"] for p in checkpoints for c in _data_state(_load(p))["replay"]["chunks"]}
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
    return (_run_dir(workdir) / "last.ckpt").resolve()


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
    checkpoint = _load(path)
    checkpoint["hwm"]["format_version"] = 99
    torch.save(checkpoint, path)
    _fails_with(["--ckpt_path", "last"], workdir, capfd, "format version 99", "upgrade hwm")


def test_older_format_version(workdir: Path, capfd) -> None:
    path = _last(workdir)
    checkpoint = _load(path)
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
    checkpoint = _load(path)
    checkpoint["hwm"]["config"] = checkpoint["hwm"]["config"].replace("deter: 32", "deter: 40")
    torch.save(checkpoint, path)
    _fails_with(["--ckpt_path", "last"], workdir, capfd, "do not fit", "in the checkpoint vs", "40")


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_damaged_replay_file(workdir: Path, capfd, damage: str) -> None:
    chunk = _data_state(_load(_last(workdir)))["replay"]["chunks"][0]["file"]
    path = _run_dir(workdir) / chunk
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
    assert _data_state(_load(_last(workdir)))["counters"]["env_frames"] == 440
    assert run.run.data.params["data.total_frames"] == "400"  # MLflow params are write-once...
    assert run.run.data.tags["resume1.overrides"] == "data.total_frames: 400 -> 440"  # ...the change is a tag
    assert run.client.get_experiment_by_name(TINY_EXPERIMENT) is not None
    _assert_steps_strictly_increase(run)


# Slow (three Atari fits); the default suite checks the ALE snapshot continuing an episode bitwise
# (tests/envs/test_snapshot.py) and the whole mid-episode resume on DMC (test_resume_is_bitwise_deterministic).
@pytest.mark.slow
def test_atari_resume_mid_episode_is_bitwise(tmp_path: Path, mlflow_db_template: Path) -> None:
    """The discrete path, and ALE's state (RNG included) and the no-op generator checkpointed mid-episode."""
    args = ["--config", str(TINY_CONFIG), "--data.suite", "atari", "--data.task", "pong", *DETERMINISM_ARGS]
    args += ["--data.from_pixels", "true", "--data.time_limit", "200", "--data.eval_every", "240"]
    a, half, b, run = straight_and_split(tmp_path, mlflow_db_template, args, 240, 320)
    assert _data_state(half)["in_flight_steps"] == [10]  # 60 steps, episodes of 50
    assert _data_state(b)["counters"]["env_frames"] == 320
    assert b["hwm"]["updates"] == half["hwm"]["updates"] + 20
    assert_same_training(a, b, tmp_path)
    _assert_steps_strictly_increase(run)


@pytest.mark.slow
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
    assert _data_state(half)["in_flight_steps"] == [15]
    assert_same_training(a, b, tmp_path)


@pytest.mark.slow
def test_checkpoint_without_env_states_still_resumes(
    tmp_path: Path, mlflow_db_template: Path, run_hwm
) -> None:
    """A checkpoint written before env states were saved (tests/fixtures/legacy_run, 400 frames, at an
    episode boundary) resumes as it used to: the next episode starts from the saved reset randomness."""
    shutil.copyfile(mlflow_db_template, tmp_path / "mlflow.db")
    shutil.copytree(Path(__file__).parents[1] / "fixtures" / "legacy_run", tmp_path / "old", symlinks=True)
    assert "carrier" not in _data_state(_load(tmp_path / "old" / "last.ckpt"))
    args = ["fit", "--config", str(TINY_CONFIG), "--ckpt_path", "old/last.ckpt", "--data.total_frames", "480"]
    proc = run_hwm(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = _data_state(_load(tmp_path / "old" / "last.ckpt"))
    assert final["counters"]["env_frames"] == 480 and final["counters"]["dropped_steps"] == 0
    assert "carrier" in final
