"""The errors a new user meets first are one line that says what to do: a GPU that is not there, a game
misspelt, a budget written 1e5, a config file with several misspelt keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwm.cli.errors import ConfigError, unknown_keys
from hwm.cli.fit import build_cli
from hwm.cli.numbers import int_options, whole_numbers
from hwm.cli.preflight import PreflightError, check_accelerator
from hwm.envs.atari import atari_game


def test_a_gpu_asked_for_where_torch_sees_none_is_one_line_before_anything_is_written(
    tmp_path: Path, tiny_config: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a machine with a GPU
    with pytest.raises(PreflightError, match="train on the CPU with --trainer.accelerator cpu"):
        check_accelerator(["--trainer.accelerator", "gpu"])
    check_accelerator(["--trainer.accelerator", "cpu"])  # nothing to say
    from hwm.cli.main import main

    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", str(tiny_config), "--trainer.accelerator", "gpu"]) == 2
    err = capfd.readouterr().err
    assert err.startswith("hwm fit: error: --trainer.accelerator gpu: torch ") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # no empty mlflow.db left behind


def test_a_misspelt_atari_game_gets_the_closest_names_not_every_rom() -> None:
    with pytest.raises(ValueError) as typo:
        atari_game("breakuot")
    message = str(typo.value)
    assert "did you mean 'breakout'?" in message
    assert "tetris" not in message  # ALE's 100+ ROMs are no longer listed one by one


def test_budgets_written_as_floats_are_whole_numbers() -> None:
    assert {"data.total_frames", "data.prefill_frames", "model.log_every"} <= int_options()
    assert "data.train_ratio" not in int_options()  # a float option
    args = ["--data.total_frames", "1e5", "--data.prefill_frames=2.5e3", "--data.train_ratio", "1e3"]
    args += ["--trainer.logger.init_args.run_name", "1e5", "--data.eval_every", "1.5e2", "--data.seed", "0"]
    assert whole_numbers(args) == [
        "--data.total_frames",
        "100000",
        "--data.prefill_frames=2500",
        "--data.train_ratio",
        "1e3",
        "--trainer.logger.init_args.run_name",
        "1e5",
        "--data.eval_every",
        "150",
        "--data.seed",
        "0",
    ]
    assert whole_numbers(["--data.total_frames", "1.5"]) == [
        "--data.total_frames",
        "1.5",
    ]  # not whole: refused


def test_the_offline_modes_budgets_written_as_floats_are_whole_numbers() -> None:
    from hwm.cli.offline import OFFLINE_GROUPS

    args = ["--data.total_updates", "1e4", "--data.heldout_episodes", "1e1", "--model.log_every", "5e1"]
    assert whole_numbers(args, OFFLINE_GROUPS) == [
        "--data.total_updates",
        "10000",
        "--data.heldout_episodes",
        "10",
        "--model.log_every",
        "50",
    ]
    assert whole_numbers(args)[1] == "1e4"  # online hwm fit's data module has no total_updates


def test_budgets_written_as_floats_are_taken(tiny_config: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cli = build_cli(
        [
            "--config",
            str(tiny_config),
            "--data.total_frames",
            "4e2",
            "--trainer.logger.init_args.tracking_uri",
            uri,
        ]
    )
    assert cli.data.total_frames == 400


def test_every_misspelt_key_of_a_config_file_is_named_with_the_file(tmp_path: Path) -> None:
    config = {
        "data": {"taks": "cartpole-balance", "eval_evry": 100, "env_options": {"anything": 1}},
        "model": {"log_every": 5, "world_model": {"detr": 16}, "actor_critic": {"init_args": {"unitz": 8}}},
        "trainerr": {},
    }
    assert unknown_keys(config) == [
        '"data.taks" (did you mean "data.task"?)',
        '"data.eval_evry" (did you mean "data.eval_every"?)',
        '"model.world_model.detr" (did you mean "model.world_model.deter"?)',
        '"model.actor_critic.init_args.unitz" (did you mean "model.actor_critic.init_args.units"?)',
        '"trainerr" (did you mean "trainer"?)',
    ]
    mine = tmp_path / "mine.yaml"
    mine.write_text("data:\n  taks: walker-walk\n  eval_evry: 100\n")
    with pytest.raises(ConfigError) as bad:
        build_cli(["--config", str(mine)])
    assert str(bad.value) == (
        f'config file {str(mine)!r} has 2 unknown keys: "data.taks" (did you mean "data.task"?), '
        '"data.eval_evry" (did you mean "data.eval_every"?)'
    )


def test_a_budget_written_as_a_float_in_a_file_says_how_to_write_it(tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text("data:\n  total_frames: 1e5\n")  # read as the float 100000.0
    with pytest.raises(
        ConfigError, match=r'Key "data.total_frames": expected int; got .100000.0. \(write 100000\)'
    ):
        build_cli(["--config", str(mine)])
