"""`hwm study --launcher slurm`: the study's unfinished runs as one SLURM job array, one task per run,
submitted through submitit. Each task runs its `hwm fit` under hwm's own preemption handling: SIGUSR1
before the time limit (or SIGTERM on preemption) checkpoints the run, hwm requeues the task, and the
requeued task continues the same run (study_slot decides at start time). ``--wait`` stays until the array
has ended; ``hwm study --status`` shows it at any time, ``--resume`` submits what is left.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlparse

from hwm.experiments.study import STUDY_RUN_TAG, Slot, Study, load_study
from hwm.experiments.study_folder import log_path, read_record
from hwm.experiments.study_local import report
from hwm.experiments.study_queue import ACTIVE, queue_states, queued_slots, record_submission, slurm_folder
from hwm.experiments.study_slot import (
    EXIT_BAD_INPUT,
    EXIT_PREEMPTED,
    Outcome,
    ensure_experiment,
    finished_before,
    last_message,
    mlflow_runs,
    run_slot,
)
from hwm.experiments.tracking import prepare_experiment


def shared_store_problem(uri: str) -> str | None:
    """Why the tasks can't share this tracking store, or None for a tracking server."""
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https", "databricks"):
        return None
    return (
        f"--launcher slurm needs an MLflow tracking server (--tracking-uri http://HOST:5000), not {uri}: "
        "the array's runs write at the same time, from several nodes, and SQLite or file stores on a shared "
        "filesystem are not safe for concurrent writers (locks fail over NFS, the database can be corrupted); "
        "docs/cluster.md shows how to start a server"
    )


