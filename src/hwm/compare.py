"""`hwm compare`: groups the runs of an MLflow experiment by a param and compares them with honest error bars.

Per group: runs, final and best value of a metric (mean over runs), the interquartile mean (IQM) of the
final values with a 95% stratified-bootstrap confidence interval (rliable), and env frames. Plots: learning
curves (mean and bootstrap CI band per group on a common env-frame grid) and the aggregate IQM interval
plot. Works with any tracking URI the MLflow client reads (a sqlite store, a server).

``--across-tasks`` (:mod:`hwm.compare_tasks`) instead sums each group up over tasks as the papers do: mean
and median human-normalised score over Atari games (or mean success over Meta-world tasks) and the IQM over
runs x tasks, next to the authors' published rows, with per-task learning curves.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hwm.scores import Aggregate, iqm_interval, seeded_numpy

DEFAULT_METRIC = "eval/return"
DEFAULT_GROUP_BY = "model.harmonizer_mode"
DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "hwm"
STUDY_TAG = "hwm.study"
SUMMARY_TAG = "hwm.summary"  # the runs --log-to-mlflow creates; never compared themselves
FRAMES_METRIC = "progress/env_frames"
CURVE_POINTS = 50


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

    @property
    def final(self) -> float:
        return float(self.values[-1])

    @property
    def best(self) -> float:
        return float(self.values.max())


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


def _client(tracking_uri: str) -> Any:
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def _experiment_id(client: Any, experiment: str) -> str:
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
    return run.data.params.get(group_by.removeprefix("params."))


def _setting(run: Any, key: str) -> str | None:
    """A run's ``data.<key>`` param, else its ``<key>`` tag (both are logged by ``hwm fit``)."""
    value = run.data.params.get(f"data.{key}") or run.data.tags.get(key)
    return str(value) if value else None


def search_runs(
    tracking_uri: str, experiment: str, *, study: str | None = None, filter_string: str = ""
) -> list:
    """The experiment's runs (MLflow ``Run`` objects) matching the filters, without comparison summary runs."""
    client = _client(tracking_uri)
    exp_id = _experiment_id(client, experiment)
    filters = [f for f in (filter_string, f"tags.`{STUDY_TAG}` = '{study}'" if study else "") if f]
    runs = [
        r
        for r in client.search_runs([exp_id], filter_string=" and ".join(filters), max_results=5000)
        if r.data.tags.get(SUMMARY_TAG) != "true"
    ]
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
    client = _client(tracking_uri)
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
            )
        )
    return sorted(out, key=lambda c: (c.group, c.name))


def groups(runs: Sequence[RunCurve]) -> dict[str, list[RunCurve]]:
    out: dict[str, list[RunCurve]] = {}
    for run in runs:
        out.setdefault(run.group, []).append(run)
    return dict(sorted(out.items()))


def summarize(runs: Sequence[RunCurve], *, reps: int = 2000, seed: int = 0) -> list[GroupStats]:
    """One row per group; the IQM's CI is None for a group of one run (a warning says so)."""
    by_group = groups(runs)
    finals = {g: np.array([[r.final] for r in rs]) for g, rs in by_group.items()}
    point, interval = iqm_interval(finals, reps=reps, seed=seed)
    out = []
    for g, rs in by_group.items():
        if len(rs) == 1:
            warnings.warn(f"group {g!r} has one run: no confidence interval", stacklevel=2)
        lo, hi = interval[g] if len(rs) > 1 else (None, None)
        final = finals[g][:, 0]
        out.append(
            GroupStats(
                group=g,
                runs=len(rs),
                final_mean=float(final.mean()),
                final_std=float(final.std(ddof=1)) if len(rs) > 1 else 0.0,
                best_mean=float(np.mean([r.best for r in rs])),
                iqm=point[g],
                ci_low=lo,
                ci_high=hi,
                frames_min=min(r.frames for r in rs),
                frames_max=max(r.frames for r in rs),
                run_ids=[r.run_id for r in rs],
            )
        )
    return out


