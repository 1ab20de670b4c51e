"""Benchmark suites: Meta-world, Atari, distracted DMC (DMC itself is in test_envs.py), the dispatcher, the data
module's success/score metrics, the discrete-action path, and that every config file parses."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from torchrl.envs.utils import check_env_specs

from helpers import fit_parser, run_hwm
from hwm.envs.suites import SUITES, EnvConfig, make_suite_env, suite_options

CONF = Path(__file__).resolve().parents[2] / "conf"


def _inner(env):
    """The gymnasium env (Meta-world, Atari) or dm_env wrapper (distracted DMC) under the TorchRL wrapper."""
    return env.base_env._env


# -- dispatcher ---------------------------------------------------------------------------------------------


def test_unknown_suite_lists_suites() -> None:
    with pytest.raises(ValueError, match="valid suites: dmc, distracted_dmc, metaworld, atari"):
        make_suite_env(suite="gym", task="x")


def test_unknown_option_lists_the_suites_options() -> None:
    with pytest.raises(ValueError, match="stiky.*valid options: sticky, actions, noops"):
        make_suite_env(suite="atari", task="pong", options={"stiky": 0.1})
    assert set(suite_options("distracted_dmc")) >= {"distractor", "strength", "shadows"}


@pytest.mark.parametrize(
    ("suite", "task", "valid"),
    [
        ("metaworld", "lever-pul", "lever-pull"),
        ("atari", "pongg", "ms_pacman"),
        ("distracted_dmc", "cheetah-walk", "run"),
    ],
)
def test_unknown_task_lists_valid_ones(suite: str, task: str, valid: str) -> None:
    with pytest.raises(ValueError, match=valid) as info:
        make_suite_env(suite=suite, task=task)
    assert "\n" not in str(info.value)


# -- Meta-world ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mw_pixels():
    env = make_suite_env(
        suite="metaworld", task="lever-pull", from_pixels=True, action_repeat=2, time_limit=20
    )
    yield env
    env.close()


def test_metaworld_pixels_shapes_specs_and_limit(mw_pixels) -> None:
    check_env_specs(mw_pixels)
    td = mw_pixels.reset()
    assert td["pixels"].shape == (3, 64, 64) and td["pixels"].dtype == torch.uint8
    assert td["success"].shape == (1,) and td["success"].dtype == torch.float32
    spec = mw_pixels.action_spec
    assert spec.shape == (4,) and spec.dtype == torch.float32
    rollout = mw_pixels.rollout(100, break_when_any_done=True)
    assert rollout.shape == (10,)  # 20 env steps / action repeat 2
    assert rollout["next", "truncated"][-1].item() and not rollout["next", "terminated"].any()
    assert not rollout["next", "done"][:-1].any()
    assert _inner(mw_pixels)._env.unwrapped.curr_path_length == 20  # repeat counts env steps
    assert rollout["next", "reward"].dtype == torch.float32


def test_metaworld_success_signal_with_scripted_policy() -> None:
    from metaworld.policies import SawyerDrawerCloseV3Policy

    env = make_suite_env(suite="metaworld", task="drawer-close", from_pixels=False, time_limit=200, seed=1)
    policy = SawyerDrawerCloseV3Policy()
    td = env.reset()
    assert td["observation"].shape == (39,) and td["success"].item() == 0.0
    flags = []
    for _ in range(100):
        action = policy.get_action(td["observation"].numpy())
        td["action"] = torch.as_tensor(np.clip(action, -1, 1), dtype=torch.float32)
        td = env.step(td)["next"]
        flags.append(td["success"].item())
        if td["done"].item():
            break
    assert 1.0 in flags, "the scripted policy should close the drawer"
    first = flags.index(1.0)
    assert all(f == 1.0 for f in flags[first:])  # sticky for the rest of the episode
    env.close()


def test_metaworld_seed_fixes_task_sequence() -> None:
    def resets(seed: int) -> torch.Tensor:
        env = make_suite_env(suite="metaworld", task="push", from_pixels=False, seed=seed)
        out = torch.stack([env.reset()["observation"] for _ in range(3)])
        env.set_seed(seed)
        assert torch.equal(env.reset()["observation"], out[0])  # re-seeding replays the sequence
        env.close()
        return out

    first, again, other = resets(0), resets(0), resets(1)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.equal(first[0], first[1])  # a new goal configuration per episode


def test_metaworld_time_limit_above_benchmark_is_rejected() -> None:
    with pytest.raises(ValueError, match="500"):
        make_suite_env(suite="metaworld", task="push", time_limit=1000)


# -- Atari --------------------------------------------------------------------------------------------------


def test_atari_shapes_specs_and_actions() -> None:
    env = make_suite_env(suite="atari", task="Pong", action_repeat=4)
    check_env_specs(env)
    td = env.reset()
    assert td["pixels"].shape == (3, 64, 64) and td["pixels"].dtype == torch.uint8
    assert env.action_spec.shape == (6,)  # pong's minimal action set (the default, as the authors)
    td = env.rand_step(td)
    assert td["action"].sum().item() == 1  # one-hot
    assert td["next", "reward"].shape == (1,) and td["next", "reward"].dtype == torch.float32
    assert td["next", "pixels"].float().std() > 0
    env.close()


def test_atari_action_repeat_counts_frames_and_truncates() -> None:
    env = make_suite_env(suite="atari", task="breakout", time_limit=40, options={"noops": 0})
    rollout = env.rollout(100, break_when_any_done=True)
    assert rollout.shape == (10,)  # 40 frames / 4
    assert rollout["next", "truncated"][-1].item() and not rollout["next", "terminated"].any()
    game = _inner(env)
    assert game.frames == 40 == game.ale.getEpisodeFrameNumber()
    env.close()


def test_atari_game_over_terminates_and_scores_normalise() -> None:
    from hwm.envs.atari_scores import ATARI100K_SCORES, human_normalized_score

    env = make_suite_env(suite="atari", task="pong", seed=3)
    assert EnvConfig(suite="atari", task="pong", action_repeat=4).probe(3).score_range == (-20.7, 14.6)
    rollout = env.rollout(5000, break_when_any_done=True)  # random play loses 21-x in ~1000 steps
    assert rollout["next", "terminated"][-1].item()
    score = rollout["next", "reward"].sum().item()
    assert -21 <= score < 0
    assert human_normalized_score("Pong", -20.7) == pytest.approx(0.0)
    assert human_normalized_score("ALE/Pong-v5", 14.6) == pytest.approx(1.0)
    assert len(ATARI100K_SCORES) == 26
    assert all(human > random for random, human in ATARI100K_SCORES.values())
    # Not an Atari 100k game: no human-normalised score.
    assert EnvConfig(suite="atari", task="tetris", action_repeat=4).probe(0).score_range is None
    env.close()


def test_atari_seed_is_deterministic_and_seeds_differ() -> None:
    # Pong: its ball and opponent move during the seeded 0-29 no-op frames after reset (Breakout's screen
    # stands still until the agent fires, so its no-ops would show nothing).
    def frames(seed: int) -> torch.Tensor:
        env = make_suite_env(suite="atari", task="pong", seed=seed)
        torch.manual_seed(0)  # the same random actions
        out = env.rollout(60)["next", "pixels"]
        env.close()
        return out

    assert torch.equal(frames(5), frames(5)) and not torch.equal(frames(5), frames(6))


# -- distracted DMC -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("distractor", ["shapes", "noise"])
def test_distracted_dmc_replaces_background_only(distractor: str) -> None:
    kwargs = dict(task="cheetah-run", from_pixels=True, action_repeat=2, time_limit=20, seed=2)
    plain = make_suite_env(suite="dmc", **kwargs)
    full = make_suite_env(
        suite="distracted_dmc", options={"distractor": distractor, "strength": 1.0}, **kwargs
    )
    none = make_suite_env(
        suite="distracted_dmc", options={"distractor": distractor, "strength": 0.0}, **kwargs
    )
    a, b, c = plain.reset()["pixels"], full.reset()["pixels"], none.reset()["pixels"]
    assert b.shape == (3, 64, 64) and b.dtype == torch.uint8
    assert torch.equal(a, c)  # strength 0 is plain DMC
    mask = torch.as_tensor(_inner(full).background_mask())
    changed = (a != b).any(0)
    assert 0.5 < mask.float().mean() < 1.0  # sky and floor are most of the picture, the cheetah is not
    assert not changed[~mask].any()  # the body is untouched
    assert changed[mask].float().mean() > 0.5
    # The video moves, and the episode still ends at its limit.
    rollout = full.rollout(100, break_when_any_done=True)
    assert rollout.shape == (10,) and rollout["next", "truncated"][-1].item()
    back = lambda px: px.float()[:, :8, :]  # noqa: E731  (top rows: sky)
    assert (back(rollout["next", "pixels"][0]) - back(rollout["next", "pixels"][5])).abs().mean() > 1
    check_env_specs(full)
    for env in (plain, full, none):
        env.close()


def test_distracted_dmc_seeded_and_bad_strength() -> None:
    def first(seed: int) -> torch.Tensor:
        env = make_suite_env(suite="distracted_dmc", task="walker-walk", from_pixels=True, seed=seed)
        torch.manual_seed(0)  # the random actions
        out = env.rollout(3)["next", "pixels"]
        env.close()
        return out

    assert torch.equal(first(1), first(1)) and not torch.equal(first(1), first(2))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_suite_env(suite="distracted_dmc", task="walker-walk", from_pixels=True, options={"strength": 2})
    with pytest.raises(ValueError, match="shapes, noise"):
        make_suite_env(
            suite="distracted_dmc", task="walker-walk", from_pixels=True, options={"distractor": "x"}
        )


# -- data module: discrete actions and the suites' metrics --------------------------------------------------


def _datamodule(suite: str, task: str, **kw):
    from hwm.agent import HarmonyDreamAgent
    from hwm.data.datamodule import ReplayDataModule
    from hwm.models.actor_critic import ActorCritic
    from hwm.models.world_model import WorldModel

    args = dict(
        suite=suite,
        task=task,
        total_frames=96,
        prefill_frames=32,
        batch_size=2,
        seq_len=4,
        train_ratio=8.0,
        capacity=1000,
        eval_every=0,
        eval_episodes=2,
    )
    dm = ReplayDataModule(**{**args, **kw})
    tiny_wm = dict(deter=16, hidden=16, stoch=4, classes=4, cnn_depth=4, mlp_units=32, mlp_layers=1)
    agent = HarmonyDreamAgent(
        dm.env_info,
        world_model=partial(WorldModel, **tiny_wm),
        actor_critic=partial(ActorCritic, units=32, layers=1, horizon=3),
    )
    dm.attach_policy(agent.policy())
    return dm, agent


@pytest.mark.usefixtures("one_torch_thread_seeded")
def test_atari_discrete_actions_through_collector_replay_and_model() -> None:
    dm, agent = _datamodule("atari", "pong", from_pixels=True, action_repeat=4, time_limit=64)
    assert dm.env_info.discrete and dm.env_info.action_dim == 6  # pong's minimal action set
    assert agent.actor_critic.actor_grad == "reinforce"
    batches = list(dm.batches())
    assert batches
    for batch in batches:
        action = batch["action"]
        assert action.shape == (2, 4, 6)  # pong's minimal action set
        # One-hot, except at an episode's reset observation, which no action led to (zeros); is_first is
        # set there (and at the first step of every window).
        total, first = action.sum(-1), batch["is_first"].squeeze(-1)
        assert set(action.unique().tolist()) <= {0, 1} and set(total.unique().tolist()) <= {0, 1}
        assert torch.all(first[total == 0]) and torch.all(total[~first] == 1)
        losses, posterior, _ = agent.world_model.loss(batch)
        assert all(torch.isfinite(v) for v in losses.values())
    metrics = dm.pop_metrics()
    assert "eval/human_normalized_score" in metrics
    assert metrics["eval/human_normalized_score"] == pytest.approx((metrics["eval/return"] + 20.7) / 35.3)
    dm.teardown("fit")


@pytest.mark.usefixtures("one_torch_thread_seeded")
def test_metaworld_success_rate_metrics() -> None:
    dm, _ = _datamodule("metaworld", "drawer-close", from_pixels=False, action_repeat=2, time_limit=40)
    assert dm.env_info.has_success and dm.env_info.score_range is None
    list(dm.batches())
    metrics = dm.pop_metrics()
    for key in ("eval/success_rate", "train/success_rate"):
        assert 0.0 <= metrics[key] <= 1.0, metrics
    dm.teardown("fit")


# -- configs ------------------------------------------------------------------------------------------------


def _config_sets() -> list[list[Path]]:
    """Every config file, with its suite's base where it is a per-task file."""
    bases = {
        "metaworld": "metaworld.yaml",
        "atari": "atari.yaml",
        "dmc": "dmc.yaml",
        "distracted": "distracted.yaml",
    }
    sets = [[f] for f in sorted(CONF.glob("*.yaml"))]
    for folder, base in bases.items():
        sets += [[CONF / base, f] for f in sorted((CONF / folder).glob("*.yaml"))]
    return sets


