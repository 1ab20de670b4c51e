"""`hwm fit` on the DreamerV3 base: tiny runs in every harmonizer mode, presets and their one-line errors."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import yaml

from hwm import cli
from hwm.data.datamodule import ReplayDataModule

CONF = Path(__file__).resolve().parents[2] / "conf"
TINY, TINY_V3 = CONF / "tiny.yaml", CONF / "tiny_v3.yaml"
HARMONIZED = ("obs", "reward", "dynamics")
# About 20 updates past the prefill, no evaluation.
SHORT = ("--data.total_frames", "240", "--data.eval_episodes", "0")


@pytest.mark.parametrize(
    ("mode_args", "expected"),
    [
        pytest.param(("--model.harmonizer_mode", "rectified"), None, id="rectified"),
        # The other modes on V3 are the same harmonizer code as on V2 (tested in the default suite there).
        pytest.param(
            ("--model.harmonizer_mode", "unrectified"), None, id="unrectified", marks=pytest.mark.slow
        ),
        pytest.param(
            ("--model.harmonizer_mode", "fixed", "--model.harmonizer_weights", "{reward: 2.0}"),
            {"obs": 1.0, "reward": 2.0, "dynamics": 1.0},
            id="fixed",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            ("--model.harmonizer_mode", "off"),
            {"obs": 1.0, "reward": 1.0, "dynamics": 1.0},
            id="off",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_fit_tiny_v3(fit_tiny, mode_args: tuple[str, ...], expected: dict[str, float] | None) -> None:
    run = fit_tiny("--config", str(TINY_V3), *SHORT, *mode_args)
    assert run.run.data.tags["base"] == "dreamerv3"
    assert run.run.data.tags["harmonizer_mode"] == mode_args[1]
    params = run.run.data.params
    assert params["model.world_model.class_path"] == "hwm.models.world_model_v3.WorldModelV3"
    assert params["model.actor_critic.class_path"] == "hwm.models.actor_critic_v3.ActorCriticV3"
    assert params["model.model_lr"] == "0.0001"
    for key in ("obs", "reward", "dynamics", "continue", "actor", "critic", "model_total"):
        values = [v for _, v in run.history(f"loss/{key}")]
        assert len(values) > 5 and all(math.isfinite(v) for v in values), (key, values)
    for key in ("world_model/kl_dyn", "world_model/kl_rep", "actor_critic/return_scale"):
        values = [v for _, v in run.history(key)]
        assert values and all(math.isfinite(v) for v in values), key
    assert min(v for _, v in run.history("world_model/kl_dyn")) >= 1.0 - 1e-6  # free bits
    for task in HARMONIZED:
        weights = [v for _, v in run.history(f"harmonizer/weight_{task}")]
        sigmas = [v for _, v in run.history(f"harmonizer/sigma_{task}")]
        assert len(weights) > 5 and len(sigmas) == len(weights), task
        if expected is None:  # learnable: starts at 1 and moves
            assert weights[0] == pytest.approx(1.0, abs=1e-3)
            if mode_args[1] == "unrectified" and {v for _, v in run.history(f"loss/{task}")} == {1.0}:
                continue  # a KL held at free bits is 1 = the unrectified optimum sigma* = L: nothing to learn
            assert abs(weights[-1] - 1.0) > 1e-4, (task, weights)
        else:
            assert weights == pytest.approx([expected[task]] * len(weights)), (task, weights)
    assert [s for s, _ in run.history("progress/env_frames")][-1] == 240


def _error(args: list[str], capfd: pytest.CaptureFixture[str]) -> str:
    code = cli.main(args)
    out, err = capfd.readouterr()
    assert code == 2 and "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hwm fit: error: "), err
    return lines[0]


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        pytest.param(
            ["--model.base", "dreamerv4"], ["model.base", "dreamerv4", "dreamerv2, dreamerv3"], id="base"
        ),
        pytest.param(["--model.size", "XXL"], ["model.size", "XXL", "XS, S, M, L, XL"], id="size"),
        pytest.param(
            ["--model.world_model.class_path", "hwm.models.world_model.WorldModel"],
            ["model.base is 'dreamerv3'", "WorldModel"],
            id="class-mismatch",
        ),
    ],
)
def test_bad_base_or_size_one_line(extra, fragments, tmp_path, monkeypatch, capfd) -> None:
    monkeypatch.chdir(tmp_path)
    line = _error(["fit", "--config", str(TINY), "--config", str(TINY_V3), *extra], capfd)
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert not (tmp_path / "mlflow.db").exists()


def _printed(args: list[str], capfd: pytest.CaptureFixture[str]) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capfd.readouterr().out)


def test_size_preset_with_overrides(tmp_path, monkeypatch, capfd) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["--config", str(CONF / "dmc_cheetah_v3.yaml"), "--model.size", "XS"]
    printed = _printed([*args, "--model.world_model.init_args.deter", "64"], capfd)
    wm = printed["model"]["world_model"]
    assert wm["class_path"] == "hwm.models.world_model_v3.WorldModelV3"
    assert wm["init_args"]["deter"] == 64  # an explicit key beats the preset
    assert (wm["init_args"]["mlp_units"], wm["init_args"]["cnn_depth"], wm["init_args"]["mlp_layers"]) == (
        256,
        24,
        1,
    )
    assert wm["init_args"]["continue_head"] is False  # from the config file
    assert printed["model"]["actor_critic"]["init_args"]["units"] == 256
    assert printed["model"]["model_eps"] == 1e-8 and printed["model"]["model_grad_clip"] == 1000.0
    # The V2 base by default, with its own optimizer settings.
    printed = _printed(["--config", str(TINY)], capfd)
    assert printed["model"]["base"] == "dreamerv2"
    assert printed["model"]["world_model"]["class_path"] == "hwm.models.world_model.WorldModel"
    assert printed["model"]["model_lr"] == 3e-4


@pytest.mark.skipif(
    "suite" not in inspect.signature(ReplayDataModule).parameters,
    reason="conf/atari100k.yaml needs the Atari suite (data.suite), which lands with issue 5",
)
def test_atari100k_config_parses(tmp_path, monkeypatch, capfd) -> None:
    monkeypatch.chdir(tmp_path)
    printed = _printed(["--config", str(CONF / "atari100k.yaml")], capfd)
    assert printed["model"]["base"] == "dreamerv3" and printed["model"]["size"] == "S"
    assert printed["model"]["world_model"]["init_args"]["deter"] == 512
    assert printed["data"]["train_ratio"] == 1024 and printed["data"]["action_repeat"] == 4
