"""Scores across tasks as the papers report them, and the authors' published Atari 100k curves.

HarmonyDream (as DreamerV3 and most Atari 100k papers) sums a method up by the mean and the median over
games of the human-normalised score (HNS) of the *final* evaluation, averaged over seeds; Meta-world by the
mean success rate over tasks. rliable's interquartile mean (IQM) over runs x tasks with a 95%
stratified-bootstrap confidence interval (Agarwal et al., 2021) is the robust companion: a few games with
huge HNS drive the mean, and the median ignores all but one or two.

Everything here works on ``{task: final score of each of its runs}`` (numpy only, rliable for the CIs), so
it is usable from Python on any numbers; ``hwm compare --across-tasks`` feeds it from MLflow, and the
published curves shipped in ``hwm/experiments/reference_scores`` (:func:`load_reference`) go through the same
functions: they give the paper's 136.4% / 67.1% (HarmonyDream(V3)) and 107.4% / 41.6% (DreamerV3).

Tasks with different numbers of runs: the mean and the median weigh every task equally (a task's score is
the mean over however many runs it has: the papers' definition). The IQM pools every run of every task (as
rliable does with a full matrix; a task with more runs has more entries in the pool) and its bootstrap
resamples each task's runs among themselves (rliable's independent stratified bootstrap), so no run is
dropped or repeated to square the matrix. With equal counts it is exactly rliable's matrix call.
"""

from __future__ import annotations

import contextlib
import functools
import json
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from hwm.envs.atari_scores import ATARI100K_SCORES, atari100k_game, human_normalized_score

Finals = Mapping[str, ArrayLike]  # task -> the final score of each of its runs (seeds)
Normalize = Literal["atari", None]

# key -> (label, file in hwm/experiments/reference_scores). The labels say "published": these are not hwm's runs.
REFERENCES: dict[str, tuple[str, str]] = {
    "harmonydream_v3": ("HarmonyDream(V3), published", "atari100k_harmonydream_v3.json"),
    "dreamerv3": ("DreamerV3, published", "atari100k_dreamerv3.json"),
}
# The authors' game names that differ from hwm's table keys (all others are equal).
REFERENCE_GAME_NAMES = {"james_bond": "jamesbond"}


@dataclass(frozen=True)
class Reference:
    """Published evaluation curves: ``curves[game]`` is [seeds, evaluations] of raw returns at ``steps``."""

    key: str
    label: str
    steps: np.ndarray  # env frames of the evaluations
    curves: dict[str, np.ndarray]

    def finals(
        self, games: Iterable[str] | None = None, frames: float | None = None
    ) -> dict[str, np.ndarray]:
        """Each seed's return per game at the last evaluation at or before ``frames`` (default: the final one).

        ``frames`` lets published runs be read at the budget hwm's runs reached; below the first evaluation
        the first one is used. ``games`` (any spelling) restricts the games; one the authors lack is skipped.
        """
        index = len(self.steps) - 1
        if frames is not None:
            index = max(int(np.searchsorted(self.steps, frames, side="right")) - 1, 0)
        keys = self.curves if games is None else [atari100k_game(g) for g in games]
        return {g: self.curves[g][:, index] for g in keys if g in self.curves}

    def frames(self, frames: float | None = None) -> int:
        """The evaluation point :meth:`finals` reads for ``frames``."""
        if frames is None:
            return int(self.steps[-1])
        return int(self.steps[max(int(np.searchsorted(self.steps, frames, side="right")) - 1, 0)])


@functools.cache
def load_reference(key: str) -> Reference:
    """The authors' published Atari 100k curves: ``harmonydream_v3`` or ``dreamerv3`` (5 seeds, every 20k frames).

    Game names are mapped to hwm's table keys (``james_bond`` -> ``jamesbond``); see the README next to
    the files for their source and license.
    """
    if key not in REFERENCES:
        raise ValueError(f"no published scores {key!r}; known: {', '.join(REFERENCES)}")
    label, filename = REFERENCES[key]
    raw = json.loads(resources.files("hwm.experiments").joinpath("reference_scores", filename).read_text())
    curves = {}
    for name, seeds in raw["score"].items():
        game = REFERENCE_GAME_NAMES.get(name, name)
        if game not in ATARI100K_SCORES:
            raise ValueError(f"{filename}: unexpected game {name!r}")
        curves[game] = np.asarray(seeds, dtype=np.float64)
    return Reference(key, label, np.asarray(raw["steps"], dtype=np.int64), curves)