def test_every_config_parses_and_names_a_valid_task(tmp_path, monkeypatch) -> None:
    from hwm.envs.atari import atari_game
    from hwm.envs.dmc import _parse_task
    from hwm.envs.metaworld import metaworld_tasks

    monkeypatch.chdir(tmp_path)
    parser, offline_parser = fit_parser(), fit_parser(offline=True)
    sets = _config_sets()
    assert len(sets) >= 26 + 7 + 2 + 2
    seen = set()
    for files in sets:
        args = [a for f in files for a in ("--config", str(f))]
        if files[-1].name.startswith("offline_"):  # a world model trained from a dataset: no env to name
            offline_parser.parse_args([*args, "--data.dataset", str(tmp_path)])
            continue
        data = parser.parse_args(args).data
        suite, task = data.suite, data.task
        assert suite in SUITES, files
        if suite == "metaworld":
            assert task in metaworld_tasks(), files
        elif suite == "atari":
            atari_game(task)
        else:
            _parse_task(task)
        assert set(data.env_options or {}) <= set(suite_options(suite)), files
        seen.add((suite, task))
    assert {("atari", g) for g in ("pong", "up_n_down", "chopper_command")} <= seen
    assert {
        ("metaworld", t) for t in ("lever-pull", "handle-pull-side", "hammer", "push", "sweep-into")
    } <= seen
    assert {("distracted_dmc", "cheetah-run"), ("distracted_dmc", "walker-walk")} <= seen


