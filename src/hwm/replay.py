"""Sequence replay on TorchRL: fixed-length slices that never cross an episode boundary."""

from __future__ import annotations

from tensordict import TensorDictBase
from torchrl.data import LazyTensorStorage, SliceSampler, TensorDictReplayBuffer

TRAJ_KEY = ("collector", "traj_ids")


def make_replay_buffer(*, capacity: int, batch_size: int, seq_len: int) -> TensorDictReplayBuffer:
    """A buffer whose ``sample()`` returns ``batch_size`` slices of ``seq_len`` consecutive steps, flattened.

    ``strict_length`` drops trajectories (or their in-progress heads) shorter than ``seq_len`` instead of
    padding them, so every sampled step is real and belongs to the same episode as its neighbours.
    """
    if capacity < seq_len:
        raise ValueError(f"replay capacity {capacity} is smaller than one sequence ({seq_len})")
    sampler = SliceSampler(slice_len=seq_len, traj_key=TRAJ_KEY, strict_length=True, cache_values=False)
    return TensorDictReplayBuffer(
        storage=LazyTensorStorage(capacity),
        sampler=sampler,
        batch_size=batch_size * seq_len,
    )


def sample_sequences(buffer: TensorDictReplayBuffer, batch_size: int, seq_len: int) -> TensorDictBase:
    """Samples and reshapes to [batch_size, seq_len]."""
    flat = buffer.sample()
    assert flat.shape[0] == batch_size * seq_len, (
        f"sampled {flat.shape[0]} steps, expected {batch_size * seq_len}"
    )
    seq = flat.reshape(batch_size, seq_len)
    traj = seq.get(TRAJ_KEY)
    assert (traj == traj[:, :1]).all(), "a replayed sequence crosses an episode boundary"
    return seq
