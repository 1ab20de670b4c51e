"""Training, and how `hwm fit` ends: the budget spent (0), or an early stop reported in a few lines with
its exit status and where to resume from (docs/reliability.md)."""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.loggers import MLFlowLogger

from hwm.cli.errors import one_line
from hwm.cli.fit import HwmCLI
from hwm.cli.resume import Resume
from hwm.training.stop import EXIT_INTERRUPTED, EXIT_PREEMPTED, EXIT_TRACKING, StopReason


def train(cli: HwmCLI, resume: Resume | None) -> int:
    """Runs the fit; returns the exit status."""
    preemption = cli.preemption()
    try:
        return _fit(cli, resume)
    except (KeyboardInterrupt, SystemExit) as exc:
        # Lightning turns a KeyboardInterrupt during fit into sys.exit(1) after its own cleanup.
        if preemption.forced and preemption.saved is not None:
            # The second Ctrl-C came after the stop's checkpoint was written: only the shutdown was cut
            # short (unsent metrics are in that checkpoint), so the run is as resumable as after one.
            reason = StopReason(EXIT_PREEMPTED, "stopped by SIGINT; a second Ctrl-C cut the shutdown short")
            return _report(cli, reason, preemption.saved)
        if preemption.forced:
            last = _last_checkpoint(cli)
            print(f"hwm: stopped at once (second Ctrl-C); last checkpoint: {last or 'none'}", file=sys.stderr)
            return EXIT_INTERRUPTED
        if isinstance(exc, SystemExit) and cli.trainer.interrupted and preemption.received is None:
            # A Ctrl-C while the run was being set up, before its signal handling was in place.
            print("\nhwm fit: interrupted before training started; nothing to save", file=sys.stderr)
            return EXIT_INTERRUPTED
        raise
    finally:
        # Kept until the run has reported: a late second Ctrl-C still means "stop at once", not a traceback.
        preemption.uninstall()


def _fit(cli: HwmCLI, resume: Resume | None) -> int:
    preemption = cli.preemption()
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=resume.path if resume else None)
    except Exception as exc:
        reason = preemption.stops.reason
        tracking = cli.tracking()
        if reason is None and tracking.offline:
            reason = StopReason(
                EXIT_TRACKING,
                f"the run ended while the tracking server was unreachable ({one_line(exc)}); "
                f"{tracking.buffered} unsent metric steps are in the last checkpoint and a resume sends them",
            )
        # Ending the MLflow run needs the server too: with the server gone, that is the expected failure.
        if reason is None or reason.status != EXIT_TRACKING:
            raise
        return _report(cli, reason, preemption.saved)
    reason = preemption.stops.reason
    if reason is None or cli.stream_finished:
        return 0
    return _report(cli, reason, preemption.saved)


def _last_checkpoint(cli: HwmCLI) -> Path | None:
    checkpoint = cli.periodic_checkpoint()
    return checkpoint.last_saved_path if checkpoint is not None else None


def _report(cli: HwmCLI, reason: StopReason, saved: Path | None) -> int:
    last = _last_checkpoint(cli)
    if saved is not None:
        where = f"checkpoint {saved}; continue with: hwm fit --ckpt_path {saved.parent}"
    elif reason.checkpoint and last is None:
        where = "no checkpoint (checkpointing is off)"
    elif last is None:
        where = "last good checkpoint: none"
    else:
        where = f"last good checkpoint: {last}; continue with: hwm fit --ckpt_path {last.parent}"
    print(f"hwm: {reason.message}; {where} (exit status {reason.status})", file=sys.stderr)
    logger = cli.trainer.logger
    if reason.status != EXIT_TRACKING and isinstance(logger, MLFlowLogger) and cli.trainer.is_global_zero:
        status = "KILLED" if reason.status == EXIT_PREEMPTED else "FAILED"
        try:  # Lightning marked the run FINISHED; it isn't, and a resume marks it RUNNING again
            logger.experiment.set_terminated(logger.run_id, status)
        except Exception as exc:
            print(f"hwm: could not mark the MLflow run as killed ({exc})", file=sys.stderr)
    return reason.status