# -- a tiny `hwm fit` per suite ------------------------------------------------------------------------------

FIT_SUITES = {
    "atari": (
        ["--data.suite", "atari", "--data.task", "pong", "--data.from_pixels", "true"],
        ["--data.action_repeat", "4", "--data.time_limit", "200"],
        ("eval/human_normalized_score", "train/human_normalized_score"),
    ),
    "metaworld": (
        ["--data.suite", "metaworld", "--data.task", "drawer-close", "--data.from_pixels", "true"],
        ["--data.action_repeat", "2", "--data.total_frames", "240"],
        ("eval/success_rate", "train/success_rate"),
    ),
    "distracted_dmc": (
        ["--data.suite", "distracted_dmc", "--data.task", "cheetah-run", "--data.from_pixels", "true"],
        ["--data.action_repeat", "2", "--data.total_frames", "240", "--data.env_options", "{strength: 0.5}"],
        ("eval/return",),
    ),
}


@pytest.mark.parametrize(
    "suite",
    [
        "atari",  # the discrete-action path end to end
        # ~20 s each on the shared 2-core CPU (MuJoCo renders); their data-module paths are covered above.
        pytest.param("metaworld", marks=pytest.mark.slow),
        pytest.param("distracted_dmc", marks=pytest.mark.slow),
    ],
)
def test_fit_tiny_per_suite(fit_tiny, suite: str) -> None:
    select, settings, keys = FIT_SUITES[suite]
    run = fit_tiny(*select, *settings)
    assert run.run.data.tags["suite"] == suite
    assert run.run.data.params["data.suite"] == suite
    for key in ("loss/obs", "train/episode_return", *keys):
        values = [v for _, v in run.history(key)]
        assert values and all(np.isfinite(values)), (key, sorted(run.run.data.metrics))
    if "eval/success_rate" in keys:
        assert all(0 <= v <= 1 for _, v in run.history("eval/success_rate"))


def test_cli_unknown_suite_is_one_line(tiny_config, tmp_path) -> None:
    proc = run_hwm(["fit", "--config", tiny_config, "--data.suite", "mujoco"], cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "hwm fit: error: Unknown suite 'mujoco'; valid suites: dmc, distracted_dmc, metaworld, atari"
    ]
