"""`hwm study`: seeds x variants of `hwm fit`, grouped under one MLflow experiment, resumable.

    hwm study --config conf/tiny.yaml --seeds 0 1 --vary model.harmonizer_mode=rectified,off
    hwm study --resume <id>          # again: finished runs are skipped, interrupted ones continue
    hwm study --status <id>          # each run's frames, return and state
    hwm study ... --launcher slurm   # one SLURM job array, one task per run (docs/cluster.md)

or the same from a file (``hwm study --plan study.yaml``)::

    config: [conf/tiny.yaml]
    seeds: [0, 1]
    vary: {model.harmonizer_mode: [rectified, off]}
    args: [--data.total_frames, "800"]   # optional: passed to every run
    slurm: {partition: gpu, time: "24:00:00", gpus_per_run: 1, sbatch: {qos: high}}   # optional

Each run is a separate ``python -m hwm.cli fit`` process (a crash or leak of one run can't touch the
next), tagged ``hwm.study=<id>`` and named ``<variant> seed=<n>``; ``hwm compare --study <id>`` reads them.
The study's definition and each run's record and log live in ``<logs>/<id>/`` (study_folder); each run
checkpoints under ``<checkpoint.dirpath>/<id>/<run key>/``, which is how a rerun finds what to continue.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hwm.config.prescan import last_value
from hwm.experiments.study_sbatch import SlurmOptions, SlurmOptionsError
from hwm.experiments.tracking import DEFAULT_EXPERIMENT, DEFAULT_URI, STUDY_TAG

# The tag naming a run's place in its study (its key): a rerun finds the run's MLflow record by it.
STUDY_RUN_TAG = "hwm.study.run"
LAUNCHERS = ("local", "slurm")


class StudyError(Exception):
    """Bad study input: one line, exit code 2."""


@dataclass(frozen=True)
class Slot:
    """One run of a study: its place (1-based), variant and seed."""

    index: int
    variant: dict[str, str]
    seed: int
    width: int = 2  # digits of the index in the key: every key of a study has the same

    @property
    def name(self) -> str:
        return run_name(self.variant, self.seed)

    @property
    def key(self) -> str:
        """Stable across reruns of the study: ``03-harmonizer_mode=off_seed=0``."""
        slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", self.name)
        return f"{self.index:0{self.width}d}-{slug}"


@dataclass
class Study:
    """What a study runs (saved in its folder, the same for every rerun) and how this invocation runs it."""

    configs: list[str]
    seeds: list[int]
    vary: dict[str, list[str]]
    args: list[str] = field(default_factory=list)
    experiment: str | None = None
    tracking_uri: str | None = None
    study_id: str = ""
    workdir: str = ""  # relative paths of the runs (configs, stores, checkpoints) are relative to it
    # How to run it: not part of the definition, may differ between reruns.
    dry_run: bool = False
    jobs: int = 1
    logs: Path = Path("studies")
    progress_every: float = 60.0
    launcher: str = "local"
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    wait: bool = False

    DEFINITION = ("configs", "seeds", "vary", "args", "experiment", "tracking_uri", "study_id", "workdir")

    def definition(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.DEFINITION}

    @property
    def folder(self) -> Path:
        return self.logs / self.study_id

    def slot(self, index: int, variant: dict[str, str], seed: int) -> Slot:
        return Slot(index, variant, seed, max(2, len(str(len(self.variants()) * len(self.seeds)))))

    def variants(self) -> list[dict[str, str]]:
        keys = list(self.vary)
        return [dict(zip(keys, values, strict=True)) for values in itertools.product(*self.vary.values())]

    def slots(self) -> list[Slot]:
        pairs = [(v, s) for v in self.variants() for s in self.seeds]
        return [self.slot(i, v, s) for i, (v, s) in enumerate(pairs, 1)]

    def _given(self) -> list[str]:
        return [*_config_args(self.configs), *self.args]

    def experiment_name(self) -> str:
        key = "trainer.logger.init_args.experiment_name"
        return self.experiment or last_value(self._given(), key) or DEFAULT_EXPERIMENT

    def tracking(self) -> str:
        """The runs' tracking URI as given (a relative sqlite path is relative to the workdir)."""
        return (
            self.tracking_uri
            or last_value(self._given(), "trainer.logger.init_args.tracking_uri")
            or DEFAULT_URI
        )

    def checkpoint_root(self, slot: Slot) -> Path:
        """Where ``slot``'s run checkpoints (its run folder below): one folder per run of the study."""
        base = last_value(self._given(), "checkpoint.dirpath") or "checkpoints"
        return Path(base) / self.study_id / slot.key

    def fit_args(self, variant: dict[str, str], seed: int, index: int | None = None) -> list[str]:
        slot = self.slot(index, variant, seed) if index is not None else None
        out = self._given()
        for key, value in variant.items():
            out += [f"--{key}", value]
        out += ["--seed_everything", str(seed), "--data.seed", str(seed)]
        prefix = "--trainer.logger.init_args."
        if self.experiment:
            out += [f"{prefix}experiment_name", self.experiment]
        if self.tracking_uri:
            out += [f"{prefix}tracking_uri", self.tracking_uri]
        out += [f"{prefix}run_name", run_name(variant, seed)]
        tags = {STUDY_TAG: self.study_id}
        if slot is not None:
            tags[STUDY_RUN_TAG] = slot.key
            out += ["--checkpoint.dirpath", str(self.checkpoint_root(slot))]
        out += [f"{prefix}tags", json.dumps(tags)]
        return out


