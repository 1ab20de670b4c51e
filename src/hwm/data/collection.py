"""Training collection: the env, the TorchRL collector around the agent's policy, and what each collected
batch says about the episodes (returns, success), with the state that a resume needs to continue them."""

from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import EnvBase, RewardSum, Transform
from torchrl.envs.utils import ExplorationType, set_exploration_type

from hwm.checkpoints.io import CheckpointError
from hwm.data.workers import batched_env, close_env
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
    """Collects ``steps_per_collect`` agent steps at a time (spread over the envs) with the agent's policy,
    random actions for the first ``prefill_steps``, from ``num_envs`` envs acting as one batch.

    One env is used as it is; several run in TorchRL's ``ParallelEnv`` (a worker process each) or, with
    ``parallel=False``, a ``SerialEnv`` in this process; env ``i`` is seeded ``seed + i``. The policy acts
    for all of them with one batched call; each env's episode boundaries, ``is_init`` and latent state ride
    in its own row of the carrier (the tensordict handed from one step to the next), so nothing is shared.

    The loop is TorchRL's collector loop (random actions or the policy, ``step_and_maybe_reset``) written
    out so that its carrier -- the observation in hand, the policy's latent, the episode's return -- is
    checkpointed with every env's simulator state: a resume continues every episode where it stood.
    """

    def __init__(
        self,
        env_config: EnvConfig,
        info: EnvInfo,
        policy: DreamerPolicy,
        *,
        seed: int,
        steps_per_collect: int,
        prefill_steps: int,
        num_envs: int = 1,
        parallel: bool = True,
    ) -> None:
        self.env_config, self.info, self.policy = env_config, info, policy
        self.num_envs = num_envs
        self.env = self._make_envs(seed, num_envs, parallel)
        # Agent steps per env per collect; a collect yields ``num_envs`` times as many.
        self.steps_per_env = max(1, math.ceil(steps_per_collect / num_envs))
        self.prefill_steps = prefill_steps
        self._action_dtype = self.env.action_spec.dtype
        self.collected = 0  # agent steps collected by this process, all its envs together
        self._carrier = self.env.reset()
        # TorchRL's collector, which collected before this loop, ran the policy once on the first
        # observation to learn its outputs; that call draws random numbers (the sampled latent), so it is
        # kept: runs reproduce, bit for bit, those made before.
        with torch.no_grad():
            policy(self._carrier.copy())
        self._episode_steps = [0] * num_envs  # agent steps of each env's episode in flight
        self._successes: deque[float] = deque(maxlen=10)

    def _make_envs(self, seed: int, num_envs: int, parallel: bool) -> EnvBase:
        if num_envs == 1:
            return self.make_env(seed)
        factories = [functools.partial(self.env_factory, seed + i) for i in range(num_envs)]
        return batched_env(factories, parallel=parallel)

    def make_env(self, seed: int) -> EnvBase:
        """An env of the run with the policy's latent primed and the episode's return summed."""
        return self.env_factory(seed)

    @property
    def env_factory(self) -> Callable[[int], EnvBase]:
        """``make_env`` as a picklable function of the seed (what worker processes build their env with)."""
        return functools.partial(_training_env, self.env_config, self.policy.make_primer())

    @torch.no_grad()
    def collect(self) -> TensorDictBase:
        """The next ``steps_per_env`` transitions of every env: ``[steps]`` for one env, else ``[envs,
        steps]``."""
        random = self.collected < self.prefill_steps
        steps = []
        with set_exploration_type(ExplorationType.RANDOM):
            for _ in range(self.steps_per_env):
                if random:
                    self.env.rand_action(self._carrier)
                else:
                    self._carrier = self.policy(self._carrier)
                    # Stored as the env's action spec says (one-hot actions as integers), as random ones are.
                    self._carrier.set("action", self._carrier.get("action").to(self._action_dtype))
                transition, self._carrier = self.env.step_and_maybe_reset(self._carrier)
                steps.append(transition)
        self.collected += self.steps_per_env * self.num_envs
        return torch.stack(steps, dim=-1)

    def __iter__(self) -> Iterator[TensorDictBase]:
        while True:
            yield self.collect()

    def ingest(self, data: TensorDictBase) -> Collected:
        """Takes note of a collected batch (``collect``'s output)."""
        per_env = data.reshape(-1, data.shape[-1]) if data.ndim > 1 else data.unsqueeze(0)
        done = per_env.get(("next", "done")).reshape(per_env.shape)
        length = per_env.shape[1]
        for i in range(per_env.shape[0]):
            ends = done[i].nonzero()
            self._episode_steps[i] = (
                length - 1 - int(ends[-1]) if len(ends) else self._episode_steps[i] + length
            )
        if not done.any():
            return Collected(data.numel(), 0, {})
        # In time order (step-major), so that "the last episode that ended" is the latest one.
        done_t = done.T.reshape(-1)
        returns = per_env.get(("next", "episode_reward")).transpose(0, 1).reshape(-1)[done_t]
        last = float(returns[-1])
        metrics = {"train/episode_return": last}
        if self.info.score_range is not None:
            metrics["train/human_normalized_score"] = self.info.normalized(last)
        if self.info.has_success:
            success = per_env.get(("next", SUCCESS_KEY)).transpose(0, 1).reshape(-1)[done_t]
            self._successes.extend(success.tolist())
            # Over the last (up to) 10 training episodes: one episode alone only says 0 or 1.
            metrics["train/success_rate"] = sum(self._successes) / len(self._successes)
        return Collected(data.numel(), int(done.sum()), metrics)

    def state_dict(self) -> dict[str, Any]:
        """Every env's simulator state and the carrier: where each episode stands, and the policy's latent."""
        return {
            "collected": self.collected,
            "in_flight_steps": list(self._episode_steps),
            "carrier": self._carrier.clone().to_dict(),
            "carrier_shape": list(self._carrier.batch_size),
            "envs": self.env.state_dict(),
            "train_successes": list(self._successes),
        }

    def load_state_dict(self, state: dict[str, Any]) -> int:
        """Restores every env and the carrier, so each episode continues exactly. A checkpoint written
        before simulator states were saved restarts the episode in flight from its own start state instead;
        returns the number of its steps dropped that way (they stay in the replay)."""
        self._successes.clear()
        self._successes.extend(state.get("train_successes", []))
        if "carrier" not in state:
            return self._restart_episode(state)
        in_flight = state["in_flight_steps"]
        if len(in_flight) != self.num_envs:
            raise CheckpointError(
                f"the checkpoint collected from {len(in_flight)} envs per process; this run has "
                f"{self.num_envs} (data.num_envs)"
            )
        self.env.load_state_dict(state["envs"])
        carrier = TensorDict(state["carrier"], batch_size=state["carrier_shape"])
        self._carrier = carrier.to(self._carrier.device) if self._carrier.device is not None else carrier
        self.collected = state["collected"]
        self._episode_steps = list(in_flight)
        return 0

    def _restart_episode(self, state: dict[str, Any]) -> int:
        # Older checkpoints hold the collector's frame count and the randomness the episode started from:
        # replaying the reset makes a checkpoint taken at an episode boundary continue exactly.
        if self.num_envs != 1:
            raise CheckpointError("the checkpoint was written with one env per process (data.num_envs: 1)")
        self.collected = int(state["collector"]["frames"])
        episode_rng = state.get("episode_rng")
        if episode_rng is not None and isinstance(self.env.base_env, EpisodeRng):
            self.env.base_env.set_episode_rng_state(episode_rng)
        self._carrier = self.env.reset()
        self._episode_steps = [0]
        return int(state["in_flight_steps"])

    def close(self) -> None:
        close_env(self.env)


def _training_env(env_config: EnvConfig, primer: Transform, seed: int) -> EnvBase:
    """``env_config``'s env seeded ``seed``, with the policy's latent primed and the episode return summed
    (module level: ParallelEnv pickles it into its workers)."""
    env = env_config.make(seed)
    env.append_transform(primer.clone())  # a fresh one per env: a transform belongs to one env
    env.append_transform(RewardSum())
    return env


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
    return torch.cat([steps, resets])[order]
