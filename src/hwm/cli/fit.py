"""`hwm fit` on LightningCLI: the parser (typed constructors as config) and building the run's objects;
``hwm.cli.wiring`` hands each its collaborators."""

from __future__ import annotations

import logging
import signal
import warnings
from argparse import ArgumentError
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import lightning as L
from jsonargparse import Namespace
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO

from hwm.agent import HarmonyDreamAgent
from hwm.checkpoints.callback import PeriodicCheckpoint
from hwm.checkpoints.io import AtomicCheckpointIO
from hwm.checkpoints.preemption import Preemption
from hwm.cli.errors import ConfigError, explain_config_error, one_line
from hwm.cli.numbers import whole_numbers
from hwm.cli.wiring import RunCallbacks, link, wire
from hwm.config.prescan import last_value
from hwm.data.datamodule import ReplayDataModule
from hwm.experiments.store import prepare_store
from hwm.experiments.tracking import DEFAULT_EXPERIMENT, DEFAULT_URI, default_run_name
from hwm.models import presets
from hwm.training.progress import FrameProgressBar
from hwm.training.tracking_buffer import TrackingBuffer


class HwmCLI(LightningCLI):
    """LightningCLI with hwm's groups (``progress_bar``, ``checkpoint``, ``preemption``, ``tracking``) and
    defaults; the run's objects are ``model`` (the agent), ``datamodule`` and ``trainer``."""

    # The signal after which Lightning's SLURM environment (auto_requeue) requeues the job; None: no requeue.
    requeue_signal: signal.Signals | None = None
    # The run's classes: ``model``, ``data`` and the progress bar (hwm.cli.offline's subclass trains a world
    # model alone from a dataset); ``run_kind`` is recorded with every checkpoint.
    model_class_default: type[L.LightningModule] = HarmonyDreamAgent
    data_class_default: type[L.LightningDataModule] = ReplayDataModule
    progress_bar_class: type[FrameProgressBar] = FrameProgressBar
    run_kind = "agent"
    # The callbacks the trainer was given.
    run_callbacks: list[Callback]

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # hwm's own classes first, Lightning's Trainer last (add_arguments_to_parser): `hwm fit --help` then
        # leads with hwm's options instead of ~360 lines of Trainer options.
        parser.add_lightning_class_args(self.model_class_default, "model")
        parser.add_lightning_class_args(self.data_class_default, "data")

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        link(parser)
        parser.add_lightning_class_args(self.progress_bar_class, "progress_bar")
        parser.add_lightning_class_args(PeriodicCheckpoint, "checkpoint")
        parser.add_lightning_class_args(Preemption, "preemption")
        parser.add_lightning_class_args(TrackingBuffer, "tracking")
        # Read by main() before parsing (the checkpoint's config becomes the base config); listed for --help.
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="resume from a checkpoint: a .ckpt file, a run folder, or 'last' (newest under "
            "--checkpoint.dirpath, default checkpoints/)",
        )
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({f"trainer.{k}": v for k, v in self.trainer_defaults.items() if k != "callbacks"})
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

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # model.base / model.size choose the classes and their defaults before parsing, so that every
        # explicit key (model.world_model.init_args.deter, ...) still overrides the preset.
        if isinstance(args, (list, tuple)):
            args = whole_numbers(args)  # --data.total_frames 1e5
            base = last_value(args, "model.base", "dreamerv2")
            parser.set_defaults(presets.defaults(base, last_value(args, "model.size")))
        super().parse_arguments(parser, args)
        name_run(self.config)

    def before_instantiate_classes(self) -> None:
        # After LightningCLI seeded (and drew the seed of ``seed_everything: true``), before the classes exist.
        share_seed(self.config)
        # Before the logger opens the store: a new sqlite store is created once, under a lock.
        prepare_tracking(self.config)

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
        self.requeue_signal = _requeue_signal(plugins)
        trainer = super()._instantiate_trainer(config, callbacks)
        self.run_callbacks = list(config.get("callbacks") or callbacks)  # the config's, ours added
        return trainer

    @property
    def agent(self) -> HarmonyDreamAgent:
        assert isinstance(self.model, HarmonyDreamAgent)
        return self.model

    @property
    def data(self) -> ReplayDataModule:
        assert isinstance(self.datamodule, ReplayDataModule)
        return self.datamodule

    @property
    def stream_finished(self) -> bool:
        """Whether the run spent its whole budget (else it stopped early)."""
        return self.data.stream_finished

    def run_tags(self) -> dict[str, str]:
        """Tags of the run's MLflow record besides the source's."""
        return {
            "harmonizer_mode": self.agent.harmonizer.mode,
            "base": self.agent.base,
            "task": self.data.env_config.task,
            "suite": self.data.env_config.suite,
        }

    def config_yaml(self) -> str:
        return self.parser.dump(self.config, skip_none=False, skip_check=True)

    @property
    def callbacks(self) -> RunCallbacks:
        return RunCallbacks.find(self.run_callbacks)

    def periodic_checkpoint(self) -> PeriodicCheckpoint | None:
        return self.callbacks.checkpoint

    def preemption(self) -> Preemption:
        return self.callbacks.preemption

    def tracking(self) -> TrackingBuffer:
        return self.callbacks.tracking

    def wire(self) -> None:
        """Hands each object its collaborators (``hwm.cli.wiring``)."""
        wire(self.agent, self.data, self.trainer.logger, self.callbacks, self.requeue_signal)


