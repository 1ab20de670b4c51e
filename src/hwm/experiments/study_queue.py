"""A study's SLURM submissions (which array task runs which run) and their state in the queue (``squeue``).
Plain subprocess calls: ``--status`` and a waiting study read the queue without submitit."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from hwm.experiments.study import Study

SUBMISSIONS = "submissions.json"
# squeue's states of a job that has not ended (a requeued task is PENDING or REQUEUED again).
ACTIVE = {
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
}


def slurm_folder(study: Study) -> Path:
    """submitit's folder of the study: sbatch scripts, pickled tasks, each task's own output."""
    return study.folder / "slurm"


def submissions(study: Study) -> list[dict]:
    try:
        found = json.loads((slurm_folder(study) / SUBMISSIONS).read_text())
    except (OSError, ValueError):
        return []
    return found if isinstance(found, list) else []


def record_submission(study: Study, array_job: str, tasks: dict[str, int]) -> None:
    """Adds a submitted array (task id -> run index) to the study's submissions."""
    path = slurm_folder(study) / SUBMISSIONS
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"job": array_job, "tasks": tasks, "at": time.time()}
    tmp = path.with_name(f".{SUBMISSIONS}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps([*submissions(study), entry], indent=1))
    tmp.replace(path)


def queue_states(job: str) -> dict[str, str] | None:
    """``{task id: state}`` of an array (or job) still known to SLURM; None when squeue can't be asked."""
    try:
        proc = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i %T", "-j", job], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        # A job SLURM has already forgotten is "Invalid job id": not in the queue, not an error.
        return {} if "invalid job id" in proc.stderr.lower() else None
    out = {}
    for line in proc.stdout.splitlines():
        task, _, state = line.strip().partition(" ")
        if task:
            out[task] = state.strip()
    return out


def queued_slots(study: Study) -> dict[int, str]:
    """Run index -> SLURM state, for the runs whose task is in the queue (pending, running, requeued)."""
    out: dict[int, str] = {}
    for entry in submissions(study):
        states = queue_states(str(entry["job"])) or {}
        for task, index in entry["tasks"].items():
            state = states.get(task)
            if state in ACTIVE:
                out[int(index)] = state
    return out