def _arrays(finals: Finals) -> dict[str, np.ndarray]:
    """Tasks sorted by name, so that a bootstrap doesn't depend on the order the tasks came in."""
    out = {task: np.atleast_1d(np.asarray(v, dtype=np.float64)) for task, v in sorted(finals.items())}
    if not out:
        raise ValueError("no tasks to aggregate")
    for task, v in out.items():
        if v.ndim != 1 or v.size == 0 or not np.isfinite(v).all():
            raise ValueError(f"task {task!r}: expected one finite final score per run, got {v.tolist()}")
    return out


def human_normalized(finals: Finals) -> dict[str, np.ndarray]:
    """Atari final returns -> human-normalised scores, keyed by hwm's game names (ValueError: unknown game)."""
    out: dict[str, np.ndarray] = {}
    for task, v in _arrays(finals).items():
        game = atari100k_game(task)
        if game in out:
            raise ValueError(f"game {game!r} appears twice (as {task!r} and another spelling)")
        out[game] = np.asarray(human_normalized_score(game, v))
    return out


def task_means(finals: Finals) -> dict[str, float]:
    """Each task's score: the mean over its runs (seeds)."""
    return {task: float(v.mean()) for task, v in _arrays(finals).items()}


def mean_and_median(finals: Finals) -> tuple[float, float]:
    """Mean and median over tasks of the per-task mean over runs: every task weighs the same."""
    means = np.array(list(task_means(finals).values()))
    return float(means.mean()), float(np.median(means))


def iqm(finals: Finals) -> float:
    """Interquartile mean of every run of every task pooled (rliable's ``aggregate_iqm``)."""
    from scipy.stats import trim_mean

    return float(trim_mean(np.concatenate(list(_arrays(finals).values())), 0.25))


@contextlib.contextmanager
def seeded_numpy(seed: int) -> Iterator[None]:
    """Seeds numpy's global RNG for the duration, then restores it.

    rliable 1.2's stratified bootstraps draw from ``np.random`` (they ignore their ``random_state``), so
    this is what makes a CI reproducible; the caller's global RNG stream is left as it was.
    """
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _iqm_pooled(*per_task: np.ndarray) -> np.ndarray:
    from scipy.stats import trim_mean

    return np.array([trim_mean(np.concatenate(per_task), 0.25)])


def iqm_interval(
    scores: Mapping[str, np.ndarray | Sequence[np.ndarray]], *, reps: int = 2000, seed: int = 0
) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """IQM point estimates and 95% stratified-bootstrap CIs (rliable), one per key.

    A value is a [runs, tasks] matrix (rliable's usual input) or a list of per-task 1-D arrays of run
    scores, which may differ in length (resampled per task by rliable's independent stratified bootstrap).
    """
    from rliable import library as rly
    from rliable import metrics

    def matrix_iqm(x: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(x)])

    point: dict[str, float] = {}
    interval: dict[str, tuple[float, float]] = {}
    for key, value in scores.items():
        ragged = not isinstance(value, np.ndarray)
        data = [np.asarray(v, dtype=np.float64).ravel() for v in value] if ragged else value
        with warnings.catch_warnings(), seeded_numpy(seed):
            # arch deprecates the random_state argument rliable passes; the result is the same.
            warnings.simplefilter("ignore", FutureWarning)
            p, i = rly.get_interval_estimates({key: data}, _iqm_pooled if ragged else matrix_iqm, reps=reps)
        point[key] = float(p[key][0])
        interval[key] = (float(i[key][0, 0]), float(i[key][1, 0]))
    return point, interval


def iqm_with_ci(
    finals: Finals, *, reps: int = 2000, seed: int = 0
) -> tuple[float, float | None, float | None]:
    """IQM over runs x tasks with its 95% stratified-bootstrap CI; the CI is None when no task has 2 runs.

    Equal run counts go to rliable as a [runs, tasks] matrix, unequal ones as per-task arrays.
    """
    arrays = _arrays(finals)
    sizes = {v.size for v in arrays.values()}
    if max(sizes) < 2:  # resampling one run per task always gives the same IQM: no interval to report
        return iqm(arrays), None, None
    value: np.ndarray | list[np.ndarray] = (
        np.stack(list(arrays.values()), axis=1) if len(sizes) == 1 else list(arrays.values())
    )
    point, interval = iqm_interval({"x": value}, reps=reps, seed=seed)
    return point["x"], *interval["x"]


