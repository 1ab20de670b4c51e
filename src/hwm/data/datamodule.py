"""Lightning data module: a TorchRL collector feeds a sequence replay buffer at a fixed train ratio."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from tensordict import TensorDictBase
from torch.utils.data import DataLoader

from hwm.checkpoints.io import CheckpointError
from hwm.data.collection import Collection, TrainRatio, prefill_share, transitions_to_rows
from hwm.data.evaluation import Evaluator
from hwm.data.loader import stream_loader, to_device
from hwm.data.replay import SequenceReplay
from hwm.data.settings import check_settings
from hwm.envs.common import EnvInfo
from hwm.envs.suites import EnvConfig
from hwm.models.policy import DreamerPolicy
from hwm.training.distributed import gather_objects
from hwm.training.media import EvalEpisode
from hwm.training.rng import rng_states, set_rng_states
from hwm.training.stream import PolicySource, unwired
from hwm.training.timing import Stopwatch


class ReplayDataModule(L.LightningDataModule):
    """Collects with the agent's policy and replays fixed-length sequences: the
    :class:`~hwm.training.stream.CheckpointedStream` the agent and the callbacks read.

    Budgets are in env frames (agent steps x action repeat), as papers report them. The stream ends when
    ``total_frames`` are collected, which ends the Lightning epoch and the run. The replay keeps every step
    of every episode, reset observations included (``hwm.data.replay``).

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
        train_ratio: replayed steps per agent step (DreamerV3's definition): each collected agent step earns
            ``train_ratio / (batch_size * seq_len)`` updates.
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
        seed: seeds the training envs (env ``i`` of process ``r``: ``seed + 10007 r + i``); evaluation
            episode ``j`` uses ``seed + 1000 + training episodes so far + j``. Unset (null), ``hwm fit``
            takes the run's ``seed_everything``: one seed drives the networks and the envs.
        num_envs: training envs per process, stepped together and acted for with one batched policy call;
            every env's frames count towards ``total_frames`` and the train ratio (docs/scale.md).
        parallel_envs: several envs run in worker processes (TorchRL ``ParallelEnv``); False steps them
            one after another in this process (``SerialEnv``).
        eval_envs: evaluation episodes run this many at a time, in worker processes when above 1.
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
        seed: int | None = None,
        num_envs: int = 1,
        parallel_envs: bool = True,
        eval_envs: int = 1,
        env_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_settings(
            total_frames=total_frames,
            batch_size=batch_size,
            seq_len=seq_len,
            num_envs=num_envs,
            eval_envs=eval_envs,
            train_ratio=train_ratio,
            cross_episodes=cross_episodes,
            time_limit=time_limit,
            action_repeat=action_repeat,
            from_pixels=from_pixels,
            image_size=image_size,
            non_negative={
                "prefill_frames": prefill_frames,
                "pretrain": pretrain,
                "eval_every": eval_every,
                "eval_episodes": eval_episodes,
                "video_every": video_every,
            },
        )
        common = (suite, task, from_pixels, image_size, action_repeat, time_limit, fast_render)
        self.env_config = EnvConfig(*common, dict(env_options or {}))
        self.action_repeat = action_repeat
        self.total_frames, self.prefill_frames, self.pretrain = total_frames, prefill_frames, pretrain
        self.train_ratio, self.batch_size, self.seq_len = train_ratio, batch_size, seq_len
        seed = 0 if seed is None else seed
        self.seed, self.num_envs, self.parallel_envs = seed, num_envs, parallel_envs
        # Probing the env here (not in setup) validates the task early and lets the CLI hand its facts to
        # the agent's constructor.
        self.env_info: EnvInfo = self.env_config.probe(seed)
        self.evaluator = Evaluator(
            self.env_config,
            self.env_info,
            episodes=eval_episodes,
            every=eval_every,
            video_every=video_every,
            seed=seed,
            envs=eval_envs,
            parallel=parallel_envs,
        )
        # dropped_steps: agent steps of episodes cut short by resuming a checkpoint written before env states
        # were saved (their steps stay in the replay); a resume now continues every episode.
        self.counters: dict[str, float] = dict.fromkeys(
            ("env_frames", "agent_steps", "episodes", "credit", "evaluations", "resumes", "dropped_steps"), 0
        )
        self._pending: dict[str, float] = {}
        self._media: list[EvalEpisode] = []
        self.collection: Collection | None = None
        self.replay = SequenceReplay(
            capacity=capacity,
            batch_size=batch_size,
            seq_len=seq_len,
            cross_episodes=cross_episodes,
            ongoing=ongoing,
            ends_priority=ends_priority,
            lanes=num_envs,
        )
        self._agent: PolicySource = unwired("ReplayDataModule", "the agent")
        self._resume_rng: dict[str, Any] | None = None
        # Under DDP each process owns an env, a collector and a replay shard; counters and budgets are global.
        self.rank, self.world_size = 0, 1
        self.stream_finished = False
        self.replay_files: list[str] = []
        self.timer = Stopwatch()

    # -- wiring -------------------------------------------------------------------------------------------
    def attach_agent(self, agent: PolicySource) -> None:
        """The agent whose policy collects and evaluates; its collector is built in ``setup``."""
        self._agent = agent

    def use_replay_dir(self, path: Path) -> None:
        """Where saved states write their replay chunks and restored ones read them (the run folder)."""
        self.replay.directory = Path(path)

    def setup(self, stage: str) -> None:
        trainer = self._trainer()
        self.rank, self.world_size = trainer.global_rank, trainer.world_size
        if self.world_size > 1:
            # Identical weights come from DDP's broadcast; exploration and replay sampling must differ.
            L.seed_everything(self.seed + self.rank, verbose=False)
            self.replay.shard(self.rank)
        self.attach_policy(self._agent.policy())

    def attach_policy(self, policy: DreamerPolicy) -> None:
        """Builds the collection around the agent's recurrent policy (its latent rides in the tensordict)."""
        self.collection = Collection(
            self.env_config,
            self.env_info,
            policy,
            seed=self.seed + 10_007 * self.rank,
            steps_per_collect=self.steps_per_collect,
            num_envs=self.num_envs,
            parallel=self.parallel_envs,
            prefill_steps=prefill_share(self.prefill_frames, self.action_repeat, self.world_size),
        )

    def _trainer(self) -> L.Trainer:
        if self.trainer is None:
            raise RuntimeError("ReplayDataModule's Lightning hooks run under a trainer")
        return self.trainer

    def _collecting(self) -> Collection:
        """The collection, built by ``setup`` (or ``attach_policy``) and closed by ``teardown``."""
        if self.collection is None:
            raise RuntimeError(
                "ReplayDataModule collects between setup() (or attach_policy()) and teardown()"
            )
        return self.collection

    @property
    def steps_per_collect(self) -> int:
        """Agent steps per collect (all envs of a process): one update's worth when updates are rarer than
        steps, rounded up to a step of every env."""
        steps = max(1, round(self.batch_size * self.seq_len / self.train_ratio))
        return math.ceil(steps / self.num_envs) * self.num_envs

    def train_dataloader(self) -> DataLoader:
        return stream_loader(self.batches, pin_memory=self._trainer().strategy.root_device.type == "cuda")

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if isinstance(batch, TensorDictBase):
            return to_device(batch, device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    # -- the stream -----------------------------------------------------------------------------------------
    @property
    def at_collect_boundary(self) -> bool:
        """True when the stream's next move is to collect: the clean point for a checkpoint."""
        return self.counters["credit"] < 1.0 or not self.replay.ready

    def batches(self) -> Iterator[TensorDictBase]:
        collection = self._collecting()
        self.stream_finished = False
        if self._resume_rng is not None:
            # Restored as late as possible: anything between loading and here may draw random numbers.
            set_rng_states(self._resume_rng)
            self._resume_rng = None
        prefill_steps = self.prefill_frames // self.action_repeat
        # One update replays world_size batches (one per process) for world_size agent steps collected.
        per_step = self.train_ratio / (self.batch_size * self.seq_len * self.world_size)
        ratio = TrainRatio(per_step, prefill_steps, self.pretrain)
        if self.counters["agent_steps"] < prefill_steps:
            # The progress bar only appears with the first batch, i.e. after the prefill.
            rank_zero_info(
                f"hwm: prefilling the replay buffer with {self.prefill_frames} random-action env frames"
            )
        # A resumed stream starts where a checkpoint left it: after its updates, before these checks.
        if self._evaluate_if_due():
            self._final_evaluation()
            return
        collected = iter(collection)
        while True:
            with self.timer("collect"):
                data = next(collected, None)
                if data is None:
                    break
                self._ingest(data)
            steps = data.numel() * self.world_size
            self.counters["credit"] += ratio.earned(self.counters["agent_steps"] - steps, steps)
            while self.counters["credit"] >= 1.0 and self.replay.ready:
                self.counters["credit"] -= 1.0
                with self.timer("replay"):
                    batch = self.replay.sample()
                yield batch
            if self._evaluate_if_due():
                break
        self._final_evaluation()
        self.stream_finished = True

    def _evaluate_if_due(self) -> bool:
        """Runs a periodic evaluation when one is due; True once the frame budget is spent."""
        if self.evaluator.due(self.counters["env_frames"]):
            self.evaluate()
        return self.counters["env_frames"] >= self.total_frames

    def _final_evaluation(self) -> None:
        if self.evaluator.episodes and not self.evaluator.done_at(self.counters["env_frames"]):
            self.evaluate()

    def _ingest(self, data: TensorDictBase) -> None:
        # One env gives [steps], several [envs, steps]: each env's transitions go to its own replay lane.
        for lane, transitions in enumerate(data.reshape(-1, data.shape[-1]) if data.ndim > 1 else [data]):
            self.replay.add(transitions_to_rows(transitions, self.env_config.obs_key), lane)
        collected = self._collecting().ingest(data)
        # Global counts: every process collects the same number of steps per collect (from all its envs).
        self.counters["agent_steps"] += collected.steps * self.world_size
        self.counters["env_frames"] += collected.steps * self.action_repeat * self.world_size
        if collected.episodes:
            self.counters["episodes"] += collected.episodes
            self._pending.update(collected.metrics, **{"train/episodes": self.counters["episodes"]})

    @torch.no_grad()
    def evaluate(self) -> float:
        """Runs the evaluation episodes; queues their metrics (and a recording) for the agent to log."""
        if not self.evaluator.episodes:
            return float("nan")
        frames = self.counters["env_frames"]
        self.counters["evaluations"] += 1
        if self.rank != 0:  # one process evaluates (and logs); the others move on to the next update
            self.evaluator.skip(frames)
            return float("nan")
        collection = self._collecting()
        with self.timer("evaluate"):
            metrics, recorded = self.evaluator.run(
                collection.policy, collection.env_factory, frames, int(self.counters["episodes"])
            )
        self._pending.update(metrics)
        if recorded is not None:
            self._media.append(recorded)
        return metrics["eval/return"]

    def pop_media(self) -> list[EvalEpisode]:
        """Recorded evaluation episodes since the last call (the agent renders and logs them)."""
        out, self._media = self._media, []
        return out

    def pop_metrics(self) -> dict[str, float]:
        """Metrics gathered since the last call (the agent logs them: only it logs)."""
        out, self._pending = self._pending, {}
        return out

    # -- checkpointing ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Counters, evaluation schedule, replay (as chunk files under the replay dir), collector and RNGs.

        Under DDP every process writes its replay shard and contributes its state: the result (saved by
        rank 0) is rank 0's state plus ``ranks``, every process's state.
        """
        own = self._own_state()
        if self.world_size == 1:
            self.replay_files = self.replay.files
            return own
        states = gather_objects(own)
        self.replay_files = [c["file"] for st in states if st["replay"] for c in st["replay"]["chunks"]]
        return {**states[0], "ranks": states}

    def _own_state(self) -> dict[str, Any]:
        return {
            "counters": dict(self.counters),
            **self.evaluator.state_dict(),
            **self._collecting().state_dict(),
            "rng": rng_states(),
            "replay": self.replay.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a checkpoint's stream; every env continues its episode where the checkpoint left it."""
        collection = self._collecting()  # setup() builds it before Lightning restores a checkpoint
        ranks = len(state.get("ranks", [state]))
        if ranks != self.world_size:
            raise CheckpointError(
                f"the checkpoint was written by {ranks} processes; this run has {self.world_size}"
            )
        state = state["ranks"][self.rank] if "ranks" in state else state
        if state.get("replay") is None:
            raise CheckpointError(
                "the checkpoint holds no replay buffer (not written by hwm's checkpointing)"
            )
        self.replay.load_state_dict(state["replay"])
        self.counters.update(state["counters"])
        self.evaluator.load_state_dict(state, self.counters["env_frames"])
        self.counters["dropped_steps"] += collection.load_state_dict(state)
        self.counters["resumes"] += 1
        self._resume_rng = state["rng"]

    def teardown(self, stage: str) -> None:
        if self.collection is not None:
            self.collection.close()
            self.collection = None
        self.evaluator.close()