def _requeue_signal(plugins: list[Any]) -> signal.Signals | None:
    """Lightning's SLURM environment (given, or detected as Lightning does) with auto_requeue: its signal."""
    slurm = next((p for p in plugins if isinstance(p, SLURMEnvironment)), None)
    if slurm is None and SLURMEnvironment.detect():
        slurm = SLURMEnvironment()
    if slurm is None or not slurm.auto_requeue or slurm.requeue_signal is None:
        return None
    return signal.Signals(slurm.requeue_signal)


def share_seed(config: Namespace) -> None:
    """``data.seed`` left unset takes the run's ``seed_everything``: one seed for the networks and the envs
    (``--seed_everything 3`` alone changes both, as the run's name says); a ``data.seed`` given stays."""
    if config.get("data.seed") is None:
        seed = config.get("seed_everything")
        config["data.seed"] = seed if isinstance(seed, int) and not isinstance(seed, bool) else 0


def prepare_tracking(config: Namespace) -> None:
    """Creates a new run's MLflow store and experiment (``hwm.experiments.store``): runs started together in a
    fresh folder would otherwise both migrate one new database, and one would die."""
    logger = config.get("trainer.logger")
    if not isinstance(logger, Namespace) or not str(logger.get("class_path", "")).endswith("MLFlowLogger"):
        return
    if logger.get("init_args.run_id"):
        return  # a resume: its store and experiment exist (it checks them itself)
    prepare_store(
        str(logger.get("init_args.tracking_uri") or DEFAULT_URI),
        str(logger.get("init_args.experiment_name") or DEFAULT_EXPERIMENT),
    )


def name_run(config: Namespace) -> None:
    """Gives a new MLflow run a distinct, readable name (task-mode-seed-time) unless one was chosen."""
    logger = config.get("trainer.logger")
    if not isinstance(logger, Namespace) or not str(logger.get("class_path", "")).endswith("MLFlowLogger"):
        return
    if logger.get("init_args.run_name") or logger.get("init_args.run_id"):
        return  # named by the user (or by hwm study), or an existing run continued
    logger["init_args.run_name"] = default_run_name(
        config.get("data.task"), config.get("model.harmonizer_mode"), config.get("seed_everything")
    )


FIT_USAGE = (
    "hwm fit --config FILE [--config FILE ...] [--section.key VALUE ...] [--ckpt_path PATH|last] [--verbose]"
)
SEED_LOG = "lightning.fabric.utilities.seed"
RANK_ZERO_LOG = "lightning.pytorch.utilities.rank_zero"
# TorchRL announces every storage it allocates on stdout; keep stdout for results.
logging.getLogger("torchrl").setLevel(logging.WARNING)
# An advertisement Lightning prints on every run; nothing to act on.
logging.getLogger(RANK_ZERO_LOG).addFilter(lambda record: "litlogger" not in record.getMessage())


@contextmanager
def held_logs(*names: str) -> Iterator[None]:
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


def build_cli(args: Sequence[str], cli_class: type[HwmCLI] = HwmCLI) -> HwmCLI:
    """Parses, instantiates and wires; raises ConfigError for anything the user got wrong."""
    # main() hands LightningCLI the args after the subcommand on purpose.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    # Lightning 2.6's batch flattening calls torch 2.13's deprecated LeafSpec(): not ours to act on.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # training_step(dataloader_iter) is deliberate (no prefetch: clean checkpoints), experimental or not.
    warnings.filterwarnings("ignore", message=r"Found `dataloader_iter` argument")
    warnings.filterwarnings("ignore", message=r"You are using the `dataloader_iter` step flavor")
    try:
        with held_logs(SEED_LOG):
            cli = cli_class(
                cli_class.model_class_default,
                cli_class.data_class_default,
                run=False,
                args=list(args),
                save_config_callback=None,
                seed_everything_default=0,
                parser_kwargs={
                    "exit_on_error": False,
                    "prog": "hwm fit",
                    "parser_mode": "omegaconf",
                    # argparse's usage would list all ~80 options before the first explanation.
                    "usage": FIT_USAGE,
                    "description": "Train a HarmonyDream agent. Every option is a class's keyword argument: "
                    "hwm's own (model.*, data.*, progress_bar.*, checkpoint.*) first, Lightning's Trainer last. "
                    "--verbose (-v) also shows what Lightning, MLflow and the simulators print while the run "
                    "starts.",
                },
                auto_configure_optimizers=False,
            )
    except SystemExit:
        raise
    except (ArgumentError, KeyError) as exc:  # jsonargparse: unknown keys, wrong types, missing files
        raise ConfigError(explain_config_error(exc, args)) from exc
    except (ValueError, FileNotFoundError, MisconfigurationException) as exc:
        raise ConfigError(one_line(exc)) from exc
    cli.wire()
    return cli
