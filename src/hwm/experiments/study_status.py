"""`hwm study --status <id>`: each run's env frames, return and state, read from the study's folder (records,
logs, checkpoint sidecars), its MLflow runs and, for a study on SLURM, the queue. Imports no Lightning."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwm.experiments.study import STUDY_RUN_TAG, Slot, Study, StudyError, load_study
from hwm.experiments.study_folder import (
    SlotRecord,
    checkpoint_frames,
    latest_checkpoint,
    log_path,
    process_alive,
    read_record,
)
from hwm.experiments.study_slot import EXIT_PREEMPTED, frames_so_far, last_message, mlflow_runs
from hwm.experiments.tracking import FRAMES_METRIC

RETURN_METRIC = "eval/return"


@dataclass
class RunStatus:
    slot: Slot
    state: str
    frames: int | None
    budget: int | None
    ret: float | None
    attempts: int
    detail: str = ""


def slot_state(record: SlotRecord, queued: str | None, log: Path) -> tuple[str, str]:
    """(state, detail) of one run: from the SLURM queue if it is there, else from its record."""
    if queued is not None:
        return queued.lower(), ""
    if record.attempts == 0:
        return "not started", ""
    if record.running:
        if record.slurm_job is None and process_alive(record):
            return "running", ""
        if record.slurm_job is None and record.host is not None and record.host != os.uname().nodename:
            return "running", f"on {record.host}, if it still is"
        return "interrupted", "killed: no exit status recorded"
    if record.exit == 0:
        return "finished", ""
    if record.exit in (EXIT_PREEMPTED, 130) or (record.exit or 0) < 0:
        return "interrupted", f"exit {record.exit}"
    return "failed", f"exit {record.exit}: {last_message(log)}"


def statuses(study: Study, queue: dict[int, str]) -> tuple[list[RunStatus], str | None]:
    """Every run's status, and a note when the tracking store could not be read."""
    runs = mlflow_runs(study)
    by_key: dict[str, Any] = {}
    for run in sorted(runs or [], key=lambda r: r.info.start_time or 0):
        by_key[run.data.tags.get(STUDY_RUN_TAG, "")] = run  # the newest run of each slot
    out = []
    for slot in study.slots():
        record = read_record(study, slot)
        log = log_path(study, slot)
        state, detail = slot_state(record, queue.get(slot.index), log)
        in_log = frames_so_far(log)
        run = by_key.get(slot.key)
        metrics = run.data.metrics if run is not None else {}
        folder = latest_checkpoint(study, slot)
        candidates = [
            in_log[0] if in_log else None,
            metrics.get(FRAMES_METRIC),
            checkpoint_frames(folder) if folder is not None else None,
        ]
        frames = max((int(f) for f in candidates if f is not None), default=None)
        ret = metrics.get(RETURN_METRIC)
        out.append(
            RunStatus(slot, state, frames, in_log[1] if in_log else None, ret, record.attempts, detail)
        )
    note = None if runs is not None else f"the tracking store {study.tracking()} could not be read"
    return out, note


def format_table(rows: list[RunStatus], study: Study) -> list[str]:
    head = ("run", "state", "env frames", RETURN_METRIC, "attempts", "log")
    body = []
    for r in rows:
        frames = "-" if r.frames is None else (f"{r.frames}/{r.budget}" if r.budget else str(r.frames))
        ret = "-" if r.ret is None else f"{r.ret:.2f}"
        state = r.state + (f" ({r.detail})" if r.detail else "")
        body.append((r.slot.name, state, frames, ret, str(r.attempts), str(log_path(study, r.slot))))
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in body]
    return lines


def show(logs: Path, study_id: str) -> int:
    """Prints the study's table; 0, or 2 for a study that doesn't exist."""
    try:
        study = load_study(logs, study_id)
    except StudyError as exc:
        print(f"hwm study: error: {exc}", file=sys.stderr)
        return 2
    if Path(study.workdir).is_dir() and Path(study.workdir).resolve() != Path.cwd().resolve():
        study.logs = study.logs.resolve()
        os.chdir(study.workdir)  # the runs' relative paths are relative to where the study started
    queue: dict[int, str] = {}
    if study.launcher == "slurm":
        from hwm.experiments.study_queue import queued_slots

        queue = queued_slots(study)
    rows, note = statuses(study, queue)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    print(f"hwm study {study.study_id}: {len(rows)} runs ({summary}); experiment {study.experiment_name()}")
    print("\n".join(format_table(rows, study)))
    if note:
        print(f"hwm study: {note}: frames from the logs and checkpoints only, no returns", file=sys.stderr)
    return 0
