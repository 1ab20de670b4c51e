"""What `hwm fit --ckpt_path ...` checks before it touches anything: which checkpoint, whether the config
given now may continue it, whether the weights fit the model."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from hwm.checkpoints.callback import LAST
from hwm.checkpoints.io import CheckpointError

# Keys that may change when a run is resumed: budgets, intervals, logging and hardware. Everything else
# under model/data/seed_everything changes what the run learns or what its replay holds.
SAFE_KEYS = (
    "data.total_frames",
    "data.total_updates",  # a world model trained from a dataset (hwm.cli.offline)
    "data.eval_every",
    "data.eval_episodes",
    "data.eval_envs",
    "data.parallel_envs",
    "data.video_every",
    "data.fast_render",
    "model.log_every",
    "model.compile",
    "model.max_nonfinite",
    "checkpoint.",
    "progress_bar.",
    "preemption.",
    "tracking.",
    "trainer.",
)
# ...except these trainer keys: the run's MLflow experiment, and the process layout the replay is split by.
UNSAFE_KEYS = (
    "trainer.logger.init_args.experiment_name",
    "trainer.logger.class_path",
    "trainer.strategy",
    "trainer.devices",
    "trainer.num_nodes",
)
# Present in a parsed config but not part of the run's definition.
IGNORED_KEYS = ("config", "ckpt_path", "print_config")
# Keys added after checkpoints were already being written: a checkpoint without one ran with this value.
ADDED_KEYS: dict[str, Any] = {
    "data.num_envs": 1,
    "data.parallel_envs": True,
    "data.eval_envs": 1,
    # The harmonizers' own optimizer and GradNorm: before them, Adam inside the world model's optimizer.
    "model.harmonizer_optimizer": "adam",
    "model.harmonizer_lr": None,
    "model.gradnorm_alpha": 1.5,
}


def resolve_ckpt_path(value: str, root: str | os.PathLike = "checkpoints") -> Path:
    """``last`` -> the newest ``<root>/<run>/last.ckpt``; a run folder -> its ``last.ckpt``; else the path."""
    if value == "last":
        candidates = [p for p in Path(root).glob(f"*/{LAST}") if p.exists()]
        if not candidates:
            raise CheckpointError(f"--ckpt_path last: no checkpoint found under {str(root)!r} (*/{LAST})")
        return max(candidates, key=lambda p: p.resolve().stat().st_mtime)
    path = Path(value)
    if path.is_dir():
        path = path / LAST
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    return path


def job_checkpoint(root: str | os.PathLike, job: str) -> Path | None:
    """The newest ``<root>/<run>/last.ckpt`` written by SLURM job ``job`` (a requeued job's own run)."""
    found = []
    for link in Path(root).glob(f"*/{LAST}"):
        try:
            record = json.loads(link.resolve(strict=True).with_suffix(".json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and str(record.get("slurm_job")) == job:
            found.append(link)
    return max(found, key=lambda p: p.resolve().stat().st_mtime, default=None)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, checkpoint value, value now) for every leaf that differs; a missing leaf is ``<unset>``."""
    flat_old, flat_new = flatten(old), flatten(new)
    changes = []
    for key in sorted(set(flat_old) | set(flat_new)):
        if key.split(".")[0] in IGNORED_KEYS:
            continue
        before = flat_old.get(key, ADDED_KEYS.get(key, "<unset>"))
        after = flat_new.get(key, "<unset>")
        if before != after:
            changes.append((key, before, after))
    return changes


def is_safe(key: str) -> bool:
    if any(key == k or key.startswith(k + ".") for k in UNSAFE_KEYS):
        return False
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in SAFE_KEYS)


def split_changes(
    changes: list[tuple[str, Any, Any]],
) -> tuple[list[tuple[str, Any, Any]], list[tuple[str, Any, Any]]]:
    """(applied, rejected) overrides."""
    return [c for c in changes if is_safe(c[0])], [c for c in changes if not is_safe(c[0])]


def describe(changes: list[tuple[str, Any, Any]], limit: int = 6) -> str:
    shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changes[:limit])
    return shown + (f"; and {len(changes) - limit} more" if len(changes) > limit else "")


def check_state_dict(checkpoint: Mapping[str, Any], model: torch.nn.Module) -> None:
    """Raises with the first differing parameter names/shapes when the weights don't fit ``model``."""
    saved: Mapping[str, torch.Tensor] = checkpoint["state_dict"]
    current = model.state_dict()
    problems = [f"{k} missing from the checkpoint" for k in current if k not in saved]
    problems += [f"{k} unexpected" for k in saved if k not in current]
    problems += [
        f"{k} {tuple(saved[k].shape)} in the checkpoint vs {tuple(v.shape)} now"
        for k, v in current.items()
        if k in saved and tuple(saved[k].shape) != tuple(v.shape)
    ]
    if problems:
        more = f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""
        raise CheckpointError("checkpoint weights do not fit this model: " + "; ".join(problems[:4]) + more)
