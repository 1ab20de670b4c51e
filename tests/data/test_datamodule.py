from functools import partial

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from hwm.agent import HarmonyDreamAgent
from hwm.data.collection import transitions_to_rows
from hwm.data.datamodule import ReplayDataModule
from hwm.data.replay import SequenceReplay, add_rows, make_replay_buffer, sample_sequences
from hwm.models.actor_critic import ActorCritic
from hwm.models.actor_critic_v3 import ActorCriticV3
from hwm.models.policy import STATE_KEYS
from hwm.models.world_model import WorldModel
from hwm.models.world_model_v3 import WorldModelV3

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
    pretrain: int = 0,
    base: str = "dreamerv2",
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
        pretrain=pretrain,
    )
    if base == "dreamerv2":
        agent = HarmonyDreamAgent(
            dm.env_info,
            world_model=partial(WorldModel, **TINY_WM),
            actor_critic=partial(ActorCritic, **TINY_AC),
        )
    else:
        agent = HarmonyDreamAgent(
            dm.env_info,
            base="dreamerv3",
            world_model=partial(WorldModelV3, **TINY_WM),
            actor_critic=partial(ActorCriticV3, **TINY_AC),
        )
    dm.attach_policy(agent.policy())
    return dm, agent


def _check_batch(batch, obs_key: str, obs_shape: tuple[int, ...], dtype: torch.dtype) -> None:
    assert batch.batch_size == (BATCH, SEQ)
    assert batch["action"].shape == (BATCH, SEQ, 1)
    obs = batch[obs_key]
    assert obs.shape == (BATCH, SEQ, *obs_shape) and obs.dtype == dtype
    assert batch["reward"].shape == (BATCH, SEQ, 1)
    for flag in ("is_first", "is_last", "is_terminal"):
        assert batch[flag].shape == (BATCH, SEQ, 1) and batch[flag].dtype == torch.bool
    # DreamerV2's windows: each inside one episode, starting as one (the state before it is unknown).
    assert batch["is_first"][:, 0].all() and not batch["is_first"][:, 1:].any()
    # An episode can only end at the last step of a sequence.
    assert not batch["is_last"][:, :-1].any()


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


def test_pretrain_updates_follow_the_prefill() -> None:
    # DreamerV2 trains `pretrain` times on the prefill before acting, on top of the train ratio's updates.
    dm, _ = _build(total_frames=120, prefill_frames=20, train_ratio=8.0, pretrain=5)
    batches = list(dm.batches())
    dm.teardown("fit")
    assert len(batches) == (60 - 10) * 8.0 / (BATCH * SEQ) + 5


@pytest.mark.parametrize("base,expected", [("dreamerv2", "DETERMINISTIC"), ("dreamerv3", "RANDOM")])
def test_evaluation_acts_as_each_base(monkeypatch, base: str, expected: str) -> None:
    # DreamerV3's agent evaluates with sampled actions (the Atari 100k scores come from those); DreamerV2
    # with the actor's mode.
    from torchrl.envs.utils import exploration_type

    import hwm.models.policy as policy_module

    dm, agent = _build(eval_episodes=1, base=base)
    assert agent.policy().eval_exploration == getattr(ExplorationType, expected)
    seen = set()
    act = policy_module.DreamerPolicy._act

    def spy(self, td, device):
        seen.add(exploration_type())
        return act(self, td, device)

    monkeypatch.setattr(policy_module.DreamerPolicy, "_act", spy)
    dm.evaluate()
    dm.teardown("fit")
    assert seen == {getattr(ExplorationType, expected)}


def test_pixel_stream() -> None:
    dm, agent = _build(from_pixels=True, total_frames=60, prefill_frames=20, train_ratio=8.0)
    assert dm.env_info.obs_shape == (3, 64, 64)
    assert agent.world_model.pixels and agent.world_model.obs_key == "pixels"
    batches = list(dm.batches())
    dm.teardown("fit")
    assert len(batches) == (30 - 10) * 1
    for batch in batches:
        _check_batch(batch, "pixels", (3, 64, 64), torch.uint8)
        assert "observation" not in batch.keys()
    assert batches[-1]["pixels"].float().std() > 0  # real pictures, not zeros
    losses, _, _ = agent.world_model.loss(batches[0])
    assert all(torch.isfinite(v) for v in losses.values())
    assert dm.counters["env_frames"] == 60


