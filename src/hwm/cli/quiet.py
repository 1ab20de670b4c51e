"""What `hwm fit` prints while a run starts: hwm's own lines (and every warning); what Lightning, MLflow and
the simulators say about themselves (MLflow's database set-up, ``Seed set to``, ``GPU available``, the model
summary, Lightning's hint about ``srun``) only with ``--verbose``."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence

VERBOSE_FLAGS = ("--verbose", "-v")
RANK_ZERO_LOG = "lightning.pytorch.utilities.rank_zero"  # Lightning's info lines, and hwm's through it
# Loggers whose INFO lines are about the libraries, not the run.
CHATTY_LOGS = (
    "mlflow",
    "alembic",
    "lightning.fabric.utilities.seed",
    "lightning.pytorch.callbacks.model_summary",
    "lightning.pytorch.loggers.mlflow",
)


def pop_verbose(args: Sequence[str]) -> tuple[list[str], bool]:
    """``args`` without ``--verbose`` / ``-v``, and whether it was there."""
    rest = [a for a in args if a not in VERBOSE_FLAGS]
    return rest, len(rest) != len(args)


def _hwm_lines_only(record: logging.LogRecord) -> bool:
    return record.levelno > logging.INFO or record.getMessage().lstrip().startswith("hwm")


def quiet_start() -> None:
    """Holds back the libraries' start-up lines in this process (and MLflow's in the ones it starts)."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when MLflow is imported
    for name in CHATTY_LOGS:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger(RANK_ZERO_LOG).addFilter(_hwm_lines_only)
    # A hint for SLURM users, printed on any machine where `srun` exists (docs/reliability.md has the job).
    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system")
