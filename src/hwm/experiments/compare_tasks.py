"""`hwm compare --across-tasks`: each variant summed up over tasks as the papers report it.

Runs are grouped by the variant param (``--group-by``) and by task (param ``data.task``, else tag
``task``); each run contributes its final evaluation. Per variant: tasks, runs, mean and median over tasks
of the per-task mean over seeds, and the IQM over runs x tasks with a 95% stratified-bootstrap CI
(:mod:`hwm.experiments.scores`). What is aggregated depends on the suite (from the runs' ``suite`` tag/param, or
``--suite``): Atari returns are human-normalised with the Atari 100k table, and the authors' published
HarmonyDream(V3) and DreamerV3 rows are added for the same games at the frames hwm's runs reached;
Meta-world aggregates ``eval/success_rate``; other suites the raw metric. ``task_curves.png`` draws one
panel per task with every variant's mean and band, and on Atari the published curves over them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hwm.envs.atari_scores import atari100k_game, human_normalized_score
from hwm.experiments import scores
from hwm.experiments.outputs import log_summary, write_file
from hwm.experiments.plots import curve_grid, group_curve, plot_intervals
from hwm.experiments.runs import (
    CompareError,
    RunCurve,
    groups,
    load_runs,
    search_runs,
    split_mixed,
    split_notice,
)

ATARI = "atari"
HNS_METRIC = "eval/human_normalized_score"
# The metric a suite is summed up by when --metric is not given.
SUITE_METRICS = {"metaworld": "eval/success_rate"}
DEFAULT_TASK_METRIC = "eval/return"


@dataclass
class TaskComparison:
    suite: str
    metric: str
    score: str  # what the aggregates are of: "HNS", "success", or the metric's name
    rows: list[scores.Aggregate]  # hwm's variants, then the published rows (Atari)
    runs: list[RunCurve]
    table: str
    files: list[Path]


def _suite_of(run: object) -> str | None:
    data = run.data  # type: ignore[attr-defined]
    value = data.params.get("data.suite") or data.tags.get("suite")
    return str(value) if value else None


def resolve_suite(runs: Sequence[object], suite: str | None) -> str:
    """The runs' suite: ``suite`` when given, else the one their ``suite`` tag/param names (one, or an error)."""
    if suite:
        return suite
    found = sorted({s for s in map(_suite_of, runs) if s})
    if not found:
        raise CompareError("no run records its suite (param data.suite or tag suite): pass --suite")
    if len(found) > 1:
        raise CompareError(f"the runs are of several suites ({', '.join(found)}): pick one with --suite")
    return found[0]


def _task_of(run: RunCurve, suite: str) -> str:
    if not run.task:
        raise CompareError(
            f"run {run.name!r} ({run.run_id}) has no task (param data.task or tag task): "
            "exclude it with --filter to compare across tasks"
        )
    if suite != ATARI:
        return run.task
    try:
        return atari100k_game(run.task)
    except ValueError as exc:
        raise CompareError(f"run {run.name!r}: {exc}") from None


def by_task(runs: Sequence[RunCurve], suite: str) -> dict[str, dict[str, list[RunCurve]]]:
    """group -> task -> runs (Atari tasks under hwm's game keys, so ``Pong`` and ``pong`` are one game)."""
    out: dict[str, dict[str, list[RunCurve]]] = {}
    for group, rs in groups(runs).items():
        for r in rs:
            out.setdefault(group, {}).setdefault(_task_of(r, suite), []).append(r)
    return {g: dict(sorted(t.items())) for g, t in out.items()}