def run_name(variant: dict[str, str], seed: int) -> str:
    # A varied config file (``--vary config=conf/atari/pong.yaml,...``) is named by its file: config=pong.
    parts = [f"{k.rsplit('.', 1)[-1]}={Path(v).stem if k == 'config' else v}" for k, v in variant.items()]
    return " ".join([*parts, f"seed={seed}"])


def parse_vary(items: Sequence[str]) -> dict[str, list[str]]:
    vary: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().removeprefix("--")
        choices = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not choices:
            raise StudyError(
                f"--vary expects KEY=V1,V2,... (e.g. model.harmonizer_mode=rectified,off); got {item!r}"
            )
        vary[key] = choices
    return vary


PLAN_KEYS = {"config", "seeds", "vary", "args", "experiment", "tracking_uri", "slurm"}


def load_plan(path: Path) -> dict[str, Any]:
    try:
        plan = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise StudyError(f"cannot read the study plan {path}: {exc}") from exc
    plan = plan.get("study", plan) if isinstance(plan, dict) else plan  # a `study:` section or a bare plan
    if not isinstance(plan, dict):
        raise StudyError(f"the study plan {path} is not a YAML mapping of {{config, seeds, vary, ...}}")
    unknown = sorted(set(plan) - PLAN_KEYS)
    if unknown:
        raise StudyError(
            f"unknown key(s) {', '.join(unknown)} in {path}; valid keys: {', '.join(sorted(PLAN_KEYS))}"
        )
    return plan


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hwm study", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--plan", type=Path, help="YAML study plan (keys: config, seeds, vary, args, experiment, slurm)"
    )
    p.add_argument("--config", action="append", default=[], help="hwm fit config file (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (seed_everything and data.seed)")
    p.add_argument(
        "--vary", action="append", default=[], help="KEY=V1,V2: one variant per value (repeatable)"
    )
    p.add_argument("--experiment", help="MLflow experiment for all runs (default: the config's)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for all runs (default: the config's)")
    p.add_argument(
        "--study-id", help="tag value hwm.study (default: study-<time>-<random>); an existing id resumes it"
    )
    p.add_argument(
        "--resume", metavar="ID", help="run the unfinished runs of study ID again, as it was defined"
    )
    p.add_argument("--status", metavar="ID", help="print each run's frames, return and state, then exit")
    p.add_argument("--launcher", choices=LAUNCHERS, help="local processes (default) or a SLURM job array")
    p.add_argument("--jobs", type=int, default=1, help="local: runs at a time (default 1: one after another)")
    p.add_argument("--dry-run", action="store_true", help="print the hwm fit commands and exit")
    p.add_argument(
        "--logs",
        type=Path,
        default=Path("studies"),
        help="the study's folder is LOGS/<study id>/: its definition, each run's record and log (default studies)",
    )
    p.add_argument(
        "--progress-every",
        type=float,
        default=60.0,
        help="seconds between progress lines (env frames) of a running run (default 60; 0: none)",
    )
    SlurmOptions.add_arguments(p)
    p.add_argument(
        "fit_args", nargs=argparse.REMAINDER, help="after --: extra hwm fit arguments for every run"
    )
    return p


