"""`hwm compare`: groups the runs of an MLflow experiment by a param and compares them with honest error bars.

Per group: runs, final and best value of a metric (mean over runs), the interquartile mean (IQM) of the
final values with a 95% stratified-bootstrap confidence interval (rliable), and env frames. Plots: learning
curves (mean and bootstrap CI band per group on a common env-frame grid) and the aggregate IQM interval
plot. Works with any tracking URI the MLflow client reads (a sqlite store, a server).

``--across-tasks`` (:mod:`hwm.experiments.compare_tasks`) instead sums each group up over tasks as the papers do: mean
and median human-normalised score over Atari games (or mean success over Meta-world tasks) and the IQM over
runs x tasks, next to the authors' published rows, with per-task learning curves.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hwm.experiments.outputs import log_summary, write_file
from hwm.experiments.plots import curve_grid, group_curve, plot_curves, plot_intervals
from hwm.experiments.runs import (
    DEFAULT_GROUP_BY,
    DEFAULT_METRIC,
    CompareError,
    GroupStats,
    RunCurve,
    groups,
    load_runs,
    resolve_experiment,
    split_mixed,
    split_notice,
)
from hwm.experiments.scores import iqm_interval
from hwm.experiments.tracking import DEFAULT_EXPERIMENT, DEFAULT_URI

__all__ = [
    "CompareError",
    "Comparison",
    "GroupStats",
    "RunCurve",
    "compare",
    "curve_grid",
    "group_curve",
    "groups",
    "load_runs",
    "main",
    "plot_curves",
    "plot_intervals",
    "summarize",
]


# Below this many runs a group's bootstrap interval is little more than the spread of its few values.
FEW_RUNS = 5
OUTPUTS = ("summary.json", "table.txt", "curves.png", "iqm.png")


def summarize(runs: Sequence[RunCurve], *, reps: int = 2000, seed: int = 0) -> list[GroupStats]:
    """One row per group; the IQM's CI is None for a group of one run (a warning says so)."""
    by_group = groups(runs)
    finals = {g: np.array([[r.final] for r in rs]) for g, rs in by_group.items()}
    point, interval = iqm_interval(finals, reps=reps, seed=seed)
    out = []
    for g, rs in by_group.items():
        if len(rs) == 1:
            warnings.warn(f"group {g!r} has one run: no confidence interval", stacklevel=2)
        elif len(rs) < FEW_RUNS:
            warnings.warn(
                f"group {g!r} has {len(rs)} runs: its 95% CI is a bootstrap over {len(rs)} values and can be no "
                f"wider than their range (min to max); {FEW_RUNS} or more runs per group give a usable interval",
                stacklevel=2,
            )
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
        ci = (
            f"[{num(s.ci_low)}, {num(s.ci_high)}]"
            if s.ci_low is not None and s.ci_high is not None
            else "[n/a]"
        )
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
    runs, split = split_mixed(runs, group_by)
    if split:
        warnings.warn(split_notice(runs, split), stacklevel=2)
    stats = summarize(runs, reps=reps, seed=seed)
    table = format_table(stats, group_by=group_by, metric=metric)
    out = Path(out_dir)
    replaced = [out / name for name in OUTPUTS if (out / name).exists()]
    if replaced:
        warnings.warn(f"replacing the comparison in {out}/ (--out FOLDER keeps it)", stacklevel=2)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "experiment": experiment,
        "metric": metric,
        "group_by": group_by,
        "study": study,
        "reps": reps,
        "seed": seed,
        "groups": [asdict(s) for s in stats],
        "split_by": split,
    }
    files = [
        write_file(out / "summary.json", json.dumps(summary, indent=2)),
        write_file(out / "table.txt", table + "\n"),
        plot_curves(runs, out / "curves.png", metric=metric, group_by=group_by, reps=reps, seed=seed),
        plot_intervals(stats, out / "iqm.png", metric=metric, group_by=group_by),
    ]
    if log_to_mlflow:
        log_summary(tracking_uri, experiment, files, metric=metric, group_by=group_by, study=study)
    return Comparison(runs, stats, table, files)


def tables_at(runs: Sequence[RunCurve], args: argparse.Namespace) -> list[Path]:
    """``--at-frames``: the comparison of each run's value at (the last step at or before) each N."""
    files = []
    metric = args.metric or DEFAULT_METRIC
    for frames in args.at_frames:
        at = [r.until(frames) for r in runs if r.steps[0] <= frames]
        if not at:
            print(f"\nat {frames}: no run logged {metric} that early", file=sys.stderr)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the few-runs warnings were given for the final values
            stats = summarize(at, reps=args.reps, seed=args.seed)
        print(f"\nat {frames} (each run's last {metric} at or before it):")
        print(format_table(stats, group_by=args.group_by, metric=metric))
        summary = {
            "metric": metric,
            "group_by": args.group_by,
            "at": frames,
            "groups": [asdict(s) for s in stats],
        }
        files.append(write_file(Path(args.out) / f"summary_at_{frames}.json", json.dumps(summary, indent=2)))
    return files


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hwm compare",
        description="Compare the runs of an MLflow experiment grouped by a param: a table per group "
        "(final/best value, IQM with a 95% stratified bootstrap CI via rliable) and plots. Reads the store "
        "only: it never creates one.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--experiment",
        "-e",
        default=None,
        help="MLflow experiment name (default: the store's only experiment with runs)",
    )
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
    p.add_argument(
        "--at-frames",
        type=int,
        nargs="+",
        default=[],
        metavar="N",
        help="also a table per N of each run's last value at or before step N (env frames; updates for a "
        "world model trained from a dataset), written to summary_at_N.json",
    )
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
    try:
        args.experiment, notice = resolve_experiment(args.tracking_uri, args.experiment)
    except CompareError as exc:
        print(f"hwm compare: error: {exc}", file=sys.stderr)
        return 2
    if notice:
        print(f"hwm compare: {notice}", file=sys.stderr)
    if args.across_tasks:
        from hwm.experiments.compare_tasks import main_across_tasks

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
        except OSError as exc:  # the output folder: read-only, or a file in its place
            where = exc.filename or args.out
            print(
                f"hwm compare: error: cannot write {where}: {exc.strerror}; pass --out FOLDER",
                file=sys.stderr,
            )
            return 2
    for w in caught:
        # One run or too few in a group, groups split by base or task, an earlier comparison replaced.
        if str(w.message).startswith(("group ", "runs differ", "replacing")):
            print(f"hwm compare: warning: {w.message}", file=sys.stderr)
    n = len(result.runs)
    print(
        f"{args.experiment}: {n} run{'s' * (n != 1)} with {args.metric or DEFAULT_METRIC}, grouped by {args.group_by}"
    )
    print(result.table)
    files = [*result.files, *tables_at(result.runs, args)]
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
