"""Checkpoints and replay chunks load without running code: a crafted file is refused with one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from helpers import REPO_ROOT, TINY_CONFIG
from hwm.checkpoints.io import CheckpointError, load_torch_file, read_checkpoint
from hwm.checkpoints.replay_archive import ReplayArchive
from hwm.training.rng import rng_states

LEGACY_RUN = REPO_ROOT / "tests" / "fixtures" / "legacy_run"


class _WritesAFile:
    """Unpickling this calls ``open(target, "w")``: what a malicious checkpoint would do."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple:
        return (open, (str(self.target), "w"))


def _crafted_checkpoint(path: Path, target: Path) -> Path:
    """An hwm-looking checkpoint with a payload among its plain entries."""
    torch.save({"state_dict": {}, "hwm": {"format_version": 2, "payload": _WritesAFile(target)}}, path)
    return path


def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    target = tmp_path / "pwned.txt"
    path = _crafted_checkpoint(tmp_path / "crafted.ckpt", target)
    with pytest.raises(
        CheckpointError, match=r"refused to load checkpoint .*needs (builtins|io)\.open"
    ) as err:
        read_checkpoint(path)
    assert "\n" not in str(err.value)
    assert not target.exists()


def test_crafted_replay_chunk_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "pwned.txt"
    torch.save({"action": torch.zeros(3, 1), "x": _WritesAFile(target)}, tmp_path / "chunk.pt")
    with pytest.raises(CheckpointError, match=r"refused to load replay file"):
        load_torch_file(tmp_path / "chunk.pt", what="replay file")
    assert not target.exists()


def test_resuming_from_a_crafted_checkpoint_exits_2_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from hwm.cli import main

    monkeypatch.chdir(tmp_path)
    target = tmp_path / "pwned.txt"
    path = _crafted_checkpoint(tmp_path / "crafted.ckpt", target)
    code = main(["fit", "--config", str(TINY_CONFIG), "--ckpt_path", str(path)])
    err = capfd.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert (
        err.startswith("hwm fit: error: refused to load checkpoint") and ".open, which could run code" in err
    )
    assert not target.exists()


def test_what_hwm_saves_loads_under_the_allow_list(tmp_path: Path) -> None:
    """RNG states (numpy's included) and numpy scalars: the plain data a run's state is made of."""
    import numpy as np

    state = {"rng": rng_states(), "generator": np.random.default_rng(1).bit_generator.state}
    state.update(scalar=np.float32(1.5), flag=np.bool_(True), array=np.arange(3, dtype=np.uint8))
    torch.save(state, tmp_path / "state.pt")
    loaded = load_torch_file(tmp_path / "state.pt")
    assert loaded["rng"]["numpy"][0] == "MT19937"
    assert np.array_equal(loaded["rng"]["numpy"][1], state["rng"]["numpy"][1])
    assert loaded["generator"] == state["generator"] and loaded["scalar"] == np.float32(1.5)


def test_legacy_run_still_loads(tmp_path: Path) -> None:
    """A checkpoint written before the allow-list (format 2) loads, and so do the replay chunks it lists."""
    run = shutil.copytree(LEGACY_RUN, tmp_path / "run", symlinks=True)
    checkpoint = read_checkpoint(run / "last.ckpt")
    replay = checkpoint["ReplayDataModule"]["replay"]
    ReplayArchive.verify(run, replay["chunks"], replay["write_count"], replay["capacity"])
    for chunk in replay["chunks"]:
        assert load_torch_file(run / chunk["file"], what="replay file")


def test_simulator_state_classes_load_others_do_not(tmp_path: Path) -> None:
    """The ALE's state (Atari checkpoints hold it) rebuilds from its own bytes: allowed, by name."""
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    env = gym.make("ALE/Pong-v5")
    env.reset(seed=0)
    state = env.unwrapped.ale.cloneState()
    env.close()
    torch.save({"ale": state, "rng": rng_states()}, tmp_path / "ale.pt")
    assert load_torch_file(tmp_path / "ale.pt")["ale"] == state
