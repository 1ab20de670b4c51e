"""Atari (ALE via ``ale-py``, ROMs inside the wheel) as TorchRL envs, for Atari 100k as HarmonyDream ran it.

The defaults are the authors' Atari 100k protocol (``dreamerv3-jax``, config ``atari100k`` with their
``embodied/envs/atari.py``): no sticky actions, the game's minimal ("needed") action set, 0-29 random no-op
frames after each reset (``noops=30`` is an exclusive bound, as their ``randint(noops)``), and one agent step
= ``action_repeat`` (4) emulator frames with the reward summed. Lives are "unused" as DreamerV3: losing a
life is not an episode end and sends no signal; the episode ends (terminated) at game over, or truncated
once ``time_limit`` emulator frames have been played (reset no-ops not counted; 108,000 = 30 minutes, the
usual cap; their README caps Chopper Command at 5,400 of these frames, i.e. 1,350 agent steps). Their env
marks time-limit ends as terminal too; here they are truncations. Rewards are not clipped.

The observation is the max over the last two frames' RGB screens (flicker), resized to 64x64 by area
averaging. At reset it is the screen itself (theirs pools it with a zeroed buffer: the same). When the game
ends before the second-to-last frame of a step, the final screen alone (theirs pools it with a stale buffer
from an earlier step: only those terminal frames differ). With ``action_repeat=1`` nothing is pooled (as
theirs). :func:`area_resize` reproduces their OpenCV ``INTER_AREA`` exactly: 0 of 255 difference on 1,600
max-pooled frames of 8 games at 64, 84 and 96 px (cv2 4.14 and 5.0; only pixels whose exact average is
x.5 can round the other way, seen at other sizes on noise). Pillow's closest filter, HAMMING, differs by
0.80 on average (max 28); BOX by 1.60 (max 70: it weights whole pixels, not their covered share); the
BILINEAR used before by 1.53 (max 62). It costs about what Pillow's resize costs (~0.3-0.6 ms a frame).

Human-normalised score = (return - random) / (human - random) with the published per-game scores of
the 26 Atari 100k games (:data:`ATARI100K_SCORES`); ``hwm.envs.suites`` reports them as the env's
``EnvInfo.score_range``.
"""

from __future__ import annotations

import difflib
import functools
from typing import Any, Literal

import ale_py
import ale_py.roms as roms
import gymnasium as gym
import numpy as np
from torchrl.envs import EnvBase, GymWrapper

from hwm.envs.atari_scores import ATARI100K_SCORES
from hwm.envs.common import OBS_KEY, PIXELS_KEY, finish_env

__all__ = [
    "ATARI100K_SCORES",
    "AtariEnv",
    "area_resize",
    "area_weights",
    "atari_game",
    "make_atari_env",
]


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
        # A typo is far likelier than a game outside the 100+ ALE ROMs: name the closest instead of all.
        close = difflib.get_close_matches(_squash(base), list(by_key), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(repr(by_key[c]) for c in close)}? " if close else ""
        raise ValueError(
            f"Unknown Atari game {name!r}; {hint}the Atari 100k games are {', '.join(ATARI100K_SCORES)} "
            "(any of ALE's ROMs works: python -c 'import ale_py.roms; print(ale_py.roms.get_all_rom_ids())')"
        )
    return game


