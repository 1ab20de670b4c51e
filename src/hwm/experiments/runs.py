"""An MLflow experiment's runs as metric curves, with the param or tag they are grouped by."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from hwm.checkpoints.class_paths import upgrade_class_paths
from hwm.experiments.tracking import FRAMES_METRIC, STUDY_TAG, SUMMARY_TAG, sqlite_path

DEFAULT_METRIC = "eval/return"
DEFAULT_GROUP_BY = "model.harmonizer_mode"


class CompareError(Exception):
    """Bad input (unknown experiment, metric, param): reported as one line, exit code 2."""


@dataclass
class RunCurve:
    """One run's metric history, ordered by env frames."""

    run_id: str
    name: str
    group: str
    steps: np.ndarray  # env frames
    values: np.ndarray
    frames: int  # env frames the run reached
    task: str | None = None  # param data.task, else tag task
    suite: str | None = None  # param data.suite, else tag suite
    base: str | None = None  # param model.base, else tag base

    @property
    def final(self) -> float:
        return float(self.values[-1])

    @property
    def best(self) -> float:
        return float(self.values.max())

    def until(self, frames: int) -> RunCurve:
        """The run as it stood at ``frames``: its values logged at or before that step."""
        keep = self.steps <= frames
        if not keep.any():
            raise ValueError(f"run {self.name!r} logged nothing at or before {frames}")
        steps = self.steps[keep]
        return RunCurve(
            self.run_id,
            self.name,
            self.group,
            steps,
            self.values[keep],
            int(steps[-1]),
            self.task,
            self.suite,
        )


@dataclass
class GroupStats:
    group: str
    runs: int
    final_mean: float
    final_std: float
    best_mean: float
    iqm: float
    ci_low: float | None  # None: one run, no interval
    ci_high: float | None
    frames_min: int
    frames_max: int
    run_ids: list[str] = field(default_factory=list)


FIND_STORE_HINT = "run hwm compare where hwm fit ran (it writes mlflow.db there), or pass --tracking-uri"


def mlflow_client(tracking_uri: str, hint: str = FIND_STORE_HINT) -> Any:
    """A client of an existing store: reading never creates one (MLflow would make an empty sqlite file);
    ``hint`` says how to name the right one where the store is missing."""
    database = sqlite_path(tracking_uri)
    if database is not None and not database.is_file():
        raise CompareError(
            f"no MLflow store at {str(database.absolute())!r} (tracking URI {tracking_uri}): {hint}"
        )
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def find_store(start: Path | None = None) -> Path:
    """The folder holding ``mlflow.db`` (the store ``hwm fit`` writes where it runs): ``start`` (default: the
    working folder) or the nearest folder above it, else ``start`` itself. Jupyter runs a notebook inside
    its own folder (``notebooks/``), one below where ``hwm fit`` ran."""
    here = (start or Path.cwd()).absolute()
    return next((folder for folder in (here, *here.parents) if (folder / "mlflow.db").is_file()), here)


def resolve_experiment(tracking_uri: str, experiment: str | None) -> tuple[str, str | None]:
    """(the experiment to compare, a notice): the one named, else the store's only experiment with runs.

    hwm's presets log to experiments of their own (hwm-tiny, hwm-cartpole, ...), so a fixed default would
    miss most stores; with several experiments the user picks one.
    """
    if experiment is not None:
        return experiment, None
    client = mlflow_client(tracking_uri)
    counts = {}
    for exp in client.search_experiments():
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        if runs:
            counts[exp.name] = len(runs)
    if len(counts) == 1:
        name = next(iter(counts))
        return name, f"comparing experiment {name!r}, the only one with runs in {tracking_uri}"
    if not counts:
        raise CompareError(f"the store {tracking_uri} has no runs yet")
    listed = ", ".join(f"{name} ({n} run{'s' * (n != 1)})" for name, n in sorted(counts.items()))
    raise CompareError(
        f"the store {tracking_uri} has several experiments: {listed}; pick one with --experiment"
    )


def experiment_id(client: Any, experiment: str) -> str:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        known = sorted(e.name for e in client.search_experiments())
        raise CompareError(
            f"no experiment {experiment!r} in this tracking store; known experiments: "
            + (", ".join(known) if known else "none")
        )
    return exp.experiment_id


def _group_value(run: Any, group_by: str) -> str | None:
    if group_by.startswith("tags."):
        return run.data.tags.get(group_by[5:])
    value = run.data.params.get(group_by.removeprefix("params."))
    # Runs recorded before hwm's package layout name their classes by the old module paths.
    return upgrade_class_paths(value) if value is not None else None


def _setting(run: Any, key: str, section: str = "data") -> str | None:
    """A run's ``<section>.<key>`` param, else its ``<key>`` tag (both are logged by ``hwm fit``)."""
    value = run.data.params.get(f"{section}.{key}") or run.data.tags.get(key)
    return str(value) if value else None


