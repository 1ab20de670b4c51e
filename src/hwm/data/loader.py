"""The DataLoader around the data module's stream, and the copy of each batch to the training device.

On a GPU the replayed batch is put in pinned (page-locked) host memory and copied without blocking, so the
copy overlaps the kernels already queued; Lightning's own transfer only does that for plain tensors, and a
batch is a TensorDict. On the CPU both steps are skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from tensordict import TensorDictBase
from torch.utils.data import DataLoader, IterableDataset


def stream_loader(batches: Callable[[], Iterator[TensorDictBase]], *, pin_memory: bool) -> DataLoader:
    """A DataLoader that hands on ``batches()``'s TensorDicts as they are (in pinned memory if asked)."""
    return DataLoader(
        _Stream(batches), batch_size=None, num_workers=0, collate_fn=_identity, pin_memory=pin_memory
    )


def to_device(batch: TensorDictBase, device: torch.device) -> TensorDictBase:
    """The batch on ``device``: a non-blocking copy from pinned memory when that is where it lies."""
    if device.type == "cuda" and _pinned(batch):
        return batch.to(device, non_blocking=True)
    return batch.to(device)


def _pinned(batch: TensorDictBase) -> bool:
    return all(t.is_pinned() for t in batch.values(True, True) if isinstance(t, torch.Tensor))


def _identity(batch: TensorDictBase) -> TensorDictBase:
    # The default conversion would turn the TensorDict into a plain dict.
    return batch


class _Stream(IterableDataset):
    def __init__(self, batches: Callable[[], Iterator[TensorDictBase]]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[TensorDictBase]:
        return self.batches()
