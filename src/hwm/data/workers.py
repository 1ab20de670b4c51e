"""Several envs as one batched env, without taking the learner's threads.

TorchRL's ``ParallelEnv`` lowers this process's torch threads to ``threads - workers`` when its workers start
(and raises them again when it closes), so that the parent and its workers share the cores while both
compute. In a run the two take turns: the workers step their envs while the learner waits for them, and
they wait while it trains. Lowered, the learner would train on one core of two with four envs. So the
parent keeps the threads the run chose, and each worker runs on one (TorchRL's default).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchrl.envs import EnvBase, ParallelEnv, SerialEnv


def batched_env(factories: Sequence[Callable[[], EnvBase]], *, parallel: bool) -> EnvBase:
    """One env per factory, stepped as one batch: in worker processes (``parallel``) or in this one."""
    if not parallel:
        return SerialEnv(len(factories), list(factories))
    return ParallelEnv(
        len(factories), list(factories), mp_start_method="spawn", num_threads=torch.get_num_threads()
    )


def close_env(env: EnvBase) -> None:
    """Closes ``env`` (its workers, if any) and keeps this process's thread count as it was."""
    threads = torch.get_num_threads()
    if not env.is_closed:
        env.close()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
