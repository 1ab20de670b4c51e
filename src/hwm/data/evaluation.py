"""Periodic evaluation: episodes with the agent's evaluation policy on an env of their own, their metrics,
and now and then a recorded episode for the media the agent logs."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.envs import EnvBase
from torchrl.envs.utils import set_exploration_type

from hwm.data.workers import batched_env, close_env
from hwm.envs import reward_factors
from hwm.envs.common import SUCCESS_KEY, EnvInfo
from hwm.envs.suites import EnvConfig
from hwm.models.policy import DreamerPolicy
from hwm.training.media import EvalEpisode


class Evaluator:
    """Runs ``episodes`` evaluation episodes every ``every`` env frames (0: only at the end).

    Episode ``j`` of an evaluation runs on an env re-seeded with ``seed + 1000 + the training episodes so
    far + j``, so its start does not depend on how many run at once: ``envs`` episodes run together (in
    worker processes with ``parallel``, else one after another in this process), acted for with one
    batched policy call; the envs are kept for the run (a pixel env owns a GL context). With
    ``video_every`` (pixels only) the first episode of an evaluation at least that many frames after the
    last recorded one is kept as an :class:`EvalEpisode`.
    """

    def __init__(
        self,
        env_config: EnvConfig,
        info: EnvInfo,
        *,
        episodes: int,
        every: int,
        video_every: int,
        seed: int,
        envs: int = 1,
        parallel: bool = True,
    ) -> None:
        self.env_config, self.info = env_config, info
        self.envs, self.parallel = envs, parallel
        self.episodes, self.every, self.seed = episodes, every, seed
        # Videos are of pixels; state-vector runs record none.
        self.video_every = video_every if env_config.from_pixels else 0
        self.next_eval: float = every if every else math.inf
        self.next_video: float = float(self.video_every) if self.video_every else math.inf
        self.last_frames: float = -1.0
        self._env: EnvBase | None = None

    def due(self, frames: float) -> bool:
        """Whether a periodic evaluation is due at ``frames`` (and moves the schedule on if so)."""
        if frames < self.next_eval:
            return False
        self.next_eval += self.every
        return True

    def done_at(self, frames: float) -> bool:
        """Whether an evaluation already ran at exactly these frames."""
        return self.last_frames == frames

    def skip(self, frames: float) -> None:
        """Counts an evaluation another process runs (DDP: only rank 0 evaluates)."""
        self.last_frames = frames

    def run(
        self,
        policy: DreamerPolicy,
        env_factory: Callable[[int], EnvBase],
        frames: float,
        episodes_so_far: int,
    ) -> tuple[dict[str, float], EvalEpisode | None]:
        """Runs the episodes; returns the ``eval/*`` metrics and the recorded episode, if any."""
        start = time.perf_counter()
        seed = self.seed + 1000 + int(episodes_so_far)
        record = frames >= self.next_video
        returns, successes, recorded = [], [], None
        explained: list[dict[str, float]] = []
        with set_exploration_type(policy.eval_exploration):
            for first in range(0, self.episodes, self.envs):
                seeds = [seed + j for j in range(first, min(first + self.envs, self.episodes))]
                for i, rollout in enumerate(self._episodes(policy, env_factory, seeds)):
                    returns.append(float(rollout.get(("next", "reward")).sum()))
                    explained.append(self._explain(rollout))
                    if self.info.has_success:
                        successes.append(float(rollout.get(("next", SUCCESS_KEY))[-1].max()))
                    if record and first + i == 0:
                        recorded = self._record(rollout, frames)
        self.last_frames = frames
        mean = sum(returns) / len(returns)
        metrics = {
            "eval/return": mean,
            "eval/return_std": float(torch.tensor(returns).std()) if len(returns) > 1 else 0.0,
            "time/eval_s": time.perf_counter() - start,
        }
        for key in explained[0]:
            metrics[key] = sum(e[key] for e in explained) / len(explained)
        if successes:
            metrics["eval/success_rate"] = sum(successes) / len(successes)
        if self.info.score_range is not None:
            metrics["eval/human_normalized_score"] = self.info.normalized(mean)
        return metrics, recorded

    def _explain(self, rollout: TensorDictBase) -> dict[str, float]:
        """What explains an episode's return: its mean |action| (continuous actions) and, where the env
        reports them, the episode means of the reward's factors (``hwm.envs.reward_factors``)."""
        out: dict[str, float] = {}
        if not self.info.discrete:
            out["eval/action_abs_mean"] = float(rollout.get("action").float().abs().mean())
        factors = self._factors
        if factors is not None and (("next", reward_factors.REWARD_FACTORS_KEY) in rollout.keys(True)):
            means = rollout.get(("next", reward_factors.REWARD_FACTORS_KEY)).float().mean(0)
            out.update(
                {f"eval/reward_factor_{n}": float(v) for n, v in zip(factors.names, means, strict=True)}
            )
        return out

    @functools.cached_property
    def _factors(self) -> reward_factors.RewardFactors | None:
        if self.env_config.suite not in ("dmc", "distracted_dmc"):
            return None
        return reward_factors.for_task(self.env_config.task)

    def _episodes(
        self, policy: DreamerPolicy, env_factory: Callable[[int], EnvBase], seeds: list[int]
    ) -> list[TensorDictBase]:
        """One episode per seed, run together; each as its own rollout (up to its end)."""
        if self._env is None:
            self._env = self._make(env_factory, seeds[0])
        if self.envs == 1:
            self._env.set_seed(seeds[0])
            return [self._env.rollout(self.env_config.max_steps, policy, break_when_any_done=True)]
        for i, seed in enumerate(seeds):
            self._env[i].set_seed(seed)
        carrier, steps = self._env.reset(), []
        ended = torch.zeros(self.envs, dtype=torch.bool)
        for _ in range(self.env_config.max_steps):
            # Envs whose episode ended are reset and stepped on with the others; their steps are ignored.
            transition, carrier = self._env.step_and_maybe_reset(policy(carrier))
            steps.append(transition)
            ended |= transition.get(("next", "done")).reshape(self.envs).cpu()
            if bool(ended[: len(seeds)].all()):
                break
        rollout: TensorDictBase = torch.stack(steps, dim=1)
        done = rollout.get(("next", "done")).reshape(self.envs, -1)
        ends = [int(done[i].nonzero()[0]) + 1 if done[i].any() else done.shape[1] for i in range(len(seeds))]
        return [rollout[i, :end] for i, end in enumerate(ends)]

    def _make(self, env_factory: Callable[[int], EnvBase], seed: int) -> EnvBase:
        if self.envs == 1:
            return env_factory(seed)
        factories = [functools.partial(env_factory, seed + i) for i in range(self.envs)]
        return batched_env(factories, parallel=self.parallel)

    def _record(self, rollout: TensorDictBase, frames: float) -> EvalEpisode:
        while self.next_video <= frames:
            self.next_video += self.video_every
        obs_key = self.env_config.obs_key
        first = rollout.get(obs_key)[:1]
        observations = torch.cat([first, rollout.get(("next", obs_key))]).to(torch.uint8).cpu()
        return EvalEpisode(observations, rollout.get("action").float().cpu(), int(frames))

    # -- checkpointing ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "eval_every": self.every,
            "next_eval": self.next_eval,
            "next_video": self.next_video,
            "last_eval_frames": self.last_frames,
        }

    def load_state_dict(self, state: dict[str, Any], frames: float) -> None:
        self.last_frames = state["last_eval_frames"]
        if self.video_every and "next_video" in state:
            self.next_video = state["next_video"]
        if state["eval_every"] == self.every:
            self.next_eval = state["next_eval"]
        else:  # a new evaluation interval given on resume counts from the start of the run
            self.next_eval = (frames // self.every + 1) * self.every if self.every else math.inf

    def close(self) -> None:
        if self._env is not None:
            close_env(self._env)
            self._env = None
