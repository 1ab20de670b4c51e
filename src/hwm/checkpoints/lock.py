"""One writer per run folder: a second process resuming or writing the same run is refused.

The lock is an ``flock`` on ``<run folder>/.lock``: the kernel drops it when its process ends, however it
ends (SIGKILL, a node's OOM killer, a requeued SLURM job), so a lock left by a dead process never blocks a
resume. The file also names the holder (host, process id, start time) for the refusal message; that text
is only informative, the ``flock`` decides.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_FILE = ".lock"


class RunFolderLocked(Exception):
    """Another live process holds the run folder (one line, exit status 2). Imports nothing of hwm's: a
    process only checking a lock doesn't pay for torch."""


class RunLock:
    """Holds ``<run_dir>/.lock`` until :meth:`release` or the end of the process."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Takes the lock, or raises RunFolderLocked naming the process that has it."""
        if self._fd is not None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(os.pread(fd, 4096, 0))
            os.close(fd)
            raise RunFolderLocked(
                f"run folder {str(self.run_dir)!r} is in use by {holder}; two processes writing one run "
                "would corrupt it: wait for that one to end (or stop it), or resume from a copy"
            ) from None
        # Ours now: whatever a dead holder wrote is replaced.
        record = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _describe(raw: bytes) -> str:
    try:
        record = json.loads(raw.decode())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(record["since"])))
        return f"process {record['pid']} on {record['host']} (since {since})"
    except (ValueError, KeyError, TypeError):
        return "another process"
