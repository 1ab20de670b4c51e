"""One run of a study, wherever it runs (a local study's thread or a SLURM task): decide whether it is
finished, continues from its checkpoint or starts, run its `hwm fit` with the output in its log, and record
how it ended. Deciding at start time, not at submission, is what makes a requeued task continue its run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwm.experiments.study import STUDY_RUN_TAG, Slot, Study
from hwm.experiments.study_folder import (
    SlotRecord,
    latest_checkpoint,
    log_path,
    read_record,
    run_folders,
    start_attempt,
    wait_until_free,
    write_record,
)
from hwm.experiments.tracking import STUDY_TAG

EXIT_BAD_INPUT = 2
EXIT_PREEMPTED = 75  # hwm.training.stop.EXIT_PREEMPTED (that module imports torch)
# How long a run waits for the process of its previous attempt (killed with its study) to checkpoint and end.
LOCK_WAIT_SECONDS = 300.0


@dataclass
class Outcome:
    """How one run went in this invocation of the study."""

    slot: Slot
    state: str  # finished | resumed | failed | interrupted | finished earlier
    code: int | None = None
    took: float = 0.0
    message: str = ""


def slurm_job() -> str | None:
    """This SLURM task's id as scontrol names it (hwm.checkpoints.preemption.slurm_job_id, without Lightning)."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID") or None


def mlflow_runs(study: Study, slot: Slot | None = None) -> list[Any] | None:
    """The study's MLflow runs (of one slot), deleted ones left out; None when the store can't be read."""
    try:
        import mlflow

        client = mlflow.MlflowClient(study.tracking())
        exp = client.get_experiment_by_name(study.experiment_name())
        if exp is None:
            return []
        query = f"tags.`{STUDY_TAG}` = '{study.study_id}'"
        if slot is not None:
            query += f" and tags.`{STUDY_RUN_TAG}` = '{slot.key}'"
        return client.search_runs([exp.experiment_id], filter_string=query, max_results=50000)
    except Exception:
        return None


def ensure_experiment(tracking_uri: str, name: str) -> bool:
    """Creates the experiment up front (parallel runs would race to); False when that isn't possible."""
    try:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri)
        if client.get_experiment_by_name(name) is None:
            client.create_experiment(name)
        return True
    except Exception:
        return False


def finished_before(record: SlotRecord, runs: list[Any] | None) -> bool:
    """The run has spent its budget: its record says so, or its MLflow run does (FINISHED: hwm marks a
    stopped run KILLED or FAILED), e.g. when the process that would have recorded the end was killed."""
    return record.finished or any(r.info.status == "FINISHED" for r in runs or [])


def abandon_runs(study: Study, slot: Slot, runs: list[Any] | None) -> str:
    """Deletes (MLflow's soft delete) the MLflow runs of attempts that left no checkpoint: the run starts
    again, and a comparison must not count their partial curves. Returns what it did, for the log."""
    if not runs:
        return ""
    import mlflow

    client = mlflow.MlflowClient(study.tracking())
    gone = []
    for run in runs:
        try:
            client.delete_run(run.info.run_id)
            gone.append(run.info.run_id)
        except Exception as exc:
            return (
                f"could not delete the MLflow run {run.info.run_id} of an attempt without a checkpoint: {exc}"
            )
    return f"deleted MLflow run(s) {', '.join(gone)} of an attempt without a checkpoint (mlflow runs restore brings one back)"


def run_slot(
    study: Study,
    slot: Slot,
    *,
    say: Callable[[str], None],
    progress_every: float = 0.0,
    runs: list[Any] | None = None,
) -> Outcome:
    """Runs ``slot`` to its end, continuing its checkpoint if it has one; returns how it went.

    ``runs``: the slot's MLflow runs if the caller has them (None: looked up when the run was tried before).
    """
    record = read_record(study, slot)
    if runs is None and (record.attempts or run_folders(study, slot)):
        runs = mlflow_runs(study, slot)
    if finished_before(record, runs):
        return Outcome(slot, "finished earlier", 0)
    log = log_path(study, slot)
    busy = wait_until_free(run_folders(study, slot), LOCK_WAIT_SECONDS, say)
    if busy is not None:
        return Outcome(slot, "failed", EXIT_BAD_INPUT, message=busy)
    resume = latest_checkpoint(study, slot)
    notes = []
    if resume is None:
        notes.append(abandon_runs(study, slot, [r for r in runs or [] if r.info.status != "FINISHED"]))
    args = study.fit_args(slot.variant, slot.seed, slot.index)
    if resume is not None:
        args += ["--ckpt_path", str(resume)]
    record = start_attempt(record, resume, slurm_job())
    write_record(study, slot, record)
    header = f"=== hwm study {study.study_id}: attempt {record.attempts}" + (
        f", continuing {resume}" if resume else ""
    )
    notes = [n for n in notes if n]
    start = time.perf_counter()

    def started(pid: int) -> None:
        record.pid = pid
        write_record(study, slot, record)

    cmd = [sys.executable, "-m", "hwm.cli", "fit", *args]
    code = run_logged(
        cmd,
        log,
        append=record.attempts > 1,
        header=[header, *notes] if record.attempts > 1 or notes else [],
        every=progress_every,
        report=lambda frames: say(f"{frames[0]}/{frames[1]} env frames"),
        started=started,
    )
    record.running, record.exit, record.ended = False, code, time.time()
    write_record(study, slot, record)
    took = time.perf_counter() - start
    if code == 0:
        return Outcome(slot, "resumed" if resume else "finished", code, took)
    # 75: stopped by a signal with a checkpoint; 130: a second Ctrl-C; < 0: killed by a signal.
    state = "interrupted" if code in (EXIT_PREEMPTED, 130) or code < 0 else "failed"
    return Outcome(slot, state, code, took, last_message(log))


# A progress bar's state in a run's log: "123/400 [" (tqdm's n/total).
_FRAMES = re.compile(r"(\d+)/(\d+) \[")
# tqdm's redraws, not messages: "hwm fit:  41%|...".
_BAR = re.compile(r"^hwm fit:\s+\d+%")


def frames_so_far(log: Path) -> tuple[int, int] | None:
    """(env frames, budget) from the last progress-bar update in a run's log, if any yet."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, log.stat().st_size - 4096))
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    found = _FRAMES.findall(text)
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def last_message(log: Path) -> str:
    """The last line of a run's log that is a message, not a progress-bar redraw."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no log)"
    lines = [line.strip() for line in re.split(r"[\r\n]+", text)]
    messages = [line for line in lines if line and not _BAR.match(line)]
    return messages[-1] if messages else "(no output)"


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has Linux send the child SIGTERM when the study process dies (even by SIGKILL):
    the run then checkpoints and stops instead of training on unsupervised. None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import signal

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork: the child only calls it
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)


def run_logged(
    cmd: list[str],
    log: Path,
    *,
    append: bool,
    header: list[str],
    every: float,
    report: Callable[[tuple[int, int]], None],
    started: Callable[[int], None],
) -> int:
    """Runs ``cmd`` with stdout and stderr in ``log``; every ``every`` s reports new progress; the exit code."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the log follows the run, not its buffers
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a" if append else "w") as out:
        for line in header:
            out.write(line + "\n")
        out.flush()
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent()
        )
        started(proc.pid)
        shown = None
        while True:
            try:
                return proc.wait(timeout=every if every > 0 else None)
            except subprocess.TimeoutExpired:
                frames = frames_so_far(log)
                if frames is not None and frames != shown:
                    shown = frames
                    report(frames)
