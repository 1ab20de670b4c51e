"""Atari (ALE via ``ale-py``, ROMs inside the wheel) as TorchRL envs, set up for Atari 100k.

One agent step = ``action_repeat`` emulator frames (4) with the reward summed; the observation is the
max over the last two frames' RGB screens (flicker), resized to 64x64 with Pillow's bilinear filter, as
DreamerV3's ``embodied/envs/atari.py``. Sticky actions (ALE's ``repeat_action_probability``, 0.25 here, as
Machado et al. 2018), the full 18-action set, up to 30 random no-ops after each reset, and lives
"unused" as DreamerV3: losing a life is not an episode end and sends no signal; the episode ends
(terminated) at game over, or truncated after ``time_limit`` frames (108,000 = 30 minutes, the usual cap).
Rewards are not clipped.

Human-normalised score = (return - random) / (human - random) with the published per-game scores of
the 26 Atari 100k games (:data:`ATARI100K_SCORES`); the env carries them as ``score_range``.
"""

from __future__ import annotations

from typing import Any, Literal

import ale_py
import ale_py.roms as roms
import gymnasium as gym
import numpy as np
from PIL import Image
from torchrl.envs import EnvBase, GymWrapper

from hwm.atari_scores import ATARI100K_SCORES
from hwm.envs import OBS_KEY, PIXELS_KEY, finish_env

__all__ = ["ATARI100K_SCORES", "AtariEnv", "atari_game", "human_normalized", "make_atari_env"]


_NOOP = 0  # ALE action index of NOOP in both action sets


def _squash(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "").replace(" ", "")


def atari_game(name: str) -> str:
    """The ALE ROM id for ``pong``, ``Pong``, ``ALE/Pong-v5``, ``MsPacman``, ``ms_pacman`` ...

    Raises a ValueError naming the valid games for anything else.
    """
    base = name.removeprefix("ALE/")
    for suffix in ("-v5", "-v4", "NoFrameskip", "Deterministic"):
        base = base.replace(suffix, "")
    by_key = {_squash(rom): rom for rom in roms.get_all_rom_ids()}
    game = by_key.get(_squash(base))
    if game is None:
        raise ValueError(
            f"Unknown Atari game {name!r}; the Atari 100k games are {', '.join(ATARI100K_SCORES)} "
            f"(any ALE ROM works: {', '.join(sorted(set(by_key.values())))})"
        )
    return game


def human_normalized(game: str, score: float) -> float:
    random, human = ATARI100K_SCORES[atari_game(game)]
    return (score - random) / (human - random)


