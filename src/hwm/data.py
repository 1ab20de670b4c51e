"""Lightning data module: a TorchRL collector feeds a sequence replay buffer at a fixed train ratio."""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from tensordict import TensorDictBase
from torch.utils.data import DataLoader, IterableDataset
from torchrl.collectors import Collector
from torchrl.envs import EnvBase, RewardSum
from torchrl.envs.utils import ExplorationType, set_exploration_type

from hwm.checkpoint_io import CheckpointError
from hwm.envs import OBS_KEY, PIXELS_KEY
from hwm.policy import DreamerPolicy
from hwm.replay import add_rows, make_replay_buffer, sample_sequences, transitions_to_rows
from hwm.replay_archive import ReplayArchive
from hwm.suites import make_suite_env
from hwm.timing import Stopwatch

SUCCESS_KEY = "success"  # envs with a success signal (Meta-world) report it per step, 1.0 once reached


@dataclass(frozen=True)
class EnvInfo:
    """What the agent needs to know about the env to build its networks."""

    obs_shape: tuple[int, ...]
    action_dim: int
    discrete: bool


class ReplayDataModule(L.LightningDataModule):
    """Collects with the agent's policy and replays fixed-length sequences.

    Budgets are in env frames (agent steps x action repeat), as papers report them. ``train_ratio`` is
    replayed steps per agent step (DreamerV3's definition): each collected agent step earns
    ``train_ratio / (batch_size * seq_len)`` updates. The stream ends when ``total_frames`` are collected,
    which ends the Lightning epoch and the run. The replay keeps every step of every episode, reset
    observations included, and samples windows of them as the two bases' replays do (``hwm.replay``).

    Args:
        suite: ``dmc``, ``distracted_dmc``, ``metaworld`` or ``atari``.
        task: the suite's task: DMC ``domain-task`` (``cartpole-balance``), a Meta-world task
            (``lever-pull``), an Atari game (``pong``).
        from_pixels: 64x64 RGB observations instead of state vectors.
        action_repeat: env frames per agent step.
        time_limit: episode length in env frames.
        total_frames: env-frame budget of the run.
        prefill_frames: random-action frames collected before the first update.
        pretrain: extra updates right after the prefill (DreamerV2: 100), beyond the train ratio's.
        train_ratio: replayed steps per agent step.
        batch_size, seq_len: replay batch shape.
        capacity: replay capacity in stored steps (agent steps plus one reset observation per episode).
        cross_episodes: replayed windows may cross episode boundaries (DreamerV3's replay); else each lies
            inside one episode (DreamerV2's).
        ongoing: windows of the episode still being collected may be replayed (DreamerV3); DreamerV2
            replays finished episodes only.
        ends_priority: the window that ends an episode weighs ``1 + ends_priority`` times the others
            (DreamerV2's ``prioritize_ends``: 50 on Meta-world; 0 is uniform).
        eval_every: env frames between evaluation runs (0: only at the end).
        eval_episodes: episodes per evaluation (the agent's evaluation policy: see ``model.eval_sample``).
        fast_render: MuJoCo offscreen quality knobs that keep the picture but render 3-4x faster.
        video_every: env frames between evaluations whose first episode is recorded (pixels only; the
            agent logs it and an open-loop imagination video as GIF artifacts); 0: no videos.
        seed: seeds the training env; each evaluation env uses ``seed + 1000 + episodes so far``.
        env_options: the suite's own options, e.g. ``{sticky: 0.0, noops: 30}`` (Atari), ``{distractor:
            shapes, strength: 1.0}`` (distracted DMC), ``{shadows: false}`` (MuJoCo suites).
    """

    def __init__(
        self,
        *,
        suite: str = "dmc",
        task: str = "cartpole-balance",
        from_pixels: bool = False,
        image_size: int = 64,
        action_repeat: int = 2,
        time_limit: int = 1000,
        total_frames: int = 100_000,
        prefill_frames: int = 5_000,
        pretrain: int = 0,
        train_ratio: float = 160.0,
        batch_size: int = 16,
        seq_len: int = 50,
        capacity: int = 1_000_000,
        cross_episodes: bool = False,
        ongoing: bool = False,
        ends_priority: float = 0.0,
        eval_every: int = 10_000,
        eval_episodes: int = 5,
        fast_render: bool = True,
        video_every: int = 0,
        seed: int = 0,
        env_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("total_frames", total_frames), ("batch_size", batch_size), ("seq_len", seq_len)):
            if value < 1:
                raise ValueError(f"data.{name} must be >= 1; got {value}")
        if train_ratio <= 0:
            raise ValueError(f"data.train_ratio must be > 0; got {train_ratio}")
        if not cross_episodes and time_limit // action_repeat + 1 < seq_len:
            raise ValueError(
                f"data.seq_len ({seq_len}) is longer than an episode ({time_limit} frames / action_repeat "
                f"{action_repeat} = {time_limit // action_repeat} steps, plus the reset observation): no "
                "sequence could ever be sampled (data.cross_episodes: true lets windows span episodes)"
            )
        if from_pixels and image_size != 64:
            raise ValueError(
                f"data.image_size must be 64 for pixels (the DreamerV2 CNN's input); got {image_size}"
            )
        if min(prefill_frames, pretrain, eval_every, eval_episodes, video_every) < 0:
            raise ValueError(
                "data.prefill_frames, data.pretrain, data.eval_every, data.eval_episodes and data.video_every "
                "must be >= 0"
            )
        self.env_kwargs: dict[str, Any] = dict(
            suite=suite,
            options=dict(env_options or {}),
            task=task,
            from_pixels=from_pixels,
            image_size=image_size,
            action_repeat=action_repeat,
            time_limit=time_limit,
            fast_render=fast_render,
        )
        self.action_repeat = action_repeat
        self.obs_key = PIXELS_KEY if from_pixels else OBS_KEY
        self.total_frames, self.prefill_frames, self.pretrain = total_frames, prefill_frames, pretrain
        self.train_ratio, self.batch_size, self.seq_len = train_ratio, batch_size, seq_len
        self.eval_every, self.eval_episodes = eval_every, eval_episodes
        self.seed = seed
        # Probing the env here (not in setup) validates the task early and lets the CLI hand its shapes to
        # the agent's constructor.
        probe = make_suite_env(**self.env_kwargs, seed=seed)
        try:
            obs_shape = tuple(probe.observation_spec[self.obs_key].shape)
            self.has_success = SUCCESS_KEY in probe.observation_spec.keys()
            # (random, human) scores for a human-normalised score (Atari), else None.
            self.score_range: tuple[float, float] | None = getattr(probe, "score_range", None)
            action_spec = probe.action_spec
            discrete = (
                action_spec.dtype in (torch.int64, torch.bool) or "OneHot" in type(action_spec).__name__
            )
            self.env_info = EnvInfo(obs_shape, int(action_spec.shape[-1]), discrete)
        finally:
            probe.close()
        # dropped_steps: agent steps of episodes cut short by a resume (their steps stay in the replay).
        self.counters: dict[str, float] = {
            "env_frames": 0,
            "agent_steps": 0,
            "episodes": 0,
            "credit": 0.0,
            "evaluations": 0,
            "resumes": 0,
            "dropped_steps": 0,
        }
        self._pending: dict[str, float] = {}
        self._train_successes: deque[float] = deque(maxlen=10)
        self.collector: Collector | None = None
        self.buffer = make_replay_buffer(
            capacity=capacity,
            batch_size=batch_size,
            seq_len=seq_len,
            cross_episodes=cross_episodes,
            ongoing=ongoing,
            ends_priority=ends_priority,
        )
        self.archive = ReplayArchive(self.buffer, capacity)
        # Where checkpoints keep the replay chunks; set by the checkpoint callback (save) or the CLI (resume).
        self.replay_dir: Path | None = None
        self._episode_steps = 0
        self._resume_rng: dict[str, Any] | None = None
        self._next_eval = eval_every if eval_every else math.inf
        # Videos are of pixels; state-vector runs record none.
        self.video_every = video_every if from_pixels else 0
        self._next_video = float(self.video_every) if self.video_every else math.inf
        self._media: list[dict[str, Any]] = []
        self._last_eval_frames = -1.0
        self._policy: DreamerPolicy | None = None
        self._eval_env: EnvBase | None = None
        # Under DDP each process owns an env, a collector and a replay shard; counters and budgets are global.
        self.rank, self.world_size = 0, 1
        self.stream_finished = False
        self.replay_files: list[str] = []
        self.timer = Stopwatch()

    # -- wiring -------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        agent = self.trainer.lightning_module if self.trainer is not None else None
        if agent is not None and self._policy is None:
            self.rank, self.world_size = self.trainer.global_rank, self.trainer.world_size
            if self.world_size > 1:
                # Identical weights come from DDP's broadcast; exploration and replay sampling must differ.
                L.seed_everything(self.seed + self.rank, verbose=False)
                self.archive.prefix = f"{self.archive.prefix}/rank{self.rank}"
            self.attach_policy(agent.policy())

    def attach_policy(self, policy: DreamerPolicy) -> None:
        """Builds the collector around the agent's recurrent policy (its latent rides in the tensordict)."""
        self._policy = policy
        env = self._make_env(self.seed + 10_007 * self.rank)
        self.collector = Collector(
            env,
            policy,
            frames_per_batch=self.steps_per_collect,
            total_frames=-1,
            # Each process collects its share of the (global) prefill.
            init_random_frames=math.ceil(self.prefill_frames // self.action_repeat / self.world_size),
            exploration_type=ExplorationType.RANDOM,
        )

    def _make_env(self, seed: int) -> EnvBase:
        env = make_suite_env(**self.env_kwargs, seed=seed)
        env.append_transform(self._policy.make_primer())
        env.append_transform(RewardSum())
        return env

    @property
    def replayed_steps(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def steps_per_collect(self) -> int:
        """Agent steps per collector batch: one update's worth when updates are rarer than steps."""
        return max(1, round(self.replayed_steps / self.train_ratio))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_ReplayStream(self), batch_size=None, num_workers=0, collate_fn=_identity)

    # -- the stream -----------------------------------------------------------------------------------------
    @property
    def can_replay(self) -> bool:
        """Whether a whole window can be replayed (not yet at the start, nor before a first episode ends
        when only finished episodes are replayed)."""
        return self.buffer.sampler.windows > 0

    @property
    def at_collect_boundary(self) -> bool:
        """True when the stream's next move is to collect: the clean point for a checkpoint."""
        return self.counters["credit"] < 1.0 or not self.can_replay

    def batches(self) -> Iterator[TensorDictBase]:
        assert self.collector is not None, "attach_policy() must run before batches()"
        self.stream_finished = False
        if self._resume_rng is not None:
            # Restored as late as possible: anything between loading and here may draw random numbers.
            _set_rng_states(self._resume_rng)
            self._resume_rng = None
        # One update replays world_size batches (one per process) for world_size agent steps collected.
        per_step = self.train_ratio / (self.replayed_steps * self.world_size)
        prefill_steps = self.prefill_frames // self.action_repeat
        if self.counters["agent_steps"] < prefill_steps:
            # The progress bar only appears with the first batch, i.e. after the prefill.
            rank_zero_info(
                f"hwm: prefilling the replay buffer with {self.prefill_frames} random-action env frames"
            )
        # A resumed stream starts where a checkpoint left it: after its updates, before these checks.
        if self._evaluate_if_due():
            self._final_evaluation()
            return
        collected = iter(self.collector)
        while True:
            with self.timer("collect"):
                data = next(collected, None)
                if data is None:
                    break
                self._ingest(data)
            # Only steps past the prefill earn updates, also when one collect straddles its end.
            steps = data.numel() * self.world_size
            fresh = min(steps, self.counters["agent_steps"] - prefill_steps)
            if fresh > 0:
                self.counters["credit"] += fresh * per_step
            if self.counters["agent_steps"] - steps < max(prefill_steps, 1) <= self.counters["agent_steps"]:
                # The prefill just ended: DreamerV2 pretrains on it before acting with its own policy.
                self.counters["credit"] += self.pretrain
            while self.counters["credit"] >= 1.0 and self.can_replay:
                self.counters["credit"] -= 1.0
                with self.timer("replay"):
                    batch = sample_sequences(self.buffer, self.batch_size, self.seq_len)
                yield batch
            if self._evaluate_if_due():
                break
        self._final_evaluation()
        self.stream_finished = True

    def _evaluate_if_due(self) -> bool:
        """Runs a periodic evaluation when one is due; True once the frame budget is spent."""
        if self.counters["env_frames"] >= self._next_eval:
            self._next_eval += self.eval_every
            self.evaluate()
        return self.counters["env_frames"] >= self.total_frames

    def _final_evaluation(self) -> None:
        if self.eval_episodes and self._last_eval_frames != self.counters["env_frames"]:
            self.evaluate()

    def _ingest(self, data: TensorDictBase) -> None:
        data = data.reshape(-1)
        add_rows(self.buffer, transitions_to_rows(data, self.obs_key))
        steps = data.numel()
        # Global counts: every process collects the same number of steps per collect.
        self.counters["agent_steps"] += steps * self.world_size
        self.counters["env_frames"] += steps * self.action_repeat * self.world_size
        done = data.get(("next", "done")).reshape(-1)
        ends = done.nonzero()
        self._episode_steps = steps - 1 - int(ends[-1]) if len(ends) else self._episode_steps + steps
        if done.any():
            returns = data.get(("next", "episode_reward")).reshape(-1)[done]
            self.counters["episodes"] += int(done.sum())
            self._pending["train/episode_return"] = float(returns[-1])
            self._pending["train/episodes"] = self.counters["episodes"]
            if self.score_range is not None:
                self._pending["train/human_normalized_score"] = self._normalize(float(returns[-1]))
            if self.has_success:
                self._train_successes.extend(data.get(("next", SUCCESS_KEY)).reshape(-1)[done].tolist())
                # Over the last (up to) 10 training episodes: one episode alone only says 0 or 1.
                self._pending["train/success_rate"] = sum(self._train_successes) / len(self._train_successes)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Runs ``eval_episodes`` episodes with the actor's mode; queues eval/return for the agent to log."""
        if not self.eval_episodes:
            return float("nan")
        if self.rank != 0:  # one process evaluates (and logs); the others move on to the next update
            self._last_eval_frames = self.counters["env_frames"]
            self.counters["evaluations"] += 1
            return float("nan")
        with self.timer("evaluate"):
            return self._evaluate()

    def _evaluate(self) -> float:
        start = time.perf_counter()
        seed = self.seed + 1000 + int(self.counters["episodes"])
        # One evaluation env for the run (a pixel env owns a GL context), re-seeded for each evaluation.
        if self._eval_env is None:
            self._eval_env = self._make_env(seed)
        else:
            self._eval_env.set_seed(seed)
        max_steps = self.env_kwargs["time_limit"] // self.action_repeat
        returns, successes = [], []
        record = self.counters["env_frames"] >= self._next_video
        with set_exploration_type(self._policy.eval_exploration):
            for i in range(self.eval_episodes):
                rollout = self._eval_env.rollout(max_steps, self._policy, break_when_any_done=True)
                returns.append(float(rollout.get(("next", "reward")).sum()))
                if self.has_success:
                    successes.append(float(rollout.get(("next", SUCCESS_KEY))[-1].max()))
                if record and i == 0:
                    self._record(rollout)
        self._last_eval_frames = self.counters["env_frames"]
        self.counters["evaluations"] += 1
        mean = sum(returns) / len(returns)
        self._pending["eval/return"] = mean
        self._pending["eval/return_std"] = float(torch.tensor(returns).std()) if len(returns) > 1 else 0.0
        if successes:
            self._pending["eval/success_rate"] = sum(successes) / len(successes)
        if self.score_range is not None:
            self._pending["eval/human_normalized_score"] = self._normalize(mean)
        self._pending["time/eval_s"] = time.perf_counter() - start
        return mean

    def _normalize(self, score: float) -> float:
        assert self.score_range is not None
        random, human = self.score_range
        return (score - random) / (human - random)

    def _record(self, rollout: TensorDictBase) -> None:
        """Keeps an evaluation episode (frames o_0..o_T, actions a_0..a_{T-1}) for the agent to log."""
        while self._next_video <= self.counters["env_frames"]:
            self._next_video += self.video_every
        first = rollout.get(self.obs_key)[:1]
        frames = torch.cat([first, rollout.get(("next", self.obs_key))]).to(torch.uint8).cpu()
        action = rollout.get("action").float().cpu()
        self._media.append({"frames": frames, "action": action, "env_frames": self.counters["env_frames"]})

    def pop_media(self) -> list[dict[str, Any]]:
        """Recorded evaluation episodes since the last call (the agent renders and logs them)."""
        out, self._media = self._media, []
        return out

    def pop_metrics(self) -> dict[str, float]:
        """Metrics gathered since the last call (the agent logs them: only it logs)."""
        out, self._pending = self._pending, {}
        return out

    # -- checkpointing ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Counters, evaluation schedule, replay (as chunk files under ``replay_dir``), collector and RNGs.

        Under DDP every process writes its replay shard and contributes its state: the result (saved by
        rank 0) is rank 0's state plus ``ranks``, every process's state.
        """
        own = self._own_state()
        if self.world_size == 1:
            self.replay_files = [c["file"] for c in self.archive.chunks]
            return own
        states: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(states, own)
        self.replay_files = [c["file"] for st in states if st["replay"] for c in st["replay"]["chunks"]]
        return {**states[0], "ranks": states}

    def _own_state(self) -> dict[str, Any]:
        assert self.collector is not None, "state_dict() is taken during training"
        collector = self.collector.state_dict()
        rng_owner = _episode_rng_owner(self.collector.env)
        return {
            "counters": dict(self.counters),
            "eval_every": self.eval_every,
            "next_eval": self._next_eval,
            "next_video": self._next_video,
            "last_eval_frames": self._last_eval_frames,
            "in_flight_steps": self._episode_steps,
            "collector": {k: collector[k] for k in ("frames", "iter", "traj_pool")},
            "episode_rng": None if rng_owner is None else rng_owner.episode_rng_state(),
            "train_successes": list(self._train_successes),
            "rng": _get_rng_states(),
            "replay": None
            if self.replay_dir is None
            else {
                "write_count": int(self.buffer.write_count),
                "capacity": self.archive.capacity,
                "chunks": self.archive.save(self.replay_dir),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a checkpoint's stream; the episode in flight then restarts from its own start state."""
        assert self.collector is not None, "setup() builds the collector before a checkpoint is loaded"
        ranks = len(state.get("ranks", [state]))
        if ranks != self.world_size:
            raise CheckpointError(
                f"the checkpoint was written by {ranks} processes; this run has {self.world_size}"
            )
        if "ranks" in state:
            state = state["ranks"][self.rank]
        if state.get("replay") is None:
            raise CheckpointError(
                "the checkpoint holds no replay buffer (not written by hwm's checkpointing)"
            )
        if self.replay_dir is None:
            raise RuntimeError("replay_dir (the checkpoint's folder) must be set before loading")
        self.archive.restore(self.replay_dir, state["replay"]["chunks"], state["replay"]["write_count"])
        self.counters.update(state["counters"])
        self._last_eval_frames = state["last_eval_frames"]
        if self.video_every and "next_video" in state:
            self._next_video = state["next_video"]
        if state["eval_every"] == self.eval_every:
            self._next_eval = state["next_eval"]
        else:  # a new evaluation interval given on resume counts from the start of the run
            frames = self.counters["env_frames"]
            self._next_eval = (
                (frames // self.eval_every + 1) * self.eval_every if self.eval_every else math.inf
            )
        # The env's physics can't be restored in general; replaying the episode's reset (same RNG state)
        # makes a checkpoint taken at an episode boundary continue exactly as the run would have (DMC and
        # Atari and Meta-world; the distractor videos start a new episode with their own RNG).
        self.collector.load_state_dict(state["collector"], strict=False)
        rng_owner = _episode_rng_owner(self.collector.env)
        if rng_owner is not None and state["episode_rng"] is not None:
            rng_owner.set_episode_rng_state(state["episode_rng"])
        self.collector.reset()
        self._train_successes.clear()
        self._train_successes.extend(state.get("train_successes", []))
        self._episode_steps = 0
        self.counters["dropped_steps"] += state["in_flight_steps"]
        self.counters["resumes"] += 1
        self._resume_rng = state["rng"]

    def teardown(self, stage: str) -> None:
        if self.collector is not None:
            self.collector.shutdown()
            self.collector = None
            self._policy = None
        if self._eval_env is not None:
            self._eval_env.close()
            self._eval_env = None


def _episode_rng_owner(env: EnvBase) -> Any:
    """The wrapper that can snapshot and replay the current episode's reset randomness (None: no such)."""
    inner: Any = getattr(env, "base_env", env)
    while inner is not None and not hasattr(inner, "episode_rng_state"):
        inner = getattr(inner, "_env", None)
    return inner


def _get_rng_states() -> dict[str, Any]:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _identity(batch: TensorDictBase) -> TensorDictBase:
    # The default conversion would turn the TensorDict into a plain dict.
    return batch


class _ReplayStream(IterableDataset):
    def __init__(self, datamodule: ReplayDataModule) -> None:
        self.datamodule = datamodule

    def __iter__(self) -> Iterator[TensorDictBase]:
        return self.datamodule.batches()
