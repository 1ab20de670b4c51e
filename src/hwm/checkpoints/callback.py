"""Periodic full-state checkpoints (by updates and by wall-clock minutes), the last few kept.

Saves happen only at a clean point: after an update, when the data stream's next move is to collect
(no replay credit left at the current frame count). Resuming there restarts nothing halfway, and every
metric logged before the save belongs to env frames at or before it.

Layout of a run directory (``<dirpath>/<mlflow run id>/``)::

    update-000001000.ckpt   modules, optimizers, scaler, counters, RNG states, collector/env state
    update-000001000.json   sidecar: counters and the replay chunks that checkpoint needs
    last.ckpt -> update-000001000.ckpt
    replay/replay-<start>-<end>.pt   transitions start..end-1, written once, shared by checkpoints
"""

from __future__ import annotations

import json
import time
from errno import errorcode
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from hwm.checkpoints.io import FORMAT_VERSION, HWM_KEY, atomic_symlink, atomic_write
from hwm.checkpoints.replay_archive import REPLAY_DIR
from hwm.training.stop import EXIT_CHECKPOINT_WRITES, StopBoard, StopReason
from hwm.training.stream import AgentProgress, CheckpointedStream, unwired

LAST = "last.ckpt"


def sidecars(run_dir: Path) -> list[dict[str, Any]]:
    """The sidecar records of the checkpoints in ``run_dir``, oldest write first."""
    out = []
    for path in sorted(Path(run_dir).glob("update-*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # an interrupted write leaves no sidecar (atomic), but be lenient with strays
        if (Path(run_dir) / record.get("file", "")).is_file():
            out.append(record)
    # Write order, not update count: a run resumed from an older checkpoint starts a newer timeline.
    return sorted(out, key=lambda r: r["saved_at"])


class PeriodicCheckpoint(Checkpoint):
    """Writes resumable checkpoints during ``hwm fit``.

    Args:
        dirpath: root folder; each run writes to ``<dirpath>/<mlflow run id>/`` (a resumed run keeps
            writing beside the checkpoint it resumed from).
        every_updates: updates between checkpoints (0: not by updates).
        every_minutes: wall-clock minutes between checkpoints (0: not by time).
        keep_last: checkpoints kept per run; older ones and replay chunks no kept one needs are deleted.
        save_on_train_end: also save when the frame budget is spent (resume it with a larger budget).
        max_failed_writes: checkpoint writes that may fail in a row (disk full, folder unwritable) before
            the run stops; until then each failure is reported and training goes on, and the previous
            checkpoint stays the loadable ``last.ckpt`` (writes are atomic).
    """

    def __init__(
        self,
        *,
        dirpath: str = "checkpoints",
        every_updates: int = 5000,
        every_minutes: float = 30.0,
        keep_last: int = 3,
        save_on_train_end: bool = True,
        max_failed_writes: int = 3,
    ) -> None:
        if every_updates < 0 or every_minutes < 0:
            raise ValueError("checkpoint.every_updates and checkpoint.every_minutes must be >= 0")
        if keep_last < 1:
            raise ValueError(f"checkpoint.keep_last must be >= 1; got {keep_last}")
        self.dirpath = dirpath
        self.every_updates, self.every_minutes = every_updates, every_minutes
        if max_failed_writes < 1:
            raise ValueError(f"checkpoint.max_failed_writes must be >= 1; got {max_failed_writes}")
        self.keep_last, self.save_on_train_end = keep_last, save_on_train_end
        self.max_failed_writes = max_failed_writes
        self.failed_writes = 0  # in a row
        self.last_saved_path: Path | None = None
        self._stops: StopBoard = unwired("PeriodicCheckpoint", "the run's stop board")
        self.run_dir: Path | None = None
        self.run_info: dict[str, Any] = {}
        self._stream: CheckpointedStream = unwired("PeriodicCheckpoint", "the data stream")
        self._agent: AgentProgress = unwired("PeriodicCheckpoint", "the agent")
        self._last_time = time.monotonic()
        # The stamp (updates first) of the last save, or of the training start.
        self._last_saved: tuple = (-1, None, None)
        # Updates at the last save or failed attempt: the schedule counts from either.
        self._last_attempt = -1

    def attach(self, stream: CheckpointedStream, agent: AgentProgress, stops: StopBoard) -> None:
        """What a checkpoint cuts: the data stream (its clean points, its replay) and the agent's updates;
        where to file a stop when writes keep failing."""
        self._stream, self._agent, self._stops = stream, agent, stops

    def start_run(self, run_dir: Path, run_info: dict[str, Any]) -> None:
        """Where this run's checkpoints go (a resumed run: beside the one it resumed from), and what to
        record about the run in each (MLflow run id, tracking URI, resolved config)."""
        self.run_dir, self.run_info = Path(run_dir), dict(run_info)
        last = self.run_dir / LAST
        self.last_saved_path = last.resolve() if last.exists() else None

    def _stamp(self) -> tuple:
        """Changes whenever the training state does; the same on every DDP process."""
        return (self._agent.updates, self._stream.counters.get("env_frames"), self._stream.stream_finished)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # The CLI knows the MLflow run (hence the folder) on rank 0 only.
        self.run_dir, self.run_info = trainer.strategy.broadcast((self.run_dir, self.run_info), src=0)
        if self.run_dir is not None:
            # Before Lightning restores a checkpoint: a resumed stream reads its replay from there.
            self._stream.use_replay_dir(self.run_dir)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_time = time.monotonic()
        self._last_saved = self._stamp()
        self._last_attempt = self._agent.updates

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # A run stopping now saved already (a preemption) or must not save (a stop that names the last good
        # checkpoint: this one would be newer than the last good state).
        if not self._stream.at_collect_boundary or trainer.should_stop:
            return
        if self.save_on_train_end and self._stream.counters.get("env_frames", 0) >= self._stream.total_frames:
            # The last update: the stream ends with its final evaluation next, and on_train_end saves the
            # state with it. A save now would be the same update written twice.
            return
        updates = self._agent.updates
        by_updates = self.every_updates and updates - self._last_attempt >= self.every_updates
        by_time = self.every_minutes and time.monotonic() - self._last_time >= self.every_minutes * 60
        if self.every_minutes and trainer.world_size > 1:
            # Saving is collective: every process must agree, and their clocks don't.
            by_time = trainer.strategy.broadcast(by_time, src=0)
        if by_updates or by_time:
            self.save(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The stream's end (a final evaluation) may follow the last periodic save. A run stopped early saved
        # already (Preemption) or must not try again (writes failing).
        if self.save_on_train_end and self._stream.stream_finished and self._stamp() != self._last_saved:
            self.save(trainer, pl_module)

    def save_unless_saved(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Path | None:
        """Saves, unless the last checkpoint already holds this very state (a periodic save just now)."""
        if self._stamp() == self._last_saved and self.last_saved_path is not None:
            return self.last_saved_path
        return self.save(trainer, pl_module)

    def save(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Path | None:
        """Writes a checkpoint; on a failed write (OSError) reports it and returns None, the previous
        checkpoint untouched, and files a stop after ``max_failed_writes`` failures in a row."""
        self._last_time = time.monotonic()
        self._last_attempt = self._agent.updates
        try:
            path = self._write(trainer)
        except OSError as exc:
            self._write_failed(exc)
            return None
        self.failed_writes = 0
        self.last_saved_path = path
        self._last_saved = self._stamp()
        return path

    def _write_failed(self, exc: OSError) -> None:
        self.failed_writes += 1
        what = errorcode.get(exc.errno or 0, type(exc).__name__)
        previous = (
            f"{self.last_saved_path} stays the last one" if self.last_saved_path else "none written yet"
        )
        detail = f"{what}: {exc.strerror or exc}"
        rank_zero_warn(
            f"hwm: checkpoint write failed ({detail}; {self.failed_writes} in a row); {previous}; training goes on"
        )
        if self.failed_writes >= self.max_failed_writes:
            self._stops.request_stop(
                StopReason(
                    EXIT_CHECKPOINT_WRITES,
                    f"checkpoint writes failed {self.failed_writes} times in a row ({detail}); last good "
                    f"checkpoint: {self.last_saved_path or 'none'}",
                    checkpoint=False,
                )
            )

    def _write(self, trainer: L.Trainer) -> Path:
        if self.run_dir is None:
            raise RuntimeError("PeriodicCheckpoint.start_run() is called by the CLI before training")
        updates = self._agent.updates
        name = f"update-{updates:09d}.ckpt"
        path = self.run_dir / name
        self._stream.use_replay_dir(self.run_dir)
        trainer.save_checkpoint(path, weights_only=False)
        if trainer.is_global_zero:
            record = {
                "file": name,
                "updates": updates,
                "env_frames": int(self._stream.counters["env_frames"]),
                "replay_files": list(self._stream.replay_files),
                "saved_at": time.time(),
                "format_version": FORMAT_VERSION,
                **{k: v for k, v in self.run_info.items() if k != "config"},
            }
            try:
                atomic_write(
                    path.with_suffix(".json"), lambda f: f.write(json.dumps(record, indent=1).encode())
                )
                atomic_symlink(name, self.run_dir / LAST)
            except OSError:
                # Without its sidecar and link the file is no checkpoint of the run: don't leave it behind.
                path.unlink(missing_ok=True)
                path.with_suffix(".json").unlink(missing_ok=True)
                raise
            self._prune()
            rank_zero_info(f"hwm: checkpoint {path} ({updates} updates, {record['env_frames']} env frames)")
        return path

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[HWM_KEY] = {
            "format_version": FORMAT_VERSION,
            "updates": self._agent.updates,
            "saved_at": time.time(),
            **self.run_info,
        }

    def _prune(self) -> None:
        """Keeps the newest ``keep_last`` checkpoints and the replay chunks they list."""
        assert self.run_dir is not None
        records = sidecars(self.run_dir)
        for old in records[: max(0, len(records) - self.keep_last)]:
            (self.run_dir / old["file"]).unlink(missing_ok=True)
            (self.run_dir / old["file"]).with_suffix(".json").unlink(missing_ok=True)
        needed = {f for r in records[-self.keep_last :] for f in r["replay_files"]}
        for chunk in (self.run_dir / REPLAY_DIR).rglob("*.pt"):
            if chunk.relative_to(self.run_dir).as_posix() not in needed:
                chunk.unlink(missing_ok=True)
