"""Long runs, deselected by default: `nox -s slow` or `pytest -m slow`."""

from pathlib import Path

import pytest

from helpers import REPO_ROOT, fit_and_load


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the full-size model on a CPU: its fit alone may take 30 minutes
def test_paper_dmc_config_trains_from_pixels(tmp_path: Path) -> None:
    # The full-size DreamerV2 model on 64x64 cheetah-run: prefill, then a handful of real updates.
    run = fit_and_load(
        tmp_path,
        [
            *("--config", REPO_ROOT / "conf" / "dmc_cheetah.yaml"),
            *("--data.total_frames", "5040"),
            *("--data.eval_episodes", "0"),
            *("--model.log_every", "1"),
            *("--trainer.enable_checkpointing", "false"),
        ],
        experiment="hwm-dmc",
        timeout=1800,
    )
    obs_loss = run.history("loss/obs")
    assert len(obs_loss) >= 3
    # A 64x64x3 unit-Gaussian NLL sums 12,288 terms: hundreds of nats against a one-scalar reward loss,
    # the imbalance HarmonyDream exists for.
    reward_loss = run.history("loss/reward")
    assert obs_loss[0][1] > 100 and obs_loss[0][1] > 100 * reward_loss[0][1]
    assert run.history("harmonizer/weight_obs")[-1][1] < 1.0
