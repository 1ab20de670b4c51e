"""The harmonizer mechanism study: world models trained offline on one pixel dataset under each loss weighting,
several seeds each, scored on held-out episodes; a summary with interquartile means and 95% CIs, and plots.

    python benchmarks/harmonizer_study.py run --dataset data/swingup --workdir /tmp/hstudy \
        --seeds 0 1 2 [--commit]                      # resumable: a finished run is not run again
    python benchmarks/harmonizer_study.py summarize   # benchmarks/results/harmonizer/{summary.json,*.png}

Each run is ``hwm fit --config conf/offline_pixels.yaml --data.dataset DATASET`` plus its weighting's
settings (``WEIGHTINGS``), tagged ``weighting=<name>`` and ``hwm.study=<study>`` in the MLflow store under
``--workdir`` (with its checkpoints and logs), so ``hwm compare --group-by tags.weighting --metric
heldout/reward_mse`` reads the same runs. When a run ends, its held-out errors and weights are exported to
``<out>/runs/<weighting>-s<seed>.json`` (``--commit``: committed to git, with the refreshed summary), and
the summary is rebuilt from those files alone: per weighting, the number of seeds and the final held-out
errors as IQM with a 95% stratified-bootstrap CI, computed by ``hwm compare``'s own ``summarize``.
A run that was interrupted is resumed from its checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "harmonizer"
CONFIG = ROOT / "conf" / "offline_pixels.yaml"
EXPERIMENT = "hwm-harmonizer-pixels"
STUDY = "harmonizer-pixels"
# name -> the model settings of that weighting of the obs, reward and dynamics losses.
WEIGHTINGS: dict[str, dict[str, Any]] = {
    "off": {"harmonizer_mode": "off"},
    "fixed_r10": {"harmonizer_mode": "fixed", "harmonizer_weights": {"reward": 10.0}},
    "fixed_r100": {"harmonizer_mode": "fixed", "harmonizer_weights": {"reward": 100.0}},
    "reward_only": {"harmonizer_mode": "fixed", "harmonizer_weights": {"obs": 0.0}},
    "rectified": {"harmonizer_mode": "rectified"},
    "unrectified": {"harmonizer_mode": "unrectified"},
    "gradnorm": {"harmonizer_mode": "gradnorm"},
}
ERRORS = ("heldout/reward_mse", "heldout/reward_mse_top10", "heldout/obs_mse", "heldout/kl")
TASKS = ("obs", "reward", "dynamics")
EXPORTED = (*ERRORS, *(f"harmonizer/weight_{t}" for t in TASKS), "loss/obs", "loss/reward", "loss/dynamics")


def run_name(weighting: str, seed: int) -> str:
    return f"{weighting}-s{seed}"


def weighting_args(weighting: str) -> list[str]:
    """A weighting as ``hwm fit`` arguments (``--model.harmonizer_mode fixed --model.harmonizer_weights ...``)."""
    return [
        a
        for k, v in WEIGHTINGS[weighting].items()
        for a in (f"--model.{k}", json.dumps(v) if isinstance(v, dict) else str(v))
    ]


def fit_command(
    weighting: str, seed: int, dataset: Path, workdir: Path, config: Path, extra: Sequence[str]
) -> list[str]:
    """The ``hwm fit`` of one run; resumed from its own checkpoint folder when it has one."""
    ckpt_dir = workdir / "checkpoints" / run_name(weighting, seed)
    if any(ckpt_dir.glob("*/last.ckpt")):
        return [
            sys.executable,
            "-m",
            "hwm.cli",
            "fit",
            "--ckpt_path",
            "last",
            "--checkpoint.dirpath",
            str(ckpt_dir),
        ]
    logger = "--trainer.logger.init_args."
    return [
        sys.executable,
        "-m",
        "hwm.cli",
        "fit",
        "--config",
        str(config),
        "--data.dataset",
        str(dataset),
        *weighting_args(weighting),
        "--seed_everything",
        str(seed),
        "--data.seed",
        str(seed),
        f"{logger}experiment_name",
        EXPERIMENT,
        f"{logger}tracking_uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
        f"{logger}run_name",
        run_name(weighting, seed),
        f"{logger}tags",
        json.dumps({"hwm.study": STUDY, "weighting": weighting}),
        "--checkpoint.dirpath",
        str(ckpt_dir),
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


def export_run(workdir: Path, weighting: str, seed: int) -> dict[str, Any] | None:
    """The finished MLflow run of (weighting, seed) as plain data: its held-out errors and weights by update."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return None
    found = client.search_runs(
        [experiment.experiment_id],
        # By name: the tag of weighting "off" is read as YAML's false on the command line (it arrives as "0").
        filter_string=f"attributes.run_name = '{run_name(weighting, seed)}' and attributes.status = 'FINISHED'",
    )
    if not found:
        return None
    run = found[0]
    if run.data.tags.get("weighting") != weighting:  # what hwm compare --group-by tags.weighting reads
        client.set_tag(run.info.run_id, "weighting", weighting)
    metrics = {}
    for key in EXPORTED:
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        if history:
            metrics[key] = [[m.step, m.value] for m in history]
    params = run.data.params
    return {
        "weighting": weighting,
        "seed": seed,
        "run_id": run.info.run_id,
        "settings": WEIGHTINGS[weighting],
        "harmonizer_mode": params.get("model.harmonizer_mode"),
        "updates": int(params.get("data.total_updates", 0)),
        "dataset": params.get("data.dataset"),
        "minutes": (run.info.end_time - run.info.start_time) / 60000 if run.info.end_time else None,
        "metrics": metrics,
    }