def compare_across_tasks(
    *,
    tracking_uri: str,
    experiment: str,
    metric: str | None = None,
    group_by: str,
    suite: str | None = None,
    study: str | None = None,
    filter_string: str = "",
    out_dir: Path | str = "compare",
    reps: int = 2000,
    seed: int = 0,
    published: bool = True,
    log_to_mlflow: bool = False,
) -> TaskComparison:
    """Loads, aggregates, writes ``summary.json``, ``table.txt``, ``iqm.png`` and ``task_curves.png``."""
    found = search_runs(tracking_uri, experiment, study=study, filter_string=filter_string)
    suite = resolve_suite(found, suite)
    metric = metric or SUITE_METRICS.get(suite, DEFAULT_TASK_METRIC)
    runs = [
        r
        for r in load_runs(
            tracking_uri,
            experiment,
            metric=metric,
            group_by=group_by,
            study=study,
            filter_string=filter_string,
        )
        if r.suite in (suite, None)  # a run that doesn't record its suite is taken to be of this one
    ]
    if not runs:
        raise CompareError(f"no run of suite {suite!r} logged {metric!r}")
    runs, split = split_mixed(runs, group_by, among=["model.base"])  # tasks are pooled here by design
    if split:
        warnings.warn(split_notice(runs, split), stacklevel=2)
    tasks = by_task(runs, suite)
    hns = suite == ATARI and metric in (DEFAULT_TASK_METRIC, HNS_METRIC)
    normalize: scores.Normalize = "atari" if hns and metric == DEFAULT_TASK_METRIC else None
    score = "HNS" if hns else "success" if metric == "eval/success_rate" else metric
    rows = []
    for group, by_t in tasks.items():
        finals = {t: [r.final for r in rs] for t, rs in by_t.items()}
        frames = [int(r.steps[-1]) for rs in by_t.values() for r in rs]  # each run's final evaluation
        rows.append(
            scores.aggregate(
                group, finals, normalize=normalize, reps=reps, seed=seed, frames=(min(frames), max(frames))
            )
        )
    budget = max(int(r.steps[-1]) for r in runs)
    games = sorted({t for by_t in tasks.values() for t in by_t})
    if hns and published:  # the authors' rows for the same games, at the frames hwm's runs reached
        rows += scores.published_aggregates(games, frames=budget, reps=reps, seed=seed)
    percent = hns or score == "success"
    table = scores.format_aggregates(rows, group_by=group_by, score=score, percent=percent)
    per_task = scores.format_per_task(rows, task_header=f"final {metric}, mean over runs")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    references = [scores.load_reference(k) for k in scores.REFERENCES] if hns and published else []
    summary = {
        "mode": "across_tasks",
        "experiment": experiment,
        "suite": suite,
        "metric": metric,
        "score": score,
        "group_by": group_by,
        "study": study,
        "reps": reps,
        "seed": seed,
        "rows": [asdict(r) for r in rows],
    }
    files = [
        write_file(out / "summary.json", json.dumps(summary, indent=2)),
        write_file(out / "table.txt", f"{table}\n\n{per_task}\n"),
        plot_intervals(rows, out / "iqm.png", metric=score, group_by=group_by),
        plot_task_curves(
            {t: {g: by_t[t] for g, by_t in tasks.items() if t in by_t} for t in games},
            out / "task_curves.png",
            metric=metric,
            references=references,
            normalized=metric == HNS_METRIC,
            reps=reps,
            seed=seed,
        ),
    ]
    if log_to_mlflow:
        log_summary(
            tracking_uri, experiment, files, metric=f"{score} across tasks", group_by=group_by, study=study
        )
    return TaskComparison(suite, metric, score, rows, runs, f"{table}\n\n{per_task}", files)