@pytest.fixture(scope="module")
def policy_env():
    dm, agent = _build()
    env = dm.collection.make_env(seed=5)  # the collector's env: the suite's, with the policy's latent primed
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


# -- the replay buffer on synthetic episodes ------------------------------------------------------------------


def _rows(lengths: list[int], first_id: int = 0, *, last_open: bool = False) -> TensorDict:
    """Rows of episodes with ``lengths`` rows each (reset row included): obs = episode * 100 + step."""
    episode = torch.cat([torch.full((n,), first_id + i) for i, n in enumerate(lengths)])
    step = torch.cat([torch.arange(n) for n in lengths])
    is_last = torch.cat([torch.arange(n) == n - 1 for n in lengths])
    if last_open:  # the last episode is still being collected
        is_last[-1] = False
    return TensorDict(
        {
            "obs": (episode * 100 + step).float().unsqueeze(-1),
            "is_first": (step == 0).unsqueeze(-1),
            "is_last": is_last.unsqueeze(-1),
        },
        batch_size=[len(step)],
    )


def _starts(buffer, draws: int) -> torch.Tensor:
    """The obs value of the first row of ``draws`` sampled windows (64 a batch), each window checked."""
    out = []
    for _ in range(draws // 64):
        window = sample_sequences(buffer, 64, SEQ)["obs"].squeeze(-1)
        assert (window.diff(dim=1) == 1).all(), "steps of a window are not consecutive rows"
        out.append(window[:, 0])
    return torch.cat(out)


def test_windows_stay_inside_episodes_and_are_uniform_over_windows() -> None:
    lengths = [2, 6, 3, 12, 1, 5]  # rows per episode; 4, 2 windows of 4 in episodes 1, 3 (none elsewhere)
    buffer = make_replay_buffer(capacity=100, batch_size=64, seq_len=SEQ, ongoing=True)
    add_rows(buffer, _rows(lengths))
    starts = _starts(buffer, 64 * 300)
    valid = [100 + k for k in range(3)] + [300 + k for k in range(9)] + [500, 501]
    assert set(starts.tolist()) == set(valid)
    # Every window as likely as any other, so the long episode gets 9/14 of the draws, not 1/3 (as
    # picking an episode first would): each short episode's steps are not over-sampled.
    freq = torch.tensor([(starts == v).float().mean().item() for v in valid])
    assert (freq - 1 / len(valid)).abs().max() < 0.012  # ~4.5 standard deviations at 19,200 draws
    seq = sample_sequences(buffer, 64, SEQ)
    assert seq["is_first"][:, 0].all() and not seq["is_first"][:, 1:].any()


def test_stream_windows_sample_every_step_equally_and_cross_episodes() -> None:
    # DreamerV3's replay: windows over the whole stream, across episode boundaries.
    lengths = [3, 7, 2, 9, 5, 6]
    rows = _rows(lengths)
    buffer = make_replay_buffer(capacity=100, batch_size=64, seq_len=SEQ, cross_episodes=True, ongoing=True)
    add_rows(buffer, rows)
    n = len(rows)
    counts = torch.zeros(n)
    crossed = 0
    for _ in range(400):
        seq = sample_sequences(buffer, 64, SEQ)
        index = seq["obs"].squeeze(-1)
        position = [int((rows["obs"].squeeze(-1) == v).nonzero()) for v in index.flatten().tolist()]
        counts += torch.bincount(torch.tensor(position), minlength=n)
        assert seq["is_first"][:, 0].all()  # forced at every window's start
        crossed += int(seq["is_first"][:, 1:].any(1).sum())
    assert crossed > 0  # some windows hold an episode start inside, which resets the model's state there
    # Each stored step is in SEQ windows (except the stream's first and last SEQ - 1): equally often.
    inner = counts[SEQ - 1 : n - SEQ + 1]
    share = inner / counts.sum()
    expected = SEQ / (SEQ * (n - SEQ + 1))
    assert ((share - expected).abs() / expected).max() < 0.1  # within 10% (each ~5,000 draws)


def test_ends_priority_weighs_the_episode_ending_window() -> None:
    # DreamerV2's prioritize_ends: the last window of an episode counts 1 + E times.
    buffer = make_replay_buffer(capacity=100, batch_size=64, seq_len=SEQ, ends_priority=10.0)
    add_rows(buffer, _rows([10, 10]))  # 7 windows each; the ending ones start at step 6
    starts = _starts(buffer, 64 * 200)
    ending = ((starts == 6) | (starts == 106)).float().mean().item()
    assert ending == pytest.approx(2 * 11 / (14 + 2 * 10), abs=0.02)


def test_several_lanes_draw_each_window_by_its_weight_under_end_priority() -> None:
    # One lane per env: lane 0 holds a short episode, lane 1 a long one, each with its ending window weighing
    # 1 + 10. A lane drawn by its window count (7 of 34 windows) would give lane 0's ending window 7/34 x 11/17
    # = 0.13 of the draws; drawn by its weight (17 of 54) every window gets its own weight's share: 11/54.
    replay = SequenceReplay(capacity=200, batch_size=64, seq_len=SEQ, ends_priority=10.0, lanes=2)
    replay.add(_rows([10]), lane=0)  # 7 windows, weight 6 + 11
    replay.add(_rows([30], first_id=1), lane=1)  # 27 windows, weight 26 + 11
    assert replay.lane_weights.tolist() == [17.0, 37.0]
    starts = []
    for _ in range(300):
        seq = replay.sample()
        window = seq["obs"].squeeze(-1)
        assert (window.diff(dim=1) == 1).all(), "steps of a window are not consecutive rows"
        assert seq["is_first"][:, 0].all() and not seq["is_first"][:, 1:].any()
        starts.append(window[:, 0])
    drawn = torch.cat(starts)
    assert (drawn == 6).float().mean().item() == pytest.approx(11 / 54, abs=0.012)  # lane 0's ending window
    assert (drawn == 126).float().mean().item() == pytest.approx(11 / 54, abs=0.012)  # lane 1's
    assert (drawn < 100).float().mean().item() == pytest.approx(17 / 54, abs=0.015)


def test_several_lanes_check_that_no_window_crosses_an_episode(monkeypatch: pytest.MonkeyPatch) -> None:
    replay = SequenceReplay(capacity=200, batch_size=2, seq_len=SEQ, lanes=2)
    for lane in (0, 1):
        replay.add(_rows([10, 10], first_id=2 * lane), lane=lane)
    replay.sample()  # windows inside episodes pass
    # A sampler gone wrong: a window from row 8 runs into the next episode's reset row (row 10).
    crossing = (torch.arange(8, 8 + SEQ).repeat(2), {})
    monkeypatch.setattr(type(replay.buffers[0].sampler), "sample", lambda self, storage, n: crossing)
    with pytest.raises(AssertionError, match="crosses an episode boundary"):
        replay.sample()
    streams = SequenceReplay(
        capacity=200, batch_size=2, seq_len=SEQ, cross_episodes=True, ongoing=True, lanes=2
    )
    for lane in (0, 1):
        streams.add(_rows([10, 10], first_id=2 * lane), lane=lane)
    assert streams.sample()["is_first"][:, 1:].any()  # DreamerV3's windows may cross: not an error


def test_only_finished_episodes_are_replayed_unless_ongoing() -> None:
    buffer = make_replay_buffer(capacity=100, batch_size=64, seq_len=SEQ)  # DreamerV2: ongoing=False
    add_rows(buffer, _rows([10, 6], last_open=True))
    assert {int(v) // 100 for v in _starts(buffer, 64 * 5)} == {0}
    rest = _rows([9], first_id=1)[6:]  # episode 1 goes on to its end
    add_rows(buffer, rest)
    assert {int(v) // 100 for v in _starts(buffer, 64 * 10)} == {0, 1}
    empty = make_replay_buffer(capacity=100, batch_size=64, seq_len=SEQ)
    add_rows(empty, _rows([10], last_open=True))
    assert empty.sampler.windows == 0
    with pytest.raises(RuntimeError, match="no complete sequence"):
        sample_sequences(empty, 64, SEQ)


def test_windows_after_the_storage_wraps() -> None:
    buffer = make_replay_buffer(capacity=12, batch_size=64, seq_len=SEQ, ongoing=True)
    add_rows(buffer, _rows([8]))
    # Rows 8-9 hold episode 1, 10-11 and (wrapping) 0-4 episode 2: the 3 rows left of episode 0 are too few
    # and its first is gone, so episode 2, split across the end of the storage, is the only one drawn.
    add_rows(buffer, _rows([2, 7], first_id=1))
    assert len(buffer) == 12
    starts = _starts(buffer, 64 * 4)
    assert set(starts.tolist()) == {200.0, 201.0, 202.0, 203.0}  # every start, including across the wrap


def test_restored_weights_equal_the_recorded_ones() -> None:
    rows = _rows([7, 3, 9, 6, 8], last_open=True)
    for kwargs in ({}, {"ongoing": True, "ends_priority": 5.0}, {"cross_episodes": True, "ongoing": True}):
        live = make_replay_buffer(capacity=20, batch_size=2, seq_len=SEQ, **kwargs)
        for chunk in rows.split(5):  # as collected, a few rows at a time
            add_rows(live, chunk)
        again = make_replay_buffer(capacity=20, batch_size=2, seq_len=SEQ, **kwargs).sampler
        again.reset(start=len(rows) - 20)  # a restore sees the last `capacity` rows only
        again.record(rows["is_first"][-20:], rows["is_last"][-20:])
        assert torch.equal(again.weights, live.sampler.weights), kwargs


def test_replay_rejects_a_capacity_below_one_sequence() -> None:
    with pytest.raises(ValueError, match="capacity"):
        make_replay_buffer(capacity=3, batch_size=2, seq_len=4)


def test_transitions_become_rows_with_the_reset_observation() -> None:
    # Two transitions of an episode's end, then a new episode starts (is_init at its root).
    obs = torch.tensor([[1.0], [2.0], [10.0]])
    nxt = torch.tensor([[2.0], [3.0], [11.0]])
    data = TensorDict(
        {
            "observation": obs,
            "action": torch.tensor([[0.1], [0.2], [0.3]]),
            "is_init": torch.tensor([[False], [False], [True]]),
            "next": {
                "observation": nxt,
                "reward": torch.tensor([[1.0], [2.0], [3.0]]),
                "done": torch.tensor([[False], [True], [False]]),
                "terminated": torch.tensor([[False], [True], [False]]),
            },
        },
        batch_size=[3],
    )
    rows = transitions_to_rows(data, "observation")
    assert rows["observation"].squeeze(-1).tolist() == [2.0, 3.0, 10.0, 11.0]
    assert rows["action"].squeeze(-1).tolist() == pytest.approx([0.1, 0.2, 0.0, 0.3])
    assert rows["reward"].squeeze(-1).tolist() == [1.0, 2.0, 0.0, 3.0]
    assert rows["is_first"].squeeze(-1).tolist() == [False, False, True, False]
    assert rows["is_last"].squeeze(-1).tolist() == [False, True, False, False]
    assert rows["is_terminal"].squeeze(-1).tolist() == [False, True, False, False]


def test_sequences_longer_than_an_episode_are_rejected_up_front() -> None:
    with pytest.raises(ValueError, match="longer than an episode"):
        ReplayDataModule(task="cartpole-balance", time_limit=40, action_repeat=4, seq_len=16)
