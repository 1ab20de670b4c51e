"""What a run records about where it came from: hwm version and the git commit of the code."""

from __future__ import annotations

import subprocess
from pathlib import Path

import hwm


def git_commit(path: Path | None = None) -> tuple[str, bool] | None:
    """(commit, dirty) of the git checkout holding ``path`` (default: hwm's source); None outside git."""
    where = str(path or Path(hwm.__file__).resolve().parent)
    try:
        commit = subprocess.run(
            ["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None  # not a checkout (an installed wheel), or no git
    return (commit, bool(dirty)) if commit else None


def source_tags(seed: int | None = None) -> dict[str, str]:
    """Tags for a new run: hwm version, git commit (also as MLflow's own source-version tag), seed."""
    tags = {"hwm_version": hwm.__version__}
    found = git_commit()
    if found is not None:
        commit, dirty = found
        tags.update(
            {"git_commit": commit, "git_dirty": str(dirty).lower(), "mlflow.source.git.commit": commit}
        )
    if seed is not None:
        tags["seed"] = str(seed)
    return tags
