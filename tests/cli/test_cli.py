"""The `hwm` command line: an end-to-end run logged to MLflow, harmonizer modes, and one-line errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from helpers import TINY_CONFIG, run_hwm
from hwm import cli

TINY = yaml.safe_load(TINY_CONFIG.read_text())
TOTAL_FRAMES = TINY["data"]["total_frames"]
HARMONIZED = ("obs", "reward", "dynamics")

# Cheaper runs for the mode tests: 80 frames of training past the prefill (about 20 updates), no evaluation.
SHORT = ("--data.total_frames", "240", "--data.eval_episodes", "0")


def _assert_no_traceback(text: str) -> None:
    assert "Traceback" not in text, text[-4000:]


# -- end to end --------------------------------------------------------------------------------------------


def test_fit_tiny_exits_cleanly(tiny_run) -> None:
    assert tiny_run.run.info.status == "FINISHED"
    _assert_no_traceback(tiny_run.proc.stderr)
    # The frame bar is the only training bar: no empty "Training: 0/?" / "Epoch 0:" batch bars before it.
    out = tiny_run.proc.stdout
    assert "hwm fit" in out and f"{TOTAL_FRAMES}/{TOTAL_FRAMES}" in out
    assert "Epoch 0" not in out and "Training:" not in out
    err = tiny_run.proc.stderr
    # hwm's own lines only: the libraries' start-up lines wait for --verbose.
    for noise in (
        "Creating initial MLflow",
        "Seed set to",
        "GPU available",
        "Total params",
        "not found. Creating",
    ):
        assert noise not in err, noise
    assert "hwm: prefilling the replay buffer" in err
    assert "LeafSpec" not in err  # Lightning-internal torch deprecation, filtered by the CLI


@pytest.mark.parametrize(
    "key",
    [
        "loss/obs",
        "loss/reward",
        "loss/dynamics",
        "loss/continue",
        *(f"harmonizer/{kind}_{task}" for kind in ("weight", "sigma") for task in HARMONIZED),
        "train/episode_return",
        "eval/return",
        "progress/env_frames",
        "perf/updates_per_s",
    ],
)
def test_fit_tiny_logs_metric(tiny_run, key: str) -> None:
    assert key in tiny_run.run.data.metrics, sorted(tiny_run.run.data.metrics)
    values = [v for _, v in tiny_run.history(key)]
    assert values and all(math.isfinite(v) for v in values), (key, values)


def test_fit_tiny_steps_are_env_frames(tiny_run) -> None:
    frames = tiny_run.history("progress/env_frames")
    steps = [s for s, _ in frames]
    assert len(steps) > 10
    assert all(a <= b for a, b in zip(steps, steps[1:], strict=False)), steps
    assert 0 < steps[0] and steps[-1] <= TOTAL_FRAMES
    assert steps[-1] == TOTAL_FRAMES  # the run spends its whole budget
    # The step is the env-frame counter itself, not Lightning's global_step (which counts optimizer steps).
    assert all(s == v for s, v in frames), frames
    # Training starts only after the random prefill.
    assert steps[0] > TINY["data"]["prefill_frames"]
    for key in ("loss/obs", "harmonizer/weight_reward", "train/episode_return", "eval/return"):
        other = [s for s, _ in tiny_run.history(key)]
        assert all(a <= b for a, b in zip(other, other[1:], strict=False)), (key, other)
        assert set(other) <= set(steps), key
    assert all(v > 0 for _, v in tiny_run.history("perf/updates_per_s"))


def test_fit_tiny_rectified_harmonizers_learn(tiny_run) -> None:
    for task in HARMONIZED:
        weights = [v for _, v in tiny_run.history(f"harmonizer/weight_{task}")]
        sigmas = [v for _, v in tiny_run.history(f"harmonizer/sigma_{task}")]
        assert weights[0] == pytest.approx(1.0, abs=1e-3)  # s_i = 0 at start
        assert abs(weights[-1] - 1.0) > 1e-3, (task, weights)
        assert weights[-1] * sigmas[-1] == pytest.approx(1.0, rel=1e-4)


def test_fit_tiny_records_config(tiny_run) -> None:
    params = tiny_run.run.data.params
    assert params["data.task"] == "cartpole-balance"
    assert params["model.harmonizer_mode"] == "rectified"
    assert params["data.total_frames"] == str(TOTAL_FRAMES)
    assert params["model.world_model.init_args.deter"] == str(TINY["model"]["world_model"]["deter"])
    assert not any(k.startswith("trainer.logger") for k in params)
    tags = tiny_run.run.data.tags
    assert tags["harmonizer_mode"] == "rectified"
    assert tags["task"] == "cartpole-balance"
    artifacts = [a.path for a in tiny_run.client.list_artifacts(tiny_run.run_id)]
    assert "config.yaml" in artifacts, artifacts
    local = tiny_run.client.download_artifacts(tiny_run.run_id, "config.yaml", str(tiny_run.workdir))
    config = yaml.safe_load(Path(local).read_text())
    assert config["model"]["harmonizer_mode"] == "rectified"
    assert config["data"]["task"] == "cartpole-balance"


# -- harmonizer modes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode_args", "expected"),
    [
        pytest.param(
            ("--model.harmonizer_mode", "off"), {"obs": 1.0, "reward": 1.0, "dynamics": 1.0}, id="off"
        ),
        pytest.param(
            (
                "--model.harmonizer_mode",
                "fixed",
                "--model.harmonizer_weights",
                "{obs: 1.0, reward: 2.0, dynamics: 1.0}",
            ),
            {"obs": 1.0, "reward": 2.0, "dynamics": 1.0},
            id="fixed",
        ),
        # The unrectified optimum is unit-tested (tests/models/test_harmonizer.py); the fit is the same code.
        pytest.param(
            ("--model.harmonizer_mode", "unrectified"), None, id="unrectified", marks=pytest.mark.slow
        ),
    ],
)
def test_fit_harmonizer_modes(
    fit_tiny, mode_args: tuple[str, ...], expected: dict[str, float] | None
) -> None:
    run = fit_tiny(*SHORT, *mode_args)
    mode = mode_args[1]
    assert run.run.data.tags["harmonizer_mode"] == mode
    assert run.run.data.params["model.harmonizer_mode"] == mode
    for task in HARMONIZED:
        weights = [v for _, v in run.history(f"harmonizer/weight_{task}")]
        sigmas = [v for _, v in run.history(f"harmonizer/sigma_{task}")]
        assert len(weights) > 5, (task, weights)
        if expected is None:  # learnable: starts at 1 and moves
            assert weights[0] == pytest.approx(1.0, abs=1e-3)
            losses = {v for _, v in run.history(f"loss/{task}")}
            if losses == {TINY["model"]["world_model"]["free_nats"]}:
                # A KL loss held at free nats is a constant 1: log(sigma)'s optimum sigma* = L = 1 is the start.
                continue
            assert abs(weights[-1] - 1.0) > 1e-3, (task, weights)
        else:  # constant
            assert weights == pytest.approx([expected[task]] * len(weights)), (task, weights)
            assert sigmas == pytest.approx([1.0 / expected[task]] * len(sigmas)), (task, sigmas)
    steps = [s for s, _ in run.history("progress/env_frames")]
    assert steps[-1] == 240


# -- bad input: one line on stderr, non-zero exit -------------------------------------------------------------


def _main_error(args: list[str], capfd: pytest.CaptureFixture[str]) -> str:
    """Runs `hwm ARGS` in-process (one import for all cases); returns its only stderr line."""
    code = cli.main(args)
    out, err = capfd.readouterr()
    _assert_no_traceback(out + err)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


BAD_INPUT = [
    pytest.param(
        ["--model.world_model.deterr", "3"],
        ['"model.world_model.deterr"', "not accepted", "deter"],
        id="unknown-key",
    ),
    pytest.param(
        ["--data.batchsize", "4"],
        ['"data.batchsize"', "not accepted", "data.batch_size"],
        id="unknown-data-key",
    ),
    pytest.param(["--data.task", "foo-bar"], ["foo-bar", "cartpole", "cheetah"], id="unknown-domain"),
    pytest.param(["--data.task", "cartpole-flip"], ["flip", "swingup", "balance"], id="unknown-task"),
    pytest.param(["--data.batch_size", "abc"], ['"data.batch_size"', "int", "abc"], id="wrong-type"),
    pytest.param(["--data.batch_size", "0"], ["data.batch_size", ">= 1"], id="out-of-range"),
    pytest.param(
        ["--model.harmonizer_mode", "learned"],
        ["harmonizer_mode", "learned", "rectified", "off"],
        id="bad-mode",
    ),
    pytest.param(
        ["--model.harmonizer_weights", "{obs: 1.0, rew: 2.0}", "--model.harmonizer_mode", "fixed"],
        ["rew", "reward"],
        id="bad-weights",
    ),
]


@pytest.mark.parametrize(("extra", "expected"), BAD_INPUT)
def test_bad_input_one_line(
    extra: list[str], expected: list[str], tmp_path: Path, monkeypatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    line = _main_error(["fit", "--config", str(TINY_CONFIG), *extra], capfd)
    assert line.startswith("hwm fit: error: "), line
    for fragment in expected:
        assert fragment in line, (fragment, line)
    assert "Namespace(" not in line and "<class" not in line, line
    assert not (tmp_path / "mlflow.db").exists()  # nothing was started


def test_unknown_key_in_yaml_file(tmp_path: Path, monkeypatch, capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  world_model:\n    deterr: 3\ndata:\n  task: cartpole-balance\n")
    line = _main_error(["fit", "--config", str(TINY_CONFIG), "--config", str(bad)], capfd)
    assert line.startswith("hwm fit: error: ") and '"model.world_model.deterr"' in line, line
    bad.write_text("data:\n  batch_sise: 3\n")
    line = _main_error(["fit", "--config", str(TINY_CONFIG), "--config", str(bad)], capfd)
    assert line.startswith("hwm fit: error: ") and '"data.batch_sise"' in line and "batch_size" in line, line


def test_missing_config_file(tmp_path: Path, monkeypatch, capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    line = _main_error(["fit", "--config", str(tmp_path / "nope.yaml")], capfd)
    assert line.startswith("hwm fit: error: ") and "nope.yaml" in line and "not exist" in line, line


def test_unknown_command(capfd: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["frobnicate"]) == 2
    out, err = capfd.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "frobnicate" in lines[0] and "fit" in lines[0], err


def test_no_arguments_prints_usage(capfd: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) != 0
    out, err = capfd.readouterr()
    assert "usage: hwm fit" in out + err


def test_bad_input_subprocess(tmp_path: Path) -> None:
    """The real process: exit code 2, one stderr line (Lightning's "Seed set to 0" held back), no traceback."""
    proc = run_hwm(["fit", "--config", TINY_CONFIG, "--data.task", "foo-bar"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    _assert_no_traceback(proc.stdout + proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hwm fit: error: ") and "cartpole" in lines[0], proc.stderr


# -- help and config printing ---------------------------------------------------------------------------------


def test_fit_help_subprocess(tmp_path: Path) -> None:
    proc = run_hwm(["fit", "--help"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--data.task" in proc.stdout and "--model.harmonizer_mode" in proc.stdout


def test_print_config(tmp_path: Path, monkeypatch, capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "--config", str(TINY_CONFIG), "--model.harmonizer_mode", "off", "--print_config"])
    assert exit_info.value.code in (0, None)
    out, err = capfd.readouterr()
    _assert_no_traceback(err)
    printed = yaml.safe_load(out)
    assert printed["model"]["harmonizer_mode"] == "off"
    assert printed["data"]["task"] == "cartpole-balance"
    assert not (tmp_path / "mlflow.db").exists()


def test_configs_can_interpolate_other_keys(
    tmp_path: Path, monkeypatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # OmegaConf parser mode: a preset can tie one value to another.
    monkeypatch.chdir(tmp_path)
    extra = tmp_path / "tied.yaml"
    extra.write_text("data:\n  seq_len: 6\n  batch_size: ${data.seq_len}\n")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "--config", str(TINY_CONFIG), "--config", str(extra), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capfd.readouterr().out)
    assert printed["data"]["batch_size"] == 6 == printed["data"]["seq_len"]
