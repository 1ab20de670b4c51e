"""Learning benchmark: hwm's CPU presets on DMC tasks from states, every seed, over the published curves.

    python benchmarks/learn_dmc.py --task cartpole-balance --seeds 0 1 2 3 4 --parallel 2
    python benchmarks/learn_dmc.py --task cartpole-swingup --seeds 0 1 2 --parallel 2
    python benchmarks/learn_dmc.py --report-only          # redraw everything from the finished runs
    python benchmarks/learn_dmc.py --task cartpole-balance --seeds 1 --frames 100000 --variant ent3e-3 \
        -- --model.actor_critic.init_args.actor_entropy 3e-3      # a variant: the preset with other settings

Each (task, seed) is its own `hwm fit --config <the task's preset> --seed_everything N --data.seed N` in
`--out/<task>/seed<N>/` (its MLflow store, checkpoints and log), `--parallel` of them at a time with the
machine's cores shared out as torch threads. The benchmark is resumable: run the same command again after an
interruption (Ctrl-C, a crash, a reboot) and finished runs are kept, interrupted ones continue from their
last checkpoint in their own MLflow run (`hwm fit --ckpt_path`), and the rest start. A run's minutes are
`progress/train_minutes`: its wall-clock, a resumed run's earlier processes included up to the checkpoint it
resumed, the time it was down not counted.

Writes, under `--out`:
- `summary.json`: `{"tasks": {task: {"seeds": {seed: {"return_at_frames": {"100000": R, "200000": R,
  "300000": R, "500000": R}, "minutes_to_900": M}}}}}` -- R is the evaluation return at the first evaluation
  at or after that frame count (null if the run did not get there), M the run's minutes at its first
  evaluation of 900 or more (null if none);
- `aggregates.json`: per task and frame count, the IQM over seeds with its 95% stratified-bootstrap CI, the
  published means (DreamerV3 and D4PG from states) and the command lines of the runs;
- `<task>/seed<N>/curve.csv` (env frames, minutes, evaluation return, mean |action|, reward factors) and
  `<task>/learning_curves.png`: every seed's curve against env frames, over the published DreamerV3 (states)
  and D4PG curves, and against wall-clock minutes.

A `--variant NAME` runs the preset with the `hwm fit` arguments given after `--` (an ablation, another
harmonizer mode) in `--out/variants/NAME/<task>/seed<N>/`; variants are summed up in `variants.json` (the
same numbers per variant, with the arguments that define it) and plotted beside their folders, never mixed
into `summary.json`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PRESETS = {
    "cartpole-balance": REPO / "conf" / "cartpole_balance.yaml",
    "cartpole-swingup": REPO / "conf" / "cartpole_swingup.yaml",
}
CHECKPOINTS = (100_000, 200_000, 300_000, 500_000)
THRESHOLD = 900.0
EXPERIMENT = "bench-learning"
EXPLAIN = ("eval/action_abs_mean", "eval/reward_factor_upright", "eval/reward_factor_centered",
           "eval/reward_factor_small_control", "eval/reward_factor_small_velocity")  # fmt: skip


@dataclass(frozen=True)
class Job:
    task: str
    seed: int
    folder: Path
    config: Path
    frames: int
    variant: str | None = None

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.folder / 'mlflow.db'}"


# -- running ---------------------------------------------------------------------------------------------


def run_state(job: Job) -> tuple[str, str | None]:
    """('finished' | 'resume' | 'new', run id): what the job's folder holds."""
    if not (job.folder / "mlflow.db").exists():
        return "new", None
    run = latest_run(job)
    if run is None:
        return "new", None
    frames = last_value(job, run.info.run_id, "progress/env_frames") or 0
    if run.info.status == "FINISHED" and frames >= job.frames:
        return "finished", run.info.run_id
    if (job.folder / "checkpoints" / run.info.run_id / "last.ckpt").exists():
        return "resume", run.info.run_id
    return "new", None


