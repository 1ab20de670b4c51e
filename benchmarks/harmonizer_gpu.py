"""The harmonizer study on one GPU: every weighting x seed at once, a larger world model, within 8 minutes.

    python wheelhouse/harmonizer_gpu.py --out hstudy/            # on the node, after gpu_selfcheck.py installed hwm
    python wheelhouse/harmonizer_gpu.py --cpu --scale tiny --out x/   # the same path at a tiny scale on the CPU
    python benchmarks/harmonizer_study.py summarize --out hstudy/     # IQM, CIs and plots, where rliable is

Needs only what the offline wheelhouse installs (no MLflow, no plotting): it records the dataset
(``harmonizer_dataset.py``, cartpole-swingup at 64x64; or ``--dataset`` names one), then starts one process
per run (``WEIGHTINGS`` of ``harmonizer_study.py`` x ``--seeds``), all on the one GPU at the same time. Each
builds the offline data module and the world-model learner directly (no CLI, no tracking), trains
``--updates`` updates, scores the held-out episodes every ``eval_every`` updates and writes
``<out>/runs/<weighting>-s<seed>.json`` in the CPU study's export format. ``--updates auto`` (the default)
first runs every process for a few updates at once and picks the largest count that fits what is left of
``--budget-s`` for the slowest of them. A run still going at the deadline is stopped and left out (its file
says ``finished: false``). ``<out>/gpu_study.json`` records the device, the plan and the times.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # harmonizer_study.py and harmonizer_dataset.py lie beside this file

from harmonizer_study import ERRORS, EXPORTED, WEIGHTINGS, run_name  # noqa: E402

# World model, batch and dataset per scale ("gpu": DreamerV2's DMC world model with a 32-channel CNN).
SCALES: dict[str, dict[str, Any]] = {
    "gpu": {
        "model": {
            "deter": 200,
            "hidden": 200,
            "stoch": 32,
            "classes": 32,
            "cnn_depth": 32,
            "mlp_units": 400,
            "mlp_layers": 2,
            "free_nats": 1.0,
            "continue_head": False,
        },
        "data": {"batch_size": 16, "seq_len": 50, "heldout_episodes": 20, "eval_every": 250},
        "dataset": ["--episodes", "40"],
        "seeds": [0, 1, 2, 3, 4],
    },
    "tiny": {
        "model": {
            "deter": 16,
            "hidden": 16,
            "stoch": 4,
            "classes": 4,
            "cnn_depth": 4,
            "mlp_units": 16,
            "mlp_layers": 1,
            "free_nats": 1.0,
            "continue_head": False,
        },
        "data": {"batch_size": 2, "seq_len": 8, "heldout_episodes": 2, "eval_every": 2},
        "dataset": ["--episodes", "2", "--eps", "1.0", "0.0", "--time-limit", "48"],
        "seeds": [0],
    },
}
HARMONIZER_LR = 0.01  # as the CPU study (conf/offline_pixels.yaml)
CALIBRATION_UPDATES = 8


class Collected:
    """The learner's metric sink: every logged value kept in memory, written as the study's export."""

    def __init__(self) -> None:
        self.series: dict[str, list[list[float]]] = {}

    def write(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.series.setdefault(key, []).append([step, value])


def worker(args: argparse.Namespace) -> int:
    """One run in this process: train, score, export (or, calibrating, time a few updates)."""
    entered = time.perf_counter()
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import Callback

    from hwm.data.offline import OfflineDataModule
    from hwm.learner import WorldModelLearner
    from hwm.models.world_model import WorldModel
    from hwm.training.stop import StopRequests

    scale = SCALES[args.scale]
    torch.set_num_threads(1)
    L.seed_everything(args.seed, verbose=False)
    updates = CALIBRATION_UPDATES if args.calibrate else args.updates
    data = OfflineDataModule(
        dataset=str(args.dataset), total_updates=updates, seed=args.seed, **scale["data"]
    )
    learner = WorldModelLearner(
        data.env_info,
        world_model=partial(WorldModel, **scale["model"]),
        harmonizer_lr=HARMONIZER_LR,
        log_every=max(1, scale["data"]["eval_every"] // 10),
        **WEIGHTINGS[args.weighting],
    )
    sink = Collected()
    learner.attach(stream=data, stops=StopRequests(), sink=sink)
    data.attach_scorer(learner)
    stop = {"signal": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(signal=True))
    times: list[float] = []

    class Watch(Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *_: Any) -> None:
            times.append(time.perf_counter())
            trainer.should_stop = trainer.should_stop or stop["signal"]

    trainer = L.Trainer(
        accelerator="cpu" if args.cpu else "gpu",
        devices=1,
        precision=args.precision,
        logger=False,
        callbacks=[Watch()],
        max_epochs=-1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    began = time.perf_counter()
    trainer.fit(learner, datamodule=data)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.calibrate:
        steps = [b - a for a, b in zip(times[2:], times[3:], strict=False)] or [time.perf_counter() - began]
        # Start-up: imports, the dataset, Lightning's set-up and the first update (compiling kernels).
        startup = (times[0] if times else time.perf_counter()) - entered
        result = {"s_per_update": sorted(steps)[len(steps) // 2], "startup_s": startup}
        (args.out / f"{run_name(args.weighting, args.seed)}.json").write_text(json.dumps(result))
        return 0
    export = {
        "weighting": args.weighting,
        "seed": args.seed,
        "run_id": f"gpu-{run_name(args.weighting, args.seed)}",
        "settings": WEIGHTINGS[args.weighting],
        "updates": learner.updates,
        "dataset": str(args.dataset),
        "minutes": (time.perf_counter() - began) / 60,
        "finished": data.stream_finished,
        "device": torch.cuda.get_device_name() if not args.cpu else "cpu",
        "metrics": {k: v for k, v in sink.series.items() if k in EXPORTED},
    }
    (args.out / f"{run_name(args.weighting, args.seed)}.json").write_text(json.dumps(export) + "\n")
    return 0 if data.stream_finished else 3


def launch(
    args: argparse.Namespace, jobs: list[tuple[str, int]], out: Path, extra: list[str], deadline: float
) -> dict:
    """Starts every job's process at once; stops those still running at ``deadline``; their exit codes."""
    procs = {}
    for weighting, seed in jobs:
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            "--weighting",
            weighting,
            "--seed",
            str(seed),
            "--dataset",
            str(args.dataset),
            "--out",
            str(out),
            "--scale",
            args.scale,
            "--precision",
            args.precision,
            *(["--cpu"] if args.cpu else []),
            *extra,
        ]
        log = (out / f"{run_name(weighting, seed)}.log").open("w")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        procs[(weighting, seed)] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    while any(p.poll() is None for p in procs.values()) and time.time() < deadline:
        time.sleep(1.0)
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)  # stops after the update in progress, writes what it has
    grace = time.time() + 30
    for p in procs.values():
        try:
            p.wait(timeout=max(1.0, grace - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
    return {run_name(*job): p.returncode for job, p in procs.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="runs/, the dataset and gpu_study.json go here")
    p.add_argument("--dataset", type=Path, help="episodes to use (default: record them into OUT/dataset)")
    p.add_argument("--scale", choices=list(SCALES), default="gpu")
    p.add_argument("--seeds", type=int, nargs="+", help="default: the scale's (gpu: 0-4)")
    p.add_argument("--weightings", nargs="+", choices=list(WEIGHTINGS), help="default: all")
    p.add_argument("--updates", default="auto", help="updates per run, or auto: what fits the budget")
    p.add_argument("--budget-s", type=float, default=480.0, help="the whole study, dataset included")
    p.add_argument("--precision", default="32-true", help="trainer.precision of every run (e.g. bf16-mixed)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU (the tiny scale's check)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--calibrate", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--weighting", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        args.updates = 0 if args.calibrate else int(args.updates)
        return worker(args)
    start = time.time()
    deadline = start + args.budget_s
    import torch

    if not args.cpu and not torch.cuda.is_available():
        print(
            "harmonizer_gpu: error: no CUDA device visible: run on a GPU node, or with --cpu", file=sys.stderr
        )
        return 2
    out = args.out.resolve()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    if args.dataset is None:
        args.dataset = out / "dataset"
        if not any(args.dataset.glob("*.pt")):
            record = [sys.executable, str(HERE / "harmonizer_dataset.py"), "--out", str(args.dataset)]
            subprocess.run([*record, *SCALES[args.scale]["dataset"]], check=True)
    args.dataset = args.dataset.resolve()
    jobs = [
        (w, s) for w in (args.weightings or WEIGHTINGS) for s in (args.seeds or SCALES[args.scale]["seeds"])
    ]
    plan: dict[str, Any] = {
        "jobs": len(jobs),
        "scale": args.scale,
        "precision": args.precision,
        "dataset_s": time.time() - start,
    }
    if args.updates == "auto":
        calibration = out / "calibration"
        calibration.mkdir(exist_ok=True)
        launch(args, jobs, calibration, ["--calibrate"], deadline)
        timed = [json.loads(f.read_text()) for f in calibration.glob("*.json")]
        if not timed:
            print(f"harmonizer_gpu: error: calibration failed; see {calibration}/*.log", file=sys.stderr)
            return 1
        slowest = max(t["s_per_update"] for t in timed)
        startup = max(t["startup_s"] for t in timed)
        # Evaluations and the final export: a fifth of the time left.
        left = 0.8 * (deadline - time.time()) - startup - 15
        every = SCALES[args.scale]["data"]["eval_every"]
        updates = max(every, int(left / slowest) // every * every)
        plan.update(
            {"s_per_update_slowest": slowest, "startup_s": startup, "calibration_s": time.time() - start}
        )
    else:
        updates = int(args.updates)
    plan["updates"] = updates
    print(f"harmonizer_gpu: {len(jobs)} runs of {updates} updates at once", flush=True)
    codes = launch(args, jobs, out / "runs", ["--updates", str(updates)], deadline)
    finished = [n for n, c in codes.items() if c == 0]
    plan.update(
        {
            "finished": len(finished),
            "codes": codes,
            "total_s": time.time() - start,
            "device": torch.cuda.get_device_name() if not args.cpu else "cpu",
        }
    )
    (out / "gpu_study.json").write_text(json.dumps(plan, indent=1) + "\n")
    report(out / "runs")
    print(f"harmonizer_gpu: {len(finished)}/{len(jobs)} runs finished in {plan['total_s']:.0f} s", flush=True)
    return 0 if len(finished) == len(jobs) else 1


def report(runs: Path) -> None:
    """Median final held-out errors per weighting (the IQM and its CI: harmonizer_study.py summarize)."""
    by: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(runs.glob("*.json")):
        export = json.loads(path.read_text())
        if export.get("finished"):
            by.setdefault(export["weighting"], []).append(export)
    for weighting, exports in by.items():
        cells = []
        for metric in ERRORS:
            values = sorted(e["metrics"][metric][-1][1] for e in exports if metric in e["metrics"])
            cells.append(f"{metric.split('/')[1]} {values[len(values) // 2]:.4g}" if values else "")
        print(f"  {weighting:<12} n={len(exports)}  " + "  ".join(c for c in cells if c), flush=True)


if __name__ == "__main__":
    sys.exit(main())
