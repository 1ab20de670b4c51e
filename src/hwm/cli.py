"""`hwm` command line: `hwm fit --config FILE [...]` on LightningCLI, with one-line errors for bad input."""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import os
import re
import sys
import tempfile
from argparse import ArgumentError
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import warnings  # noqa: E402

import yaml  # noqa: E402
from jsonargparse import ArgumentParser  # noqa: E402
from lightning.fabric.utilities.exceptions import MisconfigurationException  # noqa: E402
from lightning.pytorch import Callback, Trainer  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.cli import LightningCLI  # noqa: E402
from lightning.pytorch.loggers import MLFlowLogger  # noqa: E402
from lightning.pytorch.plugins.io import CheckpointIO  # noqa: E402

from hwm import presets  # noqa: E402
from hwm.agent import HarmonyDreamAgent  # noqa: E402
from hwm.checkpoint_io import HWM_KEY, AtomicCheckpointIO, CheckpointError  # noqa: E402
from hwm.checkpointing import PeriodicCheckpoint  # noqa: E402
from hwm.compare import DEFAULT_EXPERIMENT, DEFAULT_URI  # noqa: E402
from hwm.data import ReplayDataModule  # noqa: E402
from hwm.progress import FrameProgressBar  # noqa: E402
from hwm.resume import (  # noqa: E402
    IGNORED_KEYS,
    check_state_dict,
    config_changes,
    describe,
    flatten,
    load_for_resume,
    resolve_ckpt_path,
    split_changes,
)
from hwm.run_info import source_tags  # noqa: E402

COMMANDS = ("fit", "study", "compare")


class ConfigError(Exception):
    """Bad user input: reported as one line, exit code 2."""


@dataclass
class Resume:
    """A validated resume: the checkpoint, its path, and the safe overrides given now."""

    path: Path
    checkpoint: dict[str, Any]
    applied: list[tuple[str, Any, Any]]
    # Config-file values the checkpoint's own settings took precedence over: (key, file, checkpoint).
    shadowed: list[tuple[str, Any, Any]] = field(default_factory=list)

    @property
    def meta(self) -> dict[str, Any]:
        return self.checkpoint[HWM_KEY]

    @property
    def number(self) -> int:
        """1 for the first resume of a run, 2 for the next, ..."""
        state = self.checkpoint[ReplayDataModule.__qualname__]
        return int(state["counters"].get("resumes", 0)) + 1


class HwmCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: ArgumentParser) -> None:
        # The agent's network shapes come from the env the data module built.
        parser.link_arguments("data.env_info", "model.env_info", apply_on="instantiate")
        parser.add_lightning_class_args(FrameProgressBar, "progress_bar")
        parser.add_lightning_class_args(PeriodicCheckpoint, "checkpoint")
        # Read by main() before parsing (the checkpoint's config becomes the base config); listed for --help.
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="resume from a checkpoint: a .ckpt file, a run folder, or 'last' (newest under --checkpoint.dirpath, default checkpoints/)",
        )
        parser.set_defaults(
            {
                # One epoch = the data stream until the frame budget is spent; the agent then stops the
                # trainer. Unbounded here so a resumed run (whose last epoch ended) can continue.
                "trainer.max_epochs": -1,
                "trainer.num_sanity_val_steps": 0,
                "trainer.limit_val_batches": 0,
                "trainer.use_distributed_sampler": False,
                "trainer.logger": {
                    "class_path": "lightning.pytorch.loggers.MLFlowLogger",
                    "init_args": {"experiment_name": DEFAULT_EXPERIMENT, "tracking_uri": DEFAULT_URI},
                },
            }
        )

    def parse_arguments(self, parser: ArgumentParser, args: Any) -> None:
        # model.base / model.size choose the classes and their defaults before parsing, so that every
        # explicit key (model.world_model.init_args.deter, ...) still overrides the preset.
        if isinstance(args, (list, tuple)):
            parser.set_defaults(presets.cli_defaults(args))
        super().parse_arguments(parser, args)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        if config.get("enable_checkpointing") is False:
            # Lightning refuses a checkpoint callback when checkpointing is off: honour the switch instead.
            callbacks = [cb for cb in callbacks if not isinstance(cb, PeriodicCheckpoint)]
        if config.get("enable_progress_bar") is False:
            callbacks = [cb for cb in callbacks if not isinstance(cb, FrameProgressBar)]
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        config["plugins"] = plugins
        return super()._instantiate_trainer(config, callbacks)

    def config_yaml(self) -> str:
        return self.parser.dump(self.config, skip_none=False, skip_check=True)

    def periodic_checkpoint(self) -> PeriodicCheckpoint | None:
        return next((cb for cb in self.trainer.callbacks if isinstance(cb, PeriodicCheckpoint)), None)

    def check_resume(self, path: Path, checkpoint: dict[str, Any]) -> Resume:
        """Rejects overrides that would break the run and weights that don't fit; wires up the rest."""
        old = yaml.safe_load(checkpoint[HWM_KEY]["config"])
        applied, rejected = split_changes(config_changes(old, yaml.safe_load(self.config_yaml())))
        if rejected:
            raise ConfigError(
                f"cannot resume {path} with a changed {describe(rejected)}: that changes what the run "
                "learns or holds; start a new run (without --ckpt_path) to use it"
            )
        check_state_dict(checkpoint, self.model)
        resume = Resume(path, checkpoint, applied)
        logger, run_id = self.trainer.logger, resume.meta["run_id"]
        if isinstance(logger, MLFlowLogger) and run_id is not None:
            import mlflow

            client = mlflow.MlflowClient(logger._tracking_uri)
            try:
                client.get_run(run_id)
            except mlflow.exceptions.MlflowException as exc:
                raise ConfigError(
                    f"the checkpoint's MLflow run {run_id} is not in the tracking store {logger._tracking_uri!r} "
                    "(pass the store it was logged to as --trainer.logger.init_args.tracking_uri)"
                ) from exc
            logger._run_id = run_id  # the logger then appends to that run instead of creating one
            history = client.get_metric_history(run_id, "progress/env_frames")
            # Steps the interrupted process logged after this checkpoint are not logged a second time.
            self.model.log_floor = max((m.step for m in history), default=-1)
        self.datamodule.replay_dir = path.parent
        io = self.trainer.strategy.checkpoint_io
        if isinstance(io, AtomicCheckpointIO):
            io.preload(path, checkpoint)
        return resume

    def log_config(self, resume: Resume | None = None) -> None:
        """Records the resolved config (params + YAML artifact) and points checkpoints at the run's folder.

        On resume, params the run already has are left alone (MLflow params are write-once): the applied
        overrides go to a ``resume<N>.overrides`` tag and the config to ``config_resume<N>.yaml``.
        """
        logger = self.trainer.logger
        config = self.config_yaml()
        run_id = None
        if isinstance(logger, MLFlowLogger) and self.trainer.is_global_zero:
            run_id = logger.run_id
            client = logger.experiment
            as_dict = {k: v for k, v in yaml.safe_load(config).items() if k not in IGNORED_KEYS}
            flat = {k: v for k, v in _param_values(as_dict).items() if not k.startswith("trainer.logger")}
            if resume is None:
                logger.log_hyperparams(flat)
                client.log_text(run_id, config, "config.yaml")
                client.set_tag(run_id, "harmonizer_mode", self.model.harmonizer.mode)
                client.set_tag(run_id, "base", self.model.base)
                client.set_tag(run_id, "task", self.datamodule.env_kwargs["task"])
                client.set_tag(run_id, "suite", self.datamodule.env_kwargs["suite"])
                for key, value in source_tags(self.config.get("seed_everything")).items():
                    client.set_tag(run_id, key, value)
            else:
                existing = client.get_run(run_id).data.params
                logger.log_hyperparams({k: v for k, v in flat.items() if k not in existing})
                n = resume.number
                client.log_text(run_id, config, f"config_resume{n}.yaml")
                client.set_tag(run_id, "resumes", str(n))
                client.set_tag(run_id, f"resume{n}.from", str(resume.path))
                client.set_tag(run_id, f"resume{n}.overrides", describe(resume.applied, limit=50) or "none")
                client.update_run(run_id, status="RUNNING")
        checkpoint = self.periodic_checkpoint()
        if checkpoint is not None:
            if resume is not None:
                checkpoint.run_dir = resume.path.parent
            else:
                checkpoint.run_dir = Path(checkpoint.dirpath) / str(run_id or f"run-{os.getpid()}")
            tracking = getattr(logger, "_tracking_uri", None)
            checkpoint.run_info = {"run_id": run_id, "tracking_uri": tracking, "config": config}
        for cb in self.trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
                cb.dirpath = os.path.join("checkpoints", str(run_id))