def command(job: Job, state: str, run_id: str | None, extra: Sequence[str]) -> list[str]:
    base = [sys.executable, "-m", "hwm.cli", "fit"]
    common = ["--data.total_frames", str(job.frames), "--trainer.enable_progress_bar", "false"]
    if state == "resume":
        return [*base, "--ckpt_path", str(job.folder / "checkpoints" / str(run_id)), *common]
    return [
        *base, "--config", str(job.config),
        "--trainer.logger.init_args.tracking_uri", job.uri,
        "--trainer.logger.init_args.experiment_name", EXPERIMENT,
        "--seed_everything", str(job.seed), "--data.seed", str(job.seed),
        "--checkpoint.every_minutes", "5", *common, *extra,
    ]  # fmt: skip


def fresh(job: Job) -> None:
    """A run that never got to a checkpoint starts over in an empty folder."""
    for name in ("mlflow.db", "log.txt"):
        (job.folder / name).unlink(missing_ok=True)


def run_all(jobs: Sequence[Job], parallel: int, extra: Sequence[str], threads: int | None = None) -> None:
    threads = threads or max(1, (os.cpu_count() or 1) // parallel)
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}  # fmt: skip
    pending = list(jobs)
    running: list[tuple[Job, subprocess.Popen]] = []
    stopping = False

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for _, proc in running:  # each run checkpoints and exits 75; the next invocation resumes it
            proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while pending or running:
        while pending and len(running) < parallel and not stopping:
            job = pending.pop(0)
            job.folder.mkdir(parents=True, exist_ok=True)
            state, run_id = run_state(job)
            if state == "finished":
                print(f"[{job.task} seed {job.seed}] finished earlier: kept", flush=True)
                continue
            if state == "new":
                fresh(job)
            cmd = command(job, state, run_id, extra)
            with open(job.folder / "commands.txt", "a") as f:
                f.write(" ".join(cmd) + "\n")
            print(f"[{job.task} seed {job.seed}] {state}: {' '.join(cmd)}", flush=True)
            log = open(job.folder / "log.txt", "a")  # noqa: SIM115 (closed with the process)
            running.append((job, subprocess.Popen(cmd, cwd=job.folder, env=env, stdout=log, stderr=log)))
        time.sleep(2)
        for job, proc in list(running):
            code = proc.poll()
            if code is not None:
                running.remove((job, proc))
                print(f"[{job.task} seed {job.seed}] exited {code}", flush=True)
        if stopping and not running:
            print("stopped; run the same command again to continue", flush=True)
            raise SystemExit(75)


# -- reading ---------------------------------------------------------------------------------------------


