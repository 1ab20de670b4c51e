from functools import partial

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from hwm.actor_critic import ActorCritic
from hwm.agent import HarmonyDreamAgent
from hwm.data import ReplayDataModule
from hwm.policy import STATE_KEYS
from hwm.replay import TRAJ_KEY, make_replay_buffer, sample_sequences
from hwm.world_model import WorldModel

BATCH, SEQ, REPEAT, TIME_LIMIT = 2, 4, 2, 40  # episodes of 20 agent steps
TINY_WM = dict(deter=16, hidden=16, stoch=4, classes=4, cnn_depth=4, mlp_units=32, mlp_layers=1)
TINY_AC = dict(units=32, layers=1, horizon=3)


# Tiny models gain nothing from threads, and fixed seeds keep the sampled latents repeatable.
pytestmark = pytest.mark.usefixtures("one_torch_thread_seeded")


def _build(
    *,
    from_pixels: bool = False,
    total_frames: int = 120,
    prefill_frames: int = 20,
    train_ratio: float = 8.0,
    eval_episodes: int = 0,
):
    dm = ReplayDataModule(
        task="cartpole-balance",
        from_pixels=from_pixels,
        time_limit=TIME_LIMIT,
        action_repeat=REPEAT,
        total_frames=total_frames,
        prefill_frames=prefill_frames,
        batch_size=BATCH,
        seq_len=SEQ,
        train_ratio=train_ratio,
        capacity=1000,
        eval_every=0,
        eval_episodes=eval_episodes,
    )
    agent = HarmonyDreamAgent(
        dm.env_info, world_model=partial(WorldModel, **TINY_WM), actor_critic=partial(ActorCritic, **TINY_AC)
    )
    dm.attach_policy(agent.policy())
    return dm, agent


def _check_batch(batch, obs_key: str, obs_shape: tuple[int, ...], dtype: torch.dtype) -> None:
    assert batch.batch_size == (BATCH, SEQ)
    assert batch["action"].shape == (BATCH, SEQ, 1)
    obs = batch["next", obs_key]
    assert obs.shape == (BATCH, SEQ, *obs_shape) and obs.dtype == dtype
    assert batch["next", "reward"].shape == (BATCH, SEQ, 1)
    assert batch["next", "terminated"].shape == (BATCH, SEQ, 1)
    assert batch["next", "terminated"].dtype == torch.bool
    traj = batch[TRAJ_KEY]
    assert (traj == traj[:, :1]).all(), "a sequence crosses an episode boundary"
    # An episode can only end at the last step of a sequence.
    assert not batch["next", "done"][:, :-1].any()


@pytest.mark.parametrize(
    "train_ratio,steps_per_collect",
    [(4.0, 2), (8.0, 1), (16.0, 1)],  # credit per agent step: 0.5, 1, 2
)
def test_state_stream_follows_the_train_ratio(train_ratio: float, steps_per_collect: int) -> None:
    total_frames, prefill_frames = 120, 20
    dm, agent = _build(total_frames=total_frames, prefill_frames=prefill_frames, train_ratio=train_ratio)
    assert dm.env_info.obs_shape == (5,) and dm.env_info.action_dim == 1 and not dm.env_info.discrete
    assert dm.steps_per_collect == steps_per_collect
    batches = list(dm.batches())
    dm.teardown("fit")
    for batch in batches:
        _check_batch(batch, "observation", (5,), torch.float32)
    # Batches from the stream are what the world model trains on.
    losses, _, _ = agent.world_model.loss(batches[0])
    assert all(torch.isfinite(v) for v in losses.values())

    agent_steps = total_frames // REPEAT
    prefill_steps = prefill_frames // REPEAT
    assert dm.counters["agent_steps"] == agent_steps
    assert dm.counters["env_frames"] == agent_steps * REPEAT == total_frames
    per_step = train_ratio / (BATCH * SEQ)
    assert len(batches) == (agent_steps - prefill_steps) * per_step
    assert dm.counters["credit"] == pytest.approx(0.0)
    assert dm.counters["episodes"] == agent_steps // (TIME_LIMIT // REPEAT)
    metrics = dm.pop_metrics()
    assert metrics["train/episodes"] == dm.counters["episodes"]
    assert 0.0 <= metrics["train/episode_return"] <= TIME_LIMIT
    assert "eval/return" not in metrics  # eval_episodes=0
    assert dm.pop_metrics() == {}


