"""One seed makes a run: `--seed_everything N` seeds the envs too unless `--data.seed` is given."""

from __future__ import annotations

from pathlib import Path

import pytest
from jsonargparse import Namespace

from hwm.cli.fit import build_cli, share_seed


@pytest.mark.parametrize(
    ("seed_everything", "data_seed", "envs"),
    [(3, None, 3), (3, 5, 5), (4, 4, 4), (True, None, 0), (False, None, 0)],
)
def test_the_envs_take_the_runs_seed_unless_given_their_own(
    seed_everything: int | bool, data_seed: int | None, envs: int
) -> None:
    config = Namespace(seed_everything=seed_everything, data=Namespace(seed=data_seed))
    share_seed(config)
    # True: LightningCLI has replaced it by the seed it drew before this runs (here it has not: 0).
    assert config.data.seed == envs


def test_seed_everything_alone_seeds_the_envs(tiny_config: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cli = build_cli(
        [
            "--config",
            str(tiny_config),
            "--seed_everything",
            "7",
            "--trainer.logger.init_args.tracking_uri",
            uri,
        ]
    )
    assert cli.data.seed == 7 and cli.config.data.seed == 7
    assert "data:\n" in cli.config_yaml() and "  seed: 7\n" in cli.config_yaml()  # what a checkpoint keeps


def test_fit_help_says_which_seed_the_envs_take(capsys: pytest.CaptureFixture[str]) -> None:
    from hwm.cli.main import main

    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Unset (null), ``hwm fit`` takes the run's ``seed_everything``" in text
