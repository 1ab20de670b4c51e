"""Datasets of episodes and the offline data module: reading, held-out episodes, evaluation, resume checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict, TensorDictBase

from hwm.checkpoints.io import CheckpointError
from hwm.data.episodes import DatasetError, heldout_indices, read_dataset, write_episodes
from hwm.data.offline import OfflineDataModule
from hwm.training.stream import KL, OBS_ERROR, REWARD_ERROR


def _ids(batch: TensorDictBase) -> set[int]:
    return {int(v) for v in batch.get("observation")[..., 0].unique()}


class ZeroScorer:
    """Predicts reward 0 and a perfect observation everywhere; KL 1 per step."""

    def heldout_errors(self, batch: TensorDictBase) -> dict[str, torch.Tensor]:
        reward = batch.get("reward").squeeze(-1)
        return {
            REWARD_ERROR: reward.square(),
            OBS_ERROR: torch.zeros_like(reward),
            KL: torch.ones_like(reward),
        }


def test_read_dataset_of_episode_files(episode_dataset: Path) -> None:
    data = read_dataset(episode_dataset)
    assert len(data.episodes) == 10 and data.files == 10 and data.dropped == 0
    assert data.steps == 10 * 21
    assert data.env_info.obs_shape == (5,) and data.env_info.action_dim == 1 and not data.env_info.discrete
    returns = data.returns()
    assert returns == sorted(returns)  # the synthetic rewards grow with the episode
    assert read_dataset(episode_dataset).fingerprint == data.fingerprint


def test_partial_episodes_are_left_out(tmp_path: Path, make_episode_dataset) -> None:
    whole = read_dataset(make_episode_dataset(tmp_path / "whole", episodes=4)).episodes
    # One stream (a run's replay): the tail of an episode whose start the capacity dropped, three whole
    # ones, and an episode still running when the run stopped; cut into chunks across episode boundaries.
    stream = torch.cat([whole[0][5:], whole[1], whole[2], whole[3], whole[0][:7]])
    folder = tmp_path / "stream"
    folder.mkdir()
    for start in range(0, len(stream), 25):
        end = min(start + 25, len(stream))
        rows = {k: v for k, v in stream[start:end].items()}
        torch.save(rows, folder / f"replay-{1000 + start:012d}-{1000 + end:012d}.pt")
    data = read_dataset(folder)
    assert [int(e.get("observation")[0, 0]) for e in data.episodes] == [1, 2, 3]
    assert data.dropped == 2


def test_a_run_folder_reads_the_chunks_its_newest_checkpoint_lists(
    tmp_path: Path, make_episode_dataset
) -> None:
    episodes = read_dataset(make_episode_dataset(tmp_path / "src", episodes=3)).episodes
    run = tmp_path / "run"
    (run / "replay").mkdir(parents=True)
    listed = write_episodes(run / "replay", episodes[:2])
    write_episodes(run / "replay", episodes[2:], start=100)  # a stale chunk no checkpoint lists
    sidecar = {"file": "update-000000010.ckpt", "replay_files": [str(p.relative_to(run)) for p in listed]}
    (run / "update-000000010.json").write_text(json.dumps(sidecar))
    (run / "update-000000010.ckpt").write_bytes(b"")
    os.symlink("update-000000010.ckpt", run / "last.ckpt")
    assert len(read_dataset(run).episodes) == 2


def test_bad_datasets_are_one_line_errors(tmp_path: Path, make_episode_dataset) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        read_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no episode files"):
        read_dataset(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    torch.save({"observation": torch.zeros(3, 2), "reward": torch.zeros(3, 1)}, tmp_path / "bad" / "x.pt")
    with pytest.raises(DatasetError, match="lacks action, is_first, is_last"):
        read_dataset(tmp_path / "bad")
    data = make_episode_dataset(tmp_path / "ok", episodes=3)
    with pytest.raises(DatasetError, match="between 1 and"):
        heldout_indices(read_dataset(data).returns(), 3)


def test_heldout_episodes_span_the_returns() -> None:
    returns = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 4.0, 6.0, 0.0]
    picked = heldout_indices(returns, 3)
    assert sorted(returns[i] for i in picked) == [0.0, 4.0, 9.0]  # lowest, middle (rank 4.5 of 0..9), highest


def test_heldout_episodes_are_never_trained_on(episode_dataset: Path) -> None:
    data = OfflineDataModule(dataset=str(episode_dataset), heldout_episodes=3, batch_size=8, seq_len=6)
    heldout = set(data.heldout)
    assert len(heldout) == 3 and {0, 9} <= heldout  # the worst and the best episode are among them
    seen: set[int] = set()
    torch.manual_seed(0)
    for _ in range(200):
        seen |= _ids(data.replay.sample())
    assert seen == set(range(10)) - heldout  # every training episode is replayed, no held-out one
    windows = torch.stack(data.heldout_windows)
    assert _ids(windows) == heldout
    assert windows.get("is_first")[:, 0].all()
    assert len(data.heldout_windows) == 3 * (21 // 6)  # whole windows of each held-out episode


def test_stream_evaluates_at_the_start_every_n_updates_and_at_the_end(episode_dataset: Path) -> None:
    data = OfflineDataModule(
        dataset=str(episode_dataset),
        heldout_episodes=2,
        total_updates=7,
        eval_every=3,
        batch_size=4,
        seq_len=5,
    )
    data.attach_scorer(ZeroScorer())
    evaluated = []
    for batch in data.batches():
        assert batch.batch_size == torch.Size([4, 5])
        if data.pop_metrics():
            evaluated.append(int(data.counters["updates"]) - 1)  # measured before the update just handed out
    if data.pop_metrics():
        evaluated.append(int(data.counters["updates"]))
    assert evaluated == [0, 3, 6, 7] and data.stream_finished


def test_evaluation_metrics(episode_dataset: Path) -> None:
    data = OfflineDataModule(dataset=str(episode_dataset), heldout_episodes=2, seq_len=7)
    data.attach_scorer(ZeroScorer())
    metrics = data.evaluate()
    rewards = torch.cat([w.get("reward").reshape(-1) for w in data.heldout_windows])
    top = rewards >= torch.quantile(rewards, 0.9)
    assert metrics["heldout/reward_mse"] == pytest.approx(float(rewards.square().mean()), rel=1e-5)
    assert metrics["heldout/reward_mse_top10"] == pytest.approx(float(rewards[top].square().mean()), rel=1e-5)
    assert 0 < top.float().mean() <= 0.15
    assert metrics["heldout/obs_mse"] == 0.0 and metrics["heldout/kl"] == 1.0
    assert metrics["dataset/heldout_episodes"] == 2 and metrics["dataset/train_episodes"] == 8


def test_a_checkpoint_of_another_dataset_is_refused(tmp_path: Path, make_episode_dataset) -> None:
    first = OfflineDataModule(
        dataset=str(make_episode_dataset(tmp_path / "a")), heldout_episodes=2, seq_len=5
    )
    state = first.state_dict()
    other = OfflineDataModule(
        dataset=str(make_episode_dataset(tmp_path / "b", episodes=9)), heldout_episodes=2, seq_len=5
    )
    with pytest.raises(CheckpointError, match="another dataset"):
        other.load_state_dict(state)
    fewer = OfflineDataModule(dataset=str(tmp_path / "a"), heldout_episodes=3, seq_len=5)
    with pytest.raises(CheckpointError, match="held-out"):
        fewer.load_state_dict(state)
    again = OfflineDataModule(dataset=str(tmp_path / "a"), heldout_episodes=2, seq_len=5)
    again.load_state_dict(state)
    assert again.counters["resumes"] == 1


def test_pixel_episodes(tmp_path: Path, make_episode_dataset) -> None:
    data = read_dataset(make_episode_dataset(tmp_path / "px", episodes=3, steps=8, pixels=True))
    assert data.env_info.obs_shape == (3, 64, 64) and data.env_info.obs_key == "pixels"
    assert isinstance(data.episodes[0], TensorDict) and data.episodes[0].get("pixels").dtype == torch.uint8
