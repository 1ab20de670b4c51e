"""MLflow names every hwm tool shares, and what a run records about where it came from."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import hwm

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "hwm"
STUDY_TAG = "hwm.study"
SUMMARY_TAG = "hwm.summary"  # the runs `hwm compare --log-to-mlflow` creates; never compared themselves
FRAMES_METRIC = "progress/env_frames"
# MLflow 3's UI opens an experiment on its GenAI (traces) pages unless the experiment says it trains models.
EXPERIMENT_KIND_TAG = ("mlflow.experimentKind", "custom_model_development")


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


def default_run_name(task: str | None, mode: str | None, seed: object, when: float | None = None) -> str:
    """A run's MLflow name when none is given: task, harmonizer mode, seed and start time, e.g.
    ``cartpole-balance-rectified-s0-20261130-071502``; distinct per start even with the same seed (MLflow's
    own random names repeat because the global RNG is seeded before MLflow draws them)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    seed_part = f"s{seed}" if isinstance(seed, int) and not isinstance(seed, bool) else None
    return "-".join(str(p) for p in (task, mode, seed_part, stamp) if p not in (None, ""))


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (relative to the working directory), else None."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite":
        return None
    # sqlite:///mlflow.db -> "/mlflow.db" (relative); sqlite:////abs/mlflow.db -> "//abs/mlflow.db".
    path = unquote(parsed.path)
    return Path(path[1:] if path.startswith("/") else path)


def prepare_experiment(uri: str, name: str) -> str | None:
    """`ensure_experiment` for a launcher: None (and a line on stderr) when the store cannot be prepared;
    each run then meets the problem itself and reports it in its log."""
    import sys

    try:
        return ensure_experiment(uri, name)
    except Exception as exc:
        print(f"hwm study: could not prepare MLflow experiment {name!r} in {uri}: {exc}", file=sys.stderr)
        return None


def ensure_experiment(uri: str, name: str) -> str:
    """The id of experiment ``name`` in the store at ``uri``, created (with hwm's kind tag) if missing.

    A study calls this once before it starts runs in parallel: two runs creating the same experiment (or
    setting its tag) at once collide on the store's unique keys, and one of them fails."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            experiment_id = client.create_experiment(name)
        except MlflowException:  # another process created it meanwhile
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            experiment_id = found.experiment_id
    else:
        experiment_id = found.experiment_id
    if found is None or found.tags.get(EXPERIMENT_KIND_TAG[0]) != EXPERIMENT_KIND_TAG[1]:
        client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND_TAG)
    return experiment_id
