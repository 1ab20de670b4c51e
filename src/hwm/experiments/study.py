"""`hwm study`: seeds x variants of `hwm fit`, one after another, grouped under one MLflow experiment.

    hwm study --config conf/tiny.yaml --seeds 0 1 --vary model.harmonizer_mode=rectified,off

or the same from a file (``hwm study --plan study.yaml``)::

    config: [conf/tiny.yaml]
    seeds: [0, 1]
    vary: {model.harmonizer_mode: [rectified, off]}
    args: [--data.total_frames, "800"]   # optional: passed to every run

Each run is a separate ``python -m hwm.cli fit`` process (a crash or leak of one run can't touch the
next), tagged ``hwm.study=<id>`` and named ``<variant> seed=<n>``; ``hwm compare --study <id>`` reads them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hwm.config.prescan import last_value
from hwm.experiments.compare import DEFAULT_GROUP_BY
from hwm.experiments.tracking import DEFAULT_EXPERIMENT, DEFAULT_URI, STUDY_TAG


class StudyError(Exception):
    """Bad study input: one line, exit code 2."""


@dataclass
class Study:
    configs: list[str]
    seeds: list[int]
    vary: dict[str, list[str]]
    args: list[str] = field(default_factory=list)
    experiment: str | None = None
    tracking_uri: str | None = None
    study_id: str = ""
    dry_run: bool = False
    jobs: int = 1
    logs: Path = Path("studies")
    progress_every: float = 60.0

    def log_path(self, index: int, variant: dict[str, str], seed: int) -> Path:
        """Where run ``index`` (1-based) writes its output: beside the study's other runs."""
        slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", run_name(variant, seed))
        return self.logs / self.study_id / f"{index:02d}-{slug}.log"

    def variants(self) -> list[dict[str, str]]:
        keys = list(self.vary)
        return [dict(zip(keys, values, strict=True)) for values in itertools.product(*self.vary.values())]

    def fit_args(self, variant: dict[str, str], seed: int) -> list[str]:
        out = [a for c in self.configs for a in ("--config", c)]
        out += list(self.args)
        for key, value in variant.items():
            out += [f"--{key}", value]
        out += ["--seed_everything", str(seed), "--data.seed", str(seed)]
        prefix = "--trainer.logger.init_args."
        if self.experiment:
            out += [f"{prefix}experiment_name", self.experiment]
        if self.tracking_uri:
            out += [f"{prefix}tracking_uri", self.tracking_uri]
        out += [f"{prefix}run_name", run_name(variant, seed)]
        out += [f"{prefix}tags", json.dumps({STUDY_TAG: self.study_id})]
        return out


def run_name(variant: dict[str, str], seed: int) -> str:
    parts = [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in variant.items()]
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


def load_plan(path: Path) -> dict[str, Any]:
    try:
        plan = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise StudyError(f"cannot read the study plan {path}: {exc}") from exc
    plan = plan.get("study", plan) if isinstance(plan, dict) else plan  # a `study:` section or a bare plan
    if not isinstance(plan, dict):
        raise StudyError(f"the study plan {path} is not a YAML mapping of {{config, seeds, vary, ...}}")
    known = {"config", "seeds", "vary", "args", "experiment", "tracking_uri"}
    unknown = sorted(set(plan) - known)
    if unknown:
        raise StudyError(
            f"unknown key(s) {', '.join(unknown)} in {path}; valid keys: {', '.join(sorted(known))}"
        )
    return plan


