"""Learning benchmark: HarmonyDream on cartpole-balance from states, on this machine's CPU, against the clock.

For each seed, runs `hwm fit --config conf/cartpole_balance.yaml --seed_everything N --data.seed N` for at
most --minutes of wall-clock (Lightning's `trainer.max_time`) in `--out/seed<N>/`, then reads the run back
from its MLflow store and reports evaluation return and the harmonizer weights against wall-clock minutes
and env frames: per seed `curve.csv`, `summary.json` and `learning_curve.png`; across seeds
`summary.json` (first frames and minutes at the threshold, best and final return per seed) and
`learning_curves.png` (every seed's curve, against frames and against minutes). The seeds run one after
another, so each has the machine to itself.

    python benchmarks/learn_cartpole.py --seeds 0 1 2 --minutes 60 --out benchmarks/results/cartpole
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = ("obs", "reward", "dynamics")


def run_fit(config: Path, out: Path, minutes: float, seed: int, extra: list[str]) -> None:
    uri = f"sqlite:///{out / 'mlflow.db'}"
    max_time = f"00:{int(minutes) // 60:02d}:{int(minutes) % 60:02d}:{int(round((minutes % 1) * 60)):02d}"
    cmd = [
        sys.executable, "-m", "hwm.cli", "fit", "--config", str(config),
        "--trainer.logger.init_args.tracking_uri", uri,
        "--trainer.logger.init_args.experiment_name", "bench-cartpole",
        "--trainer.max_time", max_time,
        "--trainer.enable_checkpointing", "false",
        "--seed_everything", str(seed), "--data.seed", str(seed),
        *extra,
    ]  # fmt: skip
    print("$", " ".join(cmd), flush=True)
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    subprocess.run(cmd, cwd=out, env=env, check=True)


def read_run(out: Path) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("bench-cartpole")
    run = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    start = run.info.start_time

    def history(key: str) -> list[tuple[float, int, float]]:
        rows = client.get_metric_history(run.info.run_id, key)
        return sorted(((m.timestamp - start) / 60000.0, m.step, m.value) for m in rows)

    return {
        "run_id": run.info.run_id,
        "eval": history("eval/return"),
        "train": history("train/episode_return"),
        "updates": history("progress/updates"),
        "weights": {w: history(f"harmonizer/weight_{w}") for w in WEIGHTS},
        "ups": history("perf/updates_per_s"),
    }


def summarise(data: dict, threshold: float) -> dict:
    evals = data["eval"]
    first = next(((m, f, r) for m, f, r in evals if r >= threshold), None)
    best = max(evals, key=lambda row: row[2]) if evals else None
    ups = sorted(v for _, _, v in data["ups"])
    return {
        "run_id": data["run_id"],
        "evaluations": len(evals),
        "first_minute_at_threshold": round(first[0], 1) if first else None,
        "first_frames_at_threshold": first[1] if first else None,
        "threshold": threshold,
        "best_return": round(best[2], 1) if best else None,
        "best_minute": round(best[0], 1) if best else None,
        "final_return": round(evals[-1][2], 1) if evals else None,
        "final_minute": round(evals[-1][0], 1) if evals else None,
        "updates": int(data["updates"][-1][2]) if data["updates"] else 0,
        "median_updates_per_s": round(ups[len(ups) // 2], 2) if ups else None,
        "final_weights": {w: round(h[-1][2], 3) for w, h in data["weights"].items() if h},
    }


def load_seed(out: Path) -> tuple[list, dict]:
    """(eval rows, summary) of a finished seed folder."""
    rows = []
    with open(out / "curve.csv") as f:
        for row in csv.DictReader(f):
            rows.append((float(row["minute"]), int(row["env_frames"]), float(row["eval_return"])))
    return rows, json.loads((out / "summary.json").read_text())


def write_combined(seeds: dict[int, tuple[list, dict]], threshold: float, out: Path) -> dict:
    """Every seed's curve on one figure, and the per-seed numbers in one summary."""
    combined = {
        "threshold": threshold,
        "seeds": {
            str(seed): {
                k: summary[k]
                for k in (
                    "first_frames_at_threshold",
                    "first_minute_at_threshold",
                    "best_return",
                    "best_minute",
                    "final_return",
                    "final_minute",
                    "updates",
                    "median_updates_per_s",
                    "final_weights",
                )
            }
            for seed, (_, summary) in seeds.items()
        },
    }
    (out / "summary.json").write_text(json.dumps(combined, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (seed, (rows, _)) in enumerate(seeds.items()):
        minutes, frames, values = zip(*rows, strict=True) if rows else ((), (), ())
        ax1.plot([f / 1000 for f in frames], values, "o-", ms=2, color=f"C{i}", label=f"seed {seed}")
        ax2.plot(minutes, values, "o-", ms=2, color=f"C{i}", label=f"seed {seed}")
    for ax in (ax1, ax2):
        ax.axhline(threshold, color="grey", ls="--", lw=1)
        ax.set_ylabel("evaluation return")
        ax.legend()
        ax.grid(alpha=0.3)
    ax1.set(xlabel="env frames (thousands)", title="cartpole-balance from states, per seed")
    ax2.set(xlabel="wall-clock minutes (2-core CPU)", title="against the clock")
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=110)
    return combined


def write_outputs(data: dict, summary: dict, out: Path) -> None:
    with open(out / "curve.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["minute", "env_frames", "eval_return"])
        writer.writerows((round(m, 2), s, round(v, 1)) for m, s, v in data["eval"])
    (out / "summary.json").write_text(json.dumps(summary, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if data["train"]:
        ax1.plot(
            [m for m, _, _ in data["train"]],
            [v for _, _, v in data["train"]],
            ".",
            alpha=0.4,
            label="train episode",
        )
    ax1.plot(
        [m for m, _, _ in data["eval"]], [v for _, _, v in data["eval"]], "o-", label="evaluation (mode)"
    )
    ax1.axhline(summary["threshold"], color="grey", ls="--", lw=1)
    ax1.set(xlabel="wall-clock minutes (2-core CPU)", ylabel="return", title="cartpole-balance from states")
    ax1.legend()
    for w, h in data["weights"].items():
        ax2.plot([m for m, _, _ in h], [v for _, _, v in h], label=f"1/σ {w}")
    ax2.set(
        xlabel="wall-clock minutes", ylabel="harmonizer weight 1/σ", yscale="log", title="harmonizer weights"
    )
    ax2.legend()
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=REPO / "conf" / "cartpole_balance.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed, in turn")
    parser.add_argument("--minutes", type=float, default=60.0, help="wall-clock limit of each training run")
    parser.add_argument("--threshold", type=float, default=800.0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cartpole")
    parser.add_argument("--report-only", action="store_true", help="re-read existing runs in --out")
    parser.add_argument("extra", nargs="*", help="extra `hwm fit` overrides, after --")
    args = parser.parse_args()
    results = {}
    for seed in args.seeds:
        out = (args.out / f"seed{seed}").resolve()
        out.mkdir(parents=True, exist_ok=True)
        if not args.report_only:
            if (out / "mlflow.db").exists():
                (out / "mlflow.db").unlink()
            t0 = time.perf_counter()
            run_fit(args.config.resolve(), out, args.minutes, seed, args.extra)
            print(f"seed {seed}: training process took {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
        data = read_run(out)
        summary = summarise(data, args.threshold)
        write_outputs(data, summary, out)
        print(f"\nseed {seed}\nminute  env_frames  eval_return")
        for m, s, v in data["eval"]:
            print(f"{m:6.1f}  {s:10d}  {v:11.1f}")
        results[seed] = load_seed(out)
    combined = write_combined(results, args.threshold, args.out)
    print(json.dumps(combined, indent=2))


if __name__ == "__main__":
    main()
