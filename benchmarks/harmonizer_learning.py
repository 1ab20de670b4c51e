"""The harmonizer's effect on learning: rectified, off and unrectified weighting on the states learning benchmark
(cartpole-balance, ``conf/cartpole_balance.yaml``), returns at 100k / 200k / 300k env frames as IQM with 95%
stratified-bootstrap CIs.

    # the off and unrectified arms (and SGD for the harmonizers), one ``hwm study`` each, resumable:
    OMP_NUM_THREADS=1 hwm study --config conf/cartpole_balance.yaml --seeds 0 1 2 3 4 \
        --vary model.harmonizer_mode=off --experiment harmonizer-learning \
        --tracking-uri sqlite:///STORE/mlflow.db --study-id p3-off -- --data.total_frames 200000
    python benchmarks/harmonizer_learning.py export --tracking-uri sqlite:///STORE/mlflow.db
    python benchmarks/harmonizer_learning.py summarize     # benchmarks/results/harmonizer/learning/

The rectified arm is not trained again: the preset *is* rectified, and the learning benchmark ran it on the same
seeds with the same command (``benchmarks/results/learning/cartpole-balance/seed*/``, whose ``curve.csv`` and
``commands.txt`` are committed), so its curves are read from there. ``export`` writes each study run's
evaluation curve to ``runs/<arm>-s<seed>.json`` (the files the summary is built from, so the result does not
depend on a local MLflow store); ``summarize`` computes, at each N, every run's last evaluation at or before N
(``hwm compare --at-frames``'s rule) and the IQM and CI per arm with ``hwm compare``'s own ``summarize``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hwm.experiments.compare import summarize
from hwm.experiments.plots import plot_curves
from hwm.experiments.runs import RunCurve

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "harmonizer" / "learning"
LEARNING = ROOT / "benchmarks" / "results" / "learning" / "cartpole-balance"
EXPERIMENT = "harmonizer-learning"
AT_FRAMES = (100_000, 200_000, 300_000)


def arm_of(params: dict[str, str]) -> str:
    """A run's arm: its harmonizer mode, with ``+sgd`` where the harmonizers had their own SGD optimizer."""
    mode = params.get("model.harmonizer_mode", "rectified")
    return f"{mode}+sgd" if params.get("model.harmonizer_optimizer") == "sgd" else mode


def export(tracking_uri: str, experiment: str, out: Path) -> list[Path]:
    """Each run of the study store as ``runs/<arm>-s<seed>.json``: its evaluation returns by env frame."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"no experiment {experiment!r} in {tracking_uri}")
    written = []
    for run in client.search_runs([found.experiment_id], max_results=1000):
        params = run.data.params
        seed = int(params["data.seed"])
        history = sorted(client.get_metric_history(run.info.run_id, "eval/return"), key=lambda m: m.step)
        if not history:
            continue
        record = {
            "arm": arm_of(params),
            "seed": seed,
            "run_name": run.info.run_name,
            "status": run.info.status,
            "study": run.data.tags.get("hwm.study"),
            "git_commit": run.data.tags.get("git_commit"),
            "total_frames": int(params["data.total_frames"]),
            "eval_return": [[m.step, m.value] for m in history],
        }
        path = out / "runs" / f"{record['arm']}-s{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n")
        written.append(path)
    return written


def study_curves(out: Path) -> list[RunCurve]:
    curves = []
    for path in sorted((out / "runs").glob("*.json")):
        record = json.loads(path.read_text())
        steps, values = np.array(record["eval_return"], dtype=np.float64).T
        curves.append(
            RunCurve(path.stem, path.stem, record["arm"], steps.astype(np.int64), values, int(steps[-1]))
        )
    return curves


def rectified_curves(learning: Path, until: int) -> list[RunCurve]:
    """The learning benchmark's cartpole-balance seeds (the rectified preset), cut at ``until`` frames."""
    curves = []
    for seed_dir in sorted(learning.glob("seed*")):
        with open(seed_dir / "curve.csv") as f:
            rows = [(int(r["frames"]), float(r["return"])) for r in csv.DictReader(f) if r["return"]]
        # Up to the first evaluation past ``until``: a run "got to" N when it evaluated at or beyond N.
        past = next((i for i, (s, _) in enumerate(rows) if s > until), len(rows) - 1)
        kept = rows[: past + 1]
        if not kept:
            continue
        steps, values = np.array(kept).T
        name = f"rectified-s{seed_dir.name.removeprefix('seed')}"
        curves.append(RunCurve(name, name, "rectified", steps.astype(np.int64), values, int(steps[-1])))
    return curves


