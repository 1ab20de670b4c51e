"""Gradient updates per second, env frames per second and where an update's time goes, for a named config.

    python benchmarks/throughput.py --config conf/dmc_cheetah.yaml --updates 20 --warmup 3 [--KEY VALUE ...]

Builds the run exactly as `hwm fit` does (same config files and overrides; MLflow, checkpoints, evaluation
and the progress bar are switched off), sets the frame budget to the prefill plus enough steps for
``warmup + updates`` updates, and measures the updates after the warm-up. Prints one JSON line:
updates_per_s (measured updates / wall time, collection included), s_per_update (median of the per-update
wall times), env_frames_per_s (frames collected / time spent collecting, acting policy included),
split_ms (milliseconds per update in each section: collect, replay, world_model [harmonizer included],
harmonizer, actor_critic, logging), harmonizer_share (harmonizer / (world_model + actor_critic)), params,
peak_rss_mb, threads, device. ``--harmonizer-ab R`` also runs R alternating rectified/off pairs and reports
median s/update per mode and the rectified/off ratio.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402
from lightning.pytorch import Callback, LightningModule, Trainer  # noqa: E402

from hwm.cli import build_cli  # noqa: E402

QUIET = [
    "--trainer.logger",
    "false",
    "--trainer.enable_checkpointing",
    "false",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--data.eval_episodes",
    "0",
    "--model.log_every",
    "1000000",
]


class _Meter(Callback):
    """Wall time per update, and timer/counter snapshots when the warm-up ends and at the end."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.durations: list[float] = []
        self.start: dict[str, Any] | None = None
        self._last = time.perf_counter()

    @staticmethod
    def snapshot(trainer: Trainer, agent: LightningModule) -> dict[str, Any]:
        dm = trainer.datamodule
        return {
            "time": time.perf_counter(),
            "updates": int(agent.updates),
            "frames": float(dm.counters["env_frames"]),
            "sections": {**agent.timer.cumulative, **dm.timer.cumulative},
        }

    def on_train_batch_end(self, trainer: Trainer, agent: LightningModule, *args: Any) -> None:
        now = time.perf_counter()
        if self.start is not None:
            self.durations.append(now - self._last)
        self._last = now
        if self.start is None and agent.updates >= self.warmup:
            self.start = self.snapshot(trainer, agent)


def measure(config_args: list[str], updates: int, warmup: int) -> dict[str, Any]:
    cli = build_cli([*config_args, *QUIET])
    dm, agent, trainer = cli.datamodule, cli.model, cli.trainer
    per_step = dm.train_ratio / dm.replayed_steps  # updates per agent step
    steps = math.ceil((warmup + updates) / per_step) + dm.steps_per_collect
    dm.total_frames = dm.prefill_frames + steps * dm.action_repeat
    meter = _Meter(warmup)
    trainer.callbacks.append(meter)
    trainer.fit(agent, datamodule=dm)
    assert meter.start is not None, "the run ended before the warm-up did"
    end = meter.snapshot(trainer, agent)
    start = meter.start
    n = end["updates"] - start["updates"]
    sections = {k: end["sections"].get(k, 0.0) - start["sections"].get(k, 0.0) for k in end["sections"]}
    split = {k: round(1000 * v / n, 3) for k, v in sorted(sections.items()) if k != "evaluate"}
    update_ms = split.get("world_model", 0.0) + split.get("actor_critic", 0.0)
    return {
        "config": config_args,
        "updates": n,
        "updates_per_s": n / (end["time"] - start["time"]),
        "s_per_update": statistics.median(meter.durations),
        "env_frames_per_s": (end["frames"] - start["frames"]) / max(sections.get("collect", 0.0), 1e-9),
        "split_ms": split,
        "harmonizer_share": split.get("harmonizer", 0.0) / update_ms if update_ms else None,
        "params": sum(p.numel() for p in agent.parameters()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
        "device": str(next(agent.parameters()).device),
        "machine": platform.processor() or platform.machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", action="append", required=True, help="config file(s), as for hwm fit")
    parser.add_argument("--updates", type=int, default=20, help="measured updates")
    parser.add_argument("--warmup", type=int, default=3, help="updates before measuring")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    parser.add_argument("--harmonizer-ab", type=int, default=0, metavar="R", help="R rectified/off pairs")
    args, overrides = parser.parse_known_args(argv)
    torch.set_num_threads(args.threads)
    config_args = [a for c in args.config for a in ("--config", c)] + overrides
    result = measure(config_args, args.updates, args.warmup)
    if args.harmonizer_ab:
        per_mode: dict[str, list[float]] = {"rectified": [], "off": []}
        for _ in range(args.harmonizer_ab):
            for mode in per_mode:
                run = measure([*config_args, "--model.harmonizer_mode", mode], args.updates, args.warmup)
                per_mode[mode].append(run["s_per_update"])
        medians = {mode: statistics.median(v) for mode, v in per_mode.items()}
        result["harmonizer_ab"] = {
            "s_per_update": per_mode,
            "median": medians,
            "rectified_over_off": medians["rectified"] / medians["off"],
        }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