def _param_values(tree: Any) -> dict[str, Any]:
    """The config's leaves as MLflow params: lists as (truncated) text, which MLflow's params must be."""
    return {k: str(v)[:500] if isinstance(v, list) else v for k, v in flatten(tree).items()}


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


_SEED_LOG = "lightning.fabric.utilities.seed"
_RANK_ZERO_LOG = "lightning.pytorch.utilities.rank_zero"
# TorchRL announces every storage it allocates on stdout; keep stdout for results.
logging.getLogger("torchrl").setLevel(logging.WARNING)
# An advertisement Lightning prints on every run; nothing to act on.
logging.getLogger(_RANK_ZERO_LOG).addFilter(lambda record: "litlogger" not in record.getMessage())


@contextmanager
def _held_logs(*names: str) -> Iterator[None]:
    """Holds back loggers' records; replays them only if the block succeeds.

    LightningCLI seeds (and logs "Seed set to N") before it builds the classes: a bad task would
    otherwise put that line in front of the one-line error.
    """
    held: list[tuple[logging.Logger, logging.LogRecord]] = []

    class _Hold(logging.Filter):
        def __init__(self, log: logging.Logger) -> None:
            super().__init__()
            self.log = log

        def filter(self, record: logging.LogRecord) -> bool:
            held.append((self.log, record))
            return False

    holds = [_Hold(logging.getLogger(name)) for name in names]
    for hold in holds:
        hold.log.addFilter(hold)
    try:
        yield
    finally:
        for hold in holds:
            hold.log.removeFilter(hold)
    for log, record in held:
        log.handle(record)


def build_cli(args: Sequence[str]) -> HwmCLI:
    """Parses and instantiates; raises ConfigError for anything the user got wrong."""
    # main() hands LightningCLI the args after the subcommand on purpose.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    # Lightning 2.6's batch flattening calls torch 2.13's deprecated LeafSpec(): not ours to act on.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # training_step(dataloader_iter) is deliberate (no prefetch: clean checkpoints), experimental or not.
    warnings.filterwarnings("ignore", message=r"Found `dataloader_iter` argument")
    warnings.filterwarnings("ignore", message=r"You are using the `dataloader_iter` step flavor")
    try:
        with _held_logs(_SEED_LOG):
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
        print(
            "commands:\n  fit      train a HarmonyDream agent (hwm fit --help lists every option)\n"
            "  study    seeds x variants of hwm fit under one MLflow experiment (hwm study --help)\n"
            "  compare  compare an experiment's runs by group: table, IQM with CIs, plots (hwm compare --help)"
        )
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"hwm: error: unknown command {command!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    if command == "study":
        from hwm.study import main as study_main

        return study_main(rest)
    if command == "compare":
        from hwm.compare import main as compare_main

        return compare_main(rest)
    try:
        # Nothing Lightning says while building should precede a one-line error.
        with _held_logs(_SEED_LOG, _RANK_ZERO_LOG):
            cli, resume = _build_or_resume(rest)
    except (ConfigError, CheckpointError) as exc:
        print(f"hwm fit: error: {exc}", file=sys.stderr)
        return 2
    if resume is not None:
        frames = int(resume.checkpoint[ReplayDataModule.__qualname__]["counters"]["env_frames"])
        print(
            f"hwm: resuming MLflow run {resume.meta['run_id']} from {resume.path} "
            f"({resume.meta['updates']} updates, {frames} env frames)"
            + (f"; overrides applied: {describe(resume.applied)}" if resume.applied else ""),
            file=sys.stderr,
        )
        if resume.shadowed:
            print(
                f"hwm: kept the checkpoint's settings over the config files for {describe(resume.shadowed)} "
                "(file -> checkpoint); pass --key value to change one",
                file=sys.stderr,
            )
        if frames >= cli.datamodule.total_frames:
            print(
                f"hwm: the checkpoint has spent the frame budget ({frames} >= data.total_frames "
                f"{cli.datamodule.total_frames}): nothing to train; pass a larger --data.total_frames",
                file=sys.stderr,
            )
    cli.log_config(resume)
    _size_threads(cli.trainer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=resume.path if resume else None)
    return 0


