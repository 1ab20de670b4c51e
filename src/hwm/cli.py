"""`hwm` command line: `hwm fit --config FILE [...]` on LightningCLI, with one-line errors for bad input."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import warnings  # noqa: E402

import yaml  # noqa: E402
from jsonargparse import ArgumentParser  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.cli import LightningCLI  # noqa: E402
from lightning.pytorch.loggers import MLFlowLogger  # noqa: E402

from hwm.agent import HarmonyDreamAgent  # noqa: E402
from hwm.data import ReplayDataModule  # noqa: E402
from hwm.progress import FrameProgressBar  # noqa: E402

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
COMMANDS = ("fit",)


class ConfigError(Exception):
    """Bad user input: reported as one line, exit code 2."""


class HwmCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: ArgumentParser) -> None:
        # The agent's network shapes come from the env the data module built.
        parser.link_arguments("data.env_info", "model.env_info", apply_on="instantiate")
        parser.add_lightning_class_args(FrameProgressBar, "progress_bar")
        parser.set_defaults(
            {
                "trainer.max_epochs": 1,
                "trainer.num_sanity_val_steps": 0,
                "trainer.limit_val_batches": 0,
                "trainer.use_distributed_sampler": False,
                "trainer.logger": {
                    "class_path": "lightning.pytorch.loggers.MLFlowLogger",
                    "init_args": {"experiment_name": "hwm", "tracking_uri": DEFAULT_TRACKING_URI},
                },
            }
        )

    def log_config(self) -> None:
        """Records the resolved config as flattened params and as a YAML artifact of the MLflow run."""
        logger = self.trainer.logger
        if not isinstance(logger, MLFlowLogger) or not self.trainer.is_global_zero:
            return
        config = self.parser.dump(self.config, skip_none=False, skip_check=True)
        as_dict = yaml.safe_load(config)
        flat = _flatten({k: v for k, v in as_dict.items() if k in ("model", "data", "trainer", "seed_everything")})
        logger.log_hyperparams({k: v for k, v in flat.items() if not k.startswith("trainer.logger")})
        logger.experiment.log_text(logger.run_id, config, "config.yaml")
        logger.experiment.set_tag(logger.run_id, "harmonizer_mode", self.model.harmonizer.mode)
        logger.experiment.set_tag(logger.run_id, "task", self.datamodule.env_kwargs["task"])
        for cb in self.trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
                cb.dirpath = os.path.join("checkpoints", str(logger.run_id))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
    elif isinstance(tree, list):
        out[prefix[:-1]] = str(tree)[:500]
    else:
        out[prefix[:-1]] = tree
    return out


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def build_cli(args: Sequence[str]) -> HwmCLI:
    """Parses and instantiates; raises ConfigError for anything the user got wrong."""
    # main() hands LightningCLI the args after the subcommand on purpose.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    try:
        return HwmCLI(
            HarmonyDreamAgent,
            ReplayDataModule,
            run=False,
            args=list(args),
            save_config_callback=None,
            seed_everything_default=0,
            parser_kwargs={"exit_on_error": False, "prog": "hwm fit"},
            auto_configure_optimizers=False,
        )
    except SystemExit:
        raise
    except (ValueError, KeyError, FileNotFoundError) as exc:
        raise ConfigError(_one_line(exc)) from exc
    except Exception as exc:  # jsonargparse raises ArgumentError (an argparse class) for bad keys/types
        if type(exc).__name__ in ("ArgumentError", "NSKeyError"):
            raise ConfigError(_one_line(exc)) from exc
        raise


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: hwm fit --config FILE [--config FILE ...] [--section.key VALUE ...]\n")
        print("commands:\n  fit    train a HarmonyDream agent (hwm fit --help lists every option)")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"hwm: error: unknown command {command!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        cli = build_cli(rest)
    except ConfigError as exc:
        print(f"hwm fit: error: {exc}", file=sys.stderr)
        return 2
    cli.log_config()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return 0


if __name__ == "__main__":
    sys.exit(main())