def latest_run(job: Job) -> Any:
    """The newest run of the job's store (a store holds one run, continued across resumes)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=job.uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, order_by=["attributes.start_time DESC"], max_results=1) if ids else []
    return runs[0] if runs else None


def history(job: Job, run_id: str, key: str) -> dict[int, float]:
    from mlflow.tracking import MlflowClient

    return {int(m.step): m.value for m in MlflowClient(tracking_uri=job.uri).get_metric_history(run_id, key)}


def last_value(job: Job, run_id: str, key: str) -> float | None:
    values = history(job, run_id, key)
    return values[max(values)] if values else None


def seed_result(curve: Sequence[dict[str, float]], marks: Sequence[int] = CHECKPOINTS) -> dict[str, Any]:
    """The summary entry of one run from its evaluations (rows with ``frames``, ``minutes``, ``return``)."""
    at = {}
    for mark in marks:
        row = next((r for r in curve if r["frames"] >= mark), None)
        at[str(mark)] = None if row is None else round(row["return"], 1)
    hit = next((r for r in curve if r["return"] >= THRESHOLD), None)
    minutes = None if hit is None or math.isnan(hit["minutes"]) else round(hit["minutes"], 1)
    return {"return_at_frames": at, "minutes_to_900": minutes}


def read_curve(job: Job) -> list[dict[str, float]]:
    run = latest_run(job) if (job.folder / "mlflow.db").exists() else None
    if run is None:
        return []
    rid = run.info.run_id
    returns = history(job, rid, "eval/return")
    minutes = history(job, rid, "progress/train_minutes")
    if not minutes:  # runs from before the metric existed: wall-clock since the run's start
        from mlflow.tracking import MlflowClient

        rows = MlflowClient(tracking_uri=job.uri).get_metric_history(rid, "eval/return")
        minutes = {int(m.step): (m.timestamp - run.info.start_time) / 60000.0 for m in rows}
    explain = {k: history(job, rid, k) for k in EXPLAIN}
    rows = []
    for frames in sorted(returns):
        row = {"frames": frames, "minutes": minutes.get(frames, math.nan), "return": returns[frames]}
        row.update({k.split("/")[-1]: v.get(frames, math.nan) for k, v in explain.items()})
        rows.append(row)
    return rows


def write_curve(job: Job, curve: Sequence[dict[str, float]]) -> None:
    if not curve:
        return
    with open(job.folder / "curve.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(curve[0]))
        writer.writeheader()
        writer.writerows({k: round(v, 4) for k, v in row.items()} for row in curve)


def aggregate(
    results: dict[str, dict[str, dict[str, Any]]], marks: Sequence[int] = CHECKPOINTS
) -> dict[str, Any]:
    """IQM and 95% stratified-bootstrap CI over seeds per task and frame count, beside the published means."""
    from hwm.experiments.dmc_scores import load_dmc_reference
    from hwm.experiments.scores import iqm_with_ci

    out: dict[str, Any] = {}
    for task, seeds in results.items():
        rows: dict[str, Any] = {}
        for mark in marks:
            values = [s["return_at_frames"][str(mark)] for s in seeds.values()]
            values = [v for v in values if v is not None]
            row: dict[str, Any] = {"seeds": len(values)}
            if values:
                point, low, high = iqm_with_ci({task: values})
                row.update(iqm=round(point, 1), ci95=None if low is None else [round(low, 1), round(high, 1)])
            for method in ("dreamerv3", "d4pg"):
                ref = load_dmc_reference(method, task)
                row[f"published_{method}_mean"] = round(ref.mean_at(mark), 1) if ref else None
            rows[str(mark)] = row
        minutes = [s["minutes_to_900"] for s in seeds.values()]
        out[task] = {"at_frames": rows, "seeds_reaching_900": sum(m is not None for m in minutes)}
    return out


def plot_task(task: str, curves: dict[int, list[dict[str, float]]], out: Path, title: str = "hwm") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hwm.experiments.dmc_scores import load_dmc_reference

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    for method, style in (
        ("dreamerv3", {"color": "black", "ls": "-"}),
        ("d4pg", {"color": "grey", "ls": ":"}),
    ):
        ref = load_dmc_reference(method, task)
        if ref is None:
            continue
        for i, (xs, ys) in enumerate(ref.runs):
            keep = [(x, y) for x, y in zip(xs, ys, strict=True) if x <= 520_000]
            ax1.plot([x / 1000 for x, _ in keep], [y for _, y in keep], lw=0.8, alpha=0.45, **style,
                     label=f"{ref.label} ({len(ref.runs)} seeds)" if i == 0 else None)  # fmt: skip
    for i, (seed, curve) in enumerate(sorted(curves.items())):
        frames = [r["frames"] / 1000 for r in curve]
        returns = [r["return"] for r in curve]
        ax1.plot(frames, returns, "o-", ms=2, lw=1.2, color=f"C{i}", label=f"hwm seed {seed}")
        ax2.plot(
            [r["minutes"] for r in curve], returns, "o-", ms=2, lw=1.2, color=f"C{i}", label=f"seed {seed}"
        )
    for ax in (ax1, ax2):
        ax.axhline(THRESHOLD, color="grey", ls="--", lw=0.8)
        ax.set_ylabel("evaluation return")
        ax.set_ylim(0, 1010)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    ax1.set(xlabel="env frames (thousands)", title=f"{task} from states: {title} vs published")
    ax2.set(xlabel="wall-clock minutes (this machine)", title="against the clock")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _results(
    jobs: Sequence[Job], marks: Sequence[int]
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, dict[int, list[dict[str, float]]]]]:
    """Per task: each seed's summary entry and its curve (writing the curve's CSV beside the run)."""
    results: dict[str, dict[str, dict[str, Any]]] = {}
    curves: dict[str, dict[int, list[dict[str, float]]]] = {}
    for job in jobs:
        curve = read_curve(job)
        if not curve:
            continue
        write_curve(job, curve)
        results.setdefault(job.task, {})[str(job.seed)] = seed_result(curve, marks)
        curves.setdefault(job.task, {})[job.seed] = curve
    return results, curves


def _commands(jobs: Sequence[Job], task: str) -> dict[str, list[str]]:
    return {
        str(j.seed): (j.folder / "commands.txt").read_text().splitlines()
        for j in jobs
        if j.task == task and (j.folder / "commands.txt").exists()
    }


def report(jobs: Sequence[Job], out: Path, marks: Sequence[int] = CHECKPOINTS) -> dict[str, Any]:
    preset = [j for j in jobs if j.variant is None]
    results, curves = _results(preset, marks)
    summary = {"tasks": {task: {"seeds": seeds} for task, seeds in results.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    aggregates = aggregate(results, marks)
    for task in aggregates:
        aggregates[task]["commands"] = _commands(preset, task)
    (out / "aggregates.json").write_text(json.dumps(aggregates, indent=2) + "\n")
    for task, by_seed in curves.items():
        plot_task(task, by_seed, out / task / "learning_curves.png")
    variants: dict[str, Any] = {}
    for name in sorted({j.variant for j in jobs if j.variant is not None}):
        mine = [j for j in jobs if j.variant == name]
        results, curves = _results(mine, marks)
        variants[name] = aggregate(results, marks)
        for task, by_seed in curves.items():
            variants[name][task]["seeds"] = results[task]
            variants[name][task]["commands"] = _commands(mine, task)
            plot_task(task, by_seed, mine[0].folder.parents[1] / task / "learning_curves.png", title=name)
    if variants:
        (out / "variants.json").write_text(json.dumps(variants, indent=2) + "\n")
    return summary


def job_folder(out: Path, task: str, seed: int, variant: str | None) -> Path:
    base = out if variant is None else out / "variants" / variant
    return base / task / f"seed{seed}"


def discover(out: Path) -> list[Job]:
    """Every run folder already under ``out``, the preset's and the variants' (what the report reads)."""
    jobs = []
    for folder in sorted([*out.glob("*/seed*"), *out.glob("variants/*/*/seed*")]):
        if (folder / "mlflow.db").exists():
            task, seed = folder.parent.name, int(folder.name[4:])
            variant = folder.parents[1].name if folder.parents[2].name == "variants" else None
            jobs.append(Job(task, seed, folder, PRESETS.get(task, Path()), 0, variant))
    return jobs


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", choices=sorted(PRESETS), action="append", help="repeatable")
    parser.add_argument("--config", type=Path, help="the preset to run (default: the task's own)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--frames", type=int, default=500_000, help="env frames per run")
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time (cores are shared out)")
    parser.add_argument("--variant", help="name of the variant the arguments after -- define")
    parser.add_argument("--threads", type=int, help="torch threads per run (default: cores / --parallel)")
    parser.add_argument("--marks", type=int, nargs="+", default=list(CHECKPOINTS), help="frames reported")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "learning")
    parser.add_argument(
        "--report-only", action="store_true", help="re-read the runs under --out, run nothing"
    )
    parser.add_argument("extra", nargs="*", help="more `hwm fit` arguments for new runs, after --")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.parallel < 1:
        parser.error("--parallel must be >= 1")
    tasks = args.task or []
    if args.extra and not args.variant:
        parser.error("arguments after -- change the preset: name the variant they define (--variant NAME)")
    jobs = [
        Job(t, s, job_folder(out, t, s, args.variant), (args.config or PRESETS[t]).resolve(), args.frames,
            args.variant)
        for t in tasks
        for s in args.seeds
    ]  # fmt: skip
    if not args.report_only:
        if not jobs:
            parser.error("name at least one --task (or use --report-only)")
        run_all(jobs, args.parallel, args.extra, args.threads)
    report(discover(out), out, args.marks)
    print(f"wrote {out / 'summary.json'} and {out / 'aggregates.json'}")


if __name__ == "__main__":
    main()
