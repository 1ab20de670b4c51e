"""`hwm fit | study | compare`: dispatch, and the start of a fit (its record, its checkpoint folder)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightning.pytorch import Trainer

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
    # Each command imports what it needs only: comparing runs needs no Lightning, no simulator.
    if command == "study":
        from hwm.experiments.study import main as study_main

        return study_main(rest)
    if command == "compare":
        from hwm.experiments.compare import main as compare_main

        return compare_main(rest)
    return fit(rest)


def fit(args: list[str]) -> int:
    """`hwm fit`: builds (or resumes) the run, records it, trains."""
    # Must be set before dm_control/mujoco pick a GL backend at import time; EGL works headless.
    os.environ.setdefault("MUJOCO_GL", "egl")
    if not {"-h", "--help"} & set(args):
        from hwm.cli.preflight import PreflightError, check_config_files, check_writable
        from hwm.experiments.tracking import DEFAULT_URI

        # Before Lightning is imported: a bad file or an unwritable store is one line in a fraction of a second.
        try:
            check_config_files(args)
            check_writable(args, DEFAULT_URI)
        except PreflightError as exc:
            print(f"hwm fit: error: {exc}", file=sys.stderr)
            return 2
    from hwm.checkpoints.io import CheckpointError
    from hwm.checkpoints.validate import describe
    from hwm.cli.errors import ConfigError
    from hwm.cli.fit import RANK_ZERO_LOG, SEED_LOG, held_logs
    from hwm.cli.prescan import flag_value
    from hwm.cli.resume import build_or_resume
    from hwm.cli.summary import budget_notice

    try:
        # Nothing Lightning says while building should precede a one-line error.
        with held_logs(SEED_LOG, RANK_ZERO_LOG):
            cli, resume = build_or_resume(args)
    except (ConfigError, CheckpointError) as exc:
        print(f"hwm fit: error: {exc}", file=sys.stderr)
        return 2
    if resume is not None:
        frames = resume.env_frames
        picked = flag_value(args, "--ckpt_path") == "last"
        why = " (--ckpt_path last: the newest run under the checkpoint folder)" if picked else ""
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
        if frames >= cli.data.total_frames:
            print(
                f"hwm: the checkpoint has spent the frame budget ({frames} >= data.total_frames "
                f"{cli.data.total_frames}): nothing to train; pass a larger --data.total_frames",
                file=sys.stderr,
            )
    notice = budget_notice(cli.data.total_frames, cli.data.prefill_frames, resume.env_frames if resume else 0)
    if notice is not None:
        print(notice, file=sys.stderr)
    run_id = start_run(cli, resume)
    size_threads(cli.trainer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=resume.path if resume else None)
    if cli.trainer.is_global_zero:
        print_summary(cli, run_id)
    return 0


def print_summary(cli: HwmCLI, run_id: str | None) -> None:
    """The end-of-run block: which run, how it did, where its checkpoint is, what to type next."""
    from lightning.pytorch.loggers import MLFlowLogger

    from hwm.cli.summary import summarize_run

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
    )
    print("\n".join(summary.lines()), file=sys.stderr)


def start_run(cli: HwmCLI, resume: Resume | None) -> str | None:
    """Records the run in MLflow (rank 0) and points the checkpoints at the run's folder; the run's id."""
    from hwm.cli.run_log import ResumeRecord, log_run

    config = cli.config_yaml()
    run_id = None
    if cli.trainer.is_global_zero:
        tags = {
            "harmonizer_mode": cli.agent.harmonizer.mode,
            "base": cli.agent.base,
            "task": cli.data.env_config.task,
            "suite": cli.data.env_config.suite,
        }
        record = None if resume is None else ResumeRecord(resume.number, resume.path, resume.applied)
        run_id = log_run(
            cli.trainer.logger, config, tags=tags, seed=cli.config.get("seed_everything"), resume=record
        )
    checkpoint = cli.periodic_checkpoint()
    if checkpoint is None:
        return run_id
    if resume is not None:
        run_dir = resume.path.parent
    else:
        run_dir = Path(checkpoint.dirpath) / str(run_id or f"run-{os.getpid()}")
    tracking = cli.config.get("trainer.logger.init_args.tracking_uri") if run_id is not None else None
    checkpoint.start_run(run_dir, {"run_id": run_id, "tracking_uri": tracking, "config": config})
    return run_id


def size_threads(trainer: Trainer) -> None:
    """One share of this machine's cores per local process, unless OMP_NUM_THREADS says otherwise.

    torch's default (every core in every process) makes DDP processes on one machine fight over cores.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, cores // max(1, trainer.num_devices)))
