"""Training collection: the env, the TorchRL collector around the agent's policy, and what each collected
batch says about the episodes (returns, success), with the state that a resume needs to continue them."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.collectors import Collector
from torchrl.envs import EnvBase, RewardSum
from torchrl.envs.utils import ExplorationType

from hwm.envs.common import SUCCESS_KEY, EnvInfo, EpisodeRng
from hwm.envs.suites import EnvConfig
from hwm.models.policy import DreamerPolicy
from hwm.models.world_model import ACTION_KEY, IS_FIRST, IS_LAST, IS_TERMINAL, REWARD_KEY


@dataclass(frozen=True)
class Collected:
    """What one collected batch changed: agent steps taken, episodes ended, and the ``train/*`` metrics of
    the last episode that ended (return, human-normalised score, success rate over the last 10)."""

    steps: int
    episodes: int
    metrics: dict[str, float]


class Collection:
    """Collects ``steps_per_collect`` agent steps at a time with the agent's policy (random actions for the
    first ``prefill_steps``), on an env built from ``env_config`` with the policy's latent primed."""

    def __init__(
        self,
        env_config: EnvConfig,
        info: EnvInfo,
        policy: DreamerPolicy,
        *,
        seed: int,
        steps_per_collect: int,
        prefill_steps: int,
    ) -> None:
        self.env_config, self.info, self.policy = env_config, info, policy
        self.collector = Collector(
            self.make_env(seed),
            policy,
            frames_per_batch=steps_per_collect,
            total_frames=-1,
            init_random_frames=prefill_steps,
            exploration_type=ExplorationType.RANDOM,
        )
        self._episode_steps = 0  # agent steps of the episode in flight
        self._successes: deque[float] = deque(maxlen=10)

    def make_env(self, seed: int) -> EnvBase:
        """An env of the run with the policy's latent primed and the episode's return summed."""
        env = self.env_config.make(seed)
        env.append_transform(self.policy.make_primer())
        env.append_transform(RewardSum())
        return env

    def __iter__(self) -> Iterator[TensorDictBase]:
        return iter(self.collector)

    def ingest(self, data: TensorDictBase) -> Collected:
        """Takes note of a collected batch (flat transitions)."""
        steps = data.numel()
        done = data.get(("next", "done")).reshape(-1)
        ends = done.nonzero()
        self._episode_steps = steps - 1 - int(ends[-1]) if len(ends) else self._episode_steps + steps
        if not done.any():
            return Collected(steps, 0, {})
        last = float(data.get(("next", "episode_reward")).reshape(-1)[done][-1])
        metrics = {"train/episode_return": last}
        if self.info.score_range is not None:
            metrics["train/human_normalized_score"] = self.info.normalized(last)
        if self.info.has_success:
            self._successes.extend(data.get(("next", SUCCESS_KEY)).reshape(-1)[done].tolist())
            # Over the last (up to) 10 training episodes: one episode alone only says 0 or 1.
            metrics["train/success_rate"] = sum(self._successes) / len(self._successes)
        return Collected(steps, int(done.sum()), metrics)

    def _episode_rng(self) -> EpisodeRng | None:
        # The suites' wrappers forward attribute lookups to the env inside, where the hooks live.
        base = self.collector.env.base_env
        return base if isinstance(base, EpisodeRng) else None

    def state_dict(self) -> dict[str, Any]:
        collector = self.collector.state_dict()
        rng_owner = self._episode_rng()
        return {
            "in_flight_steps": self._episode_steps,
            "collector": {k: collector[k] for k in ("frames", "iter", "traj_pool")},
            "episode_rng": None if rng_owner is None else rng_owner.episode_rng_state(),
            "train_successes": list(self._successes),
        }

    def load_state_dict(self, state: dict[str, Any]) -> int:
        """Restores the collector; the episode in flight restarts from its own start state. Returns the
        number of its steps dropped (they stay in the replay)."""
        # The env's physics can't be restored in general; replaying the episode's reset (same RNG state)
        # makes a checkpoint taken at an episode boundary continue exactly as the run would have (DMC,
        # Atari and Meta-world; the distractor videos start a new episode with their own RNG).
        self.collector.load_state_dict(state["collector"], strict=False)
        rng_owner = self._episode_rng()
        if rng_owner is not None and state["episode_rng"] is not None:
            rng_owner.set_episode_rng_state(state["episode_rng"])
        self.collector.reset()
        self._successes.clear()
        self._successes.extend(state.get("train_successes", []))
        self._episode_steps = 0
        return int(state["in_flight_steps"])

    def close(self) -> None:
        self.collector.shutdown()


@dataclass(frozen=True)
class TrainRatio:
    """The updates that collected agent steps earn: ``per_step`` each once the first ``prefill_steps`` are
    in (also when one collect straddles that point), and DreamerV2's ``pretrain`` updates once, right then."""

    per_step: float
    prefill_steps: int
    pretrain: int = 0

    def earned(self, before: float, steps: float) -> float:
        """Updates earned by ``steps`` (global) agent steps collected after ``before`` steps."""
        after = before + steps
        credit = max(0.0, min(steps, after - self.prefill_steps)) * self.per_step
        if before < max(self.prefill_steps, 1) <= after:
            credit += self.pretrain
        return credit


def prefill_share(prefill_frames: int, action_repeat: int, world_size: int) -> int:
    """Each process collects its share of the (global) prefill, in agent steps."""
    return math.ceil(prefill_frames // action_repeat / world_size)


def transitions_to_rows(data: TensorDictBase, obs_key: str) -> TensorDict:
    """TorchRL transitions (o_t, a_t, next: o_{t+1}, r_{t+1}, done) -> replay rows in stream order.

    Each transition gives the row of its next observation; one that starts an episode (``is_init``) is
    preceded by the reset row (o_t, a zero action, reward 0, ``is_first``).
    """
    data = data.reshape(-1)
    n = data.numel()
    action = data.get("action")
    init = data.get("is_init").reshape(n).bool()
    nxt = data.get("next")
    flag = torch.zeros(n, 1, dtype=torch.bool)
    steps = TensorDict(
        {
            obs_key: nxt.get(obs_key),
            ACTION_KEY: action,
            REWARD_KEY: nxt.get("reward").reshape(n, 1).float(),
            IS_FIRST: flag,
            IS_LAST: nxt.get("done").reshape(n, 1).bool(),
            IS_TERMINAL: nxt.get("terminated").reshape(n, 1).bool(),
        },
        batch_size=[n],
    )
    m = int(init.sum())
    if m == 0:
        return steps
    resets = TensorDict(
        {
            obs_key: data.get(obs_key)[init],
            ACTION_KEY: torch.zeros_like(action[init]),
            REWARD_KEY: torch.zeros(m, 1),
            IS_FIRST: torch.ones(m, 1, dtype=torch.bool),
            IS_LAST: torch.zeros(m, 1, dtype=torch.bool),
            IS_TERMINAL: torch.zeros(m, 1, dtype=torch.bool),
        },
        batch_size=[m],
    )
    # Row i of ``steps`` moves down by the number of resets at or before it; each reset sits just above.
    step_pos = torch.arange(n) + torch.cumsum(init.long(), 0)
    order = torch.empty(n + m, dtype=torch.long)
    order[step_pos] = torch.arange(n)
    order[step_pos[init] - 1] = n + torch.arange(m)
    return torch.cat([steps, resets])[order]  # type: ignore[return-value]
