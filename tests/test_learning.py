"""The CPU preset learns: cartpole-balance from states beats what no learning can score (slow: ~22 minutes)."""

from pathlib import Path

import pytest

from helpers import REPO_ROOT, fit_and_load

# Measured on cartpole-balance with action repeat 4 (docs/benchmarks.md, "What held cartpole back"): random
# actions score 310 on average and at most 460 over 40 episodes; doing nothing scores 752 (at most 775 over 20
# episodes), since the pole then turns over and over, slowly near the top. A return of 800 is out of reach
# of either, whatever the seed.
NO_LEARNING_BEST = 775.0
THRESHOLD = 800.0
# The learning benchmark's seeds 0-3 score 935-972 at 200k frames, the mean of their last four evaluations
# before it 898-959 (seed 0, this test's: 943). At 100k they scored 505-908: too early for one threshold.
FRAMES = 200_000
LAST = 4  # evaluations averaged: one evaluation is 3 episodes, and a single bad one scores ~600


@pytest.mark.slow
def test_cartpole_preset_balances_by_200k_frames(tmp_path: Path) -> None:
    run = fit_and_load(
        tmp_path,
        ["--config", REPO_ROOT / "conf" / "cartpole_balance.yaml", "--data.total_frames", str(FRAMES),
         "--trainer.enable_checkpointing", "false"],
        experiment="hwm-cartpole",
        timeout=3600,
    )  # fmt: skip
    returns = run.history("eval/return")
    assert returns[-1][0] >= FRAMES
    late = [value for _, value in returns[-LAST:]]
    assert sum(late) / LAST >= THRESHOLD > NO_LEARNING_BEST, returns
    # It balances: the pole is upright nearly all of the late evaluation episodes.
    upright = [value for _, value in run.history("eval/reward_factor_upright")[-LAST:]]
    assert sum(upright) / LAST > 0.95, upright