@dataclass
class Aggregate:
    """One method (a variant of hwm's runs, or a published reference) summed up over tasks."""

    group: str
    tasks: int
    runs: int
    mean: float  # over tasks of the per-task mean over runs
    median: float
    iqm: float  # over runs x tasks
    ci_low: float | None  # 95% stratified-bootstrap CI of the IQM; None: one run per task
    ci_high: float | None
    per_task: dict[str, float] = field(default_factory=dict)  # the aggregated score, mean over runs
    per_task_raw: dict[str, float] = field(default_factory=dict)  # the same before normalisation
    runs_per_task: dict[str, int] = field(default_factory=dict)
    frames_min: int | None = None
    frames_max: int | None = None
    published: bool = False


def aggregate(
    group: str,
    finals: Finals,
    *,
    normalize: Normalize = None,
    reps: int = 2000,
    seed: int = 0,
    frames: tuple[int, int] | None = None,
    published: bool = False,
) -> Aggregate:
    """Mean, median and IQM [95% CI] over tasks of ``{task: final score of each run}``.

    ``normalize="atari"`` turns raw Atari returns into human-normalised scores first (tasks renamed to
    hwm's game keys); ``None`` aggregates the values as they are (Meta-world success rates, or scores
    already normalised). ``frames`` is (min, max) env frames of the runs, for the record.
    """
    raw = _arrays(finals)
    scores = human_normalized(raw) if normalize == "atari" else raw
    raw_keyed = dict(zip(scores, raw.values(), strict=True))
    mean, median = mean_and_median(scores)
    point, lo, hi = iqm_with_ci(scores, reps=reps, seed=seed)
    return Aggregate(
        group=group,
        tasks=len(scores),
        runs=sum(v.size for v in scores.values()),
        mean=mean,
        median=median,
        iqm=point,
        ci_low=lo,
        ci_high=hi,
        per_task=task_means(scores),
        per_task_raw=task_means(raw_keyed),
        runs_per_task={t: int(v.size) for t, v in scores.items()},
        frames_min=None if frames is None else int(frames[0]),
        frames_max=None if frames is None else int(frames[1]),
        published=published,
    )


def published_aggregates(
    games: Iterable[str] | None = None, *, frames: float | None = None, reps: int = 2000, seed: int = 0
) -> list[Aggregate]:
    """The published HarmonyDream(V3) and DreamerV3 rows: HNS aggregates over ``games`` (default: all 26).

    ``frames``: read the curves at that budget (the last evaluation at or before it) instead of 400k.
    """
    out = []
    for key in REFERENCES:
        ref = load_reference(key)
        finals = ref.finals(games, frames)
        if finals:
            at = ref.frames(frames)
            out.append(
                aggregate(
                    ref.label,
                    finals,
                    normalize="atari",
                    reps=reps,
                    seed=seed,
                    frames=(at, at),
                    published=True,
                )
            )
    return out


def format_aggregates(
    rows: Sequence[Aggregate], *, group_by: str = "method", score: str = "HNS", percent: bool = True
) -> str:
    """A plain-text table: one row per method, the scores in % when ``percent``."""

    def num(x: float) -> str:
        return f"{100 * x:.1f}%" if percent else f"{x:.2f}"

    header = [
        group_by,
        "tasks",
        "runs",
        f"mean {score}",
        f"median {score}",
        f"IQM {score} [95% CI]",
        "env frames",
    ]
    lines = []
    for r in rows:
        ci = (
            f"[{num(r.ci_low)}, {num(r.ci_high)}]"
            if r.ci_low is not None and r.ci_high is not None
            else "[n/a]"
        )
        if r.frames_min is None or r.frames_max is None:
            frames = "-"
        else:
            frames = str(r.frames_min) if r.frames_min == r.frames_max else f"{r.frames_min}-{r.frames_max}"
        lines.append(
            [r.group, str(r.tasks), str(r.runs), num(r.mean), num(r.median), f"{num(r.iqm)} {ci}", frames]
        )
    return _table(header, lines)


def format_per_task(rows: Sequence[Aggregate], *, raw: bool = True, task_header: str = "task") -> str:
    """One line per task, one column per method: the mean over runs of the raw final score (or the aggregated one)."""

    def num(x: float | None) -> str:  # returns in the thousands, success rates and HNS below 10
        return "-" if x is None else f"{x:.1f}" if abs(x) >= 10 else f"{x:.3f}"

    tasks = sorted({t for r in rows for t in r.per_task})
    header = [task_header, *(r.group for r in rows)]
    lines = [[t, *(num((r.per_task_raw if raw else r.per_task).get(t)) for r in rows)] for t in tasks]
    return _table(header, lines)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