def launch(study: Study) -> int:
    """Submits the unfinished runs as one array; with ``--wait``, reports once every task has ended."""
    slots = study.slots()
    n = len(slots)
    problem = shared_store_problem(study.tracking())
    if problem is not None:
        print(f"hwm study: error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # Fail fast on an unreachable server, as hwm fit does (MLflow's default retries last minutes).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    print(
        f"hwm study {study.study_id}: {n} runs ({len(study.variants())} variants x {len(study.seeds)} seeds)"
    )
    queued = queued_slots(study)
    runs = mlflow_runs(study)
    if runs is None and not study.dry_run:
        print(
            f"hwm study: error: cannot reach the tracking server {study.tracking()}: start it first "
            "(docs/cluster.md)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    if not study.dry_run:
        prepare_experiment(study.tracking(), study.experiment_name())  # the array's tasks start at once
    by_key: dict[str, list[Any]] = {}
    for run in runs or []:
        by_key.setdefault(run.data.tags.get(STUDY_RUN_TAG, ""), []).append(run)
    todo: list[Slot] = []
    earlier: set[int] = set()
    for slot in slots:
        label = f"[{slot.index}/{n}] {slot.name}"
        if slot.index in queued:
            print(f"{label}: already in the queue ({queued[slot.index].lower()})")
        elif finished_before(read_record(study, slot), by_key.get(slot.key, [])):
            print(f"{label}: finished earlier (log: {log_path(study, slot)})")
            earlier.add(slot.index)
        else:
            todo.append(slot)
    if not todo:
        print(f"hwm study {study.study_id}: nothing to submit")
        return 0
    params = study.slurm.executor_parameters(job_name=f"hwm-{study.study_id}")
    if study.dry_run:
        print(f"would submit {len(todo)} task(s) with: {params}")
        for slot in todo:
            print(
                f"[{slot.index}/{n}] {slot.name}: {shlex.join(['hwm', 'fit', *study.fit_args(slot.variant, slot.seed, slot.index)])}"
            )
        return 0
    if not ensure_experiment(study.tracking(), study.experiment_name()):
        print(f"hwm study: error: cannot create the experiment on {study.tracking()}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        tasks = submit(study, todo, params)
    except Exception as exc:  # sbatch's refusal (a bad partition, account, option) is the user's to fix
        detail = " ".join(str(exc).split())[:1000]
        print(f"hwm study: error: the submission failed: {detail}", file=sys.stderr)
        return EXIT_BAD_INPUT
    array_job = next(iter(tasks)).split("_")[0]
    print(f"hwm study {study.study_id}: submitted SLURM job {array_job}: {len(todo)} task(s), one per run")
    for task, index in tasks.items():
        slot = slots[index - 1]
        print(f"[{slot.index}/{n}] {slot.name}: task {task} (log: {log_path(study, slot)})")
    if not study.wait:
        print(f"follow it:   hwm study --status {study.study_id}")
        print(f"after it:    hwm study --resume {study.study_id}   (submits the runs not finished)")
        return 0
    return wait_for(study, array_job, [slots[i - 1] for i in tasks.values()], earlier)


def submit(study: Study, slots: list[Slot], params: dict[str, Any]) -> dict[str, int]:
    """One array, a task per run (submitit pickles the call ``run_task(folder, index)`` of each); returns
    task id -> run index, also recorded in the study's folder."""
    try:
        import submitit
    except ImportError as exc:
        raise RuntimeError("submitit is not installed: pip install submitit") from exc
    executor = submitit.SlurmExecutor(folder=slurm_folder(study).resolve() / "%j")
    executor.update_parameters(**params)
    folder = str(study.folder.resolve())
    jobs = executor.map_array(run_task, [folder] * len(slots), [s.index for s in slots])
    tasks = {job.job_id: slot.index for job, slot in zip(jobs, slots, strict=True)}
    record_submission(study, jobs[0].job_id.split("_")[0], tasks)
    return tasks


def wait_for(study: Study, array_job: str, submitted: list[Slot], earlier: set[int]) -> int:
    """Until no task of the array is in the queue (requeued ones included); then one line per run."""
    last, shown = time.monotonic(), ""
    misses = 0
    try:
        while True:
            states = queue_states(array_job)
            if states is None:
                misses += 1
                if misses >= 30:
                    print("hwm study: squeue keeps failing; stopped waiting", file=sys.stderr)
                    return 1
            else:
                active = [s for s in states.values() if s in ACTIVE]
                if not active:
                    break
                counts = {s: active.count(s) for s in sorted(set(active))}
                line = f"hwm study {study.study_id}: " + ", ".join(
                    f"{k} {v.lower()}" for v, k in counts.items()
                )
                # When the queue changes, and every ten progress periods as a sign of life.
                due = time.monotonic() - last >= 10 * study.progress_every
                if study.progress_every and (line != shown or due):
                    print(line, flush=True)
                    shown, last = line, time.monotonic()
            time.sleep(2.0)
    except KeyboardInterrupt:
        print(f"\nhwm study: stopped waiting; the array goes on (hwm study --status {study.study_id})")
        return 130
    outcomes = []
    for slot in study.slots():
        if slot.index in earlier:
            outcomes.append(Outcome(slot, "finished earlier", 0))
        elif slot in submitted:
            outcomes.append(outcome_of(study, slot))
    return report(study, outcomes)


def outcome_of(study: Study, slot: Slot) -> Outcome:
    """How a submitted run ended, from its record (its task has left the queue)."""
    record = read_record(study, slot)
    took = (record.ended or 0) - (record.started or 0)
    if record.attempts == 0:
        return Outcome(slot, "not run")
    if record.running:
        return Outcome(slot, "interrupted", -9, message="its task ended before it could record how (killed)")
    if record.exit == 0:
        return Outcome(slot, "resumed" if record.resumed_from else "finished", 0, took)
    code = record.exit if record.exit is not None else -1
    state = "interrupted" if code in (EXIT_PREEMPTED, 130) or code < 0 else "failed"
    return Outcome(slot, state, code, took, last_message(log_path(study, slot)))


def _let_the_run_handle_it(signum: int, frame: FrameType | None) -> None:
    """SLURM signals every process of the task: the run checkpoints (and requeues on SIGUSR1); this waiting
    parent must only outlive it. (A Python handler, not SIG_IGN, which the run would inherit.)"""


def run_task(folder: str, index: int) -> int:
    """One array task (runs in the job, called by submitit): run ``index`` of the study in ``folder``."""
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, _let_the_run_handle_it)
    path = Path(folder)
    study = load_study(path.parent, path.name)
    study.logs = path.parent
    os.chdir(study.workdir)
    slot = study.slots()[index - 1]
    out = run_slot(study, slot, say=lambda text: print(f"{slot.name}: {text}", flush=True))
    print(f"hwm study {study.study_id}: {slot.name}: {out.state} (exit {out.code})", flush=True)
    return out.code or 0
