"""`hwm fit | study | compare`: dispatch, and the start of a fit (its record, its checkpoint folder)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightning.pytorch import Trainer

    from hwm.checkpoints.lock import RunLock
    from hwm.cli.fit import HwmCLI
    from hwm.cli.resume import Resume

COMMANDS = ("fit", "study", "compare")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--version"], ["-V"]):
        import hwm

        print(f"hwm {hwm.__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: hwm fit --config FILE [--config FILE ...] [--section.key VALUE ...]\n"
            "       hwm study ... | hwm compare ... | hwm --version\n"
        )
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
    try:
        return _run(command, rest)
    except KeyboardInterrupt:
        from hwm.training.stop import EXIT_INTERRUPTED

        # A Ctrl-C before a run's own handling is in place (importing, parsing, building the envs): nothing
        # was trained, so nothing is lost; one line instead of the traceback of wherever it landed.
        what = " before training started; nothing to save" if command == "fit" else ""
        print(f"\nhwm {command}: interrupted{what}", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(command: str, rest: list[str]) -> int:
    # Each command imports what it needs only: comparing runs needs no Lightning, no simulator.
    if command == "study":
        from hwm.experiments.study_run import main as study_main

        return study_main(rest)
    if command == "compare":
        from hwm.experiments.compare import main as compare_main

        return compare_main(rest)
    return fit(rest)


def fit(args: list[str]) -> int:
    """`hwm fit`: builds (or resumes) the run, records it, trains; the exit status says how it ended
    (docs/reliability.md)."""
    # Must be set before dm_control/mujoco pick a GL backend at import time; EGL works headless.
    os.environ.setdefault("MUJOCO_GL", "egl")
    from hwm.cli.quiet import pop_verbose, quiet_start

    args, verbose = pop_verbose(args)
    if not verbose:
        quiet_start()
    if not {"-h", "--help"} & set(args):
        from hwm.cli.preflight import PreflightError, check_accelerator, check_config_files, check_writable
        from hwm.experiments.tracking import DEFAULT_URI

        # Before Lightning is imported: a bad file or an unwritable store is one line in a fraction of a second.
        try:
            check_config_files(args)
            check_writable(args, DEFAULT_URI)
            check_accelerator(args)
        except PreflightError as exc:
            print(f"hwm fit: error: {exc}", file=sys.stderr)
            return 2
    # MLflow's HTTP client retries a dead server for minutes per call by default; hwm's metric buffer
    # retries on its own (without holding up training), so each call may fail fast.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    from hwm.cli.offline import wants_offline

    if wants_offline(args):  # a world model alone, from a saved dataset (--data.dataset)
        return fit_offline(args)
    from hwm.checkpoints.io import CheckpointError
    from hwm.checkpoints.lock import RunFolderLocked
    from hwm.cli.errors import ConfigError
    from hwm.cli.fit import RANK_ZERO_LOG, SEED_LOG, held_logs
    from hwm.cli.preflight import new_sqlite_store, remove_new_store
    from hwm.cli.resume import NothingToTrain, build_or_resume
    from hwm.cli.summary import budget_notice
    from hwm.config.prescan import flag_value
    from hwm.experiments.tracking import DEFAULT_URI
    from hwm.training.stop import EXIT_INTERRUPTED, EXIT_PREEMPTED

    new_store = new_sqlite_store(args, DEFAULT_URI)
    try:
        # Nothing Lightning says while building should precede a one-line error.
        with held_logs(SEED_LOG, RANK_ZERO_LOG):
            cli, resume = build_or_resume(args)
        if resume is not None:
            announce(cli, resume, picked_last=flag_value(args, "--ckpt_path") == "last")
        notice = budget_notice(
            cli.data.total_frames, cli.data.prefill_frames, resume.env_frames if resume else 0
        )
        if notice is not None:
            print(notice, file=sys.stderr)
        lock, run_id = start_run(cli, resume)
    except (ConfigError, CheckpointError, RunFolderLocked) as exc:
        remove_new_store(new_store)  # a refused run leaves nothing behind
        print(f"hwm fit: error: {exc}", file=sys.stderr)
        return 2
    except NothingToTrain as exc:
        print(exc, file=sys.stderr)
        return 0
    except KeyboardInterrupt:
        print("\nhwm fit: interrupted before training started; nothing to save", file=sys.stderr)
        return EXIT_INTERRUPTED
    status = EXIT_INTERRUPTED
    try:
        size_threads(cli.trainer)
        from hwm.cli.stopping import train

        status = train(cli, resume)
        # Not after a tracking outage (the summary reads the server) or a stop at once (no waiting).
        if cli.trainer.is_global_zero and status in (0, EXIT_PREEMPTED):
            print_summary(cli, run_id, stopped=status == EXIT_PREEMPTED)
        return status
    except KeyboardInterrupt:
        # A Ctrl-C after the run has ended and said how (its summary cut short): the status stands.
        print(f"\nhwm: interrupted; exit status {status}", file=sys.stderr)
        return status
    finally:
        if lock is not None:
            lock.release()


def fit_offline(args: list[str]) -> int:
    """`hwm fit --data.dataset`: a world model from a dataset (``hwm.cli.offline``): build (or resume),
    record, train, sum up."""
    from hwm.checkpoints.io import CheckpointError
    from hwm.checkpoints.lock import RunFolderLocked
    from hwm.checkpoints.validate import describe
    from hwm.cli.errors import ConfigError
    from hwm.cli.fit import RANK_ZERO_LOG, SEED_LOG, held_logs
    from hwm.cli.offline import build_or_resume, summary_lines
    from hwm.cli.stopping import train
    from hwm.data.offline import OfflineDataModule
    from hwm.training.stop import EXIT_INTERRUPTED, EXIT_PREEMPTED

    try:
        with held_logs(SEED_LOG, RANK_ZERO_LOG):
            cli, resume = build_or_resume(args)
        if resume is not None:
            counters = resume.checkpoint.get(OfflineDataModule.__qualname__, {}).get("counters", {})
            print(
                f"hwm: resuming MLflow run {resume.meta['run_id']} from {resume.path} "
                f"({int(counters.get('updates', 0))} updates)"
                + (f"; overrides applied: {describe(resume.applied)}" if resume.applied else ""),
                file=sys.stderr,
            )
        lock, run_id = start_run(cli, resume)
    except (ConfigError, CheckpointError, RunFolderLocked) as exc:
        print(f"hwm fit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nhwm: interrupted before training started; nothing to save", file=sys.stderr)
        return EXIT_INTERRUPTED
    try:
        size_threads(cli.trainer)
        status = train(cli, resume)
        if status in (0, EXIT_PREEMPTED):
            print("\n".join(summary_lines(cli, run_id)), file=sys.stderr)
        return status
    finally:
        if lock is not None:
            lock.release()


def announce(cli: HwmCLI, resume: Resume, picked_last: bool) -> None:
    """Says what a resume continues, what it changed, and what it kept."""
    from hwm.checkpoints.validate import describe

    if resume.requeued_job is not None:
        print(f"hwm: SLURM job {resume.requeued_job} was requeued: continuing its run", file=sys.stderr)
    frames = resume.env_frames
    why = " (--ckpt_path last: the newest run of this task and experiment)" if picked_last else ""
    print(
        f"hwm: resuming MLflow run {resume.meta['run_id']} from {resume.path}{why} "
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


def print_summary(cli: HwmCLI, run_id: str | None, stopped: bool = False) -> None:
    """The end-of-run block: which run, how it did, where its checkpoint is, what to type next."""
    from lightning.pytorch.loggers import MLFlowLogger

    from hwm.cli.summary import Evaluations, summarize_run

    logger = cli.trainer.logger
    checkpoint = cli.periodic_checkpoint()
    summary = summarize_run(
        client=logger.experiment if isinstance(logger, MLFlowLogger) and run_id is not None else None,
        run_id=run_id,
        experiment=cli.config.get("trainer.logger.init_args.experiment_name") if run_id else None,
        tracking_uri=cli.config.get("trainer.logger.init_args.tracking_uri") if run_id else None,
        frames=int(cli.data.counters.get("env_frames", 0)),
        updates=cli.agent.updates,
        run_dir=checkpoint.run_dir if checkpoint is not None else None,
        stopped=stopped,
        evaluations=Evaluations(cli.data.evaluator.episodes, cli.data.evaluator.every),
    )
    print("\n".join(summary.lines()), file=sys.stderr)


def start_run(cli: HwmCLI, resume: Resume | None) -> tuple[RunLock | None, str | None]:
    """Takes the run folder's lock, records the run in MLflow (rank 0) and points the checkpoints at the
    run's folder; returns the lock (held until the process ends or releases it) and the MLflow run's id."""
    import yaml

    from hwm.checkpoints.lock import RunLock
    from hwm.checkpoints.preemption import slurm_job_id
    from hwm.cli.run_log import ResumeRecord, log_run
    from hwm.cli.run_match import run_identity
    from hwm.cli.wiring import wire_run_folder

    lock = None
    if resume is not None and cli.trainer.is_global_zero:
        # Before anything is written: a second process on the same run is refused here.
        lock = RunLock(resume.path.parent).acquire()
    config = cli.config_yaml()
    run_id = None
    if cli.trainer.is_global_zero:
        tags = cli.run_tags()
        record = None if resume is None else ResumeRecord(resume.number, resume.path, resume.applied)
        run_id = log_run(
            cli.trainer.logger, config, tags=tags, seed=cli.config.get("seed_everything"), resume=record
        )
    checkpoint = cli.periodic_checkpoint()
    if checkpoint is None:
        return lock, run_id
    if resume is not None:
        run_dir = resume.path.parent
    else:
        run_dir = Path(checkpoint.dirpath) / str(run_id or f"run-{os.getpid()}")
        if cli.trainer.is_global_zero:
            lock = RunLock(run_dir).acquire()
    tracking = cli.config.get("trainer.logger.init_args.tracking_uri") if run_id is not None else None
    info = {
        "run_id": run_id,
        "tracking_uri": tracking,
        "slurm_job": slurm_job_id(),
        "kind": cli.run_kind,
        "config": config,
    }
    # Each checkpoint's sidecar names its run's task and experiment: what `--ckpt_path last` matches.
    info |= run_identity(yaml.safe_load(config))
    wire_run_folder(cli.callbacks, run_dir, info)
    return lock, run_id


def size_threads(trainer: Trainer) -> None:
    """One share of this machine's cores per local process, unless OMP_NUM_THREADS says otherwise.

    torch's default (every core in every process) makes DDP processes on one machine fight over cores.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, cores // max(1, trainer.num_devices)))
