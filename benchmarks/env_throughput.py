"""Env throughput per suite: agent steps/s and env frames/s with random actions, pixels and states.

One JSON line per case: the median of ``--repeats`` timed runs of ``--steps`` agent steps each (resets
included, env construction and a short warm-up excluded).

    MUJOCO_GL=egl python benchmarks/env_throughput.py [--steps 500] [--repeats 3] [--only atari]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402

from hwm.envs.suites import make_suite_env  # noqa: E402

# name -> (suite, task, from_pixels, action_repeat, fast_render, options)
CASES: dict[str, tuple[str, str, bool, int, bool, dict]] = {
    "dmc cheetah-run states": ("dmc", "cheetah-run", False, 2, True, {}),
    "dmc cheetah-run pixels, default render": ("dmc", "cheetah-run", True, 2, False, {}),
    "dmc cheetah-run pixels, fast_render": ("dmc", "cheetah-run", True, 2, True, {}),
    "dmc cheetah-run pixels, fast_render + shadows off": (
        "dmc",
        "cheetah-run",
        True,
        2,
        True,
        {"shadows": False},
    ),
    "distracted cheetah-run shapes": (
        "distracted_dmc",
        "cheetah-run",
        True,
        2,
        True,
        {"distractor": "shapes"},
    ),
    "distracted cheetah-run noise": ("distracted_dmc", "cheetah-run", True, 2, True, {"distractor": "noise"}),
    "distracted cheetah-run shapes, shadows off": (
        "distracted_dmc",
        "cheetah-run",
        True,
        2,
        True,
        {"distractor": "shapes", "shadows": False},
    ),
    "metaworld lever-pull states": ("metaworld", "lever-pull", False, 2, True, {}),
    "metaworld lever-pull pixels, default render": ("metaworld", "lever-pull", True, 2, False, {}),
    "metaworld lever-pull pixels, fast_render": ("metaworld", "lever-pull", True, 2, True, {}),
    "metaworld lever-pull pixels, fast_render + shadows off": (
        "metaworld",
        "lever-pull",
        True,
        2,
        True,
        {"shadows": False},
    ),
    "atari pong pixels": ("atari", "pong", True, 4, True, {}),
    "atari pong states (RAM)": ("atari", "pong", False, 4, True, {}),
}


def measure(name: str, steps: int, repeats: int) -> dict:
    suite, task, pixels, repeat, fast, options = CASES[name]
    env = make_suite_env(
        suite=suite,
        task=task,
        from_pixels=pixels,
        action_repeat=repeat,
        time_limit=1000 if suite != "metaworld" else 500,
        fast_render=fast,
        options=options,
        seed=0,
    )
    env.rollout(20, break_when_any_done=False)  # warm-up: GL context, first renders
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        env.rollout(steps, break_when_any_done=False)
        rates.append(steps / (time.perf_counter() - start))
    env.close()
    step_rate = statistics.median(rates)
    return {
        "case": name,
        "suite": suite,
        "task": task,
        "pixels": pixels,
        "action_repeat": repeat,
        "agent_steps_per_s": round(step_rate, 1),
        "frames_per_s": round(step_rate * repeat, 1),
        "repeats": [round(r, 1) for r in rates],
        "steps": steps,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="", help="run only cases whose name contains this text")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in CASES:
        if args.only in name:
            print(json.dumps(measure(name, args.steps, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
