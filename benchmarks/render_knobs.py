"""Milliseconds per 64x64 DMC frame under each render setting hwm uses, and how much the picture changes.

    python benchmarks/render_knobs.py [--task walker-walk] [--frames 60] [--repeats 3]

One JSON line per case, each measured in a fresh process: median ms per frame over ``--frames`` random-action frames, rendered with
``physics.render`` (a new dm_control Camera per frame, what dm_control's pixel wrapper does) or with one kept
Camera (what ``hwm.envs.dmc.CameraPixels`` does), at MuJoCo's default quality or with ``data.fast_render``'s
knobs; ``mean_abs_diff`` is the mean pixel difference (0-255) from the default-quality frames of the same
states.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CASES = [
    # name, kept camera, fast knobs
    ("default quality, physics.render", False, False),
    ("fast_render, physics.render", False, True),
    ("fast_render, kept camera (hwm)", True, True),
]


def frames(task: str, n: int, kept: bool, fast: bool) -> tuple[float, list]:
    """Median ms per frame and the frames themselves (seeded states: the same in every case)."""
    import numpy as np
    from dm_control import suite
    from dm_control.mujoco import Camera

    domain, name = task.split("-", 1)
    env = suite.load(domain, name, task_kwargs={"random": 0})
    if fast:
        env.physics.model.vis.quality.offsamples = 0
        env.physics.model.vis.quality.shadowsize = 512
    env.reset()
    spec, rng = env.action_spec(), np.random.default_rng(0)
    camera = Camera(env.physics, 64, 64, 0) if kept else None
    times, pictures = [], []
    for _ in range(n):
        env.step(rng.uniform(spec.minimum, spec.maximum))
        start = time.perf_counter()
        picture = camera.render() if camera else env.physics.render(64, 64, camera_id=0)
        times.append(time.perf_counter() - start)
        pictures.append(picture.tolist())
    return 1000 * statistics.median(times), pictures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="walker-walk")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3, help="processes per case; the median is reported")
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = parser.parse_args(argv)
    if args.case is not None:
        _, kept, fast = CASES[args.case]
        ms, pictures = frames(args.task, args.frames, kept, fast)
        print(json.dumps({"ms": ms, "pictures": pictures}))
        return 0

    import numpy as np

    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    times: dict[int, list[float]] = {i: [] for i in range(len(CASES))}
    pictures: dict[int, np.ndarray] = {}
    # Round-robin over the cases, so that a machine slowing down mid-run affects them all alike.
    for _ in range(args.repeats):
        for i in range(len(CASES)):
            cmd = [
                sys.executable,
                __file__,
                "--task",
                args.task,
                "--frames",
                str(args.frames),
                "--case",
                str(i),
            ]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            times[i].append(result["ms"])
            pictures[i] = np.asarray(result["pictures"], dtype=np.float32)
    for i, (name, _, _) in enumerate(CASES):
        row = {
            "case": name,
            "task": args.task,
            "ms_per_frame": round(statistics.median(times[i]), 3),
            "ms_per_frame_runs": [round(t, 3) for t in times[i]],
            "mean_abs_diff": float(np.abs(pictures[i] - pictures[0]).mean()),
            "cpus": os.cpu_count(),
        }
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