def table_at(curves: Sequence[RunCurve], frames: int) -> dict[str, Any]:
    """Per arm at ``frames``: each seed's return (None where the run did not get there), IQM and CI."""
    reached = [c.until(frames) for c in curves if c.frames >= frames]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the few-runs warning: the table says n
        stats = {s.group: s for s in summarize(reached)} if reached else {}
    arms: dict[str, Any] = {}
    for curve in curves:
        arm = arms.setdefault(curve.group, {"seeds": {}})
        seed = curve.name.rsplit("-s", 1)[1]
        arm["seeds"][seed] = curve.until(frames).final if curve.frames >= frames else None
    for name, arm in arms.items():
        s = stats.get(name)
        arm.update(
            {"n": s.runs if s else 0, "iqm": s.iqm if s else None, "ci": [s.ci_low, s.ci_high] if s else None}
        )
    return arms


def markdown(summary: dict[str, Any]) -> str:
    arms = sorted({arm for at in summary["at_frames"].values() for arm in at})
    lines = [
        "| arm | " + " | ".join(f"{int(n) // 1000}k: IQM [95% CI] (n)" for n in summary["at_frames"]) + " |"
    ]
    lines.append("|---" * (1 + len(summary["at_frames"])) + "|")
    for arm in arms:
        cells = []
        for at in summary["at_frames"].values():
            a = at.get(arm)
            if a is None or a["iqm"] is None:
                cells.append("not reached")
            elif a["ci"][0] is None:
                cells.append(f"{a['iqm']:.0f} (1)")
            else:
                cells.append(f"{a['iqm']:.0f} [{a['ci'][0]:.0f}, {a['ci'][1]:.0f}] ({a['n']})")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| arm | seed | " + " | ".join(f"{int(n) // 1000}k" for n in summary["at_frames"]) + " |")
    lines.append("|---" * (2 + len(summary["at_frames"])) + "|")
    for arm in arms:
        seeds = sorted({s for at in summary["at_frames"].values() for s in at.get(arm, {}).get("seeds", {})})
        for seed in seeds:
            values = [at.get(arm, {}).get("seeds", {}).get(seed) for at in summary["at_frames"].values()]
            cells = ["–" if v is None else f"{v:.0f}" for v in values]
            lines.append(f"| {arm} | {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def build_summary(out: Path, learning: Path, at_frames: Sequence[int]) -> dict[str, Any]:
    study = study_curves(out)
    if not study:
        raise SystemExit(f"no exported runs under {out / 'runs'}: run `export` first")
    until = max(c.frames for c in study)
    curves = [*rectified_curves(learning, until), *study]
    summary = {
        "task": "cartpole-balance",
        "config": "conf/cartpole_balance.yaml",
        "rule": "each run's last evaluation return at or before N env frames; IQM and 95% stratified-bootstrap "
        "CI over seeds (rliable, 2000 reps); n counts the runs that got to N",
        "rectified_from": str(learning.relative_to(ROOT) if learning.is_relative_to(ROOT) else learning),
        "at_frames": {str(n): table_at(curves, n) for n in at_frames},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "table.md").write_text(markdown(summary))
    plot_curves(curves, out / "curves.png", metric="eval/return", group_by="harmonizer mode")
    return summary


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="the study store's runs as runs/<arm>-s<seed>.json")
    exp.add_argument("--tracking-uri", required=True)
    exp.add_argument("--experiment", default=EXPERIMENT)
    exp.add_argument("--out", type=Path, default=OUT)
    summ = sub.add_parser("summarize", help="summary.json, table.md and curves.png from the exported runs")
    summ.add_argument("--out", type=Path, default=OUT)
    summ.add_argument("--learning", type=Path, default=LEARNING, help="the rectified arm's seed folders")
    summ.add_argument("--at-frames", type=int, nargs="+", default=list(AT_FRAMES))
    args = parser.parse_args(list(argv))
    if args.command == "export":
        for path in export(args.tracking_uri, args.experiment, args.out):
            print(path)
        return 0
    summary = build_summary(args.out, args.learning, args.at_frames)
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
