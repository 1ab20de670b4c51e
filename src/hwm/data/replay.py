"""Sequence replay as DreamerV2/V3 store and sample it, on TorchRL's storage.

Steps are stored in the order they happen, one row each: the observation o_t, the action a_{t-1} that led to
it, the reward r_t and the flags ``is_first`` (an episode's reset observation, stored with a zero action and
reward), ``is_last`` and ``is_terminal``. A batch is ``batch_size`` windows of ``seq_len`` consecutive rows,
drawn uniformly over all windows, so every stored step is equally likely and short episodes are not
over-sampled; the first row of every window is marked ``is_first`` (the state before it is unknown). (The
authors' DreamerV2 replay picks an episode first, then a window in it: the same distribution when every
episode has the same length, as on every DreamerV2 suite here; docs/fidelity.md.)

Two flavours, as the two bases' own replays:
- DreamerV2 (``cross_episodes=False``): a window lies inside one episode; with ``ongoing=False`` only
  finished episodes are sampled; ``ends_priority`` E gives the window that ends an episode E + 1 times the
  weight of the others (DreamerV2's ``prioritize_ends``, Meta-world's 50).
- DreamerV3 (``cross_episodes=True``): any window of the stream, also across episode boundaries, where the
  world model restarts from its initial state at the ``is_first`` row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDictBase
from torch import Tensor
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.data.replay_buffers import Sampler, Storage

from hwm.checkpoints.io import CheckpointError
from hwm.checkpoints.replay_archive import ReplayArchive
from hwm.models.world_model import IS_FIRST, IS_LAST

__all__ = [
    "SequenceReplay",
    "SequenceSampler",
    "add_rows",
    "make_replay_buffer",
    "sample_sequences",
    "start_windows",
]


class SequenceSampler(Sampler):
    """Draws windows of ``seq_len`` consecutive rows with a weight per window start.

    The weights live beside the storage (one float per row) and are kept up to date as rows arrive, from
    their ``is_first`` / ``is_last`` flags (:meth:`record`), so a draw costs one weighted choice, not a scan
    of the stored episodes. They are a function of the stored rows alone: a restored buffer rebuilds them
    by recording its rows again.
    """

    def __init__(
        self,
        *,
        capacity: int,
        seq_len: int,
        cross_episodes: bool = False,
        ongoing: bool = False,
        ends_priority: float = 0.0,
    ) -> None:
        super().__init__()
        if capacity < seq_len:
            raise ValueError(f"replay capacity {capacity} is smaller than one sequence ({seq_len})")
        if ends_priority < 0:
            raise ValueError(f"ends_priority must be >= 0; got {ends_priority}")
        if cross_episodes and (not ongoing or ends_priority):
            raise ValueError(
                "windows that cross episodes (DreamerV3's replay) need ongoing=True and ends_priority=0"
            )
        self.capacity, self.seq_len = capacity, seq_len
        self.cross_episodes, self.ongoing, self.ends_priority = cross_episodes, ongoing, ends_priority
        self._empty()

    def _empty(self) -> None:
        self.weights = torch.zeros(self.capacity)
        self.recorded = 0  # rows recorded since the run began (the writer's write_count)
        self._episode_start = 0  # stream index of the current episode's first row (or the oldest row)

    def reset(self, start: int = 0) -> None:
        """Forgets every window; the next recorded row is row ``start`` of the stream."""
        self._empty()
        self.recorded = self._episode_start = start

    def record(self, is_first: Tensor, is_last: Tensor) -> None:
        """Takes note of the next rows of the stream (as just written at ``recorded`` onwards)."""
        n = is_first.numel()
        if n == 0:
            return
        is_first, is_last = is_first.reshape(n).bool().cpu(), is_last.reshape(n).bool().cpu()
        rows = torch.arange(self.recorded, self.recorded + n)
        end = self.recorded + n
        oldest = max(0, end - self.capacity)
        # A new row overwrites the oldest one, and with it the window that started there.
        self.weights[rows[-self.capacity :] % self.capacity] = 0.0
        starts = torch.where(is_first, rows, torch.full_like(rows, -1))
        episode_start = torch.cummax(torch.maximum(starts, torch.tensor(self._episode_start)), 0).values
        window = rows - self.seq_len + 1  # the window that each row completes
        ok = window >= oldest
        if not self.cross_episodes:
            ok &= window >= episode_start
        weight = 1.0 + self.ends_priority * is_last.float()
        if self.ongoing:
            self.weights[window[ok] % self.capacity] = weight[ok]
        else:  # DreamerV2 samples finished episodes only: an episode's windows open when it ends
            for i in is_last.nonzero().flatten().tolist():
                first = max(int(episode_start[i]), oldest)
                if int(window[i]) >= first:
                    self.weights[torch.arange(first, int(window[i]) + 1) % self.capacity] = 1.0
                    self.weights[int(window[i]) % self.capacity] = float(weight[i])
        self.recorded = end
        self._episode_start = int(episode_start[-1])

    def record_rows(self, rows: TensorDictBase) -> None:
        """``record`` from the rows' own flags (how a restored buffer rebuilds its windows)."""
        self.record(rows.get(IS_FIRST), rows.get(IS_LAST))

    @property
    def windows(self) -> int:
        """How many windows can be drawn now."""
        return int((self.weights > 0).sum())

    def sample(self, storage: Storage, batch_size: int) -> tuple[Tensor, dict]:
        if batch_size % self.seq_len:
            raise ValueError(f"batch size {batch_size} is not a multiple of seq_len {self.seq_len}")
        if not self.windows:
            raise RuntimeError("no complete sequence in the replay yet")
        starts = torch.multinomial(self.weights, batch_size // self.seq_len, replacement=True)
        index = (starts.unsqueeze(1) + torch.arange(self.seq_len)) % self.capacity
        return index.flatten(), {}

    # The weights are rebuilt from the stored rows (see ReplayArchive.restore), so they are not saved.
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        return None

    def dumps(self, path: str) -> None:
        return None

    def loads(self, path: str) -> None:
        return None


def make_replay_buffer(
    *,
    capacity: int,
    batch_size: int,
    seq_len: int,
    cross_episodes: bool = False,
    ongoing: bool = False,
    ends_priority: float = 0.0,
) -> TensorDictReplayBuffer:
    """A buffer of rows whose ``sample()`` returns ``batch_size`` windows of ``seq_len`` rows, flattened."""
    sampler = SequenceSampler(
        capacity=capacity,
        seq_len=seq_len,
        cross_episodes=cross_episodes,
        ongoing=ongoing,
        ends_priority=ends_priority,
    )
    return TensorDictReplayBuffer(
        storage=LazyTensorStorage(capacity), sampler=sampler, batch_size=batch_size * seq_len
    )


def add_rows(buffer: TensorDictReplayBuffer, rows: TensorDictBase) -> None:
    """Appends rows (in stream order) to the storage and to the sampler's windows."""
    buffer.extend(rows)
    sampler = buffer.sampler
    assert isinstance(sampler, SequenceSampler)
    sampler.record_rows(rows)
    assert sampler.recorded == int(buffer.write_count), "the sampler lost track of the writer"


def sample_sequences(buffer: TensorDictReplayBuffer, batch_size: int, seq_len: int) -> TensorDictBase:
    """Samples and reshapes to [batch_size, seq_len]; every window starts as an episode does."""
    flat = buffer.sample()
    assert flat.shape[0] == batch_size * seq_len, (
        f"sampled {flat.shape[0]} steps, expected {batch_size * seq_len}"
    )
    sampler = buffer.sampler
    inside = isinstance(sampler, SequenceSampler) and not sampler.cross_episodes
    return start_windows(flat.reshape(batch_size, seq_len), inside_episodes=inside)


def start_windows(seq: TensorDictBase, *, inside_episodes: bool) -> TensorDictBase:
    """Marks the first row of every [B, T] window ``is_first`` (the state before it is unknown); with
    ``inside_episodes`` checks that no window crosses into another episode."""
    is_first = seq.get(IS_FIRST).clone()
    if inside_episodes:
        assert not is_first[:, 1:].any(), "a replayed sequence crosses an episode boundary"
    is_first[:, 0] = True
    seq.set(IS_FIRST, is_first)
    return seq


class SequenceReplay:
    """The run's replay: rows in, [B, T] windows out, and its chunk files when a checkpoint is taken.

    With several envs per process (``lanes``) each env's rows go to a lane of their own (``capacity //
    lanes`` rows, a buffer, a sampler and chunk files each), so that a window never mixes two envs'
    streams; a batch draws its windows over all lanes' windows together, each with its weight: a window
    picks its lane in proportion to the lane's total window weight, then a window inside it. One lane is
    the plain buffer (same files, same draws as ever).
    """

    def __init__(
        self,
        *,
        capacity: int,
        batch_size: int,
        seq_len: int,
        cross_episodes: bool = False,
        ongoing: bool = False,
        ends_priority: float = 0.0,
        lanes: int = 1,
    ) -> None:
        self.batch_size, self.seq_len = batch_size, seq_len
        self.buffers = [
            make_replay_buffer(
                capacity=capacity // lanes,
                batch_size=batch_size,
                seq_len=seq_len,
                cross_episodes=cross_episodes,
                ongoing=ongoing,
                ends_priority=ends_priority,
            )
            for _ in range(lanes)
        ]
        self.archives = [
            ReplayArchive(
                buffer, capacity // lanes, index=buffer.sampler, lane=f"/env{i}" if lanes > 1 else ""
            )
            for i, buffer in enumerate(self.buffers)
        ]
        self.directory: Path | None = None

    def shard(self, rank: int) -> None:
        """Writes this process's chunks to folders of its own (DDP: one replay shard per process)."""
        for archive in self.archives:
            archive.shard(rank)

    def _sampler(self, lane: int) -> SequenceSampler:
        sampler = self.buffers[lane].sampler
        assert isinstance(sampler, SequenceSampler)
        return sampler

    @property
    def ready(self) -> bool:
        """Whether a whole window can be replayed (not at the start, nor, when only finished episodes are
        replayed, before a first episode ends)."""
        return any(self._sampler(i).windows > 0 for i in range(len(self.buffers)))

    def add(self, rows: TensorDictBase, lane: int = 0) -> None:
        add_rows(self.buffers[lane], rows)

    def sample(self) -> TensorDictBase:
        if len(self.buffers) == 1:
            return sample_sequences(self.buffers[0], self.batch_size, self.seq_len)
        lanes = torch.multinomial(self.lane_weights, self.batch_size, replacement=True)
        parts = []
        for lane, count in enumerate(torch.bincount(lanes, minlength=len(self.buffers)).tolist()):
            if count:
                buffer = self.buffers[lane]
                index, _ = self._sampler(lane).sample(buffer.storage, count * self.seq_len)
                parts.append(buffer.storage.get(index))
        seq: TensorDictBase = torch.cat(parts).reshape(self.batch_size, self.seq_len)
        return start_windows(seq, inside_episodes=not self._sampler(0).cross_episodes)

    @property
    def lane_weights(self) -> Tensor:
        """Each lane's total window weight: a window draws its lane in proportion to it, so that every
        window of every lane has the chance its own weight gives it (not its lane's window count; with
        ``ends_priority`` the two differ)."""
        return torch.stack([self._sampler(i).weights.sum() for i in range(len(self.buffers))])

    @property
    def files(self) -> list[str]:
        """The chunk files (relative to the run folder) that the last saved state needs."""
        return [c["file"] for archive in self.archives for c in archive.chunks]

    def state_dict(self) -> dict[str, Any] | None:
        """Writes what is new since the last save under ``directory``; None without a directory."""
        if self.directory is None:
            return None
        lanes: list[dict[str, Any]] = [
            {
                "write_count": int(buffer.write_count),
                "capacity": archive.capacity,
                "chunks": archive.save(self.directory),
            }
            for buffer, archive in zip(self.buffers, self.archives, strict=True)
        ]
        if len(lanes) == 1:
            return lanes[0]
        return {"lanes": lanes, "chunks": [c for lane in lanes for c in lane["chunks"]]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.directory is None:
            raise RuntimeError("the replay's directory (the checkpoint's folder) must be set before loading")
        lanes = state.get("lanes", [state])
        if len(lanes) != len(self.buffers):
            raise CheckpointError(
                f"the checkpoint's replay has {len(lanes)} lanes (data.num_envs); this run has {len(self.buffers)}"
            )
        for archive, lane in zip(self.archives, lanes, strict=True):
            archive.restore(self.directory, lane["chunks"], lane["write_count"])
