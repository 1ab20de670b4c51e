"""Gradient updates per second, env frames per second and where an update's time goes, for a named config.

    python benchmarks/throughput.py --config conf/dmc_cheetah.yaml --updates 20 --warmup 3 [--KEY VALUE ...]

Builds the run exactly as `hwm fit` does (same config files and overrides; MLflow, checkpoints, evaluation
and the progress bar are switched off), sets the frame budget to the prefill plus enough steps for
``warmup + updates`` updates, and measures the updates after the warm-up. Prints one JSON line:
updates_per_s (measured updates / wall time, collection included), s_per_update (median of the per-update
wall times), env_frames_per_s (frames collected / time spent collecting, acting policy included),
split_ms (milliseconds per update in each section: collect, replay, world_model [harmonizer included],
harmonizer, actor_critic, logging), harmonizer_share (harmonizer / (world_model + actor_critic)), params,
peak_rss_mb, threads, device, num_envs (env frames count every env). ``--harmonizer-ab R`` also runs R alternating rectified/off pairs and reports
median s/update per mode and the rectified/off ratio. ``--profile`` runs torch.profiler over the first
warm-up's last update (reported in ``profile``; not among the measured ones): the share of the update's operator time spent in dense
kernels (matmuls and convolutions, forward and backward), the floor that any implementation of the same
model at the same precision pays, and the top operators.
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

from hwm.cli.fit import build_cli  # noqa: E402

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


# Dense kernels: what one update of a given model at a given precision cannot avoid, whoever implements it.
DENSE_OPS = frozenset(
    {
        "aten::mm",
        "aten::addmm",
        "aten::bmm",
        "aten::baddbmm",
        "aten::_convolution",
        "aten::mkldnn_convolution",
        "aten::convolution_backward",
    }
)


class _Meter(Callback):
    """Wall time per update, and timer/counter snapshots when the warm-up ends and at the end."""

    def __init__(self, warmup: int, profile: bool = False) -> None:
        self.warmup = warmup
        self.durations: list[float] = []
        self.start: dict[str, Any] | None = None
        self._last = time.perf_counter()
        self._profile = profile
        self._profiler: torch.profiler.profile | None = None
        self._profile_start = 0.0
        self.profile: dict[str, Any] | None = None

    @staticmethod
    def snapshot(trainer: Trainer, agent: LightningModule) -> dict[str, Any]:
        dm = trainer.datamodule
        return {
            "time": time.perf_counter(),
            "updates": int(agent.updates),
            "frames": float(dm.counters["env_frames"]),
            "sections": {**agent.timer.cumulative, **dm.timer.cumulative},
        }

    def on_train_batch_start(self, trainer: Trainer, agent: LightningModule, *args: Any) -> None:
        if self._profile and self.profile is None and agent.updates == self.warmup - 1:
            self._profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self._profiler.__enter__()
            self._profile_start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, agent: LightningModule, *args: Any) -> None:
        if self._profiler is not None:
            wall = time.perf_counter() - self._profile_start
            self._profiler.__exit__(None, None, None)
            self.profile = summarize_profile(self._profiler.key_averages(), wall)
            self._profiler = None
        now = time.perf_counter()
        if self.start is not None:
            self.durations.append(now - self._last)
        self._last = now
        if self.start is None and agent.updates >= self.warmup:
            self.start = self.snapshot(trainer, agent)


def summarize_profile(events: Any, wall_s: float) -> dict[str, Any]:
    """One profiled update (the collection of its batch included): see :func:`summarize_ops`."""
    return summarize_ops({e.key: e.self_cpu_time_total / 1e6 for e in events}, wall_s)


def summarize_ops(self_s: dict[str, float], wall_s: float) -> dict[str, Any]:
    """Seconds by aten operator and the dense kernels' share of the wall time (pure: sheeprl_compare.py
    uses it too). Operators' self times are wall times on the calling thread (intra-op threads work inside
    them), so they add up against the wall time."""
    ops = {k: v for k, v in self_s.items() if k.startswith("aten::")}
    dense = sum(v for k, v in ops.items() if k in DENSE_OPS)
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:12]
    return {
        "wall_s": wall_s,
        "aten_s": sum(ops.values()),
        "dense_s": dense,
        "dense_share": dense / wall_s,
        "top_ops_s": {k: round(v, 4) for k, v in top},
    }


def measure(config_args: list[str], updates: int, warmup: int, profile: bool = False) -> dict[str, Any]:
    cli = build_cli([*config_args, *QUIET])
    dm, agent, trainer = cli.datamodule, cli.model, cli.trainer
    per_step = dm.train_ratio / (dm.batch_size * dm.seq_len)  # updates per agent step
    steps = math.ceil((warmup + updates) / per_step) + dm.steps_per_collect
    dm.total_frames = dm.prefill_frames + steps * dm.action_repeat
    meter = _Meter(warmup, profile)
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
        "num_envs": dm.num_envs,
        "machine": platform.processor() or platform.machine(),
        **({"profile": meter.profile} if meter.profile is not None else {}),
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
    parser.add_argument("--profile", action="store_true", help="profile the last warm-up update")
    args, overrides = parser.parse_known_args(argv)
    torch.set_num_threads(args.threads)
    config_args = [a for c in args.config for a in ("--config", c)] + overrides
    result = measure(config_args, args.updates, args.warmup, args.profile)
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
