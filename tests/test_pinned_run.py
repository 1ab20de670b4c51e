"""The tiny run's final parameters, pinned: whatever changes what one env trains (the order of random draws,
the replay, an update) shows here, meant or not.

The hash was made by ``hwm fit --config conf/tiny.yaml`` (one torch thread, as tests run it; torch 2.13.0 on
this project's x86-64 CPU machines) at the commit that added this test, and is the same as that of the run
before several envs per process and before the wiring moved to ``hwm.cli.wiring``. A change that alters
training on purpose updates it, and says so: print the new one with
``python -c "import sys; sys.path.insert(0, 'tests'); from test_pinned_run import parameters_hash; print(parameters_hash(sys.argv[1]))" checkpoints/<run>/last.ckpt``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from helpers import LoggedRun, load_checkpoint, run_folder

PINNED = "78ae7fc040e20aba44d2b1a518758366afe435b77d300c2239de3b53b75f5cd7"


def parameters_hash(path: str | Path) -> str:
    """SHA-256 of a checkpoint's parameters and buffers, by name."""
    state = load_checkpoint(Path(path))["state_dict"]
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor: torch.Tensor = state[name]
        digest.update(name.encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_one_env_trains_bit_for_bit_as_pinned(tiny_run: LoggedRun) -> None:
    assert parameters_hash(run_folder(tiny_run.workdir) / "last.ckpt") == PINNED