def plot_task_curves(
    curves: Mapping[str, Mapping[str, Sequence[RunCurve]]],
    path: Path,
    *,
    metric: str = DEFAULT_TASK_METRIC,
    references: Sequence[scores.Reference] = (),
    normalized: bool = False,
    reps: int = 2000,
    seed: int = 0,
    columns: int = 4,
) -> Path:
    """One panel per task: each group's mean and 95% bootstrap band over its runs, and the published curves.

    ``curves`` is task -> group -> runs (a task may have no runs: then only the published curves show).
    Published curves are drawn dashed, mean over the authors' seeds with the same kind of band, on the
    same env-frame axis; ``normalized`` puts them in human-normalised units (for ``eval/human_normalized_score``).
    """
    from matplotlib.artist import Artist
    from matplotlib.figure import Figure  # no pyplot: leaves a notebook's backend alone
    from matplotlib.ticker import FuncFormatter

    tasks = list(curves)
    if not tasks:
        raise ValueError("no task to plot")
    cols = min(columns, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig = Figure(figsize=(3.6 * cols, 2.6 * rows + 0.8))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    group_names = sorted({g for by_group in curves.values() for g in by_group})
    colors = {g: f"C{i}" for i, g in enumerate(group_names)}
    ref_styles = ["k", "0.55", "C9", "C8"]
    for ax, task in zip(axes, tasks, strict=False):
        panel = [r for rs in curves[task].values() for r in rs]
        grid = curve_grid(panel) if panel else np.array([0.0])
        for g, rs in curves[task].items():
            if rs:
                x, mean, lo, hi = group_curve(rs, grid, reps=reps, seed=seed)
                ax.plot(x, mean, color=colors[g], label=g, marker="o" if len(x) < 5 else None)
                ax.fill_between(x, lo, hi, color=colors[g], alpha=0.2, linewidth=0)
        for ref, color in zip(references, ref_styles, strict=False):
            if task not in ref.curves:
                continue
            values = ref.curves[task]
            if normalized:
                values = np.asarray(human_normalized_score(task, values))
            seeds = [
                RunCurve(f"{ref.key}/{i}", ref.key, ref.label, ref.steps, v, int(ref.steps[-1]))
                for i, v in enumerate(values)
            ]
            x, mean, lo, hi = group_curve(seeds, ref.steps.astype(np.float64), reps=reps, seed=seed)
            ax.plot(
                x, mean, color=color, linestyle="--", linewidth=1.2, label=f"{ref.label} (n={len(seeds)})"
            )
            ax.fill_between(x, lo, hi, color=color, alpha=0.12, linewidth=0)
        ax.set_title(task, fontsize=10)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x else "0"))
    for ax in axes[len(tasks) :]:
        ax.set_visible(False)
    for ax in axes[(rows - 1) * cols :]:
        ax.set_xlabel("env frames", fontsize=8)
    handles: dict[str, Artist] = {}
    for ax in axes[: len(tasks)]:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    fig.suptitle(f"{metric}: mean and 95% bootstrap CI per task", fontsize=10)
    ncol = min(4, max(len(handles), 1))
    legend_h = 0.25 * math.ceil(len(handles) / ncol) + 0.1 if handles else 0.0  # inches
    if handles:
        fig.legend(
            handles.values(),
            handles.keys(),
            loc="lower center",
            ncol=ncol,
            fontsize=8,
            frameon=False,
        )
    fig.tight_layout(rect=(0, legend_h / fig.get_figheight(), 1, 1))
    fig.savefig(path, dpi=110)
    return path


def main_across_tasks(args: argparse.Namespace) -> int:
    """``hwm compare --across-tasks ...`` with the parsed arguments: prints the tables, exit code 0 or 2."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = compare_across_tasks(
                tracking_uri=args.tracking_uri,
                experiment=args.experiment,
                metric=args.metric,
                group_by=args.group_by,
                suite=args.suite,
                study=args.study,
                filter_string=args.filter,
                out_dir=args.out,
                reps=args.reps,
                seed=args.seed,
                published=not args.no_published,
                log_to_mlflow=args.log_to_mlflow,
            )
    except CompareError as exc:
        print(f"hwm compare: error: {exc}", file=sys.stderr)
        return 2
    for w in caught:
        if str(w.message).startswith("runs differ"):
            print(f"hwm compare: warning: {w.message}", file=sys.stderr)
    n, tasks = len(result.runs), len({t for r in result.rows if not r.published for t in r.per_task})
    print(
        f"{args.experiment}: {n} run{'s' * (n != 1)} on {tasks} {result.suite} task{'s' * (tasks != 1)} "
        f"with {result.metric}, final evaluations aggregated over tasks, grouped by {args.group_by}"
    )
    print(result.table)
    if any(r.published for r in result.rows):
        print("rows marked 'published': the authors' own runs (thuml/HarmonyDream), read at the same frames")
    print("wrote " + ", ".join(str(f) for f in result.files))
    return 0
