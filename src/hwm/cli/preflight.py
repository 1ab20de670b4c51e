"""Checks of `hwm fit`'s input that need neither Lightning nor MLflow, so that they fail in a fraction of a
second with one line: config files that are not YAML mappings, a run that could not write its record, and
(importing torch alone) a GPU asked for where there is none.

Without them a malformed file surfaces from deep inside jsonargparse, and a read-only working directory
keeps MLflow retrying its sqlite store for minutes before the parser reports a union-type error.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import yaml

from hwm.config.prescan import config_paths, last_value
from hwm.experiments.tracking import sqlite_path


class PreflightError(Exception):
    """Bad user input found before anything is built: one line, exit code 2."""


def check_config_files(args: Sequence[str]) -> None:
    """Each ``--config FILE`` exists and holds a YAML mapping (an empty file is allowed)."""
    for path in config_paths(args):
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise PreflightError(f"config file {str(path)!r} does not exist") from None
        except OSError as exc:
            raise PreflightError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise PreflightError(f"config file {str(path)!r} is not valid YAML{where}: {problem}") from None
        if loaded is not None and not isinstance(loaded, dict):
            shown = " ".join(str(loaded).split())[:60]
            raise PreflightError(
                f"config file {str(path)!r} must hold a mapping of keys (e.g. `data:` / `model:` sections); "
                f"it holds a {type(loaded).__name__}: {shown!r}"
            )


def writable(folder: Path) -> bool:
    """Whether a file can be created in ``folder`` (or in the nearest existing folder above it).

    Tried for real rather than with ``os.access``: root passes every permission check, yet a read-only
    mount still refuses.
    """
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def check_writable(args: Sequence[str], default_uri: str, default_checkpoints: str = "checkpoints") -> None:
    """The run's sqlite store and checkpoint folder can be written (a resume writes both too)."""
    if any(a == "--print_config" or a.startswith("--print_config=") for a in args):
        return  # prints the config, writes nothing
    logger = "trainer.logger.init_args."
    uri = last_value(args, logger + "tracking_uri") or default_uri
    database = sqlite_path(str(uri))
    if str(last_value(args, "trainer.logger", "")).lower() in ("false", "none"):
        database = None  # no MLflow logger, no store
    if database is not None:
        target = database if database.exists() else database.parent
        if (database.exists() and not os.access(database, os.W_OK)) or not writable(
            target if target.is_dir() else target.parent
        ):
            raise PreflightError(
                f"cannot write the MLflow store {str(database.absolute())!r} (tracking URI {uri}): run from a "
                "writable folder or pass --trainer.logger.init_args.tracking_uri sqlite:////writable/mlflow.db"
            )
    if str(last_value(args, "trainer.enable_checkpointing", "true")).lower() == "false":
        return
    checkpoints = Path(str(last_value(args, "checkpoint.dirpath") or default_checkpoints))
    if not writable(checkpoints):
        raise PreflightError(
            f"cannot write checkpoints under {str(checkpoints.absolute())!r}: run from a writable folder or "
            "pass --checkpoint.dirpath /writable/folder"
        )


def check_accelerator(args: Sequence[str]) -> None:
    """``--trainer.accelerator gpu`` where torch sees no GPU: one line with the way out, before Lightning is
    imported (its own message comes after the whole start, with no hint)."""
    accelerator = str(last_value(args, "trainer.accelerator", "")).lower()
    if accelerator not in ("gpu", "cuda"):
        return
    import torch

    if torch.cuda.is_available():
        return
    if torch.version.cuda is None:
        why = f"torch {torch.__version__} is a CPU-only build"
    else:
        why = f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no CUDA device"
    raise PreflightError(
        f"--trainer.accelerator {accelerator}: {why}; train on the CPU with --trainer.accelerator cpu, or "
        "--trainer.accelerator auto (a GPU where there is one)"
    )


def new_sqlite_store(args: Sequence[str], default_uri: str) -> Path | None:
    """The run's sqlite store if it does not exist yet (a run refused while being built removes it again:
    MLflow's logger creates the file as it is constructed, before every option has been checked)."""
    if str(last_value(args, "trainer.logger", "")).lower() in ("false", "none"):
        return None
    database = sqlite_path(str(last_value(args, "trainer.logger.init_args.tracking_uri") or default_uri))
    return None if database is None or database.exists() else database.absolute()


def remove_new_store(database: Path | None) -> None:
    """Removes a store ``new_sqlite_store`` found missing, if it holds no run (an empty, just-made file)."""
    if database is None or not database.exists():
        return
    import sqlite3

    try:
        with sqlite3.connect(database) as db:
            runs = db.execute("select count(*) from runs").fetchone()[0]
    except sqlite3.Error:
        runs = 0  # tables not made yet
    if runs == 0:
        database.unlink(missing_ok=True)
