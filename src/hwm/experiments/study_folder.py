"""What a study keeps on disk besides its definition: each run's record (its attempts and how the last one
ended), its log, and its checkpoints. A rerun reads them to skip, continue or restart each run, and
``hwm study --status`` reads them to show where each run is. Imports no training code.

    <logs>/<id>/study.json                    the definition (hwm.experiments.study)
    <logs>/<id>/<key>.log                     the run's output, every attempt appended
    <logs>/<id>/runs/<key>.json               its record (SlotRecord)
    <checkpoint.dirpath>/<id>/<key>/<mlflow run id>/last.ckpt   its checkpoints
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from hwm.checkpoints.lock import LOCK_FILE, RunFolderLocked, RunLock
from hwm.experiments.study import Slot, Study

RECORDS = "runs"
LAST = "last.ckpt"  # hwm.checkpoints.callback.LAST (that module imports Lightning)


@dataclass
class SlotRecord:
    """One run's history in its study: written by whoever runs it (the local study or a SLURM task)."""

    attempts: int = 0
    running: bool = False  # an attempt started and has not recorded its end (or was killed before it could)
    exit: int | None = None  # the last attempt's exit status
    resumed_from: str | None = None  # the checkpoint the last attempt continued, if it continued one
    host: str | None = None
    pid: int | None = None  # the last attempt's hwm fit process
    slurm_job: str | None = None  # the last attempt's SLURM job (``<array job>_<task>``)
    started: float | None = None
    ended: float | None = None

    @property
    def finished(self) -> bool:
        return not self.running and self.exit == 0


def record_path(study: Study, slot: Slot) -> Path:
    return study.folder / RECORDS / f"{slot.key}.json"


def log_path(study: Study, slot: Slot) -> Path:
    return study.folder / f"{slot.key}.log"


def read_record(study: Study, slot: Slot) -> SlotRecord:
    try:
        saved = json.loads(record_path(study, slot).read_text())
    except (OSError, ValueError):
        return SlotRecord()
    known = {f.name for f in fields(SlotRecord)}
    return SlotRecord(**{k: v for k, v in saved.items() if k in known})


def write_record(study: Study, slot: Slot, record: SlotRecord) -> None:
    """Atomic: a reader (``--status``, a rerun) sees the old record or the new one."""
    path = record_path(study, slot)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(record), indent=1))
    tmp.replace(path)


def start_attempt(record: SlotRecord, resumed_from: Path | None, slurm_job: str | None) -> SlotRecord:
    return SlotRecord(
        attempts=record.attempts + 1,
        running=True,
        resumed_from=str(resumed_from) if resumed_from else None,
        host=socket.gethostname(),
        slurm_job=slurm_job,
        started=time.time(),
    )


def run_folders(study: Study, slot: Slot) -> list[Path]:
    """The slot's run folders (one per MLflow run its attempts started), oldest first."""
    root = study.checkpoint_root(slot)
    found = [p for p in root.glob("*") if p.is_dir()] if root.is_dir() else []
    return sorted(found, key=lambda p: p.stat().st_mtime)


def latest_checkpoint(study: Study, slot: Slot) -> Path | None:
    """The run folder whose ``last.ckpt`` is newest: where an interrupted run continues from."""
    with_ckpt = [p for p in run_folders(study, slot) if (p / LAST).exists()]
    return max(with_ckpt, key=lambda p: (p / LAST).resolve().stat().st_mtime, default=None)


def checkpoint_frames(run_folder: Path) -> int | None:
    """Env frames of the run folder's last checkpoint (its sidecar), if it has one."""
    try:
        record = json.loads((run_folder / LAST).resolve(strict=True).with_suffix(".json").read_text())
        return int(record["env_frames"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def checkpoint_record(run_folder: Path) -> dict[str, Any]:
    """The sidecar of the run folder's last checkpoint ({} without one): its MLflow run id among others."""
    try:
        found = json.loads((run_folder / LAST).resolve(strict=True).with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def wait_until_free(folders: list[Path], timeout: float, say: Any) -> str | None:
    """Waits until no process holds a run folder (a killed study's run still writing its last checkpoint);
    None when free, else who holds it after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    told = False
    for folder in folders:
        if not (folder / LOCK_FILE).exists():
            continue
        while True:
            try:
                RunLock(folder).acquire().release()
                break
            except RunFolderLocked as exc:
                if time.monotonic() >= deadline:
                    return str(exc)
                if not told:
                    say(f"waiting for the previous process of this run to stop ({folder})")
                    told = True
                time.sleep(1.0)
    return None


def process_alive(record: SlotRecord) -> bool:
    """Whether the record's hwm fit process still runs (only knowable on the host that started it)."""
    if record.pid is None or record.host != socket.gethostname():
        return False
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