def test_stream_stops_at_total_frames_when_not_a_multiple_of_a_collect() -> None:
    # 3 agent steps per collect (round(8 / 3)); 70 frames = 35 steps -> stops after 12 collects (36 steps).
    dm, _ = _build(total_frames=70, prefill_frames=0, train_ratio=3.0)
    assert dm.steps_per_collect == 3
    batches = list(dm.batches())
    dm.teardown("fit")
    assert dm.counters["agent_steps"] == 36 and dm.counters["env_frames"] == 72
    assert len(batches) == int(36 * 3.0 / (BATCH * SEQ))


@pytest.mark.filterwarnings("ignore:init_random_frames")
def test_credit_starts_exactly_after_prefill_when_a_collect_straddles_it() -> None:
    # 3 steps per collect, prefill 10 steps: the 4th collect (steps 10-12) holds one prefill step, which
    # should earn nothing: 50 credited steps * 3/8 = 18.75 -> 18 batches.
    dm, _ = _build(total_frames=120, prefill_frames=20, train_ratio=3.0)
    batches = list(dm.batches())
    dm.teardown("fit")
    assert len(batches) == int((60 - 10) * 3.0 / (BATCH * SEQ))


def test_pixel_stream() -> None:
    dm, agent = _build(from_pixels=True, total_frames=60, prefill_frames=20, train_ratio=8.0)
    assert dm.env_info.obs_shape == (3, 64, 64)
    assert agent.world_model.pixels and agent.world_model.obs_key == "pixels"
    batches = list(dm.batches())
    dm.teardown("fit")
    assert len(batches) == (30 - 10) * 1
    for batch in batches:
        _check_batch(batch, "pixels", (3, 64, 64), torch.uint8)
        assert "observation" not in batch["next"].keys()
    assert batches[-1]["next", "pixels"].float().std() > 0  # real pictures, not zeros
    losses, _, _ = agent.world_model.loss(batches[0])
    assert all(torch.isfinite(v) for v in losses.values())
    assert dm.counters["env_frames"] == 60


@pytest.fixture(scope="module")
def policy_env():
    dm, agent = _build()
    env = dm._make_env(seed=5)
    yield env, agent.policy()
    env.close()
    dm.teardown("fit")


def _random_latent(td: TensorDict) -> TensorDict:
    td = td.clone()
    for key in STATE_KEYS:
        td[key] = torch.randn_like(td[key])
    return td


def test_policy_is_deterministic_given_the_latent_sample(policy_env) -> None:
    env, policy = policy_env
    td = env.reset()
    assert td["is_init"].all()
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        torch.manual_seed(7)
        first = policy(td.clone())
        torch.manual_seed(7)
        second = policy(td.clone())
    assert first["action"].shape == (1,)
    assert torch.equal(first["action"], second["action"])
    for key in STATE_KEYS:
        assert torch.equal(first["next", key], second["next", key])
    assert first["next", "policy_stoch"].shape == (16,)
    assert torch.equal(first["next", "policy_action"], first["action"])


def test_random_exploration_samples(policy_env) -> None:
    env, policy = policy_env
    td = env.reset()
    with set_exploration_type(ExplorationType.RANDOM):
        torch.manual_seed(7)
        first = policy(td.clone())["action"]
        torch.manual_seed(8)
        second = policy(td.clone())["action"]
    assert not torch.equal(first, second)
    assert first.abs().max() <= 1.0


def test_is_init_resets_the_carried_latent(policy_env) -> None:
    env, policy = policy_env
    td = env.reset()
    td = env.step(td.set("action", torch.zeros(1)))["next"]  # a mid-episode observation
    td["is_init"] = torch.ones(1, dtype=torch.bool)
    outs = []
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        for latent in (td.clone(), _random_latent(td), _random_latent(td)):
            torch.manual_seed(3)
            outs.append(policy(latent))
        for out in outs[1:]:
            assert torch.equal(out["action"], outs[0]["action"])
            assert torch.equal(out["next", "policy_deter"], outs[0]["next", "policy_deter"])
        # Without is_init the carried latent matters.
        td["is_init"] = torch.zeros(1, dtype=torch.bool)
        torch.manual_seed(3)
        carried = policy(_random_latent(td))
    assert not torch.equal(carried["next", "policy_deter"], outs[0]["next", "policy_deter"])


