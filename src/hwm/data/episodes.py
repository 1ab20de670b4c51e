"""Whole episodes read from (and written to) files in the replay's chunk format: the datasets `hwm fit`
trains a world model on offline.

A chunk file (:mod:`hwm.checkpoints.replay_archive`) is a dict of equal-length tensors, one row per step in
DreamerV2/V3's layout: the observation (``pixels`` or ``observation``), the action that led to it,
``reward``, ``is_first``, ``is_last`` and (optionally) ``is_terminal``. A dataset is either

- a run folder (``checkpoints/<run id>/``): the replay chunks its newest checkpoint lists, lane by lane; or
- any folder of such files (searched recursively): the files of one folder are one stream, in the order of
  their names' start index (``replay-<start>-<end>.pt``) or else of their names.

Each stream is cut into episodes at its ``is_first`` rows; an episode counts when it runs from an
``is_first`` row to an ``is_last`` one (a run's unfinished last episode, or one whose start the replay's
capacity dropped, is left out and counted).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tensordict import TensorDict

from hwm.checkpoints.io import atomic_torch_save, load_torch_file
from hwm.envs.common import OBS_KEY, PIXELS_KEY, EnvInfo
from hwm.models.world_model import ACTION_KEY, IS_FIRST, IS_LAST, IS_TERMINAL, REWARD_KEY

CHUNK = re.compile(r"replay-(\d+)-(\d+)\.pt$")
STEP_KEYS = (ACTION_KEY, REWARD_KEY, IS_FIRST, IS_LAST, IS_TERMINAL)


class DatasetError(ValueError):
    """A dataset folder that cannot be trained on: one line saying why (exit status 2)."""


@dataclass(frozen=True)
class Dataset:
    """Whole episodes (each a [T] TensorDict of step rows) and what the world model needs to know."""

    episodes: list[TensorDict]
    env_info: EnvInfo
    files: int
    dropped: int  # partial episodes left out
    fingerprint: str  # names and sizes of the files read: a resume checks it is the same dataset

    @property
    def steps(self) -> int:
        return sum(len(e) for e in self.episodes)

    def returns(self) -> list[float]:
        return [float(e.get(REWARD_KEY).sum()) for e in self.episodes]


def _chunk_files(folder: Path) -> list[Path]:
    """The files to read: a run folder's newest checkpoint's replay chunks, or every ``*.pt`` below."""
    last = folder / "last.ckpt"
    if last.exists():
        sidecar = last.resolve().with_suffix(".json")
        try:
            listed = json.loads(sidecar.read_text())["replay_files"]
        except (OSError, ValueError, KeyError) as exc:
            raise DatasetError(
                f"{folder} is a run folder but {sidecar.name} lists no replay files ({exc})"
            ) from exc
        return [folder / name for name in listed]
    return sorted(p for p in folder.rglob("*.pt") if p.is_file())


def _stream_order(path: Path) -> tuple[int, str]:
    found = CHUNK.search(path.name)
    return (int(found.group(1)) if found else -1, path.name)


def _load_rows(path: Path) -> TensorDict:
    tensors = load_torch_file(path, what="episode file")
    if not isinstance(tensors, dict):
        raise DatasetError(f"{path} is not a chunk file (a dict of tensors)")
    obs_keys = [k for k in (PIXELS_KEY, OBS_KEY) if k in tensors]
    missing = [k for k in (ACTION_KEY, REWARD_KEY, IS_FIRST, IS_LAST) if k not in tensors]
    if not obs_keys or missing:
        raise DatasetError(
            f"{path} lacks {', '.join(missing) or 'an observation (pixels or observation)'}; a chunk file holds "
            f"{PIXELS_KEY} or {OBS_KEY}, {', '.join(STEP_KEYS)}"
        )
    n = len(tensors[REWARD_KEY])
    rows = {k: tensors[k] for k in (obs_keys[0], *STEP_KEYS) if k in tensors}
    rows.setdefault(IS_TERMINAL, torch.zeros(n, 1, dtype=torch.bool))
    if any(len(v) != n for v in rows.values()):
        raise DatasetError(f"{path}: its tensors have different lengths")
    for key in (REWARD_KEY, IS_FIRST, IS_LAST, IS_TERMINAL):
        rows[key] = rows[key].reshape(n, 1)
    return TensorDict(rows, batch_size=[n])


def _split(stream: TensorDict) -> tuple[list[TensorDict], int]:
    """(whole episodes of a stream, partial ones left out)."""
    first = stream.get(IS_FIRST).reshape(-1).nonzero().flatten().tolist()
    bounds = [0, *first, len(stream)] if not first or first[0] != 0 else [*first, len(stream)]
    episodes, dropped = [], 0
    for start, end in zip(bounds, bounds[1:], strict=False):
        if end <= start:
            continue
        episode = stream[start:end]
        whole = bool(episode.get(IS_FIRST)[0]) and bool(episode.get(IS_LAST)[-1])
        if whole and not episode.get(IS_LAST)[:-1].any():
            episodes.append(episode.clone())
        else:
            dropped += 1
    return episodes, dropped


def read_dataset(folder: str | Path) -> Dataset:
    """Every whole episode under ``folder``; DatasetError when there is none or the files disagree."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"dataset folder {str(folder)!r} does not exist")
    files = _chunk_files(folder)
    if not files:
        raise DatasetError(f"{folder} holds no episode files (*.pt in the replay's chunk format)")
    streams: dict[Path, list[Path]] = {}
    for path in files:
        streams.setdefault(path.parent, []).append(path)
    episodes: list[TensorDict] = []
    dropped = 0
    digest = hashlib.sha256()
    for parent in sorted(streams):
        paths = sorted(streams[parent], key=_stream_order)
        parts = []
        for path in paths:
            if not path.is_file():
                raise DatasetError(f"episode file {path} is missing")
            parts.append(_load_rows(path))
            digest.update(f"{path.relative_to(folder)}:{path.stat().st_size};".encode())
        keys = {tuple(sorted(p.keys())) for p in parts}
        if len(keys) > 1:
            raise DatasetError(f"the files under {parent} hold different keys: {sorted(keys)}")
        found, lost = _split(torch.cat(parts) if len(parts) > 1 else parts[0])
        episodes += found
        dropped += lost
    if not episodes:
        raise DatasetError(f"{folder} holds no whole episode (from an is_first row to an is_last one)")
    shapes = {(tuple(e.get(_obs_key(e)).shape[1:]), tuple(e.get(ACTION_KEY).shape[1:])) for e in episodes}
    if len(shapes) > 1:
        raise DatasetError(
            f"the episodes under {folder} differ in observation or action shape: {sorted(shapes)}"
        )
    return Dataset(episodes, _env_info(episodes), len(files), dropped, digest.hexdigest()[:16])


