"""The pure helpers of benchmarks/sheeprl_compare.py (the benchmark itself runs by hand only)."""

from __future__ import annotations

import pytest

from helpers import REPO_ROOT, load_script

compare = load_script(REPO_ROOT / "benchmarks" / "sheeprl_compare.py")

ENV = "Time/env_interaction_time"


def _records() -> dict:
    # Prefill: 4 env phases of 0.1 s (before the first update at t=10). Then updates ending at 12, 15, 19, 22
    # (durations 2, 2.5, 3, 2.8), with acting env phases of 0.5 s at t=11, 13, 14, 16, 17, 20, 21.
    train = [[10.0, 12.0], [12.5, 15.0], [16.0, 19.0], [19.2, 22.0]]
    phases = [[ENV, t, 0.1] for t in (1.0, 2.0, 3.0, 4.0)]
    phases += [[ENV, t, 0.5] for t in (11.0, 13.0, 14.0, 16.0, 17.0, 20.0, 21.0)]
    phases.append(["Time/train_time", 12.0, 2.0])
    params = {"world_model": 100, "actor": 10, "critic": 5, "target_critic": 5}
    return {"train": train, "phases": phases, "params": params, "threads": 2}


def test_summarize_sheeprl_skips_warmup_and_splits_prefill_from_acting() -> None:
    out = compare.summarize_sheeprl(_records(), warmup=1)
    assert out["updates"] == 3
    assert out["s_per_update"] == pytest.approx(3.0)  # median of the gaps 12->15, 15->19, 19->22
    assert out["updates_per_s"] == pytest.approx(3 / 10)
    assert out["update_s"] == pytest.approx(2.8)  # median of 2.5, 3, 2.8
    # Acting phases after the warm-up update ended (t > 12): 6 of 0.5 s, 2 frames each.
    assert out["env_frames_per_s"] == pytest.approx(12 / 3.0)
    assert out["prefill_env_frames_per_s"] == pytest.approx(8 / 0.4)
    assert (out["params"], out["params_total"]) == (115, 120)


def test_summarize_sheeprl_reports_the_profiled_update_dense_share() -> None:
    assert "profile" not in compare.summarize_sheeprl(_records(), warmup=1)
    rec = {
        **_records(),
        "profile_wall_s": 2.0,
        "profile_self_s": {
            "aten::mm": 0.6,
            "aten::convolution_backward": 0.4,
            "aten::silu": 0.3,
            "train": 5.0,
        },
    }
    profile = compare.summarize_sheeprl(rec, warmup=1)["profile"]
    assert profile["dense_s"] == pytest.approx(1.0) and profile["aten_s"] == pytest.approx(1.3)
    assert profile["dense_share"] == pytest.approx(0.5)  # of the update's wall time, not of the ops' sum
    assert list(profile["top_ops_s"]) == ["aten::mm", "aten::convolution_backward", "aten::silu"]


def test_summarize_sheeprl_rejects_too_few_updates() -> None:
    with pytest.raises(ValueError, match="SheepRL ran 4 updates, fewer than the 5"):
        compare.summarize_sheeprl(_records(), warmup=3)


def test_ratios_and_goals() -> None:
    sheeprl = {
        "s_per_update": 5.0,
        "update_s": 4.0,
        "env_frames_per_s": 50.0,
        "peak_rss_mb": 3000.0,
        "params": 8,
    }
    hwm = {
        "s_per_update": 2.0,
        "update_s": 2.5,
        "env_frames_per_s": 200.0,
        "peak_rss_mb": 1500.0,
        "params": 8,
    }
    r = compare.ratios(hwm, sheeprl)
    assert r["update_rate"] == pytest.approx(2.5)
    assert r["update_rate_update_only"] == pytest.approx(1.6)
    assert r["env_frames_per_s"] == pytest.approx(4.0)
    assert r["peak_rss"] == pytest.approx(0.5)
    assert (r["goal_update_rate_2x"], r["goal_env_frames_5x"]) == (True, False)
    assert "hwm/SheepRL" in compare.table([{**sheeprl, "system": "sheeprl"}, {**hwm, "system": "hwm"}], r)


def test_median_row_folds_repeats() -> None:
    runs = [
        {"system": "hwm", "s_per_update": 3.0, "env_frames_per_s": 100.0, "prefill_env_frames_per_s": None},
        {"system": "hwm", "s_per_update": 9.0, "env_frames_per_s": 50.0, "prefill_env_frames_per_s": None},
        {"system": "hwm", "s_per_update": 4.0, "env_frames_per_s": 80.0, "prefill_env_frames_per_s": None},
    ]
    row = compare.median_row(runs)
    assert (row["s_per_update"], row["env_frames_per_s"], row["repeats"]) == (4.0, 80.0, 3)
    assert row["prefill_env_frames_per_s"] is None
    assert row["per_repeat"]["s_per_update"] == [3.0, 9.0, 4.0]


def test_env_frames_count_every_env() -> None:
    one, four = (compare.summarize_sheeprl(_records(), warmup=1, num_envs=n) for n in (1, 4))
    # One env-interaction phase steps every env once.
    assert four["env_frames_per_s"] == pytest.approx(4 * one["env_frames_per_s"])
    assert four["prefill_env_frames_per_s"] == pytest.approx(4 * one["prefill_env_frames_per_s"])


def test_both_systems_get_the_same_envs_and_device() -> None:
    sheeprl = compare.sheeprl_overrides(256, 20, 3, 2, 5, num_envs=4, accelerator="gpu")
    assert {"env.num_envs=4", "env.sync_env=False", "fabric.accelerator=cuda"} <= set(sheeprl)
    hwm = compare.hwm_overrides(256, 5, num_envs=4, accelerator="gpu")
    assert hwm[hwm.index("--data.num_envs") + 1] == "4"
    assert hwm[hwm.index("--trainer.accelerator") + 1] == "gpu"
    assert "env.sync_env=True" in compare.sheeprl_overrides(256, 20, 3, 2, 5)  # one env: in-process


def test_the_sheeprl_venv_pins_every_package_to_one_version() -> None:
    lines = [
        line.strip() for line in compare.REQUIREMENTS.read_text().splitlines() if not line.startswith("#")
    ]
    assert all(line.count("==") == 1 and not set("<>~!;[") & set(line) for line in lines), lines
    pins = compare.pinned()
    assert len(pins) == len(lines)  # one line per package, none twice
    assert pins["sheeprl"] == compare.SHEEPRL_VERSION and pins["torch"] == "2.13.0"
    # dm_control 1.0.52 needs mujoco >= 4.0.1, under which its suite no longer loads: the pair that works.
    assert (pins["mujoco"], pins["dm-control"]) == ("3.17.0", "1.0.50")


def test_a_venv_is_reused_only_when_it_holds_the_pinned_versions() -> None:
    pins = {"torch": "2.13.0", "dm-control": "1.0.50", "pyyaml": "6.0.4"}
    assert compare.mismatches({"torch": "2.13.0+cpu", "dm_control": "1.0.50", "PyYAML": "6.0.4"}, pins) == []
    assert compare.mismatches({"torch": "2.13.0", "dm_control": "1.0.52"}, pins) == [
        "dm-control==1.0.50 (found 1.0.52)",
        "pyyaml==6.0.4 (found none)",
    ]
