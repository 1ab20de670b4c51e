"""`hwm fit --ckpt_path ...`: the checkpoint's config becomes the base config, overrides are checked, and the
run continues in the same MLflow run and checkpoint folder."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.loggers import MLFlowLogger

from hwm.checkpoints.class_paths import upgrade_class_paths
from hwm.checkpoints.io import HWM_KEY, CheckpointError, read_checkpoint
from hwm.checkpoints.preemption import slurm_job_id
from hwm.checkpoints.replay_archive import ReplayArchive
from hwm.checkpoints.validate import (
    IGNORED_KEYS,
    check_state_dict,
    config_changes,
    describe,
    flatten,
    job_checkpoint,
    resolve_ckpt_path,
    split_changes,
)
from hwm.cli.errors import ConfigError
from hwm.cli.fit import HwmCLI, build_cli
from hwm.cli.numbers import whole_numbers
from hwm.cli.run_match import OtherRunError, check_same_run, newest_run_like, same_value
from hwm.cli.wiring import wire_resume
from hwm.config.prescan import (
    PrescanError,
    config_paths,
    flag_value,
    pop_flag,
    read_config,
    split_config_files,
)
from hwm.data.datamodule import ReplayDataModule
from hwm.data.offline import OfflineDataModule
from hwm.training.tracking_buffer import TrackingBuffer

RUN_ID_KEY = "--trainer.logger.init_args.run_id"


@dataclass
class Resume:
    """A validated resume: the checkpoint, its path, and the safe overrides given now."""

    path: Path
    checkpoint: dict[str, Any]
    applied: list[tuple[str, Any, Any]]
    # Config-file values the checkpoint's own settings took precedence over: (key, file, checkpoint).
    shadowed: list[tuple[str, Any, Any]] = field(default_factory=list)
    # The SLURM job that wrote it, when a requeued job found its own checkpoint (no --ckpt_path given).
    requeued_job: str | None = None

    @property
    def meta(self) -> dict[str, Any]:
        return self.checkpoint[HWM_KEY]

    @property
    def stream_state(self) -> Mapping[str, Any]:
        state = datamodule_state(self.checkpoint)
        assert state is not None, "load_for_resume() checked it"
        return state

    @property
    def number(self) -> int:
        """1 for the first resume of a run, 2 for the next, ..."""
        return int(self.stream_state["counters"].get("resumes", 0)) + 1

    @property
    def env_frames(self) -> int:
        return int(self.stream_state["counters"]["env_frames"])


def datamodule_state(checkpoint: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The data module's state in a Lightning checkpoint (Lightning keys it by the class's qualname): an
    agent's replay stream, or a world model's dataset (hwm.cli.offline)."""
    for data_class in (ReplayDataModule, OfflineDataModule):
        state = checkpoint.get(data_class.__qualname__)
        if state is not None:
            return state
    return None


def load_for_resume(path: Path) -> dict[str, Any]:
    """Reads the checkpoint and checks that the replay files it lists are all there and intact."""
    checkpoint = read_checkpoint(path)
    state = datamodule_state(checkpoint)
    if not isinstance(state, Mapping) or state.get("replay") is None:
        raise CheckpointError(f"checkpoint {str(path)!r} holds no replay buffer state")
    for rank_state in state.get("ranks", [state]):  # DDP: one replay shard per process
        for replay in rank_state["replay"].get("lanes", [rank_state["replay"]]):
            ReplayArchive.verify(path.parent, replay["chunks"], replay["write_count"], replay["capacity"])
    for key in ("config", "run_id"):
        if key not in checkpoint[HWM_KEY]:
            raise CheckpointError(f"checkpoint {str(path)!r} lacks its run's {key}")
    # Checkpoints written before hwm's package layout name the old module paths of their classes.
    checkpoint[HWM_KEY]["config"] = upgrade_class_paths(checkpoint[HWM_KEY]["config"])
    return checkpoint


def build_or_resume(args: list[str]) -> tuple[HwmCLI, Resume | None]:
    """Builds a new run, or (with ``--ckpt_path``) the run a checkpoint continues, checked."""
    try:
        args, ckpt_arg = pop_flag(args, "--ckpt_path")
    except PrescanError as exc:
        raise ConfigError(f"{exc}: a .ckpt file, a run folder or 'last'") from exc
    root = flag_value(args, "--checkpoint.dirpath") or "checkpoints"
    job = slurm_job_id()
    requeued = job_checkpoint(root, job) if ckpt_arg is None and job is not None else None
    if ckpt_arg is None and requeued is None:
        return build_cli(args), None
    try:
        # A requeued SLURM job runs its script again: it continues its own run (``--ckpt_path last`` of it).
        if requeued is not None:
            path = requeued
        elif ckpt_arg == "last":
            path = newest_run_like(args, root)
        else:
            path = resolve_ckpt_path(str(ckpt_arg), root)
        checkpoint = load_for_resume(path)
        saved = {
            k: v for k, v in yaml.safe_load(checkpoint[HWM_KEY]["config"]).items() if k not in IGNORED_KEYS
        }
        check_same_run(args, saved, path, picked_as_last=ckpt_arg == "last")
    except OtherRunError as exc:
        raise ConfigError(str(exc)) from exc
    files, overrides = split_config_files(args)
    check_budget_left(checkpoint, saved, overrides)
    run_id = checkpoint[HWM_KEY]["run_id"]
    if run_id is not None and flag_value(overrides, RUN_ID_KEY) is None:
        # The logger then appends to the checkpoint's MLflow run instead of creating one.
        overrides = [*overrides, RUN_ID_KEY, str(run_id)]
    with tempfile.TemporaryDirectory() as tmp:
        # Config files given now < the checkpoint's config (it holds the run's original command-line
        # overrides, which a resume must not drop) < --key value overrides given now.
        base = Path(tmp, "checkpoint_config.yaml")
        base.write_text(yaml.safe_dump(saved))
        cli = build_cli([*files, "--config", str(base), *overrides])
    resume = check_resume(cli, path, checkpoint)
    resume.shadowed = _shadowed(config_paths(files), overrides, saved)
    resume.requeued_job = job if requeued is not None else None
    return cli, resume


