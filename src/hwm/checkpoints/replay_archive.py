"""The replay buffer on disk, incrementally: each checkpoint writes only the transitions added since the
previous one, as one chunk file beside the checkpoint, and lists the chunks it needs.

A full copy per checkpoint would cost gigabytes each time for pixel runs (1M frames of 64x64 RGB is
~6 GB); chunks are written once and shared by every checkpoint whose window of the last ``capacity``
transitions they overlap. Each chunk's size and SHA-256 are recorded and checked on load, and restoring
puts every transition back at its ring-buffer position with the writer's cursor, so sampling after a
resume is the sampling the run would have done.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Protocol

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import TensorDictReplayBuffer

from hwm.checkpoints.io import CheckpointError, atomic_torch_save, load_torch_file

REPLAY_DIR = "replay"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


class RowIndex(Protocol):
    """Whatever the buffer derives from its rows (its sampler's windows): rebuilt when rows are restored."""

    def reset(self, start: int = 0) -> None:
        """Forgets every row; the next recorded one is row ``start`` of the stream."""
        ...

    def record_rows(self, rows: TensorDictBase) -> None:
        """Takes note of the next rows of the stream."""
        ...


class ReplayArchive:
    """Saves and restores one replay buffer as chunk files under ``<checkpoint dir>/replay/``; ``index`` (the
    buffer's sampler) is rebuilt from the rows a restore puts back."""

    def __init__(
        self, buffer: TensorDictReplayBuffer, capacity: int, index: RowIndex, lane: str = ""
    ) -> None:
        self.buffer = buffer
        self.capacity = capacity
        self.index = index
        # {"file": relative path, "start": first global index, "end": one past the last, "bytes", "sha256"}
        self.chunks: list[dict[str, Any]] = []
        # Folder of the chunk files, relative to the checkpoint's (DDP: one per process).
        # ``lane``: a sub-folder per env when a process collects from several (``/env0``, ``/env1``...).
        self.lane = lane
        self.prefix = REPLAY_DIR + lane

    def shard(self, rank: int) -> None:
        """Writes this process's chunks to a folder of its own (DDP: one replay shard per process)."""
        self.prefix = f"{REPLAY_DIR}/rank{rank}{self.lane}"

    @property
    def archived(self) -> int:
        """Transitions (counted since the run began) already on disk."""
        return self.chunks[-1]["end"] if self.chunks else 0

    def save(self, directory: str | Path) -> list[dict[str, Any]]:
        """Writes what is new since the last save; returns the manifest of chunks the buffer needs now."""
        directory = Path(directory)
        total = int(self.buffer.write_count)
        window_start = max(0, total - self.capacity)
        start = max(self.archived, window_start)
        if total > start:
            positions = torch.arange(start, total) % self.capacity
            items = self.buffer.storage.get(positions)
            tensors = {"/".join(k) if isinstance(k, tuple) else k: v for k, v in items.items(True, True)}
            name = f"{self.prefix}/replay-{start:012d}-{total:012d}.pt"
            atomic_torch_save(tensors, directory / name)
            path = directory / name
            self.chunks.append(
                {
                    "file": name,
                    "start": start,
                    "end": total,
                    "bytes": path.stat().st_size,
                    "sha256": _sha256(path),
                }
            )
        self.chunks = [c for c in self.chunks if c["end"] > window_start]
        return [dict(c) for c in self.chunks]

    @staticmethod
    def verify(
        directory: str | Path,
        manifest: list[dict[str, Any]],
        write_count: int,
        capacity: int,
        *,
        checksums: bool = True,
    ) -> None:
        """Raises CheckpointError unless the chunks cover the last ``capacity`` transitions and are intact."""
        directory = Path(directory)
        chunks = sorted(manifest, key=lambda c: c["start"])
        covered = max(0, write_count - capacity)
        for chunk in chunks:
            if chunk["start"] > covered:
                raise CheckpointError(f"replay chunks leave transitions {covered}..{chunk['start']} missing")
            covered = max(covered, chunk["end"])
            path = directory / chunk["file"]
            if not path.is_file():
                raise CheckpointError(f"replay file {str(path)!r} listed by the checkpoint is missing")
            if path.stat().st_size != chunk["bytes"] or (checksums and _sha256(path) != chunk["sha256"]):
                raise CheckpointError(
                    f"replay file {str(path)!r} is truncated or corrupt (checksum mismatch)"
                )
        if covered < write_count:
            raise CheckpointError(
                f"replay chunks end at transition {covered}, the checkpoint at {write_count}"
            )

    def restore(self, directory: str | Path, manifest: list[dict[str, Any]], write_count: int) -> None:
        """Refills the (empty) buffer from ``manifest``'s chunks (checksums are the CLI's check)."""
        directory = Path(directory)
        if len(self.buffer) or self.buffer.write_count:
            raise RuntimeError("restore() needs an empty replay buffer")
        self.verify(directory, manifest, write_count, self.capacity, checksums=False)
        window_start = max(0, write_count - self.capacity)
        # What the index knows is a function of the stored rows: recorded again, in stream order.
        self.index.reset(start=window_start)
        for chunk in sorted(manifest, key=lambda c: c["start"]):
            tensors = load_torch_file(directory / chunk["file"], what="replay file")
            n = chunk["end"] - chunk["start"]
            items = TensorDict({}, batch_size=[n])
            for key, value in tensors.items():
                items.set(tuple(key.split("/")), value)
            keep = torch.arange(chunk["start"], chunk["end"]) >= window_start
            positions = torch.arange(chunk["start"], chunk["end"])[keep] % self.capacity
            self.buffer.storage.set(positions, items[keep])
            self.index.record_rows(items[keep])
        self.buffer.writer.load_state_dict(
            {"_cursor": write_count % self.capacity, "_write_count": write_count}
        )
        self.chunks = [dict(c) for c in manifest]
