"""`hwm` command line: `hwm fit --config FILE [...]` on LightningCLI, with one-line errors for bad input."""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import os
import re
import sys
from argparse import ArgumentError
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import warnings  # noqa: E402

import yaml  # noqa: E402
from jsonargparse import ArgumentParser  # noqa: E402
from lightning.fabric.utilities.exceptions import MisconfigurationException  # noqa: E402
from lightning.pytorch import Trainer  # noqa: E402
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
        flat = _flatten(
            {k: v for k, v in as_dict.items() if k in ("model", "data", "trainer", "seed_everything")}
        )
        logger.log_hyperparams({k: v for k, v in flat.items() if not k.startswith("trainer.logger")})
        logger.experiment.log_text(logger.run_id, config, "config.yaml")
        logger.experiment.set_tag(logger.run_id, "harmonizer_mode", self.model.harmonizer.mode)
        logger.experiment.set_tag(logger.run_id, "task", self.datamodule.env_kwargs["task"])
        logger.experiment.set_tag(logger.run_id, "suite", self.datamodule.env_kwargs["suite"])
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


# The classes behind the top-level config groups, for "did you mean" hints on unknown keys.
_GROUP_CLASSES: dict[str, Any] = {
    "model": HarmonyDreamAgent,
    "data": ReplayDataModule,
    "trainer": Trainer,
    "progress_bar": FrameProgressBar,
}
_TOP_LEVEL_KEYS = ["config", "print_config", "seed_everything", *_GROUP_CLASSES]


def _options(target: Any) -> list[str]:
    """Keyword names a class (or "module.Class" path) accepts; [] when unknown."""
    try:
        if isinstance(target, str):
            module, _, name = target.rpartition(".")
            target = getattr(importlib.import_module(module), name)
        params = inspect.signature(target).parameters.values()
    except Exception:
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    # Arguments without a default (env_info, obs_shape, ...) are filled in by the code, not the config.
    return [p.name for p in params if p.kind in kinds and p.default is not inspect.Parameter.empty]


def _key_options(key: str) -> list[str]:
    """The valid siblings of a config key, as far as they can be known cheaply."""
    if "." not in key:
        return _TOP_LEVEL_KEYS
    return _options(_GROUP_CLASSES.get(key.split(".")[0]))


def _unknown_key(key: str, options: list[str]) -> str:
    parent, _, name = key.rpartition(".")
    close = difflib.get_close_matches(name, options, n=1)
    if close:
        return f'Key "{key}" is not accepted; did you mean "{parent + "." if parent else ""}{close[0]}"?'
    if options and len(options) <= 20:
        where = f'under "{parent}"' if parent else "at the top level"
        return f'Key "{key}" is not accepted; valid keys {where}: {", ".join(options)}'
    return f'Key "{key}" is not accepted (hwm fit --help lists every key)'


def _type_name(text: str) -> str:
    """`<class 'int'>` -> `int`, `typing.Literal['a', 'b']` -> `one of 'a', 'b'`."""
    text = re.sub(r"<class '(?:builtins\.)?([\w.]+)'>", r"\1", text.strip())
    literal = re.fullmatch(r"(?:typing\.)?Literal\[(.*)\]", text)
    if literal:
        return f"one of {literal.group(1)}"
    return text.replace("NoneType", "None")


def _explain_parse_error(exc: BaseException) -> str:
    """Reduces a (possibly long, multi-line, nested) jsonargparse error to one informative line."""
    raw = str(exc)
    # jsonargparse restates the expected type of a class-valued key and the whole parsed namespace.
    text = re.sub(r"Type \S.*? expects a function or a callable class: ", "", " ".join(raw.split()))
    key = ".".join(re.findall(r'Parser key "([^"]+)":', raw))
    option = re.search(r"Option '([^']+)' is not accepted", text)
    if option and key:
        class_path = re.search(r"class_path='([^']+)'", text)
        return _unknown_key(f"{key}.{option.group(1)}", _options(class_path.group(1)) if class_path else [])
    if option:  # an unknown top-level key in a config file
        return _unknown_key(option.group(1), _TOP_LEVEL_KEYS)
    group = re.search(r"Group '([^']+)' does not accept option '([^']+)'", text)
    if group:
        bad = ".".join(group.groups())
        return _unknown_key(bad, _key_options(bad))
    unrecognized = re.match(r"unrecognized arguments: --([\w.]+)", text)
    if unrecognized:
        bad = unrecognized.group(1)
        return _unknown_key(bad, _key_options(bad))
    union = re.search(
        r"Does not validate against any of the Union subtypes Subtypes: \[(.*?)\] .*Given value: (.*)$", text
    )
    if union and key:
        subtypes = " or ".join(_type_name(t) for t in re.split(r", (?![^\[]*\])", union.group(1)))
        return f'Key "{key}": expected {subtypes}; got {union.group(2)!r}'
    expected = re.search(r"Expected an? (.+?)\. Got value: (.*?)(?:\. Got value: .*)?$", text)
    if expected and key:
        return f'Key "{key}": expected {_type_name(expected.group(1))}; got {expected.group(2)!r}'
    text = re.sub(r"\.? Got value: Namespace\(.*$", "", text).replace('Parser key "', 'Key "')
    return text or type(exc).__name__


@contextmanager
def _held_logs(name: str) -> Iterator[None]:
    """Holds back a logger's records; replays them only if the block succeeds.

    LightningCLI seeds (and logs "Seed set to N") before it builds the classes: a bad task would
    otherwise put that line in front of the one-line error.
    """
    held: list[logging.LogRecord] = []

    class _Hold(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            held.append(record)
            return False

    log, hold = logging.getLogger(name), _Hold()
    log.addFilter(hold)
    try:
        yield
    finally:
        log.removeFilter(hold)
    for record in held:
        log.handle(record)


def build_cli(args: Sequence[str]) -> HwmCLI:
    """Parses and instantiates; raises ConfigError for anything the user got wrong."""
    # main() hands LightningCLI the args after the subcommand on purpose.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    # Lightning 2.6's batch flattening calls torch 2.13's deprecated LeafSpec(): not ours to act on.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    try:
        with _held_logs("lightning.fabric.utilities.seed"):
            return HwmCLI(
                HarmonyDreamAgent,
                ReplayDataModule,
                run=False,
                args=list(args),
                save_config_callback=None,
                seed_everything_default=0,
                parser_kwargs={"exit_on_error": False, "prog": "hwm fit", "parser_mode": "omegaconf"},
                auto_configure_optimizers=False,
            )
    except SystemExit:
        raise
    except ArgumentError as exc:  # jsonargparse: unknown keys, wrong types, unreadable config files
        raise ConfigError(_explain_parse_error(exc)) from exc
    except (ValueError, KeyError, FileNotFoundError, MisconfigurationException) as exc:
        raise ConfigError(_one_line(exc)) from exc
    except Exception as exc:
        if type(exc).__name__ in ("ArgumentError", "NSKeyError"):
            raise ConfigError(_explain_parse_error(exc)) from exc
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
