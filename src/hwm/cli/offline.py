"""`hwm fit --data.dataset FOLDER`: a world model (and its harmonizers) trained alone on a saved dataset,
with held-out episodes scored as it learns; resumable like any run (``--ckpt_path``)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import MLFlowLogger

from hwm.checkpoints.io import HWM_KEY, CheckpointError, read_checkpoint
from hwm.checkpoints.preemption import slurm_job_id
from hwm.checkpoints.validate import (
    IGNORED_KEYS,
    check_state_dict,
    config_changes,
    describe,
    job_checkpoint,
    resolve_ckpt_path,
    split_changes,
)
from hwm.cli.errors import ConfigError
from hwm.cli.fit import HwmCLI, build_cli
from hwm.cli.numbers import whole_numbers
from hwm.cli.resume import RUN_ID_KEY, Resume
from hwm.cli.wiring import wire_offline, wire_resume
from hwm.config.prescan import PrescanError, flag_value, last_value, pop_flag, split_config_files
from hwm.data.offline import OfflineDataModule
from hwm.experiments.tracking import default_run_name
from hwm.learner import WorldModelLearner
from hwm.models import presets
from hwm.training.progress import UpdateProgressBar

KIND = "world_model"
# What a base's preset sets that a world model trained alone has: its class, its optimizer, its replay.
PRESET_KEYS = (
    "model.world_model",
    "model.model_lr",
    "model.model_eps",
    "model.weight_decay",
    "model.model_grad_clip",
    "data.cross_episodes",
)
PROGRESS_METRIC = "progress/updates"


# The classes behind the groups that differ from online ``hwm fit``'s (whose int options take ``1e4``).
OFFLINE_GROUPS = (
    ("model", WorldModelLearner),
    ("data", OfflineDataModule),
    ("progress_bar", UpdateProgressBar),
)


class OfflineCLI(HwmCLI):
    """``hwm fit`` with a :class:`~hwm.learner.WorldModelLearner` and an
    :class:`~hwm.data.offline.OfflineDataModule`; checkpoints, preemption, tracking and the bar as online."""

    model_class_default = WorldModelLearner
    data_class_default = OfflineDataModule
    progress_bar_class = UpdateProgressBar
    run_kind = KIND

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        if isinstance(args, (list, tuple)):
            args = whole_numbers(args, OFFLINE_GROUPS)  # --data.total_updates 1e4
            base = last_value(args, "model.base", "dreamerv2")
            preset = presets.defaults(base, last_value(args, "model.size"))
            parser.set_defaults({k: v for k, v in preset.items() if k in PRESET_KEYS})
        LightningCLI.parse_arguments(self, parser, args)
        logger = self.config.get("trainer.logger")
        if (
            isinstance(logger, Namespace)
            and not logger.get("init_args.run_name")
            and not logger.get("init_args.run_id")
        ):
            # "wm-<dataset folder>-<mode>-s<seed>-<time>": which data and weighting, at a glance.
            dataset = Path(str(self.config.get("data.dataset"))).name
            logger["init_args.run_name"] = default_run_name(
                f"wm-{dataset}", self.config.get("model.harmonizer_mode"), self.config.get("seed_everything")
            )

    @property
    def learner(self) -> WorldModelLearner:
        assert isinstance(self.model, WorldModelLearner)
        return self.model

    @property
    def dataset(self) -> OfflineDataModule:
        assert isinstance(self.datamodule, OfflineDataModule)
        return self.datamodule

    @property
    def stream_finished(self) -> bool:
        return self.dataset.stream_finished

    def run_tags(self) -> dict[str, str]:
        return {
            "harmonizer_mode": self.learner.harmonizer.mode,
            "base": self.learner.base,
            "dataset": str(self.dataset.dataset_path),
            "kind": KIND,
        }

    def wire(self) -> None:
        """Hands each object its collaborators (``hwm.cli.wiring``)."""
        wire_offline(self.learner, self.dataset, self.trainer.logger, self.callbacks, self.requeue_signal)


def _checkpoint_kind(path: Path) -> str | None:
    try:
        return json.loads(path.resolve().with_suffix(".json").read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def wants_offline(args: list[str]) -> bool:
    """Whether ``hwm fit ARGS`` trains a world model from a dataset: a config that names one or sets its
    budget of updates (``data.total_updates``, which only such runs have; ``--help`` then lists their
    options), or a checkpoint (``--ckpt_path``, or a requeued SLURM job's own) of such a run."""
    if any(last_value(args, key) is not None for key in ("data.dataset", "data.total_updates")):
        return True
    root = flag_value(args, "--checkpoint.dirpath") or "checkpoints"
    ckpt = flag_value(args, "--ckpt_path")
    job = slurm_job_id()
    try:
        if ckpt is not None:
            path: Path | None = resolve_ckpt_path(ckpt, root)
        else:
            path = job_checkpoint(root, job) if job else None
    except CheckpointError:
        return False  # the agent's resume says what is wrong with it
    return path is not None and _checkpoint_kind(path) == KIND


def build_or_resume(args: list[str]) -> tuple[OfflineCLI, Resume | None]:
    """Builds a new run, or (``--ckpt_path``) the run a checkpoint continues, with only safe overrides."""
    try:
        args, ckpt_arg = pop_flag(args, "--ckpt_path")
    except PrescanError as exc:
        raise ConfigError(f"{exc}: a .ckpt file, a run folder or 'last'") from exc
    root = flag_value(args, "--checkpoint.dirpath") or "checkpoints"
    job = slurm_job_id()
    requeued = job_checkpoint(root, job) if ckpt_arg is None and job is not None else None
    if ckpt_arg is None and requeued is None:
        return _build(args), None
    path = requeued if requeued is not None else resolve_ckpt_path(str(ckpt_arg), root)
    if _checkpoint_kind(path) != KIND:
        raise ConfigError(f"{path} is a checkpoint of an agent, not of a world model trained from a dataset")
    checkpoint = read_checkpoint(path)
    meta = checkpoint.get(HWM_KEY, {})
    if "config" not in meta or "run_id" not in meta:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks its run's config or run id")
    saved = {k: v for k, v in yaml.safe_load(meta["config"]).items() if k not in IGNORED_KEYS}
    files, overrides = split_config_files(args)
    if meta["run_id"] is not None and flag_value(overrides, RUN_ID_KEY) is None:
        overrides = [*overrides, RUN_ID_KEY, str(meta["run_id"])]
    with tempfile.TemporaryDirectory() as tmp:
        # The checkpoint's config over the files given now; --key value overrides over both.
        base = Path(tmp, "checkpoint_config.yaml")
        base.write_text(yaml.safe_dump(saved))
        cli = _build([*files, "--config", str(base), *overrides])
    changes = config_changes(yaml.safe_load(meta["config"]), yaml.safe_load(cli.config_yaml()))
    applied, rejected = split_changes([c for c in changes if c[0] != RUN_ID_KEY[2:]])
    if rejected:
        raise ConfigError(
            f"cannot resume {path} with a changed {describe(rejected)}: that changes what the run learns "
            "from; start a new run (without --ckpt_path) to use it"
        )
    check_state_dict(checkpoint, cli.learner)
    resume = Resume(path, checkpoint, applied, requeued_job=job if requeued is not None else None)
    logged = _logged_updates(cli, meta["run_id"])
    wire_resume(cli.learner, cli.callbacks, cli.trainer.strategy.checkpoint_io, path, checkpoint, logged)
    return cli, resume


def _build(args: list[str]) -> OfflineCLI:
    cli = build_cli(args, OfflineCLI)  # a dataset that cannot be read is a one-line ConfigError
    assert isinstance(cli, OfflineCLI)
    return cli


def _logged_updates(cli: OfflineCLI, run_id: str | None) -> int | None:
    """The last update the checkpoint's MLflow run has (None: no store): the interrupted process may have
    logged past its checkpoint, and those updates are not logged a second time."""
    if run_id is None or not isinstance(cli.trainer.logger, MLFlowLogger):
        return None
    import mlflow

    tracking_uri = cli.config.get("trainer.logger.init_args.tracking_uri")
    client = mlflow.MlflowClient(tracking_uri)
    try:
        client.get_run(run_id)
    except mlflow.exceptions.MlflowException as exc:
        raise ConfigError(
            f"the checkpoint's MLflow run {run_id} is not in the tracking store {tracking_uri!r} "
            "(pass the store it was logged to as --trainer.logger.init_args.tracking_uri)"
        ) from exc
    return max((m.step for m in client.get_metric_history(run_id, PROGRESS_METRIC)), default=-1)


def summary_lines(cli: OfflineCLI, run_id: str | None) -> list[str]:
    """The end-of-run block: the run, its last held-out errors, its checkpoint, what to type next."""
    data, updates = cli.dataset, cli.learner.updates
    facts = data.facts
    out = [
        f"hwm: run finished: {updates} updates of a world model on {facts['dataset/train_episodes']} episodes "
        f"({facts['dataset/heldout_episodes']} held out) of {data.dataset_path}"
    ]
    experiment = cli.config.get("trainer.logger.init_args.experiment_name") if run_id else None
    if run_id is not None:
        uri = cli.config.get("trainer.logger.init_args.tracking_uri")
        out.append(f"  MLflow run   {run_id} in experiment {experiment!r} ({uri})")
    last = data.last_metrics
    if last:
        out.append(
            f"  held out     reward MSE {last['heldout/reward_mse']:.4g} (top decile "
            f"{last['heldout/reward_mse_top10']:.4g}), obs MSE per pixel {last['heldout/obs_mse']:.4g}, "
            f"KL {last['heldout/kl']:.4g} (at {data.last_evaluation} updates)"
        )
    checkpoint = cli.periodic_checkpoint()
    if (
        checkpoint is not None
        and checkpoint.run_dir is not None
        and (checkpoint.run_dir / "last.ckpt").exists()
    ):
        out.append(f"  checkpoint   {checkpoint.run_dir / 'last.ckpt'}")
        out.append(f"  continue     hwm fit --ckpt_path {checkpoint.run_dir} --data.total_updates N")
    if experiment is not None:
        out.append(f"  compare      hwm compare --experiment {experiment} --metric heldout/reward_mse")
    return out
