"""Published DeepMind Control learning curves from states (DreamerV3 and D4PG), for plots beside hwm's runs.

The files in ``hwm/experiments/reference_scores/dmc`` are the DreamerV3 authors' score files (see the README
there for source and license): one JSON list of runs ``{"task", "method", "seed", "xs", "ys"}`` with ``xs``
in env frames (action repeat 2) and ``ys`` the mean evaluation return there.
"""

from __future__ import annotations

import functools
import gzip
import json
from dataclasses import dataclass
from importlib import resources

# method -> (label, file). The labels say "published": these are not hwm's runs.
DMC_REFERENCES: dict[str, tuple[str, str]] = {
    "dreamerv3": ("DreamerV3 (states), published", "dmc_proprio-dreamerv3.json.gz"),
    "d4pg": ("D4PG (states), published", "dmc_proprio-d4pg.json.gz"),
}


@dataclass(frozen=True)
class DmcReference:
    """One method's published runs of one task: ``runs`` is a list of (env frames, returns) per seed."""

    method: str
    label: str
    task: str
    runs: tuple[tuple[tuple[float, ...], tuple[float, ...]], ...]

    def mean_at(self, frames: float) -> float:
        """The mean over seeds of each seed's return at its logged point nearest to ``frames``."""
        values = []
        for xs, ys in self.runs:
            i = min(range(len(xs)), key=lambda j: abs(xs[j] - frames))
            values.append(ys[i])
        return sum(values) / len(values)


@functools.cache
def _load(method: str) -> list[dict]:
    if method not in DMC_REFERENCES:
        raise ValueError(f"no published DMC scores for {method!r}; known: {', '.join(DMC_REFERENCES)}")
    path = resources.files("hwm.experiments").joinpath("reference_scores", "dmc", DMC_REFERENCES[method][1])
    with path.open("rb") as f:
        return json.loads(gzip.decompress(f.read()))


def load_dmc_reference(method: str, task: str) -> DmcReference | None:
    """``method``'s published runs of a DMC ``domain-task`` from states (None if it has none)."""
    key = "dmc_" + task.replace("-", "_")
    runs = tuple(
        (tuple(r["xs"]), tuple(r["ys"]))
        for r in sorted(_load(method), key=lambda r: r["seed"])
        if r["task"] == key
    )
    return DmcReference(method, DMC_REFERENCES[method][0], task, runs) if runs else None
