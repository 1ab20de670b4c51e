"""Whether a checkpoint belongs to the run a command line describes, and config values compared as values.

``--ckpt_path last`` picks the newest run under ``checkpoints/``, whatever the config files say; the
checkpoint's config then wins over those files. Without this check a tiny test config silently continues a
cartpole run of another experiment.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hwm.config.prescan import last_value, nested

# What names a run's identity: a config that disagrees on these describes another run.
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