def test_rollout_carries_the_latent(policy_env) -> None:
    env, policy = policy_env
    with set_exploration_type(ExplorationType.RANDOM):
        rollout = env.rollout(4, policy)
    for key in STATE_KEYS:
        torch.testing.assert_close(rollout[key][1:], rollout["next", key][:-1])
    assert not rollout["policy_deter"][0].any() and rollout["policy_deter"][1:].abs().sum() > 0


def test_evaluate_queues_the_return() -> None:
    dm, _ = _build(eval_episodes=1)
    value = dm.evaluate()
    metrics = dm.pop_metrics()
    dm.teardown("fit")
    assert metrics["eval/return"] == pytest.approx(value)
    assert 0.0 <= value <= TIME_LIMIT  # cartpole pays at most 1 per frame
    assert metrics["eval/return_std"] == 0.0 and metrics["time/eval_s"] > 0
    assert dm.pop_metrics() == {}


def test_evaluate_without_episodes_is_nan() -> None:
    dm, _ = _build(eval_episodes=0)
    assert torch.tensor(dm.evaluate()).isnan()
    assert dm.pop_metrics() == {}
    dm.teardown("fit")


# -- the replay buffer on synthetic trajectories --------------------------------------------------------------


def _synthetic(lengths: list[int], first_id: int = 0) -> TensorDict:
    traj = torch.cat([torch.full((n,), first_id + i) for i, n in enumerate(lengths)])
    step = torch.cat([torch.arange(n) for n in lengths])
    return TensorDict(
        {"obs": (traj * 100 + step).float().unsqueeze(-1), "collector": {"traj_ids": traj}},
        batch_size=[len(traj)],
    )


def _check_sequences(seq: TensorDict, short: set[int]) -> None:
    traj, obs = seq[TRAJ_KEY], seq["obs"].squeeze(-1)
    assert (traj == traj[:, :1]).all()
    assert (obs.diff(dim=1) == 1).all(), "steps of a sequence are not consecutive"
    assert torch.equal(torch.div(obs, 100, rounding_mode="floor").long(), traj)
    assert not set(traj[:, 0].tolist()) & short


def test_replay_never_crosses_and_skips_short_trajectories() -> None:
    lengths = [2, 6, 3, 8, 1, 5]
    short = {i for i, n in enumerate(lengths) if n < SEQ}
    buffer = make_replay_buffer(capacity=100, batch_size=8, seq_len=SEQ)
    buffer.extend(_synthetic(lengths))
    seen = set()
    for _ in range(30):
        seq = sample_sequences(buffer, 8, SEQ)
        assert seq.batch_size == (8, SEQ)
        _check_sequences(seq, short)
        seen |= set(seq[TRAJ_KEY][:, 0].tolist())
    assert seen == {1, 3, 5}


def test_replay_after_the_storage_wraps() -> None:
    buffer = make_replay_buffer(capacity=12, batch_size=8, seq_len=SEQ)
    buffer.extend(_synthetic([8]))
    # Positions 8-9 hold trajectory 1, 10-11 and (wrapping) 0-4 trajectory 2: only 3 steps of trajectory 0 are
    # left, so trajectory 2, split across the end of the storage, is the only one long enough.
    buffer.extend(_synthetic([2, 7], first_id=1))
    assert len(buffer) == 12
    seen = set()
    for _ in range(20):
        seq = sample_sequences(buffer, 8, SEQ)
        _check_sequences(seq, short={0, 1})
        seen |= set(seq["obs"][:, 0, 0].tolist())
    assert seen == {200.0, 201.0, 202.0, 203.0}  # every start of trajectory 2, including across the wrap


def test_replay_rejects_a_capacity_below_one_sequence() -> None:
    with pytest.raises(ValueError, match="capacity"):
        make_replay_buffer(capacity=3, batch_size=2, seq_len=4)


def test_sequences_longer_than_an_episode_are_rejected_up_front() -> None:
    with pytest.raises(ValueError, match="longer than an episode"):
        ReplayDataModule(task="cartpole-balance", time_limit=40, action_repeat=4, seq_len=16)