def _obs_key(rows: TensorDict) -> str:
    return PIXELS_KEY if PIXELS_KEY in rows.keys() else OBS_KEY


def _env_info(episodes: Sequence[TensorDict]) -> EnvInfo:
    first = episodes[0]
    actions = torch.cat([e.get(ACTION_KEY)[1:] for e in episodes])  # row 0 of an episode holds zeros
    # One-hot actions are a discrete env's (the world model itself does not care).
    discrete = bool(((actions == 0) | (actions == 1)).all() and (actions.sum(-1) == 1).all())
    return EnvInfo(
        obs_shape=tuple(first.get(_obs_key(first)).shape[1:]),
        action_dim=int(first.get(ACTION_KEY).shape[-1]),
        discrete=discrete,
    )


def heldout_indices(returns: Sequence[float], count: int) -> list[int]:
    """``count`` episodes spread evenly over the ranking by return (lowest, ..., highest), so the held-out
    set spans the dataset's range of quality whatever order the episodes came in."""
    if not 0 < count < len(returns):
        raise DatasetError(
            f"data.heldout_episodes must be between 1 and the number of episodes - 1 ({len(returns) - 1}); got {count}"
        )
    ranking = sorted(range(len(returns)), key=lambda i: (returns[i], i))
    picks = torch.linspace(0, len(returns) - 1, count).round().long().tolist()
    return sorted({ranking[p] for p in picks})


def write_episodes(folder: str | Path, episodes: Sequence[TensorDict], start: int = 0) -> list[Path]:
    """Writes each episode as a chunk file ``replay-<start>-<end>.pt`` (indices counted over the episodes,
    from ``start``), atomically; the files read back with :func:`read_dataset`."""
    folder = Path(folder)
    out = []
    for episode in episodes:
        end = start + len(episode)
        tensors = {k: v for k, v in episode.items()}
        path = folder / f"replay-{start:012d}-{end:012d}.pt"
        atomic_torch_save(tensors, path)
        out.append(path)
        start = end
    return out
