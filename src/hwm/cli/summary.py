"""What `hwm fit` tells its user around the training itself: a budget that will not train, and at the end one
block saying which run this was, how it did, where its checkpoint is and what to type next."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The metrics a run is judged by, in the order they are shown; a suite logs the ones that apply to it.
SCORES = ("eval/return", "eval/success_rate", "eval/human_normalized_score")


def budget_notice(total_frames: int, prefill_frames: int, frames_done: int = 0) -> str | None:
    """A line for a frame budget that ends before the first update (the run would only collect at random)."""
    if frames_done == 0 and total_frames <= prefill_frames:
        return (
            f"hwm: data.total_frames ({total_frames}) does not exceed data.prefill_frames ({prefill_frames}): "
            "the run collects random-action frames only and never trains; raise --data.total_frames"
        )
    return None


@dataclass(frozen=True)
class Score:
    metric: str
    final: float
    best: float
    evaluations: int


@dataclass(frozen=True)
class Evaluations:
    """How the run evaluates: episodes per evaluation and env frames between them (0: at the end only)."""

    episodes: int
    every: int

    def none_yet(self, frames: int, stopped: bool) -> str:
        """Why a run has no evaluation to show."""
        if self.episodes == 0:
            return "off (data.eval_episodes: 0)"
        if stopped:
            due = f"at {self.every} env frames" if self.every else "at the end of the run"
            return f"none yet: the first is due {due} (data.eval_every); this run stopped at {frames}"
        return "none ran"


@dataclass(frozen=True)
class RunSummary:
    run_id: str | None
    experiment: str | None
    tracking_uri: str | None
    frames: int
    updates: int
    scores: list[Score]
    checkpoint: Path | None
    # Stopped early (a signal, one Ctrl-C) with a checkpoint: continued as it is, no new budget needed.
    stopped: bool = False
    evaluations: Evaluations | None = None

    def lines(self) -> list[str]:
        ended = "stopped" if self.stopped else "finished"
        out = [f"hwm: run {ended}: {self.frames} env frames, {self.updates} updates"]
        if self.run_id is not None:
            out.append(
                f"  MLflow run   {self.run_id} in experiment {self.experiment!r} ({self.tracking_uri})"
            )
        for score in self.scores:
            out.append(
                f"  {score.metric:<12} final {score.final:.2f}, best {score.best:.2f} "
                f"({score.evaluations} evaluation{'s' * (score.evaluations != 1)})"
            )
        if not self.scores:
            why = self.evaluations.none_yet(self.frames, self.stopped) if self.evaluations else "none ran"
            out.append(f"  evaluation   {why}")
        if self.checkpoint is not None:
            out.append(f"  checkpoint   {self.checkpoint}")
            # The run folder holds the whole config: no --config needed to continue it. A finished run
            # has spent its budget and needs a larger one; a stopped one continues to its own.
            resume = ["hwm", "fit", "--ckpt_path", str(self.checkpoint.parent)]
            if not self.stopped:
                resume += ["--data.total_frames", "N"]
            out.append(f"  continue     {shlex.join(resume)}")
        # `hwm compare` compares evaluation scores: without one this run is not in its table yet.
        if self.experiment is not None and self.scores:
            compare = ["hwm", "compare", "--experiment", self.experiment]
            if self.tracking_uri:
                compare += ["--tracking-uri", self.tracking_uri]
            out.append(f"  compare      {shlex.join(compare)}")
        return out


def read_scores(client: Any, run_id: str) -> list[Score]:
    """Final and best value of each score the run logged; [] when the store can't be read."""
    out: list[Score] = []
    for metric in SCORES:
        try:
            history = client.get_metric_history(run_id, metric)
        except Exception:  # the store went away: the summary is a courtesy, the run is done
            return out
        if history:
            values = [m.value for m in sorted(history, key=lambda m: (m.step, m.timestamp))]
            out.append(Score(metric, values[-1], max(values), len(values)))
    return out


def summarize_run(
    *,
    client: Any | None,
    run_id: str | None,
    experiment: str | None,
    tracking_uri: str | None,
    frames: int,
    updates: int,
    run_dir: Path | None,
    stopped: bool = False,
    evaluations: Evaluations | None = None,
) -> RunSummary:
    checkpoint = None
    if run_dir is not None and (run_dir / "last.ckpt").exists():
        checkpoint = run_dir / "last.ckpt"
    scores = read_scores(client, run_id) if client is not None and run_id is not None else []
    return RunSummary(
        run_id, experiment, tracking_uri, frames, updates, scores, checkpoint, stopped, evaluations
    )
