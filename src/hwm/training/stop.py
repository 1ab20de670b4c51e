"""Why a run stops before its budget, and with which exit status (docs/reliability.md lists them).

Whoever finds a reason to stop (a signal, too many non-finite updates, checkpoint writes that keep
failing, a tracking server gone for good) files it with a :class:`StopRequests` board; the preemption
callback acts on it at the next clean point (a checkpoint first when the reason asks for one), and
``hwm fit`` exits with the reason's status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# Exit statuses of `hwm fit` (0: the budget is spent; 2: bad input or a refused file, one line on stderr;
# 1: a crash, with its traceback).
EXIT_NONFINITE = 3
EXIT_CHECKPOINT_WRITES = 4
EXIT_TRACKING = 5
# EX_TEMPFAIL (sysexits.h): stopped at a clean point with a checkpoint; resuming continues the run.
EXIT_PREEMPTED = 75
# 128 + SIGINT, as a shell reports a process a second Ctrl-C ended: stopped at once, nothing saved.
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class StopReason:
    """One reason to stop: the exit status, what to tell the user, and whether to checkpoint first."""

    status: int
    message: str
    checkpoint: bool = True


class StopBoard(Protocol):
    """Where the parts of a run file their reasons to stop (the agent, the checkpoint callback, the logger)."""

    def request_stop(self, reason: StopReason) -> None: ...


class StopRequests:
    """The run's stop requests; the first one filed decides the exit status."""

    def __init__(self) -> None:
        self.reason: StopReason | None = None

    def request_stop(self, reason: StopReason) -> None:
        if self.reason is None:
            self.reason = reason

    @property
    def requested(self) -> bool:
        return self.reason is not None