def build(argv: Sequence[str]) -> Study:
    p = argparse.ArgumentParser(prog="hwm study", description=__doc__.split("\n\n")[0])
    p.add_argument("--plan", type=Path, help="YAML study plan (keys: config, seeds, vary, args, experiment)")
    p.add_argument("--config", action="append", default=[], help="hwm fit config file (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (seed_everything and data.seed)")
    p.add_argument(
        "--vary", action="append", default=[], help="KEY=V1,V2: one variant per value (repeatable)"
    )
    p.add_argument("--experiment", help="MLflow experiment for all runs (default: the config's)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for all runs (default: the config's)")
    p.add_argument("--study-id", help="tag value hwm.study (default: study-<time>-<random>)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1: one after another)")
    p.add_argument("--dry-run", action="store_true", help="print the hwm fit commands and exit")
    p.add_argument(
        "--logs",
        type=Path,
        default=Path("studies"),
        help="each run's output goes to LOGS/<study id>/ (default studies)",
    )
    p.add_argument(
        "--progress-every",
        type=float,
        default=60.0,
        help="seconds between progress lines (env frames) of a running run (default 60; 0: none)",
    )
    p.add_argument(
        "fit_args", nargs=argparse.REMAINDER, help="after --: extra hwm fit arguments for every run"
    )
    ns = p.parse_args(list(argv))
    plan = load_plan(ns.plan) if ns.plan else {}
    configs = ns.config or _as_list(plan.get("config"))
    seeds = ns.seeds if ns.seeds is not None else [int(s) for s in _as_list(plan.get("seeds", [0]))]
    vary = {k: [str(v) for v in _as_list(vs)] for k, vs in (plan.get("vary") or {}).items()}
    vary.update(parse_vary(ns.vary))
    extra = ns.fit_args[1:] if ns.fit_args[:1] == ["--"] else ns.fit_args
    if not configs:
        raise StudyError("give at least one --config FILE (or `config:` in the plan)")
    if ns.jobs < 1:
        raise StudyError(f"--jobs must be >= 1; got {ns.jobs}")
    if ns.progress_every < 0:
        raise StudyError(f"--progress-every must be >= 0; got {ns.progress_every}")
    if len(set(seeds)) != len(seeds):
        raise StudyError(f"--seeds has duplicates: {seeds}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    study = Study(
        configs=[str(c) for c in configs],
        seeds=seeds,
        vary=vary,
        args=[str(a) for a in _as_list(plan.get("args"))] + extra,
        experiment=ns.experiment or plan.get("experiment"),
        tracking_uri=ns.tracking_uri or plan.get("tracking_uri"),
        study_id=ns.study_id or f"study-{stamp}-{secrets.token_hex(2)}",
        dry_run=ns.dry_run,
        jobs=ns.jobs,
        logs=ns.logs,
        progress_every=ns.progress_every,
    )
    return study


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _config_args(configs: Sequence[str]) -> list[str]:
    return [a for path in configs for a in ("--config", path)]


def _ensure_experiment(tracking_uri: str, name: str) -> bool:
    """Creates the experiment up front (parallel runs would race to); False when that isn't possible."""
    try:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri)
        if client.get_experiment_by_name(name) is None:
            client.create_experiment(name)
        return True
    except Exception:
        return False