class NothingToTrain(Exception):
    """The checkpoint has spent the run's frame budget: said in one line before anything is built."""


def check_budget_left(checkpoint: dict[str, Any], saved: dict[str, Any], overrides: list[str]) -> None:
    """Raises NothingToTrain when the budget (a ``--data.total_frames`` given now, else the checkpoint's) is
    spent: answered at once instead of after building the whole run. Not when the checkpoint holds metrics
    the tracking server never got: resuming the run is how they are sent (docs/reliability.md)."""
    if [a for a in overrides if a.startswith("--") and not a.startswith("--data.total_frames")]:
        return  # other changes: the full check says whether they may apply (a refusal tells more)
    # Metrics the checkpoint holds unsent (queued for the server, or its last step, written after it) may
    # have reached the store after it was taken: then there is nothing left to send.
    unsent = checkpoint.get("callbacks", {}).get(TrackingBuffer.__qualname__, {}).get("unsent") or []
    steps = [int(step) for step, _ in unsent]
    pending = checkpoint.get("unlogged_metrics", {})
    if pending.get("metrics"):
        steps.append(int(pending["step"]))
    if steps and not _store_has_step(checkpoint, saved, overrides, max(steps)):
        return  # resuming the run is how they are sent
    state = datamodule_state(checkpoint)
    frames = int(state["counters"]["env_frames"]) if state is not None else 0
    given = flag_value(whole_numbers(overrides), "--data.total_frames")
    try:
        budget = int(given) if given is not None else int(saved["data"]["total_frames"])
    except (KeyError, TypeError, ValueError):
        return  # the parser reports a bad value with its own words
    if frames >= budget:
        raise NothingToTrain(
            f"hwm: the checkpoint has spent the frame budget ({frames} >= data.total_frames {budget}): "
            "nothing to train; pass a larger --data.total_frames"
        )


def _store_has_step(
    checkpoint: dict[str, Any], saved: dict[str, Any], overrides: list[str], step: int
) -> bool:
    """Whether the run's MLflow store has ``step`` (of ``progress/env_frames``, logged at every step). False
    where the store cannot say (no MLflow run, or unreachable)."""
    run_id = checkpoint.get(HWM_KEY, {}).get("run_id")
    logger = (saved.get("trainer") or {}).get("logger")
    uri = flag_value(overrides, "--trainer.logger.init_args.tracking_uri")
    if uri is None and isinstance(logger, dict):
        uri = (logger.get("init_args") or {}).get("tracking_uri")
    if run_id is None or uri is None:
        return False
    try:
        import mlflow

        history = mlflow.MlflowClient(str(uri)).get_metric_history(run_id, "progress/env_frames")
    except Exception:
        return False
    return any(m.step >= step for m in history)


def check_resume(cli: HwmCLI, path: Path, checkpoint: dict[str, Any]) -> Resume:
    """Rejects overrides that would break the run and weights that don't fit; prepares the rest."""
    old = yaml.safe_load(checkpoint[HWM_KEY]["config"])
    changes = config_changes(old, yaml.safe_load(cli.config_yaml()))
    applied, rejected = split_changes([c for c in changes if c[0] != RUN_ID_KEY[2:]])
    if rejected:
        raise ConfigError(
            f"cannot resume {path} with a changed {describe(rejected)}: that changes what the run "
            "learns or holds; start a new run (without --ckpt_path) to use it"
        )
    check_state_dict(checkpoint, cli.agent)
    resume = Resume(path, checkpoint, applied)
    run_id = resume.meta["run_id"]
    logged = None
    if run_id is not None and isinstance(cli.trainer.logger, MLFlowLogger):
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
        history = client.get_metric_history(run_id, "progress/env_frames")
        # Steps the interrupted process logged after this checkpoint are not logged a second time.
        logged = max((m.step for m in history), default=-1)
    wire_resume(cli.agent, cli.callbacks, cli.trainer.strategy.checkpoint_io, path, checkpoint, logged)
    return resume


def _shadowed(files: list[Path], overrides: list[str], saved: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Values of the given config files that differ from the checkpoint's (and aren't overridden now)."""

    def plain(key: str) -> str:  # `model.world_model.deter` and `...world_model.init_args.deter` alike
        return key.replace(".init_args.", ".")

    from_files: dict[str, Any] = {}
    for path in files:
        from_files.update({plain(k): v for k, v in flatten(read_config(path)).items()})
    from_saved = {plain(k): v for k, v in flatten(saved).items()}
    given = {plain(a[2:].split("=", 1)[0]) for a in overrides if a.startswith("--")}
    return [
        (k, v, from_saved[k])
        for k, v in sorted(from_files.items())
        if k in from_saved
        and not same_value(from_saved[k], v)
        and k not in given
        and k.split(".")[0] not in IGNORED_KEYS
    ]