def _size_threads(trainer: Trainer) -> None:
    """One share of this machine's cores per local process, unless OMP_NUM_THREADS says otherwise.

    torch's default (every core in every process) makes DDP processes on one machine fight over cores.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, cores // max(1, trainer.num_devices)))


def _build_or_resume(args: list[str]) -> tuple[HwmCLI, Resume | None]:
    args, ckpt_arg = _pop_ckpt_path(args)
    if ckpt_arg is None:
        return build_cli(args), None
    path = resolve_ckpt_path(ckpt_arg, _flag_value(args, "--checkpoint.dirpath") or "checkpoints")
    checkpoint = load_for_resume(path)
    saved = {k: v for k, v in yaml.safe_load(checkpoint[HWM_KEY]["config"]).items() if k not in IGNORED_KEYS}
    files, overrides = _split_config_files(args)
    with tempfile.TemporaryDirectory() as tmp:
        # Config files given now < the checkpoint's config (it holds the run's original command-line
        # overrides, which a resume must not drop) < --key value overrides given now.
        base = Path(tmp, "checkpoint_config.yaml")
        base.write_text(yaml.safe_dump(saved))
        cli = build_cli([*files, "--config", str(base), *overrides])
    resume = cli.check_resume(path, checkpoint)
    resume.shadowed = _shadowed(files, overrides, saved)
    return cli, resume


def _flag_value(args: list[str], flag: str) -> str | None:
    """The value of ``flag VALUE`` / ``flag=VALUE`` in ``args`` (the last one wins), else None."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def _split_config_files(args: list[str]) -> tuple[list[str], list[str]]:
    files: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        if args[i] == "--config" and i + 1 < len(args):
            files += args[i : i + 2]
            i += 2
        elif args[i].startswith("--config="):
            files.append(args[i])
            i += 1
        else:
            rest.append(args[i])
            i += 1
    return files, rest


def _shadowed(files: list[str], overrides: list[str], saved: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Values of the given config files that differ from the checkpoint's (and aren't overridden now)."""

    def plain(key: str) -> str:  # `model.world_model.deter` and `...world_model.init_args.deter` alike
        return key.replace(".init_args.", ".")

    from_files: dict[str, Any] = {}
    for i in range(0, len(files), 2):
        path = files[i + 1] if files[i] == "--config" else files[i].split("=", 1)[1]
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        from_files.update({plain(k): v for k, v in flatten(loaded).items()})
    from_saved = {plain(k): v for k, v in flatten(saved).items()}
    given = {plain(a[2:].split("=", 1)[0]) for a in overrides if a.startswith("--")}
    return [
        (k, v, from_saved[k])
        for k, v in sorted(from_files.items())
        if k in from_saved and from_saved[k] != v and k not in given and k.split(".")[0] not in IGNORED_KEYS
    ]


def _pop_ckpt_path(args: list[str]) -> tuple[list[str], str | None]:
    """Takes ``--ckpt_path X`` / ``--ckpt_path=X`` out of ``args``."""
    rest, value, i = [], None, 0
    while i < len(args):
        if args[i] == "--ckpt_path":
            if i + 1 >= len(args):
                raise ConfigError("--ckpt_path needs a value: a .ckpt file, a run folder or 'last'")
            value, i = args[i + 1], i + 2
        elif args[i].startswith("--ckpt_path="):
            value, i = args[i].split("=", 1)[1], i + 1
        else:
            rest.append(args[i])
            i += 1
    return rest, value


if __name__ == "__main__":
    sys.exit(main())