def format_table(stats: Sequence[GroupStats], *, group_by: str, metric: str) -> str:
    def num(x: float) -> str:
        return f"{x:.2f}"

    header = [group_by, "runs", f"final {metric}", f"best {metric}", "IQM [95% CI]", "env frames"]
    rows = []
    for s in stats:
        ci = f"[{num(s.ci_low)}, {num(s.ci_high)}]" if s.ci_low is not None else "[n/a]"
        frames = str(s.frames_min) if s.frames_min == s.frames_max else f"{s.frames_min}-{s.frames_max}"
        rows.append(
            [
                s.group,
                str(s.runs),
                f"{num(s.final_mean)} ± {num(s.final_std)}",
                num(s.best_mean),
                f"{num(s.iqm)} {ci}",
                frames,
            ]
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def curve_grid(runs: Sequence[RunCurve], points: int = CURVE_POINTS) -> np.ndarray:
    """A common env-frame grid over all runs, so runs evaluated at different frames line up."""
    lo = min(int(r.steps[0]) for r in runs)
    hi = max(int(r.steps[-1]) for r in runs)
    return np.linspace(lo, hi, points) if hi > lo else np.array([float(lo)])


def group_curve(
    runs: Sequence[RunCurve], grid: np.ndarray, *, reps: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, mean, CI low, CI high) of a group on the part of ``grid`` every one of its runs covers.

    Each run is linearly interpolated between its evaluations; the band is a 95% bootstrap CI of the mean
    over runs (rliable), collapsed to the mean for a single run.
    """
    from rliable import library as rly

    start = max(float(r.steps[0]) for r in runs)
    end = min(float(r.steps[-1]) for r in runs)
    x = grid[(grid >= start) & (grid <= end)]
    if x.size == 0:
        x = np.array([end])
    ys = np.stack([np.interp(x, r.steps, r.values) for r in runs])  # [runs, points]
    mean = ys.mean(0)
    if len(runs) == 1:
        return x, mean, mean, mean
    with warnings.catch_warnings(), seeded_numpy(seed):  # rliable draws from the global RNG
        warnings.simplefilter("ignore", FutureWarning)
        _, interval = rly.get_interval_estimates(
            {"g": ys[:, None, :]}, lambda s: s.mean(axis=(0, 1)), reps=reps
        )
    return x, mean, interval["g"][0], interval["g"][1]


def plot_curves(
    runs: Sequence[RunCurve], path: Path, *, metric: str, group_by: str, reps: int = 2000, seed: int = 0
) -> Path:
    from matplotlib.figure import Figure  # no pyplot: leaves a notebook's backend alone

    grid = curve_grid(runs)
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    for i, (g, rs) in enumerate(groups(runs).items()):
        color = f"C{i}"
        x, mean, lo, hi = group_curve(rs, grid, reps=reps, seed=seed)
        ax.plot(x, mean, color=color, marker="o" if len(x) < 5 else None, label=f"{g} (n={len(rs)})")
        ax.fill_between(x, lo, hi, color=color, alpha=0.2, linewidth=0)
        for r in rs:  # the runs themselves, faint
            ax.plot(r.steps, r.values, color=color, alpha=0.25, linewidth=0.8)
    ax.set_xlabel("env frames")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: mean and 95% bootstrap CI by {group_by}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_intervals(
    stats: Sequence[GroupStats | Aggregate], path: Path, *, metric: str, group_by: str
) -> Path:
    from matplotlib.figure import Figure

    xlabel = f"IQM of final {metric} (95% stratified bootstrap CI)"
    longest = max(len(f"{s.group} (n={s.runs})") for s in stats)  # room for the row labels and the x label
    fig = Figure(figsize=(max(5.0, 0.5 + 0.085 * longest + 0.07 * len(xlabel)), 0.6 + 0.45 * len(stats)))
    ax = fig.subplots()
    for i, s in enumerate(stats):
        lo = s.ci_low if s.ci_low is not None else s.iqm
        hi = s.ci_high if s.ci_high is not None else s.iqm
        ax.barh(i, hi - lo, left=lo, height=0.6, color=f"C{i}", alpha=0.75)
        ax.vlines(s.iqm, i - 0.3, i + 0.3, color="k", linewidth=2)
    ax.set_yticks(range(len(stats)), [f"{s.group} (n={s.runs})" for s in stats])
    ax.set_xlabel(xlabel)
    ax.set_title(f"by {group_by}", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


@dataclass
class Comparison:
    runs: list[RunCurve]
    stats: list[GroupStats]
    table: str
    files: list[Path]


def compare(
    *,
    tracking_uri: str = DEFAULT_URI,
    experiment: str = DEFAULT_EXPERIMENT,
    metric: str = DEFAULT_METRIC,
    group_by: str = DEFAULT_GROUP_BY,
    study: str | None = None,
    filter_string: str = "",
    out_dir: Path | str = "compare",
    reps: int = 2000,
    seed: int = 0,
    log_to_mlflow: bool = False,
) -> Comparison:
    """Loads, summarizes, writes ``summary.json``, ``curves.png`` and ``iqm.png`` under ``out_dir``."""
    runs = load_runs(
        tracking_uri, experiment, metric=metric, group_by=group_by, study=study, filter_string=filter_string
    )
    stats = summarize(runs, reps=reps, seed=seed)
    table = format_table(stats, group_by=group_by, metric=metric)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "experiment": experiment,
        "metric": metric,
        "group_by": group_by,
        "study": study,
        "reps": reps,
        "seed": seed,
        "groups": [asdict(s) for s in stats],
    }
    files = [
        _write(out / "summary.json", json.dumps(summary, indent=2)),
        _write(out / "table.txt", table + "\n"),
        plot_curves(runs, out / "curves.png", metric=metric, group_by=group_by, reps=reps, seed=seed),
        plot_intervals(stats, out / "iqm.png", metric=metric, group_by=group_by),
    ]
    if log_to_mlflow:
        log_summary(tracking_uri, experiment, files, metric=metric, group_by=group_by, study=study)
    return Comparison(runs, stats, table, files)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def log_summary(
    tracking_uri: str,
    experiment: str,
    files: Sequence[Path],
    *,
    metric: str,
    group_by: str,
    study: str | None,
) -> str:
    """Logs the comparison's files to a new summary run of the experiment (skipped by later comparisons)."""
    client = _client(tracking_uri)
    tags = {SUMMARY_TAG: "true", "compare.metric": metric, "compare.group_by": group_by}
    if study:
        tags[STUDY_TAG] = study
    name = f"compare {metric} by {group_by}" + (f" ({study})" if study else "")
    run = client.create_run(_experiment_id(client, experiment), run_name=name, tags=tags)
    for path in files:
        client.log_artifact(run.info.run_id, str(path), artifact_path="compare")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hwm compare",
        description="Compare the runs of an MLflow experiment grouped by a param: a table per group "
        "(final/best value, IQM with a 95%% stratified bootstrap CI via rliable) and plots.",
    )
    p.add_argument("--experiment", "-e", default=DEFAULT_EXPERIMENT, help="MLflow experiment name")
    p.add_argument("--tracking-uri", default=DEFAULT_URI, help="MLflow tracking URI (sqlite store or server)")
    p.add_argument(
        "--metric",
        default=None,
        help=f"metric to compare (default {DEFAULT_METRIC}; across tasks eval/success_rate on Meta-world)",
    )
    p.add_argument(
        "--group-by", default=DEFAULT_GROUP_BY, help="flattened param to group by, or tags.NAME for a tag"
    )
    p.add_argument("--study", default=None, help="only runs of this study id (tag hwm.study)")
    p.add_argument("--filter", default="", help="extra MLflow search filter, e.g. \"params.data.task = 'x'\"")
    p.add_argument("--out", default="compare", help="folder for summary.json, table.txt, curves.png, iqm.png")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap replications")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--log-to-mlflow", action="store_true", help="log the plots to a summary run")
    p.add_argument(
        "--across-tasks",
        action="store_true",
        help="one row per group over all tasks: mean/median human-normalised score (Atari) or success "
        "(Meta-world) and IQM over runs x tasks, with the published rows; per-task curves in task_curves.png",
    )
    p.add_argument(
        "--suite", default=None, help="with --across-tasks: the suite (default: the runs' suite tag)"
    )
    p.add_argument(
        "--no-published", action="store_true", help="with --across-tasks: leave out the published Atari rows"
    )
    return p


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    usage = "--reps must be >= 1" if args.reps < 1 else None
    if not args.across_tasks and (args.suite or args.no_published):
        usage = "--suite and --no-published go with --across-tasks"
    if usage:
        print(f"hwm compare: error: {usage}", file=sys.stderr)
        return 2
    if args.across_tasks:
        from hwm.compare_tasks import main_across_tasks

        return main_across_tasks(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = compare(
                tracking_uri=args.tracking_uri,
                experiment=args.experiment,
                metric=args.metric or DEFAULT_METRIC,
                group_by=args.group_by,
                study=args.study,
                filter_string=args.filter,
                out_dir=args.out,
                reps=args.reps,
                seed=args.seed,
                log_to_mlflow=args.log_to_mlflow,
            )
        except CompareError as exc:
            print(f"hwm compare: error: {exc}", file=sys.stderr)
            return 2
    for w in caught:
        if str(w.message).startswith("group "):
            print(f"hwm compare: warning: {w.message}", file=sys.stderr)
    n = len(result.runs)
    print(
        f"{args.experiment}: {n} run{'s' * (n != 1)} with {args.metric or DEFAULT_METRIC}, grouped by {args.group_by}"
    )
    print(result.table)
    print("wrote " + ", ".join(str(f) for f in result.files))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
