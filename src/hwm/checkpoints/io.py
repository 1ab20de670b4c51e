"""Crash-safe checkpoint files: atomic writes, and reads that fail with one clear line.

A checkpoint is written to a temporary file in the same directory, fsynced and renamed over the target,
and the directory entry is fsynced too: a kill or a full disk during a save leaves the previous file
intact and loadable.
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from numpy._core import multiarray

# Bump when the layout under checkpoint["hwm"] changes incompatibly.
# 2: replay rows in DreamerV2/V3's step layout (reset observations stored, is_first/is_last flags).
FORMAT_VERSION = 2
HWM_KEY = "hwm"


class CheckpointError(ValueError):
    """A checkpoint (or its replay files) cannot be used; the message says why in one line."""


# What a checkpoint or replay chunk may name besides what ``torch.load(weights_only=True)`` allows (tensors,
# numbers, strings, containers): numpy arrays, scalars and dtypes, which RNG and simulator states are made
# of. Each rebuilds plain data from bytes; none runs code a file chooses. A file naming anything else is
# refused, so a crafted checkpoint cannot execute code when someone resumes from it. Whatever a component
# puts in its state_dict must be built from these (or plain types).
SAFE_GLOBALS: tuple[Any, ...] = (
    # Pickle protocol 2 (torch.save's) writes an empty bytes object as a call of ``bytes``: a constructor of
    # plain data, whatever its arguments (env snapshots hold some).
    bytes,
    multiarray._reconstruct,
    multiarray.scalar,
    np.ndarray,
    np.dtype,
    *(getattr(np.dtypes, name) for name in np.dtypes.__all__ if name.endswith("DType")),
)
# Simulator states a suite checkpoints as the simulator's own class, each rebuilt by parsing its own
# serialized bytes (``__setstate__``), never by calling something the file names. Imported only when a file
# names one (ale_py takes half a second to import).
SIMULATOR_STATES: dict[str, tuple[str, str]] = {"ale_py._ale_py.ALEState": ("ale_py", "ALEState")}


def allowed_globals(path: Path) -> list[Any]:
    """SAFE_GLOBALS, plus the simulator-state classes ``path`` names."""
    allowed = list(SAFE_GLOBALS)
    try:
        named = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip file: torch.load says what is wrong with it
        return allowed
    for name in named:
        if name in SIMULATOR_STATES:
            module, attr = SIMULATOR_STATES[name]
            allowed.append(getattr(importlib.import_module(module), attr))
    return allowed


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None]) -> None:
    """Calls ``write(file)`` on a temporary file beside ``path``, then renames it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_symlink(target: str, link: str | os.PathLike) -> None:
    """Points ``link`` at ``target`` (relative names stay valid when the directory moves)."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)


def fsync_dir(directory: str | os.PathLike) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not supported on this platform/filesystem
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_torch_file(path: str | os.PathLike, *, what: str = "checkpoint") -> Any:
    """``torch.load`` with one-line errors for a missing, truncated or corrupt file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} {str(path)!r} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{what} {str(path)!r} is not a file")
    try:
        with torch.serialization.safe_globals(allowed_globals(path)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        unsafe = re.search(r"(?:Unsupported global: GLOBAL|Trying to load unsupported GLOBAL) (\S+)", text)
        # Anything else the restricted unpickler stops at (an unknown opcode, ...) is damage, not code.
        if unsafe is None and not re.search(r"Can only (?:build|create new object)", text):
            detail = re.search(r"WeightsUnpickler error:\s*(.*?)\n\n", text, re.S)
            raise CheckpointError(
                f"{what} {str(path)!r} is truncated or corrupt ({detail.group(1).strip() if detail else one_line(exc)})"
            ) from exc
        needs = f"needs {unsafe.group(1)}" if unsafe else "builds objects other than tensors and containers"
        raise CheckpointError(
            f"refused to load {what} {str(path)!r}: it {needs}, which could run code on loading; hwm loads "
            "only tensors, numpy arrays, numbers, strings and containers (docs/reliability.md)"
        ) from exc
    except Exception as exc:
        raise CheckpointError(f"{what} {str(path)!r} is truncated or corrupt ({one_line(exc)})") from exc


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:160] or type(exc).__name__


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Loads and checks an hwm checkpoint: readable, written by hwm, not from a newer format version."""
    checkpoint = load_torch_file(path)
    if not isinstance(checkpoint, dict) or HWM_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(f"checkpoint {str(path)!r} was not written by hwm fit (no {HWM_KEY!r} section)")
    version = checkpoint[HWM_KEY].get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {version}, newer than this hwm reads "
            f"({FORMAT_VERSION}): upgrade hwm to resume it"
        )
    if version < FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {version}, from an hwm whose replay stored "
            f"transitions instead of episodes' steps; this hwm ({FORMAT_VERSION}) cannot continue that run"
        )
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO with atomic saves; a checkpoint the CLI already read is not read twice."""

    def __init__(self) -> None:
        super().__init__()
        self._preloaded: tuple[Path, dict[str, Any]] | None = None

    def preload(self, path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
        self._preloaded = (Path(path).resolve(), checkpoint)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any = None, weights_only: Any = None
    ) -> Any:
        if self._preloaded is not None and self._preloaded[0] == Path(path).resolve():
            checkpoint, self._preloaded = self._preloaded[1], None
            return checkpoint
        return read_checkpoint(path)