def load_exports(out: Path) -> list[dict[str, Any]]:
    """The exported runs under ``out/runs`` (a GPU run stopped at its deadline says ``finished: false``)."""
    exports = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    return [e for e in exports if e.get("finished", True)]


def curves(exports: Sequence[dict[str, Any]], metric: str) -> list[Any]:
    """The runs' histories of ``metric`` as ``hwm compare``'s RunCurves, grouped by weighting."""
    from hwm.experiments.runs import RunCurve

    out = []
    for e in exports:
        if metric not in e["metrics"]:
            continue
        steps, values = np.array(e["metrics"][metric], dtype=np.float64).T
        out.append(
            RunCurve(
                e["run_id"],
                run_name(e["weighting"], e["seed"]),
                e["weighting"],
                steps.astype(np.int64),
                values,
                int(steps[-1]),
            )
        )
    return out


def summarize(exports: Sequence[dict[str, Any]], *, reps: int = 2000) -> dict[str, Any]:
    """Per weighting: seeds, and each held-out error's final value as IQM [95% CI] (``hwm compare``'s
    ``summarize``: rliable's stratified bootstrap over the seeds), plus the final weights' means."""
    from hwm.experiments.compare import summarize as compare_summarize

    table: dict[str, dict[str, Any]] = {}
    notes: set[str] = set()
    for metric in ERRORS:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            stats = compare_summarize(curves(exports, metric), reps=reps)
        notes |= {str(w.message) for w in caught}
        for s in stats:
            entry = table.setdefault(s.group, {"seeds": s.runs, "updates": s.frames_max, "final": {}})
            entry["final"][metric] = {
                "iqm": s.iqm,
                "ci_low": s.ci_low,
                "ci_high": s.ci_high,
                "mean": s.final_mean,
                "std": s.final_std,
            }
    for weighting, entry in table.items():
        runs = [e for e in exports if e["weighting"] == weighting]
        entry["seed_list"] = sorted(e["seed"] for e in runs)
        entry["settings"] = runs[0]["settings"]
        entry["final_weights"] = {
            t: float(np.mean([e["metrics"][f"harmonizer/weight_{t}"][-1][1] for e in runs]))
            for t in TASKS
            if all(f"harmonizer/weight_{t}" in e["metrics"] for e in runs)
        }
        minutes = [e["minutes"] for e in runs if e.get("minutes")]
        entry["minutes_per_run"] = float(np.median(minutes)) if minutes else None
        cpu = [e["cpu_minutes"] for e in runs if e.get("cpu_minutes")]
        entry["cpu_minutes_per_run"] = float(np.median(cpu)) if cpu else None
    order = [w for w in WEIGHTINGS if w in table] + sorted(set(table) - set(WEIGHTINGS))
    return {
        "study": STUDY,
        "dataset": exports[0]["dataset"] if exports else None,
        "statistic": "final value at the last update: IQM over seeds with a 95% stratified-bootstrap CI "
        f"(hwm compare's summarize, rliable, {reps} replications)",
        "notes": sorted(notes),
        "weightings": {w: table[w] for w in order},
    }


def plot(exports: Sequence[dict[str, Any]], out: Path, *, reps: int = 2000) -> list[Path]:
    """held-out errors against updates (mean and 95% bootstrap band per weighting), and the weights."""
    from matplotlib.figure import Figure

    from hwm.experiments.plots import curve_grid, group_curve
    from hwm.experiments.runs import groups

    files = []
    fig = Figure(figsize=(13, 8))
    for ax, metric in zip(fig.subplots(2, 2).flat, ERRORS, strict=True):
        runs = curves(exports, metric)
        grid = curve_grid(runs)
        for i, weighting in enumerate(w for w in WEIGHTINGS if w in groups(runs)):
            rs = groups(runs)[weighting]
            x, mean, lo, hi = group_curve(rs, grid, reps=reps)
            ax.plot(x, mean, color=f"C{i}", label=f"{weighting} (n={len(rs)})")
            ax.fill_between(x, lo, hi, color=f"C{i}", alpha=0.15, linewidth=0)
        ax.set_yscale("log")
        ax.set_xlabel("updates")
        ax.set_title(f"{metric} (held-out episodes)", fontsize=10)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    fig.tight_layout()
    files.append(out / "heldout_errors.png")
    fig.savefig(files[-1], dpi=110)
    learned = [
        w for w in ("rectified", "unrectified", "gradnorm") if any(e["weighting"] == w for e in exports)
    ]
    if learned:
        fig = Figure(figsize=(4.5 * len(learned), 3.8))
        for ax, weighting in zip(np.atleast_1d(fig.subplots(1, len(learned))), learned, strict=True):
            for j, task in enumerate(TASKS):
                for e in (e for e in exports if e["weighting"] == weighting):
                    steps, values = np.array(e["metrics"][f"harmonizer/weight_{task}"]).T
                    ax.plot(
                        steps,
                        values,
                        color=f"C{j}",
                        alpha=0.7,
                        label=task
                        if e["seed"] == min(x["seed"] for x in exports if x["weighting"] == weighting)
                        else None,
                    )
            ax.set_yscale("log")
            ax.set_xlabel("updates")
            ax.set_title(f"{weighting}: weight 1/sigma per task (each seed)", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        files.append(out / "weights.png")
        fig.savefig(files[-1], dpi=110)
    return files


def write_summary(out: Path, reps: int = 2000) -> list[Path]:
    exports = load_exports(out)
    if not exports:
        return []
    summary = summarize(exports, reps=reps)
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=1) + "\n")
    return [path, *plot(exports, out, reps=reps)]


