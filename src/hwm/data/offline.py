"""The data side of training a world model alone on a saved dataset: no env, no collection.

Whole episodes are held out; the others fill a replay that hands out one batch of windows per update, as the
online replay does. Every ``eval_every`` updates (and before the first and after the last) the world model is
scored on every held-out step: the reward head's squared error (overall and on the top decile of rewards),
the observation error per pixel, and the KL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from tensordict import TensorDict, TensorDictBase
from torch.utils.data import DataLoader

from hwm.checkpoints.io import CheckpointError
from hwm.data.episodes import Dataset, heldout_indices, read_dataset
from hwm.data.loader import stream_loader, to_device
from hwm.data.replay import SequenceReplay
from hwm.envs.common import EnvInfo
from hwm.models.world_model import IS_FIRST, REWARD_KEY
from hwm.training.rng import rng_states, set_rng_states
from hwm.training.stream import KL, OBS_ERROR, REWARD_ERROR, HeldOutScorer, unwired
from hwm.training.timing import Stopwatch

if TYPE_CHECKING:
    from hwm.training.media import EvalEpisode

TOP_QUANTILE = 0.9  # the top decile of held-out rewards


class OfflineDataModule(L.LightningDataModule):
    """A fixed dataset of episodes (:mod:`hwm.data.episodes`), some held out; the stream hands out one
    replayed batch per update until ``total_updates``. A :class:`~hwm.training.stream.CheckpointedStream`
    whose clean points are every update (it holds nothing between batches).

    Args:
        dataset: a run folder (``checkpoints/<run id>``: the replay its newest checkpoint lists) or any folder
            of episode files in the replay's chunk format.
        heldout_episodes: episodes held out for evaluation and never trained on, picked evenly over the
            ranking by return (the lowest, ..., the highest), so they span the dataset's range of quality.
        total_updates: updates of the run (one batch each).
        eval_every: updates between held-out evaluations (there is one before the first update and one after
            the last as well); 0: only those two.
        batch_size, seq_len: replayed batch shape (training and evaluation).
        cross_episodes: training windows may span episode boundaries (DreamerV3's replay); else each lies
            inside one episode (DreamerV2's). Held-out windows always lie inside one episode.
        seed: seeds the posterior samples of the held-out evaluation (the training draws follow the run's
            ``seed_everything``).
    """

    def __init__(
        self,
        *,
        dataset: str,
        heldout_episodes: int = 10,
        total_updates: int = 1000,
        eval_every: int = 100,
        batch_size: int = 16,
        seq_len: int = 50,
        cross_episodes: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in {
            "total_updates": total_updates,
            "batch_size": batch_size,
            "seq_len": seq_len,
        }.items():
            if value < 1:
                raise ValueError(f"data.{name} must be >= 1; got {value}")
        if eval_every < 0:
            raise ValueError(f"data.eval_every must be >= 0; got {eval_every}")
        self.dataset_path = Path(dataset)
        data: Dataset = read_dataset(self.dataset_path)
        self.env_info: EnvInfo = data.env_info
        self.total_updates, self.eval_every, self.seed = total_updates, eval_every, seed
        self.batch_size, self.seq_len = batch_size, seq_len
        self.heldout = heldout_indices(data.returns(), heldout_episodes)
        train = [e for i, e in enumerate(data.episodes) if i not in set(self.heldout)]
        self.fingerprint = data.fingerprint
        self.facts = {
            "dataset/episodes": len(data.episodes),
            "dataset/train_episodes": len(train),
            "dataset/heldout_episodes": len(self.heldout),
            "dataset/train_steps": sum(len(e) for e in train),
            "dataset/dropped_partial_episodes": data.dropped,
        }
        if max(len(e) for e in train) < seq_len and not cross_episodes:
            raise ValueError(f"data.seq_len {seq_len} is longer than every training episode")
        self.replay = SequenceReplay(
            capacity=max(sum(len(e) for e in train), seq_len),
            batch_size=batch_size,
            seq_len=seq_len,
            cross_episodes=cross_episodes,
            ongoing=cross_episodes,
        )
        for episode in train:
            self.replay.add(episode)
        self.heldout_windows = _windows([data.episodes[i] for i in self.heldout], seq_len)
        if not self.heldout_windows:
            raise ValueError(f"data.seq_len {seq_len} is longer than every held-out episode")
        rewards = torch.cat([w.get(REWARD_KEY).reshape(-1) for w in self.heldout_windows])
        self.top_reward = float(torch.quantile(rewards.float(), TOP_QUANTILE))
        self.counters: dict[str, float] = dict.fromkeys(
            ("env_frames", "updates", "evaluations", "resumes"), 0
        )
        self.last_evaluation = -1  # updates at the last held-out evaluation
        self.last_metrics: dict[str, float] = {}
        self.stream_finished = False
        self.timer = Stopwatch()
        self._pending: dict[str, float] = {}
        self._scorer: HeldOutScorer = unwired("OfflineDataModule", "the learner (its held-out scorer)")
        self._resume_rng: dict[str, Any] | None = None

    # -- wiring -------------------------------------------------------------------------------------------
    def attach_scorer(self, scorer: HeldOutScorer) -> None:
        """The world model the held-out episodes are scored with."""
        self._scorer = scorer

    def use_replay_dir(self, path: Path) -> None:
        """Nothing to write: the dataset stays where it is (a resume reads it from there again)."""

    @property
    def replay_files(self) -> list[str]:
        return []

    @property
    def total_frames(self) -> int:
        """No env frames: the budget is ``total_updates``."""
        return 0

    @property
    def at_collect_boundary(self) -> bool:
        """Every update is a clean point: the stream holds nothing between two batches."""
        return True

    def setup(self, stage: str) -> None:
        if self.trainer is not None and self.trainer.world_size > 1:
            raise ValueError("training from a dataset runs in one process (trainer.devices 1)")

    def train_dataloader(self) -> DataLoader:
        return stream_loader(self.batches, pin_memory=self._trainer().strategy.root_device.type == "cuda")

    def _trainer(self) -> L.Trainer:
        if self.trainer is None:
            raise RuntimeError("OfflineDataModule's Lightning hooks run under a trainer")
        return self.trainer

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if isinstance(batch, TensorDictBase):
            return to_device(batch, device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    # -- the stream -----------------------------------------------------------------------------------------
    def batches(self) -> Iterator[TensorDictBase]:
        self.stream_finished = False
        if self._resume_rng is not None:
            set_rng_states(self._resume_rng)  # as late as possible: nothing draws between here and the sample
            self._resume_rng = None
        while True:
            updates = int(self.counters["updates"])
            if self._evaluation_due(updates):
                self.evaluate()
            if updates >= self.total_updates:
                break
            with self.timer("replay"):
                batch = self.replay.sample()
            # Counted as it is handed out: the learner trains on it before it asks for the next one.
            self.counters["updates"] += 1
            yield batch
        self.stream_finished = True

    def _evaluation_due(self, updates: int) -> bool:
        if updates == self.last_evaluation:
            return False
        return updates in (0, self.total_updates) or (self.eval_every > 0 and updates % self.eval_every == 0)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Scores the world model on every held-out window; queues the metrics for the learner to log."""
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        sums = {"reward": 0.0, "top": 0.0, "obs": 0.0, "kl": 0.0}
        steps = top_steps = 0
        with self.timer("evaluate"), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)  # the same posterior samples at every evaluation
            for start in range(0, len(self.heldout_windows), self.batch_size):
                batch: TensorDictBase = torch.stack(self.heldout_windows[start : start + self.batch_size])
                errors = self._scorer.heldout_errors(to_device(batch, device))
                reward = batch.get(REWARD_KEY).reshape(errors[REWARD_ERROR].shape).to(device)
                top = reward >= self.top_reward
                sums["reward"] += float(errors[REWARD_ERROR].sum())
                sums["top"] += float(errors[REWARD_ERROR][top].sum())
                sums["obs"] += float(errors[OBS_ERROR].sum())
                sums["kl"] += float(errors[KL].sum())
                steps += reward.numel()
                top_steps += int(top.sum())
        metrics = {
            "heldout/reward_mse": sums["reward"] / steps,
            "heldout/reward_mse_top10": sums["top"] / max(top_steps, 1),
            "heldout/obs_mse": sums["obs"] / steps,
            "heldout/kl": sums["kl"] / steps,
        }
        if self.counters["evaluations"] == 0:
            metrics.update(
                {**self.facts, "dataset/heldout_steps": steps, "dataset/top_reward": self.top_reward}
            )
        self.counters["evaluations"] += 1
        self.last_evaluation = int(self.counters["updates"])
        self.last_metrics = metrics
        self._pending.update(metrics)
        return metrics

    def pop_metrics(self) -> dict[str, float]:
        """Held-out metrics since the last call (the learner logs them: only it logs)."""
        out, self._pending = self._pending, {}
        return out

    def pop_media(self) -> list[EvalEpisode]:
        return []

    # -- checkpointing ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "counters": dict(self.counters),
            "last_evaluation": self.last_evaluation,
            "dataset": {"fingerprint": self.fingerprint, "heldout": list(self.heldout)},
            "rng": rng_states(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("dataset", {})
        if saved.get("fingerprint") != self.fingerprint or saved.get("heldout") != list(self.heldout):
            raise CheckpointError(
                f"the checkpoint was trained on another dataset (or other held-out episodes) than "
                f"{str(self.dataset_path)!r}: resume it with the dataset it was started on"
            )
        self.counters.update(state["counters"])
        self.counters["resumes"] += 1
        self.last_evaluation = int(state["last_evaluation"])
        self._resume_rng = state["rng"]


def _windows(episodes: list[TensorDict], seq_len: int) -> list[TensorDict]:
    """Every episode cut into consecutive windows of ``seq_len`` steps (a shorter tail is left out), each
    starting as a replayed window does (``is_first`` at its first step)."""
    out = []
    for episode in episodes:
        for start in range(0, len(episode) - seq_len + 1, seq_len):
            window = episode[start : start + seq_len].clone()
            first = window.get(IS_FIRST).clone()
            first[0] = True
            window.set(IS_FIRST, first)
            out.append(window)
    return out
