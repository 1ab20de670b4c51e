"""Plots of grouped runs: learning curves with bootstrap bands on a common env-frame grid, IQM intervals."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hwm.experiments.runs import GroupStats, RunCurve, groups
from hwm.experiments.scores import Aggregate, seeded_numpy

CURVE_POINTS = 50


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
    # Two lines: a long metric and group name on one would run past the figure's edge.
    ax.set_title(f"{metric}\nmean and 95% bootstrap CI by {group_by}", fontsize=10)
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
    text = max(len(xlabel), len(f"by {group_by}"))  # and for the title, centred over the bars
    fig = Figure(figsize=(max(5.0, 0.5 + 0.085 * longest + 0.07 * text), 0.6 + 0.45 * len(stats)))
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
