"""The Atari 100k random/human score table and human-normalised scores, without importing ALE.

Kept apart from :mod:`hwm.envs.atari` (which needs ``ale_py``) so that ``hwm compare`` and
:mod:`hwm.experiments.scores` can normalise and aggregate Atari returns on a machine without the emulator.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["ATARI100K_SCORES", "atari100k_game", "human_normalized_score"]

# (random, human) scores of the 26 Atari 100k games, keyed by ALE ROM id. These are the numbers every
# Atari 100k paper normalises with (SimPLe, DER, SPR, DreamerV3; random/human from the DQN literature);
# copied from and cross-checked between rliable's Atari 100k tables (google-research/rliable) and
# SPR's evaluation code.
ATARI100K_SCORES: dict[str, tuple[float, float]] = {
    "alien": (227.8, 7127.7),
    "amidar": (5.8, 1719.5),
    "assault": (222.4, 742.0),
    "asterix": (210.0, 8503.3),
    "bank_heist": (14.2, 753.1),
    "battle_zone": (2360.0, 37187.5),
    "boxing": (0.1, 12.1),
    "breakout": (1.7, 30.5),
    "chopper_command": (811.0, 7387.8),
    "crazy_climber": (10780.5, 35829.4),
    "demon_attack": (152.1, 1971.0),
    "freeway": (0.0, 29.6),
    "frostbite": (65.2, 4334.7),
    "gopher": (257.6, 2412.5),
    "hero": (1027.0, 30826.4),
    "jamesbond": (29.0, 302.8),
    "kangaroo": (52.0, 3035.0),
    "krull": (1598.0, 2665.5),
    "kung_fu_master": (258.5, 22736.3),
    "ms_pacman": (307.3, 6951.6),
    "pong": (-20.7, 14.6),
    "private_eye": (24.9, 69571.3),
    "qbert": (163.9, 13455.0),
    "road_runner": (11.5, 7845.0),
    "seaquest": (68.4, 42054.7),
    "up_n_down": (533.4, 11693.2),
}


def _squash(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "").replace(" ", "")


_BY_SQUASHED = {_squash(game): game for game in ATARI100K_SCORES}


def atari100k_game(name: str) -> str:
    """The table key of an Atari 100k game from any usual spelling.

    ``pong``, ``Pong``, ``ALE/Pong-v5``, ``MsPacman``, ``ms_pacman``, ``james_bond`` and ``JamesBond`` all
    resolve (case, ``_``, ``-`` and spaces are ignored, as for ALE ROM ids). Raises a ValueError naming the
    26 games for anything else: a game outside Atari 100k has no agreed human score to normalise with.
    """
    base = name.strip().removeprefix("ALE/")
    for suffix in ("-v5", "-v4", "NoFrameskip", "Deterministic"):
        base = base.replace(suffix, "")
    game = _BY_SQUASHED.get(_squash(base))
    if game is None:
        raise ValueError(
            f"{name!r} is not an Atari 100k game; the 26 games are {', '.join(ATARI100K_SCORES)}"
        )
    return game


def human_normalized_score(game: str, score: ArrayLike) -> np.ndarray | float:
    """(score - random) / (human - random) of ``game`` (any spelling ``atari100k_game`` reads).

    ``score`` may be a number or an array (seeds, evaluation points); the result has the same shape. 0 is
    a random policy, 1 the human tester.
    """
    random, human = ATARI100K_SCORES[atari100k_game(game)]
    out = (np.asarray(score, dtype=np.float64) - random) / (human - random)
    return float(out) if out.ndim == 0 else out