def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` float32 weights averaging each output cell's span of ``n_in / n_out`` input pixels.

    Input pixel ``i`` covers ``[i, i + 1)``; output ``o`` covers ``[o, o + 1) * n_in / n_out``; the weight is
    the covered length over the span, so every row sums to 1 and partly covered pixels count by their share
    (which is what OpenCV's ``INTER_AREA`` does when shrinking, and Pillow's BOX does not).
    """
    if not 0 < n_out <= n_in:
        raise ValueError(f"area averaging only shrinks: {n_in} -> {n_out}")
    span = n_in / n_out
    lo = np.arange(n_out)[:, None] * span
    pixel = np.arange(n_in)[None, :]
    covered = np.clip(np.minimum(lo + span, pixel + 1) - np.maximum(lo, pixel), 0.0, None)
    return (covered / span).astype(np.float32)


@functools.cache
def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`area_weights` as a few taps per output: ``(n_out, k)`` input indices and their weights."""
    weights = area_weights(n_in, n_out)
    first = (weights > 0).argmax(1)
    wanted = first[:, None] + np.arange(int((weights > 0).sum(1).max()))
    index = np.minimum(wanted, n_in - 1)
    taps = np.where(wanted < n_in, np.take_along_axis(weights, index, 1), 0.0).astype(np.float32)
    return index, taps


def area_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Area-average an ``(H, W, C)`` uint8 image to ``(size, size, C)``, as OpenCV's ``INTER_AREA``.

    Columns then rows (OpenCV's order), each output a sum of a few weighted inputs, rounded half to even.
    ``einsum`` without ``optimize`` loops in C; a matrix product would start BLAS's threads for this small a
    product, which costs ~10x more than the resize on a busy machine (0.25 ms -> 3-10 ms a frame on 2 cores).
    """
    height, width = image.shape[:2]
    col_index, col_taps = _taps(width, size)
    row_index, row_taps = _taps(height, size)
    wide = np.einsum("hskc,sk->hsc", image.astype(np.float32)[:, col_index], col_taps)
    return np.rint(np.einsum("skwc,sk->swc", wide[row_index], row_taps)).astype(np.uint8)


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
        sticky: float = 0.0,
        actions: Literal["all", "needed"] = "needed",
        noops: int = 30,
        max_frames: int = 108_000,
        seed: int = 0,
    ) -> None:
        self.game = atari_game(game)
        self._episode_rng: dict[str, Any] | None = None  # set at each reset
        self._from_pixels, self._size, self._repeat = from_pixels, size, repeat
        self._sticky, self._noops, self._max_frames = sticky, noops, max_frames
        # Before the interface exists: its constructor prints ALE's banner at the default level.
        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
        self.ale = ale_py.ALEInterface()
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
        rom = roms.get_rom_path(self.game)
        if rom is None:  # the game was checked against ale_py's ROMs when the env was configured
            raise ValueError(f"ale_py ships no ROM for {self.game!r}")
        self.ale.loadROM(rom)
        self._rng = np.random.default_rng(seed)

    def _obs(self) -> dict[str, np.ndarray]:
        if not self._from_pixels:
            return {self._key: self.ale.getRAM().astype(np.float32) / 255.0}
        pooled = np.maximum(self._screens[0], self._screens[1])
        return {self._key: area_resize(pooled, self._size)}

    def episode_rng_state(self) -> dict[str, Any] | None:
        """ALE's state (with its RNG) and the no-op generator just before this episode's reset (resume)."""
        return self._episode_rng

    def set_episode_rng_state(self, state: dict[str, Any]) -> None:
        """The next reset then starts the same episode as the one ``state`` was taken from."""
        self.ale.restoreState(state["ale"])
        self._rng.bit_generator.state = state["noops"]

    def sim_state(self) -> dict[str, Any]:
        """ALE's state with its RNG, the no-op generator, the screens in hand and the frame count (exact
        mid-episode resume)."""
        return {
            "ale": self.ale.cloneState(include_rng=True),
            "noops": self._rng.bit_generator.state,
            "screens": self._screens.copy(),
            "frames": self._frames,
            "episode_rng": self._episode_rng,
        }

    def set_sim_state(self, state: dict[str, Any]) -> None:
        self.ale.restoreState(state["ale"])
        self._rng.bit_generator.state = state["noops"]
        self._screens[...] = state["screens"]
        self._frames, self._episode_rng = state["frames"], state["episode_rng"]

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        if seed is not None:
            self._load(seed)
        self._episode_rng = {
            "ale": self.ale.cloneState(include_rng=True),
            "noops": self._rng.bit_generator.state,
        }
        self.ale.reset_game()
        # randint(noops) as the authors: 0 .. noops - 1 no-op frames (noops 0 or 1: none).
        for _ in range(self._rng.integers(self._noops) if self._noops > 0 else 0):
            self.ale.act(_NOOP)
            if self.ale.game_over():
                self.ale.reset_game()
        self._frames = 0
        self.ale.getScreenRGB(self._screens[0])
        self._screens[1] = self._screens[0]
        return self._obs(), {}

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        act = self._actions[int(action)]
        reward, terminated, second_last = 0.0, False, False
        for i in range(self._repeat):
            reward += self.ale.act(act)
            self._frames += 1
            if i == self._repeat - 2:  # pooled with the last frame
                self.ale.getScreenRGB(self._screens[1])
                second_last = True
            if self.ale.game_over():
                terminated = True
                break
        self.ale.getScreenRGB(self._screens[0])
        if not second_last:
            # Repeat 1, or the game ended before the second-to-last frame: the final screen alone.
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
    sticky: float = 0.0,
    actions: Literal["all", "needed"] = "needed",
    noops: int = 30,
) -> EnvBase:
    """A seeded Atari env for TorchRL with one-hot actions; the defaults are the authors' Atari 100k protocol.

    Args:
        task: the game, e.g. ``pong`` (``Pong``, ``ALE/Pong-v5``, ``ms_pacman``, ``MsPacman`` work too).
        from_pixels: 64x64 RGB ``pixels``; else the 128-byte RAM scaled to [0, 1] as ``observation``.
        image_size: output height and width (area-averaged from 210x160, so at most 160).
        action_repeat: emulator frames per agent step (4).
        time_limit: episode cap in emulator frames, reset no-ops not counted (108,000; the authors cap
            Chopper Command at 5,400 frames = 1,350 agent steps at repeat 4). Ends truncated.
        seed: seeds ALE (only sticky actions draw from it) and the number of reset no-ops.
        fast_render: unused (no MuJoCo here); accepted so every suite takes the same arguments.
        sticky: probability that ALE repeats the previous action instead of the new one, per frame (0: the
            authors' Atari 100k; 0.25: Machado et al. 2018).
        actions: the game's ``needed`` minimal set (the authors') or ``all`` 18 actions.
        noops: reset no-op frames are drawn from 0 .. noops - 1 (exclusive bound, the authors' 30 -> 0-29).
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
    if not 1 <= image_size <= 160:
        raise ValueError(
            f"Atari image_size must be in [1, 160] (area-averaged from 210x160), got {image_size}"
        )
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
    return finish_env(base, from_pixels, seed, game)