class AtariEnv(gym.Env):
    """A gymnasium env directly on ``ALEInterface`` (see the module docstring for the protocol)."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        game: str,
        *,
        from_pixels: bool = True,
        size: int = 64,
        repeat: int = 4,
        sticky: float = 0.25,
        actions: Literal["all", "needed"] = "all",
        noops: int = 30,
        max_frames: int = 108_000,
        seed: int = 0,
    ) -> None:
        self.game = atari_game(game)
        self._episode_rng: dict[str, Any] | None = None  # set at each reset
        self._from_pixels, self._size, self._repeat = from_pixels, size, repeat
        self._sticky, self._noops, self._max_frames = sticky, noops, max_frames
        self.ale = ale_py.ALEInterface()
        self.ale.setLoggerMode(ale_py.LoggerMode.Error)
        self._load(seed)
        legal = self.ale.getLegalActionSet() if actions == "all" else self.ale.getMinimalActionSet()
        self._actions = list(legal)
        height, width = self.ale.getScreenDims()
        self._screens = np.zeros((2, height, width, 3), np.uint8)
        self._frames = 0
        key, space = (
            (PIXELS_KEY, gym.spaces.Box(0, 255, (size, size, 3), np.uint8))
            if from_pixels
            else (OBS_KEY, gym.spaces.Box(0.0, 1.0, (self.ale.getRAM().size,), np.float32))
        )
        self._key = key
        self.observation_space = gym.spaces.Dict({key: space})
        self.action_space = gym.spaces.Discrete(len(self._actions))

    def _load(self, seed: int) -> None:
        # ALE reads its seed and sticky-action probability when a ROM is loaded.
        self.ale.setInt("random_seed", int(seed) % 2**31)
        self.ale.setFloat("repeat_action_probability", float(self._sticky))
        self.ale.loadROM(roms.get_rom_path(self.game))
        self._rng = np.random.default_rng(seed)

    def _obs(self) -> dict[str, np.ndarray]:
        if not self._from_pixels:
            return {self._key: self.ale.getRAM().astype(np.float32) / 255.0}
        pooled = np.maximum(self._screens[0], self._screens[1])
        image = Image.fromarray(pooled).resize((self._size, self._size), Image.BILINEAR)
        return {self._key: np.array(image)}  # writable: torch warns on read-only arrays

    def episode_rng_state(self) -> dict[str, Any]:
        """ALE's state (with its RNG) and the no-op generator just before this episode's reset (resume)."""
        return self._episode_rng

    def set_episode_rng_state(self, state: dict[str, Any]) -> None:
        """The next reset then starts the same episode as the one ``state`` was taken from."""
        self.ale.restoreState(state["ale"])
        self._rng.bit_generator.state = state["noops"]

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        if seed is not None:
            self._load(seed)
        self._episode_rng = {
            "ale": self.ale.cloneState(include_rng=True),
            "noops": self._rng.bit_generator.state,
        }
        self.ale.reset_game()
        for _ in range(self._rng.integers(self._noops + 1)):
            self.ale.act(_NOOP)
            if self.ale.game_over():
                self.ale.reset_game()
        self._frames = 0
        self.ale.getScreenRGB(self._screens[0])
        self._screens[1] = self._screens[0]
        return self._obs(), {}

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        act = self._actions[int(action)]
        reward, terminated = 0.0, False
        for i in range(self._repeat):
            reward += self.ale.act(act)
            self._frames += 1
            if i >= self._repeat - 2:  # the last two frames are max-pooled
                self.ale.getScreenRGB(self._screens[(self._repeat - 1 - i)])
            if self.ale.game_over():
                terminated = True
                break
        if terminated and self._repeat - 1 - i > 0:
            # Ended before the last frame: pool the final screen with itself.
            self.ale.getScreenRGB(self._screens[0])
            self._screens[1] = self._screens[0]
        truncated = not terminated and self._frames >= self._max_frames
        return self._obs(), float(reward), terminated, truncated, {}

    @property
    def frames(self) -> int:
        """Emulator frames of this episode (no-ops at reset not counted)."""
        return self._frames

    def close(self) -> None:
        pass


def make_atari_env(
    *,
    task: str = "pong",
    from_pixels: bool = True,
    image_size: int = 64,
    action_repeat: int = 4,
    time_limit: int = 108_000,
    seed: int = 0,
    fast_render: bool = True,
    sticky: float = 0.25,
    actions: Literal["all", "needed"] = "all",
    noops: int = 30,
) -> EnvBase:
    """A seeded Atari env for TorchRL with one-hot actions.

    Args:
        task: the game, e.g. ``pong`` (``Pong``, ``ALE/Pong-v5``, ``ms_pacman``, ``MsPacman`` work too).
        from_pixels: 64x64 RGB ``pixels``; else the 128-byte RAM scaled to [0, 1] as ``observation``.
        image_size: output height and width.
        action_repeat: emulator frames per agent step (4).
        time_limit: episode cap in emulator frames (108,000; the paper caps Chopper Command at 5,400
            agent steps = 21,600 frames).
        seed: seeds ALE (sticky actions) and the number of reset no-ops.
        fast_render: unused (no MuJoCo here); accepted so every suite takes the same arguments.
        sticky: probability that ALE repeats the previous action instead of the new one, per frame.
        actions: ``all`` 18 actions (Atari 100k as in the issue) or the game's ``needed`` minimal set.
        noops: at most this many random no-op frames after each reset.
    """
    del fast_render
    if action_repeat < 1:
        raise ValueError(f"action_repeat must be >= 1, got {action_repeat}")
    if time_limit < action_repeat:
        raise ValueError(f"time_limit ({time_limit} frames) must be >= action_repeat ({action_repeat})")
    if not 0.0 <= sticky <= 1.0:
        raise ValueError(f"sticky must be a probability in [0, 1], got {sticky}")
    if actions not in ("all", "needed"):
        raise ValueError(f"Unknown Atari action set {actions!r}; valid: all, needed")
    if noops < 0:
        raise ValueError(f"noops must be >= 0, got {noops}")
    game = AtariEnv(
        task,
        from_pixels=from_pixels,
        size=image_size,
        repeat=action_repeat,
        sticky=sticky,
        actions=actions,
        noops=noops,
        max_frames=time_limit,
        seed=seed,
    )
    base = GymWrapper(game)
    base.score_range = ATARI100K_SCORES.get(game.game)
    return finish_env(base, action_repeat, from_pixels, seed)
