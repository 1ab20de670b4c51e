"""Several envs as one batched env, without taking the learner's threads.

TorchRL's ``ParallelEnv`` lowers this process's torch threads to ``threads - workers`` when its workers start
(and raises them again when it closes), so that the parent and its workers share the cores while both
compute. In a run the two take turns: the workers step their envs while the learner waits for them, and
they wait while it trains. Lowered, the learner would train on one core of two with four envs. So the
parent keeps the threads the run chose, and each worker runs on one (TorchRL's default).

A Ctrl-C in a terminal reaches every process of its group, and SLURM signals every process of a job step;
a worker that died of it would break the parent's next step. Stopping is the parent's decision (a
checkpoint at the next clean point, then it closes its envs), so workers start with those signals blocked.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torchrl.envs import EnvBase, ParallelEnv, SerialEnv

# Ctrl-C, and the signals a run stops on by default (hwm.checkpoints.preemption).
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGUSR1}


def batched_env(factories: Sequence[Callable[[], EnvBase]], *, parallel: bool) -> EnvBase:
    """One env per factory, stepped as one batch: in worker processes (``parallel``) or in this one."""
    if not parallel:
        return SerialEnv(len(factories), list(factories))
    env = ParallelEnv(
        len(factories), list(factories), mp_start_method="spawn", num_threads=torch.get_num_threads()
    )
    with blocked(STOP_SIGNALS):  # a new process inherits the signal mask of the thread that starts it
        env.start()
    return env


@contextmanager
def blocked(signals: set[signal.Signals]) -> Iterator[None]:
    """``signals`` held back in this thread meanwhile (one that arrives is delivered after)."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def close_env(env: EnvBase) -> None:
    """Closes ``env`` (its workers, if any) and keeps this process's thread count as it was."""
    threads = torch.get_num_threads()
    if not env.is_closed:
        env.close()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
