"""One process per run folder: a second is refused while the first lives; a dead one's lock is no lock."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from helpers import hold_lock
from hwm.checkpoints.lock import LOCK_FILE, RunFolderLocked, RunLock


def test_second_process_is_refused_until_the_first_dies(tmp_path: Path) -> None:
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(RunFolderLocked, match=rf"in use by process {holder.pid} on "):
            RunLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)  # no cleanup runs: the lock file stays behind
        holder.wait()
    assert (tmp_path / LOCK_FILE).exists()
    lock = RunLock(tmp_path).acquire()  # a dead process's lock is stale
    assert lock.held
    lock.release()


def test_lock_is_released_for_the_next_writer(tmp_path: Path) -> None:
    first = RunLock(tmp_path).acquire()
    first.release()
    second = RunLock(tmp_path).acquire()
    assert second.held
    second.release()
