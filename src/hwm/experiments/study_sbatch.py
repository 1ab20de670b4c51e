"""What a study asks SLURM for: the job array's resources and extra ``#SBATCH`` lines, from the plan's
``slurm:`` section and the command line (which wins). Plain data: reading it imports no launcher."""

from __future__ import annotations

import argparse
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

# Five minutes before the time limit: enough for the update in progress, a checkpoint and the requeue
# (docs/reliability.md), and SIGUSR1 is the signal hwm fit requeues its job on.
DEFAULT_SIGNAL_SECONDS = 300
DEFAULT_TIME = "24:00:00"


class SlurmOptionsError(ValueError):
    """A bad option: one line, exit 2."""


@dataclass(frozen=True)
class SlurmOptions:
    """Resources of each task of the array (one task = one run).

    Args:
        partition: ``--partition`` (default: the cluster's default partition).
        account: ``--account`` to charge.
        time: each task's time limit in SLURM's syntax (``MM``, ``HH:MM:SS``, ``D-HH:MM``); a run longer
            than that checkpoints, requeues its task and continues.
        gpus_per_run: GPUs of each task (``--gpus-per-node``; one task per node).
        cpus_per_run: ``--cpus-per-task``.
        array_limit: tasks running at once (``--array=...%N``; default: no limit but SLURM's).
        signal_seconds: seconds before the time limit at which SIGUSR1 asks the run to checkpoint and requeue.
        sbatch: further ``#SBATCH`` options, e.g. ``{qos: high, constraint: a100}`` (true: a bare flag).
        setup: shell lines run in the job before the run (``module load ...``, ``source venv/bin/activate``).
    """

    partition: str | None = None
    account: str | None = None
    time: str = DEFAULT_TIME
    gpus_per_run: int | None = None
    cpus_per_run: int | None = None
    array_limit: int | None = None
    signal_seconds: int = DEFAULT_SIGNAL_SECONDS
    sbatch: dict[str, Any] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("SLURM (--launcher slurm; the plan's slurm: section sets the same)")
        g.add_argument("--partition", help="partition of the array's tasks")
        g.add_argument("--account", help="account to charge")
        g.add_argument("--time", help=f"each task's time limit, SLURM syntax (default {DEFAULT_TIME})")
        g.add_argument("--gpus-per-run", type=int, help="GPUs per run (task)")
        g.add_argument("--cpus-per-run", type=int, help="CPUs per run (task)")
        g.add_argument("--array-limit", type=int, help="tasks running at once (--array=...%%N)")
        g.add_argument(
            "--signal-seconds",
            type=int,
            help=f"SIGUSR1 this long before the time limit: checkpoint and requeue (default {DEFAULT_SIGNAL_SECONDS})",
        )
        g.add_argument(
            "--sbatch",
            action="append",
            default=[],
            metavar="OPTION",
            help="an extra #SBATCH option, e.g. --sbatch qos=high (repeatable)",
        )
        g.add_argument("--wait", action="store_true", help="stay until every task has ended, then report")

    @classmethod
    def from_plan(cls, section: dict[str, Any]) -> SlurmOptions:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(section) - known)
        if unknown:
            raise SlurmOptionsError(
                f"unknown key(s) {', '.join(unknown)} in the plan's slurm: section; valid: {', '.join(sorted(known))}"
            )
        values = dict(section)
        values["sbatch"] = _sbatch_options(values.get("sbatch") or {})
        values["setup"] = [str(line) for line in values.get("setup") or []]
        if "time" in values:
            values["time"] = str(values["time"])
        return cls(**values).checked()

    def updated(self, ns: argparse.Namespace) -> SlurmOptions:
        """These options with the command line's on top."""
        given = {
            k: getattr(ns, k)
            for k in (
                "partition",
                "account",
                "time",
                "gpus_per_run",
                "cpus_per_run",
                "array_limit",
                "signal_seconds",
            )
            if getattr(ns, k, None) is not None
        }
        sbatch = {**self.sbatch, **_sbatch_options(getattr(ns, "sbatch", []) or [])}
        return replace(self, **given, sbatch=sbatch).checked()

    def checked(self) -> SlurmOptions:
        minutes(self.time)
        for name in ("gpus_per_run", "cpus_per_run", "array_limit"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "gpus_per_run" else 1):
                raise SlurmOptionsError(f"--{name.replace('_', '-')} must be positive; got {value}")
        if self.signal_seconds < 1 or self.signal_seconds * 2 > minutes(self.time) * 60:
            raise SlurmOptionsError(
                f"--signal-seconds {self.signal_seconds} must be >= 1 and at most half of --time {self.time}"
            )
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def executor_parameters(self, job_name: str) -> dict[str, Any]:
        """``submitit.SlurmExecutor.update_parameters`` of the array (submitit writes its ``--array`` line)."""
        extra: dict[str, Any] = {
            # hwm fit checkpoints and requeues itself on SIGUSR1 (submitit's own handler waits for SIGUSR2).
            "signal": f"USR1@{self.signal_seconds}",
            "requeue": True,
            **self.sbatch,
        }
        params: dict[str, Any] = {
            "job_name": job_name,
            "time": minutes(self.time),
            "additional_parameters": extra,
            "ntasks_per_node": 1,
            "nodes": 1,
            "stderr_to_stdout": True,
        }
        optional = {
            "partition": self.partition,
            "account": self.account,
            "gpus_per_node": self.gpus_per_run,
            "cpus_per_task": self.cpus_per_run,
            "array_parallelism": self.array_limit,
            "setup": list(self.setup) or None,
        }
        params.update({k: v for k, v in optional.items() if v is not None})
        return params


_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def minutes(text: str) -> int:
    """SLURM's time syntax in whole minutes (rounded up): ``90``, ``1:30:00``, ``2-00:00:00``, ``2-12``."""
    found = _TIME.match(str(text).strip())
    if not found:
        raise SlurmOptionsError(f"--time {text!r} is not a SLURM time (MM, HH:MM:SS, D-HH:MM:SS)")
    days, a, b, c = found.groups()
    parts = [int(a)] + [int(x) for x in (b, c) if x is not None]
    if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
        seconds = int(days) * 86400 + sum(v * s for v, s in zip(parts, (3600, 60, 1), strict=False))
    elif len(parts) == 3:  # HH:MM:SS
        seconds = parts[0] * 3600 + parts[1] * 60 + parts[2]
    else:  # MM, MM:SS
        seconds = parts[0] * 60 + (parts[1] if len(parts) > 1 else 0)
    if seconds <= 0:
        raise SlurmOptionsError(f"--time {text!r} must be positive")
    return -(-seconds // 60)


def _sbatch_options(value: Any) -> dict[str, Any]:
    """``{qos: high}``, ``["--qos=high", "exclusive"]`` or ``"qos=high"`` as ``{"qos": "high", "exclusive": True}``."""
    if isinstance(value, dict):
        return {str(k).removeprefix("--"): v for k, v in value.items()}
    out: dict[str, Any] = {}
    for item in [value] if isinstance(value, str) else value:
        text = str(item).strip().removeprefix("#SBATCH").strip().removeprefix("--")
        key, sep, val = text.partition("=")
        if not key:
            raise SlurmOptionsError(f"--sbatch expects OPTION or OPTION=VALUE (e.g. qos=high); got {item!r}")
        out[key] = val if sep else True
    return out
