"""Records the harmonizer study's dataset: 64x64 pixel episodes of DMC cartpole-swingup of mixed quality.

    python benchmarks/harmonizer_dataset.py --out data/swingup     # 5 x 20 episodes, --eps 1.0 0.5 0.25 0.1 0.0

Each episode is played by a hand-written swing-up controller (energy pumping, then a linear balance
controller near the top) whose every action is replaced, with probability
``eps``, by a uniformly random one: ``eps`` 1 is the random policy, lower values play better, so the
dataset spans the returns of an agent from its first to its last episodes. The controller acts on the
physics state; each step is rendered at 64x64 exactly as hwm's pixel envs render it (``hwm.envs.dmc``: the
same camera and render settings; action repeat 4 and episodes of 500 env frames, half DMC's usual 1000, which
halves the cost of recording and of scoring held-out episodes), and the stored rows are the pixel rows a
pixel run's replay would hold. Each episode is one chunk file (``replay-<start>-<end>.pt``)
in ``--out``, readable by ``hwm fit --data.dataset``; ``dataset.json`` lists each episode's ``eps`` and return.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from dm_control.mujoco import Camera  # noqa: E402
from tensordict import TensorDict  # noqa: E402

from hwm.data.episodes import write_episodes  # noqa: E402
from hwm.envs.dmc import ActionRepeat, load_dmc  # noqa: E402

TASK = "cartpole-swingup"


def swing_up(obs: np.ndarray) -> float:
    """cartpole's state vector (cart position, cos and sin of the pole angle, their velocities) -> a force in
    [-1, 1]: pump the pole's energy towards the upright's, then balance it there with a linear controller."""
    x, cos, sin, x_dot, angle_dot = (float(v) for v in obs)
    if cos > 0.85:
        force = 10.0 * np.arctan2(sin, cos) + 2.0 * angle_dot + 0.5 * x + 1.0 * x_dot
    else:
        energy = 0.025 * angle_dot**2 + cos - 1.0  # 0 at the upright at rest
        force = 3.0 * energy * np.sign(angle_dot * cos + 1e-6) - 0.3 * x - 0.3 * x_dot
    return float(np.clip(force, -1.0, 1.0))


class Recorder:
    """cartpole-swingup with hwm's action repeat and time limit; pictures from hwm's camera and settings."""

    def __init__(self, action_repeat: int, time_limit: int, seed: int, fast_render: bool) -> None:
        dm = load_dmc(TASK, action_repeat, time_limit, 64, seed, fast_render, True)
        self.env = ActionRepeat(dm, action_repeat, time_limit // action_repeat)
        self.camera = Camera(self.env.physics, height=64, width=64, camera_id=0)

    def picture(self) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.camera.render())).permute(2, 0, 1).clone()

    def episode(self, eps: float, rng: np.random.Generator) -> TensorDict:
        """One episode in the replay's rows: the reset row (zero action and reward, is_first), then a row per
        step (o_t, the action that led to it, r_t), the last one is_last."""
        step = self.env.reset()
        pictures, actions, rewards = [self.picture()], [0.0], [0.0]
        while not step.last():
            random = rng.random() < eps
            action = rng.uniform(-1.0, 1.0) if random else swing_up(step.observation["observation"])
            step = self.env.step(np.array([action], dtype=np.float32))
            pictures.append(self.picture())
            actions.append(action)
            rewards.append(float(step.reward))
        n = len(pictures)
        flags = {k: torch.zeros(n, 1, dtype=torch.bool) for k in ("is_first", "is_last", "is_terminal")}
        flags["is_first"][0] = flags["is_last"][-1] = True
        return TensorDict(
            {
                "pixels": torch.stack(pictures),
                "action": torch.tensor(actions, dtype=torch.float32).unsqueeze(-1),
                "reward": torch.tensor(rewards, dtype=torch.float32).unsqueeze(-1),
                **flags,
            },
            batch_size=[n],
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the episode files (created)")
    p.add_argument("--episodes", type=int, default=20, help="episodes per value of --eps")
    p.add_argument(
        "--eps",
        type=float,
        nargs="+",
        default=[1.0, 0.5, 0.25, 0.1, 0.0],
        help="shares of random actions, one policy each (1: random)",
    )
    p.add_argument("--action-repeat", type=int, default=4)
    p.add_argument("--time-limit", type=int, default=500, help="env frames per episode")
    p.add_argument(
        "--seed", type=int, default=0, help="seeds the env's initial states and the random actions"
    )
    p.add_argument(
        "--fast-render",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="hwm's data.fast_render (its default): no MSAA, smaller shadow maps",
    )
    args = p.parse_args(argv)
    if args.out.exists() and any(args.out.glob("*.pt")):
        print(f"harmonizer_dataset: error: {args.out} already holds episodes", file=sys.stderr)
        return 2
    recorder = Recorder(args.action_repeat, args.time_limit, args.seed, args.fast_render)
    rng = np.random.default_rng(args.seed)
    records, start, began = [], 0, time.perf_counter()
    for eps in args.eps:
        returns = []
        for _ in range(args.episodes):
            episode = recorder.episode(eps, rng)
            (path,) = write_episodes(args.out, [episode], start=start)
            start += len(episode)
            returns.append(float(episode.get("reward").sum()))
            records.append({"file": path.name, "eps": eps, "return": returns[-1], "steps": len(episode)})
        print(
            f"eps {eps}: {args.episodes} episodes, return mean {np.mean(returns):.1f} (min {min(returns):.1f}, "
            f"max {max(returns):.1f}); {time.perf_counter() - began:.0f} s so far",
            flush=True,
        )
    manifest = {
        "task": TASK,
        "action_repeat": args.action_repeat,
        "time_limit": args.time_limit,
        "image_size": 64,
        "fast_render": args.fast_render,
        "seed": args.seed,
        "policy": "swing-up controller with a share eps of uniformly random actions",
        "episodes": records,
    }
    (args.out / "dataset.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
