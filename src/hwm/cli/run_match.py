"""Whether a checkpoint belongs to the run a command line describes, and config values compared as values.

``--ckpt_path last`` picks the newest run under ``checkpoints/`` of the task and experiment the command line
sets (each checkpoint's sidecar names them); the checkpoint's config then wins over the config files.
Without the match a tiny test config would continue a cartpole run of another experiment, or refuse to
continue its own run because another one was written since.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from hwm.checkpoints.callback import LAST
from hwm.checkpoints.io import HWM_KEY, CheckpointError, load_torch_file
from hwm.config.prescan import last_value, nested

# What names a run's identity: a config that disagrees on these describes another run. The labels are the
# keys under which each checkpoint's sidecar records them (``run_identity``).
IDENTITY_KEYS = {"data.task": "task", "trainer.logger.init_args.experiment_name": "experiment"}


class OtherRunError(ValueError):
    """The checkpoint is of another task or experiment than the config given now: one line, exit 2."""


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def same_value(a: Any, b: Any) -> bool:
    """Equal as values: ``"1e-4"`` (a string to YAML 1.1, a float to the parser) equals ``0.0001``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b  # True == 1 in Python, but not in a config
    if a == b:
        return True
    x, y = _number(a), _number(b)
    return x is not None and y is not None and math.isclose(x, y, rel_tol=1e-12, abs_tol=0.0)


def check_same_run(
    args: Sequence[str], saved: Mapping[str, Any], path: Path, *, picked_as_last: bool
) -> None:
    """Refuses a checkpoint whose task or experiment differs from what ``args`` (files and flags) set."""
    differ = []
    for key, label in IDENTITY_KEYS.items():
        given, theirs = last_value(args, key), nested(dict(saved), key)
        if given is not None and theirs is not None and not same_value(given, theirs):
            differ.append(f"{label} {theirs!r} (the config says {given!r})")
    if not differ:
        return
    how = f"--ckpt_path last picked {str(path)!r}, the newest checkpoint" if picked_as_last else str(path)
    raise OtherRunError(
        f"{how} is a run of another {' and '.join(differ)}: leave out --ckpt_path to start a new run, or "
        "name the run folder to continue (hwm fit --ckpt_path checkpoints/<run id>)"
    )


def run_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """``{"task": ..., "experiment": ...}`` of a resolved config (what a checkpoint's sidecar records)."""
    return {label: nested(dict(config), key) for key, label in IDENTITY_KEYS.items()}


def checkpoint_identity(link: Path) -> dict[str, Any]:
    """The task and experiment of the run a ``last.ckpt`` belongs to: from its sidecar, or (sidecars written
    before they recorded them) from the checkpoint's own config."""
    checkpoint = link.resolve(strict=True)
    record = json.loads(checkpoint.with_suffix(".json").read_text())
    if isinstance(record, dict) and all(label in record for label in IDENTITY_KEYS.values()):
        return {label: record[label] for label in IDENTITY_KEYS.values()}
    return run_identity(yaml.safe_load(load_torch_file(checkpoint)[HWM_KEY]["config"]))


def _differences(args: Sequence[str], identity: Mapping[str, Any]) -> list[str]:
    differ = []
    for key, label in IDENTITY_KEYS.items():
        given, theirs = last_value(args, key), identity.get(label)
        if given is not None and theirs is not None and not same_value(given, theirs):
            differ.append(f"{label} {theirs!r} (the config says {given!r})")
    return differ


def newest_run_like(args: Sequence[str], root: str | os.PathLike) -> Path:
    """``--ckpt_path last``: the newest ``<root>/<run>/last.ckpt`` of the task and experiment ``args`` set
    (any run's, where they set neither); OtherRunError naming the newest run when none is of them."""
    links = [p for p in Path(root).glob(f"*/{LAST}") if p.exists()]
    if not links:
        raise CheckpointError(f"--ckpt_path last: no checkpoint found under {str(root)!r} (*/{LAST})")
    links.sort(key=lambda p: p.resolve().stat().st_mtime, reverse=True)
    newest_differs: list[str] = []
    for link in links:
        try:
            differ = _differences(args, checkpoint_identity(link))
        except (OSError, ValueError, KeyError, TypeError, CheckpointError):
            continue  # a damaged or foreign folder is not a run to continue
        if not differ:
            return link
        newest_differs = newest_differs or [f"the newest, {str(link)!r}, is of {' and '.join(differ)}"]
    wanted = " and ".join(
        f"{label} {last_value(args, key)!r}" for key, label in IDENTITY_KEYS.items() if last_value(args, key)
    )
    newest = "; ".join(newest_differs) or "none of them is readable"
    raise OtherRunError(
        f"--ckpt_path last: no run under {str(root)!r} is of {wanted} ({newest}): leave out --ckpt_path to "
        "start a new run, or name the run folder to continue (hwm fit --ckpt_path checkpoints/<run id>)"
    )