def build(argv: Sequence[str]) -> Study:
    """The study of a command line: a new definition, or (``--resume``) the one saved in its folder."""
    ns = parser().parse_args(list(argv))
    if ns.jobs < 1:
        raise StudyError(f"--jobs must be >= 1; got {ns.jobs}")
    if ns.progress_every < 0:
        raise StudyError(f"--progress-every must be >= 0; got {ns.progress_every}")
    plan = load_plan(ns.plan) if ns.plan else {}
    extra = ns.fit_args[1:] if ns.fit_args[:1] == ["--"] else ns.fit_args
    saved: dict[str, Any] = {}
    if ns.resume:
        given = [
            f for f in ("plan", "config", "seeds", "experiment", "tracking_uri", "study_id") if getattr(ns, f)
        ]
        if given or ns.vary or extra:
            flags = ", ".join(f"--{f.replace('_', '-')}" for f in given) or "--vary or fit arguments"
            raise StudyError(f"--resume takes the study's definition from its folder; drop {flags}")
        saved = load_definition(ns.logs, ns.resume)
    try:
        # A rerun launches as the study last did, unless told otherwise.
        slurm = SlurmOptions.from_plan(plan.get("slurm") or saved.get("slurm") or {}).updated(ns)
    except SlurmOptionsError as exc:
        raise StudyError(str(exc)) from None
    how = {
        "dry_run": ns.dry_run,
        "jobs": ns.jobs,
        "logs": ns.logs,
        "progress_every": ns.progress_every,
        "launcher": ns.launcher or saved.get("launcher") or "local",
        "slurm": slurm,
        "wait": ns.wait,
    }
    if ns.resume:
        return Study(**{k: saved[k] for k in Study.DEFINITION}, **how)
    configs = ns.config or _as_list(plan.get("config"))
    seeds = ns.seeds if ns.seeds is not None else [int(s) for s in _as_list(plan.get("seeds", [0]))]
    vary = {k: [str(v) for v in _as_list(vs)] for k, vs in (plan.get("vary") or {}).items()}
    vary.update(parse_vary(ns.vary))
    if not configs:
        raise StudyError("give at least one --config FILE (or `config:` in the plan)")
    if len(set(seeds)) != len(seeds):
        raise StudyError(f"--seeds has duplicates: {seeds}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Study(
        configs=[str(c) for c in configs],
        seeds=seeds,
        vary=vary,
        args=[str(a) for a in _as_list(plan.get("args"))] + extra,
        experiment=ns.experiment or plan.get("experiment"),
        tracking_uri=ns.tracking_uri or plan.get("tracking_uri"),
        study_id=ns.study_id or f"study-{stamp}-{secrets.token_hex(2)}",
        workdir=os.getcwd(),
        **how,
    )


DEFINITION_FILE = "study.json"


def save_definition(study: Study) -> None:
    """Writes the definition on the first run; a rerun under the same id must define the same study. How it
    was launched (launcher, SLURM options) is kept for the next ``--resume``."""
    path = study.folder / DEFINITION_FILE
    saved = _read_definition(path) if path.exists() else None
    if saved is not None:
        differ = [k for k in Study.DEFINITION if k != "workdir" and saved.get(k) != study.definition()[k]]
        if differ:
            raise StudyError(
                f"study {study.study_id!r} exists ({path}) with a different {', '.join(differ)}; "
                f"rerun it with `hwm study --resume {study.study_id}` or pick another --study-id"
            )
        study.workdir = saved["workdir"]
    record = {**study.definition(), "launcher": study.launcher, "slurm": study.slurm.as_dict()}
    study.folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{DEFINITION_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


def load_definition(logs: Path, study_id: str) -> dict[str, Any]:
    """The saved definition of study ``study_id`` under ``logs`` (and how it was last launched)."""
    path = logs / study_id / DEFINITION_FILE
    if not path.exists():
        known = sorted(p.parent.name for p in logs.glob(f"*/{DEFINITION_FILE}"))
        raise StudyError(
            f"no study {study_id!r} under {logs}/ (its {DEFINITION_FILE} is missing); "
            + (f"known: {', '.join(known)}" if known else "pass --logs FOLDER where it was started")
        )
    return _read_definition(path)


def load_study(logs: Path, study_id: str) -> Study:
    """The study as saved, launched as it was last."""
    saved = load_definition(logs, study_id)
    slurm = SlurmOptions.from_plan(saved.get("slurm") or {})
    return Study(
        **{k: saved[k] for k in Study.DEFINITION},
        logs=logs,
        launcher=saved.get("launcher", "local"),
        slurm=slurm,
    )


def _read_definition(path: Path) -> dict[str, Any]:
    try:
        saved = json.loads(path.read_text())
        missing = [k for k in Study.DEFINITION if k not in saved]
    except (OSError, ValueError) as exc:
        raise StudyError(f"cannot read the study's definition {path}: {exc}") from exc
    if missing:
        raise StudyError(f"the study's definition {path} lacks {', '.join(missing)}")
    return saved


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _config_args(configs: Sequence[str]) -> list[str]:
    return [a for path in configs for a in ("--config", path)]