def search_runs(
    tracking_uri: str, experiment: str, *, study: str | None = None, filter_string: str = ""
) -> list:
    """The experiment's runs (MLflow ``Run`` objects) matching the filters, without comparison summary runs."""
    client = mlflow_client(tracking_uri)
    exp_id = experiment_id(client, experiment)
    filters = [f for f in (filter_string, f"tags.`{STUDY_TAG}` = '{study}'" if study else "") if f]
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_runs([exp_id], filter_string=" and ".join(filters), max_results=5000)
    except MlflowException as exc:
        first = str(exc.message).strip().splitlines()[0] if str(exc.message).strip() else type(exc).__name__
        raise CompareError(
            f"bad --filter {filter_string!r}: {first} (e.g. \"params.`data.task` = 'cartpole-balance'\")"
        ) from None
    runs = [r for r in found if r.data.tags.get(SUMMARY_TAG) != "true"]
    if not runs:
        where = f" of study {study!r}" if study else ""
        raise CompareError(f"experiment {experiment!r} has no runs{where} to compare")
    return runs


def load_runs(
    tracking_uri: str,
    experiment: str,
    *,
    metric: str = DEFAULT_METRIC,
    group_by: str = DEFAULT_GROUP_BY,
    study: str | None = None,
    filter_string: str = "",
) -> list[RunCurve]:
    """The experiment's runs that logged ``metric``, each with its history and group (param or ``tags.X``)."""
    client = mlflow_client(tracking_uri)
    runs = search_runs(tracking_uri, experiment, study=study, filter_string=filter_string)
    with_metric = [r for r in runs if metric in r.data.metrics]
    if not with_metric:
        available = sorted({k for r in runs for k in r.data.metrics})
        raise CompareError(
            f"no run of {experiment!r} logged the metric {metric!r}; available metrics: {', '.join(available)}"
        )
    if all(_group_value(r, group_by) is None for r in with_metric):
        names = sorted({k for r in with_metric for k in r.data.params})
        close = difflib.get_close_matches(group_by.removeprefix("params."), names, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "pass a logged param (or tags.NAME)"
        raise CompareError(f"no run has the param {group_by!r} to group by; {hint}")
    out = []
    for run in with_metric:
        history = client.get_metric_history(run.info.run_id, metric)
        # One value per step (the agent writes each step once; a rerun step keeps its latest value).
        by_step = {m.step: m.value for m in sorted(history, key=lambda m: (m.step, m.timestamp))}
        steps = np.array(sorted(by_step), dtype=np.int64)
        values = np.array([by_step[s] for s in steps], dtype=np.float64)
        frames = int(run.data.metrics.get(FRAMES_METRIC, steps[-1]))
        group = _group_value(run, group_by)
        out.append(
            RunCurve(
                run_id=run.info.run_id,
                name=run.info.run_name or run.info.run_id,
                group="(unset)" if group is None else str(group),
                steps=steps,
                values=values,
                frames=max(frames, int(steps[-1])),
                task=_setting(run, "task"),
                suite=_setting(run, "suite"),
                base=_setting(run, "base", section="model"),
            )
        )
    return sorted(out, key=lambda c: (c.group, c.name))


# What runs must share to be pooled in one group: a group mixing them averages different agents or tasks.
SPLIT_KEYS = {"model.base": "base", "data.task": "task"}


def split_mixed(
    runs: Sequence[RunCurve], group_by: str, among: Sequence[str] = tuple(SPLIT_KEYS)
) -> tuple[list[RunCurve], list[str]]:
    """Runs whose groups are split by the settings ``among`` (keys of ``SPLIT_KEYS``) on which the runs
    differ (``rectified`` becomes ``rectified [dreamerv3, walker-walk]``), and those settings' keys."""
    keys = [
        key
        for key in among
        if key != group_by.removeprefix("params.") and len({getattr(r, SPLIT_KEYS[key]) for r in runs}) > 1
    ]
    if not keys:
        return list(runs), []
    out = []
    for run in runs:
        parts = ", ".join(str(getattr(run, SPLIT_KEYS[key]) or "?") for key in keys)
        out.append(replace(run, group=f"{run.group} [{parts}]"))
    return sorted(out, key=lambda c: (c.group, c.name)), keys


def split_notice(runs: Sequence[RunCurve], keys: Sequence[str]) -> str:
    """What ``split_mixed`` did, and how to compare one setting alone."""
    first = getattr(runs[0], SPLIT_KEYS[keys[0]])
    return (
        f"runs differ in {' and '.join(keys)}: each group is split by {'them' if len(keys) > 1 else 'it'} "
        f"(a group pooling them would average different agents or tasks); --filter picks one, e.g. "
        f"--filter \"params.`{keys[0]}` = '{first}'\""
    )


def groups(runs: Sequence[RunCurve]) -> dict[str, list[RunCurve]]:
    out: dict[str, list[RunCurve]] = {}
    for run in runs:
        out.setdefault(run.group, []).append(run)
    return dict(sorted(out.items()))