def commit(paths: Sequence[Path], message: str) -> None:
    """Commits exactly these files (other changes in the checkout are left alone); retried if git is busy."""
    for attempt in range(5):
        add = subprocess.run(["git", "-C", str(ROOT), "add", "--", *map(str, paths)], capture_output=True)
        done = subprocess.run(
            ["git", "-C", str(ROOT), "commit", "-q", "-m", message, "--", *map(str, paths)],
            capture_output=True,
        )
        if add.returncode == 0 and done.returncode == 0:
            return
        if b"nothing to commit" in done.stdout + done.stderr or b"no changes added" in done.stdout:
            return
        time.sleep(5 * (attempt + 1))
    print(f"harmonizer_study: could not commit {message!r}: {done.stderr.decode().strip()}", file=sys.stderr)


def _children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(args: argparse.Namespace) -> int:
    workdir, out = args.workdir.resolve(), args.out.resolve()
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    weightings = args.weightings or list(WEIGHTINGS)
    # Seed-major: every weighting gets its first seed before any gets a second.
    todo = [
        (w, s)
        for s in args.seeds
        for w in weightings
        if not (out / "runs" / f"{run_name(w, s)}.json").exists()
    ]
    print(f"harmonizer_study: {len(todo)} runs to go in {workdir}", flush=True)
    failed = 0
    for weighting, seed in todo:
        cmd = fit_command(weighting, seed, args.dataset.resolve(), workdir, args.config.resolve(), args.extra)
        log = workdir / "logs" / f"{run_name(weighting, seed)}.log"
        began, cpu = time.perf_counter(), _children_cpu()
        with log.open("a") as f:
            code = subprocess.call(
                ["nice", "-n", "19", *cmd], cwd=workdir, stdout=f, stderr=subprocess.STDOUT
            )
        took, cpu = (time.perf_counter() - began) / 60, (_children_cpu() - cpu) / 60
        exported = export_run(workdir, weighting, seed) if code == 0 else None
        if exported is None:
            failed += 1
            print(
                f"{run_name(weighting, seed)}: failed (exit {code}) after {took:.1f} min; log {log}",
                flush=True,
            )
            continue
        # CPU minutes say what a run costs whatever else the machine was doing (wall minutes do not).
        exported["cpu_minutes"] = cpu
        path = out / "runs" / f"{run_name(weighting, seed)}.json"
        path.write_text(json.dumps(exported) + "\n")
        files = [path, *write_summary(out, reps=args.reps)]
        final = exported["metrics"]["heldout/reward_mse"][-1][1]
        print(
            f"{run_name(weighting, seed)}: done in {took:.1f} min, held-out reward MSE {final:.4g}",
            flush=True,
        )
        if args.commit:
            commit(files, f"Harmonizer study: {run_name(weighting, seed)} (held-out reward MSE {final:.4g})")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the missing runs, export each, refresh the summary")
    r.add_argument("--dataset", type=Path, required=True, help="folder of episodes (hwm fit --data.dataset)")
    r.add_argument(
        "--workdir", type=Path, required=True, help="MLflow store, checkpoints and logs of the runs"
    )
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--weightings", nargs="+", choices=list(WEIGHTINGS), help="default: all")
    r.add_argument("--config", type=Path, default=CONFIG)
    r.add_argument("--out", type=Path, default=OUT)
    r.add_argument("--reps", type=int, default=2000, help="bootstrap replications")
    r.add_argument("--commit", action="store_true", help="git-commit each run's export and the summary")
    r.add_argument("extra", nargs=argparse.REMAINDER, help="after --: extra hwm fit arguments for every run")
    s = sub.add_parser("summarize", help="rebuild summary.json and the plots from the exported runs")
    s.add_argument("--out", type=Path, default=OUT)
    s.add_argument("--reps", type=int, default=2000)
    args = p.parse_args(argv)
    if args.command == "summarize":
        files = write_summary(args.out, reps=args.reps)
        print("wrote " + ", ".join(map(str, files)) if files else f"no exported runs under {args.out}/runs")
        return 0 if files else 1
    args.extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    os.environ.setdefault("MUJOCO_GL", "egl")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