def run(study: Study) -> int:
    """Runs every variant x seed; a config error stops the study, a crashed run doesn't.

    With ``jobs > 1`` the experiment is created first, then ``jobs`` runs go at a time.
    """
    variants = study.variants()
    jobs = [(v, s) for v in variants for s in study.seeds]
    failed: list[str] = []
    n_variants = len(variants)
    print(f"hwm study {study.study_id}: {len(jobs)} runs ({n_variants} variants x {len(study.seeds)} seeds)")
    if study.dry_run:
        for i, (variant, seed) in enumerate(jobs, 1):
            cmd = ["hwm", "fit", *study.fit_args(variant, seed)]
            print(f"[{i}/{len(jobs)}] {run_name(variant, seed)}: {shlex.join(cmd)}")
        return 0
    try:
        (study.logs / study.study_id).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(
            f"hwm study: error: cannot write the runs' logs under {study.logs / study.study_id}: {exc.strerror}; "
            "run from a writable folder or pass --logs FOLDER",
            file=sys.stderr,
        )
        return 2
    lock, stop = threading.Lock(), threading.Event()

    def one(i: int, variant: dict[str, str], seed: int) -> int:
        cmd = [sys.executable, "-m", "hwm.cli", "fit", *study.fit_args(variant, seed)]
        label = f"[{i}/{len(jobs)}] {run_name(variant, seed)}"
        if stop.is_set():
            return 2
        log = study.log_path(i, variant, seed)
        with lock:
            print(f"{label}: running (log: {log})", flush=True)
        start = time.perf_counter()
        code = _run_logged(cmd, log, study.progress_every, lambda text: _say(lock, f"{label}: {text}"))
        took = time.perf_counter() - start
        with lock:
            if code == 0:
                print(f"{label}: done in {took:.1f} s", flush=True)
            else:
                tail = last_message(log)
                print(f"{label}: failed (exit {code}) in {took:.1f} s: {tail} (log: {log})", flush=True)
                failed.append(run_name(variant, seed))
                if code == 2:  # bad config: the study stops
                    stop.set()
                    print(f"hwm study: error: stopping: {tail}", file=sys.stderr)
        return code

    logger = "trainer.logger.init_args."
    experiment = (
        study.experiment
        or last_value(_config_args(study.configs), logger + "experiment_name")
        or DEFAULT_EXPERIMENT
    )
    tracking = study.tracking_uri or last_value(_config_args(study.configs), logger + "tracking_uri")
    first = 0
    if study.jobs > 1 and not _ensure_experiment(tracking or DEFAULT_URI, experiment):
        # Runs starting together would race to create the experiment: the first one goes alone.
        first = 1
        if one(1, *jobs[0]) == 2:
            return 2
    with ThreadPoolExecutor(max_workers=study.jobs) as pool:
        codes = list(pool.map(lambda job: one(job[0], *job[1]), enumerate(jobs[first:], first + 1)))
    if 2 in codes:
        return 2
    where = f" --experiment {experiment}"
    uri = f" --tracking-uri {tracking}" if tracking else ""
    print(f"hwm study {study.study_id}: {len(jobs) - len(failed)}/{len(jobs)} runs finished")
    group = next(iter(study.vary), DEFAULT_GROUP_BY)
    print(f"compare them: hwm compare{where}{uri} --study {study.study_id} --group-by {group}")
    if failed:
        print(f"hwm study: {len(failed)} run(s) failed: {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _say(lock: threading.Lock, line: str) -> None:
    with lock:
        print(line, flush=True)


# A progress bar's state in a run's log: "123/400 [" (tqdm's n/total).
_FRAMES = re.compile(r"(\d+)/(\d+) \[")
# tqdm's redraws, not messages: "hwm fit:  41%|...".
_BAR = re.compile(r"^hwm fit:\s+\d+%")


def frames_so_far(log: Path) -> tuple[int, int] | None:
    """(env frames, budget) from the last progress-bar update in a run's log, if any yet."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, log.stat().st_size - 4096))
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    found = _FRAMES.findall(text)
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def last_message(log: Path) -> str:
    """The last line of a run's log that is a message, not a progress-bar redraw."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no log)"
    lines = [line.strip() for line in re.split(r"[\r\n]+", text)]
    messages = [line for line in lines if line and not _BAR.match(line)]
    return messages[-1] if messages else "(no output)"


def _run_logged(cmd: list[str], log: Path, every: float, report: Callable[[str], None]) -> int:
    """Runs ``cmd`` with stdout and stderr in ``log``; every ``every`` s reports new progress; the exit code."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the log follows the run, not its buffers
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        shown = None
        while True:
            try:
                return proc.wait(timeout=every if every > 0 else None)
            except subprocess.TimeoutExpired:
                frames = frames_so_far(log)
                if frames is not None and frames != shown:
                    shown = frames
                    report(f"{frames[0]}/{frames[1]} env frames")


def main(argv: Sequence[str]) -> int:
    try:
        study = build(argv)
    except StudyError as exc:
        print(f"hwm study: error: {exc}", file=sys.stderr)
        return 2
    return run(study)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
